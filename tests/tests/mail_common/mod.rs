//! Shared by the tests that need mail: a real SMTP server on loopback (`mailin-embedded`),
//! mails read as a client would, the relay's test configuration, and small helpers for the
//! set-password links the mails carry.
#![allow(dead_code)]

use gatehouse::config::Config;
use gatehouse_tests::{TestServer, OPERATOR_TOKEN};
use mailin_embedded::{response, Handler, Response, Server, SslConfig};
use reqwest::Method;
use serde_json::{json, Value};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const OP: Option<&str> = Some(OPERATOR_TOKEN);
pub const PUBLIC_URL: &str = "https://id.example.test";
pub const FROM: &str = "Gatehouse <no-reply@example.test>";
/// Long enough that only a queued message's wake-up, not the poll, can explain a prompt mail.
pub const SLOW_POLL_MS: u64 = 60_000;

// ------------------------------------------------------------------------- the SMTP sink

/// One mail as the SMTP server received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub envelope_from: String,
    pub envelope_to: Vec<String>,
    pub data: Vec<u8>,
}

/// mailin's per-connection handler: collects each mail's data and hands it over at the end.
#[derive(Clone)]
pub struct Collect {
    mails: mpsc::Sender<Received>,
    current: Option<Received>,
}

impl Handler for Collect {
    fn data_start(&mut self, _domain: &str, from: &str, _is8bit: bool, to: &[String]) -> Response {
        self.current = Some(Received {
            envelope_from: from.to_owned(),
            envelope_to: to.to_vec(),
            data: Vec::new(),
        });
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if let Some(mail) = &mut self.current {
            mail.data.extend_from_slice(buf);
        }
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        if let Some(mail) = self.current.take() {
            let _ = self.mails.send(mail);
        }
        response::OK
    }
}

/// A real SMTP server on a loopback port; it runs until the test process ends.
pub struct Sink {
    pub port: u16,
    pub mails: mpsc::Receiver<Received>,
}

impl Sink {
    pub fn start() -> Sink {
        Sink::start_on(TcpListener::bind("127.0.0.1:0").expect("bind loopback"))
    }

    /// Starts on a port that was free until now (a server "coming back").
    pub fn start_on_port(port: u16) -> Sink {
        Sink::start_on(TcpListener::bind(("127.0.0.1", port)).expect("the port is still free"))
    }

    pub fn start_on(listener: TcpListener) -> Sink {
        let port = listener.local_addr().unwrap().port();
        let (tx, mails) = mpsc::channel();
        let mut server = Server::new(Collect {
            mails: tx,
            current: None,
        });
        server
            .with_name("sink.test")
            .with_ssl(SslConfig::None)
            .expect("no TLS")
            .with_num_threads(2)
            .with_tcp_listener(listener);
        std::thread::spawn(move || {
            if let Err(e) = server.serve() {
                panic!("the SMTP sink stopped: {e}");
            }
        });
        Sink { port, mails }
    }

    /// The next mail, waiting up to `within` (polling, so an async test's runtime runs on).
    pub async fn next(&self, within: Duration) -> Option<Mail> {
        let deadline = Instant::now() + within;
        loop {
            match self.mails.try_recv() {
                Ok(mail) => return Some(Mail::parse(mail)),
                Err(mpsc::TryRecvError::Disconnected) => panic!("the SMTP sink stopped"),
                Err(mpsc::TryRecvError::Empty) if Instant::now() >= deadline => return None,
                Err(mpsc::TryRecvError::Empty) => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
            }
        }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }
}

/// A loopback port nothing listens on (a server that is down).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A received mail, read as a mail client would: unfolded headers, the body decoded
/// according to its Content-Transfer-Encoding.
#[derive(Debug)]
pub struct Mail {
    pub envelope_from: String,
    pub envelope_to: Vec<String>,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Mail {
    pub fn parse(received: Received) -> Mail {
        let raw = String::from_utf8(received.data).expect("the mail is text");
        let (head, body) = raw
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no header/body separator in {raw:?}"));
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in head.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                let (_, value) = headers.last_mut().expect("a folded line follows a header");
                value.push(' ');
                value.push_str(line.trim());
            } else {
                let (name, value) = line.split_once(':').expect("a header line");
                headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
            }
        }
        let mut mail = Mail {
            envelope_from: received.envelope_from,
            envelope_to: received.envelope_to,
            headers,
            body: String::new(),
        };
        let encoding = mail
            .header("content-transfer-encoding")
            .unwrap_or("7bit")
            .to_ascii_lowercase();
        let decoded = match encoding.as_str() {
            "7bit" | "8bit" => body.as_bytes().to_vec(),
            "quoted-printable" => {
                quoted_printable::decode(body, quoted_printable::ParseMode::Strict)
                    .expect("valid quoted-printable")
            }
            "base64" => {
                use base64::Engine;
                let compact: String = body.split_whitespace().collect();
                base64::engine::general_purpose::STANDARD
                    .decode(compact)
                    .expect("valid base64")
            }
            other => panic!("unexpected Content-Transfer-Encoding {other}"),
        };
        mail.body = String::from_utf8(decoded)
            .expect("a UTF-8 body")
            .replace("\r\n", "\n");
        mail
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The one line of the body that is a link on the public URL.
    pub fn link(&self) -> String {
        let links: Vec<&str> = self
            .body
            .lines()
            .filter(|line| line.starts_with(PUBLIC_URL))
            .collect();
        assert_eq!(links.len(), 1, "one link in {:?}", self.body);
        links[0].to_owned()
    }
}

// ------------------------------------------------------------------------------ helpers

pub fn smtp_config(config: &mut Config, url: String, backoff_ms: u64, max_attempts: u32) {
    config.public_url = Some(PUBLIC_URL.into());
    config.smtp.url = Some(url);
    config.smtp.from = Some(FROM.into());
    config.smtp.poll_interval_ms = SLOW_POLL_MS;
    config.smtp.backoff_ms = backoff_ms;
    config.smtp.max_attempts = max_attempts;
}

pub async fn invite_with_email(server: &TestServer, email: &str) -> String {
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/tenants/acme/users",
            OP,
            Some(&json!({ "email": email, "send_password_email": true })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

pub async fn outbox(server: &TestServer) -> Vec<Value> {
    let (status, body) = server
        .call(Method::GET, "/api/v1/tenants/acme/outbox", OP, None)
        .await;
    assert_eq!(status, 200, "{body}");
    body["messages"].as_array().unwrap().clone()
}

/// Polls `probe` until it answers, failing after `within`.
pub async fn eventually<T>(
    what: &str,
    within: Duration,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A link `PUBLIC_URL/v1/acme/password?token=<43 base64url characters>`; returns the token.
pub fn token_of(link: &str) -> String {
    let token = link
        .strip_prefix(&format!("{PUBLIC_URL}/v1/acme/password?token="))
        .unwrap_or_else(|| panic!("{link} is not a password link of acme"));
    assert_eq!(token.len(), 43, "{link}");
    assert!(
        token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "{link}"
    );
    token.to_owned()
}
