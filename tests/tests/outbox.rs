//! The outbox relay against a real SMTP server on loopback (`mailin-embedded`, started by
//! each test): invite and reset links arrive by mail and match the outbox; a server that is
//! down costs tries (recorded) and the message goes out once it is up; the relay gives up
//! after `max_attempts`; a message acknowledged before `kill -9` is sent after the restart;
//! a record written before the relay's fields existed is still read and sent.

use gatehouse::app::App;
use gatehouse::config::Config;
use gatehouse::identity::{Link, LinkPurpose, OutboxMessage};
use gatehouse::store::{Batch, Space, Store};
use gatehouse_tests::{Process, TestServer, OPERATOR_TOKEN};
use reqwest::Method;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod mail_common;

use mail_common::*;

fn sha256_hex(text: &str) -> String {
    gatehouse::policy::sha256(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// -------------------------------------------------------------------------------- tests

#[tokio::test]
async fn invite_and_reset_links_are_mailed_once_each() {
    let sink = Sink::start();
    let server = TestServer::start_with(|c| smtp_config(c, sink.url(), 100, 5)).await;
    server
        .create_tenant_with_admin("acme", "admin@acme.io")
        .await;
    let started = Instant::now();
    let dan = invite_with_email(&server, "dan@acme.io").await;

    let mail = sink
        .next(Duration::from_secs(5))
        .await
        .expect("the set-password mail arrives");
    assert!(
        started.elapsed() < Duration::from_millis(SLOW_POLL_MS / 2),
        "woken by the queued message, not the poll"
    );
    assert_eq!(mail.envelope_to, ["dan@acme.io"]);
    assert_eq!(mail.envelope_from, "no-reply@example.test");
    assert_eq!(mail.header("subject"), Some("Set your password for acme"));
    assert_eq!(mail.header("to"), Some("dan@acme.io"));
    assert_eq!(mail.header("from"), Some(FROM));
    assert!(
        mail.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{mail:?}"
    );
    let invite_link = mail.link();
    let invite_token = token_of(&invite_link);

    // The outbox shows the same link, and the message as sent once.
    let messages = eventually(
        "the invite marked sent",
        Duration::from_secs(5),
        async || {
            let messages = outbox(&server).await;
            messages[0]["sent_at"].is_string().then_some(messages)
        },
    )
    .await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    let sent = &messages[0];
    assert_eq!(sent["to"], "dan@acme.io");
    assert_eq!(sent["attempts"], 1, "{sent}");
    assert!(
        sent["last_error"].is_null() && sent["failed_at"].is_null(),
        "{sent}"
    );
    assert!(
        sent["body"]
            .as_str()
            .unwrap()
            .lines()
            .any(|line| line == invite_link),
        "the mailed link is the stored one: {sent}"
    );
    assert_eq!(
        mail.header("message-id"),
        Some(format!("<{}@example.test>", sent["id"].as_str().unwrap()).as_str())
    );

    let (status, body) = server
        .call(
            Method::POST,
            &format!("/api/v1/tenants/acme/users/{dan}/reset-password"),
            OP,
            None,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let mail = sink
        .next(Duration::from_secs(5))
        .await
        .expect("the reset mail arrives");
    assert_eq!(mail.envelope_to, ["dan@acme.io"]);
    assert_eq!(mail.header("subject"), Some("Reset your password for acme"));
    let reset_link = mail.link();
    let reset_token = token_of(&reset_link);
    assert_ne!(reset_token, invite_token, "every link is new");
    let messages = eventually(
        "the reset marked sent",
        Duration::from_secs(5),
        async || {
            let messages = outbox(&server).await;
            messages
                .iter()
                .all(|m| m["sent_at"].is_string())
                .then_some(messages)
        },
    )
    .await;
    assert_eq!(messages.len(), 2);
    assert!(messages[1]["body"].as_str().unwrap().contains(&reset_link));
    assert!(
        sink.next(Duration::from_millis(500)).await.is_none(),
        "nothing is sent twice"
    );

    // The mailed reset token is the one-time link stored for dan; the reset replaced the
    // invite's link (docs/decisions.md 31).
    let data = server.data.clone();
    server.stop().await;
    let store = Store::open(data.path()).unwrap();
    let link: Link = store
        .get("acme", &[&sha256_hex(&reset_token)])
        .unwrap()
        .expect("the mailed token is a stored link");
    assert_eq!(
        (link.purpose, link.user.as_str()),
        (LinkPurpose::ResetPassword, dan.as_str())
    );
    assert!(
        store
            .get::<Link>("acme", &[&sha256_hex(&invite_token)])
            .unwrap()
            .is_none(),
        "the invite's link is gone"
    );
}

#[tokio::test]
async fn a_server_that_is_down_costs_tries_and_the_mail_goes_out_when_it_is_up() {
    let port = free_port();
    let server =
        TestServer::start_with(|c| smtp_config(c, format!("smtp://127.0.0.1:{port}"), 100, 50))
            .await;
    server
        .create_tenant_with_admin("acme", "admin@acme.io")
        .await;
    invite_with_email(&server, "erin@acme.io").await;

    let failed = eventually("two failed tries", Duration::from_secs(10), async || {
        let messages = outbox(&server).await;
        (messages[0]["attempts"].as_u64() >= Some(2)).then(|| messages[0].clone())
    })
    .await;
    assert!(
        failed["sent_at"].is_null() && failed["failed_at"].is_null(),
        "{failed}"
    );
    let error = failed["last_error"]
        .as_str()
        .expect("the error is recorded");
    assert!(!error.is_empty(), "{failed}");
    assert!(!error.contains("token="), "no link in the error: {error}");

    let sink = Sink::start_on_port(port);
    let mail = sink
        .next(Duration::from_secs(10))
        .await
        .expect("the mail arrives once the server is up");
    let link = mail.link();
    token_of(&link);
    let sent = eventually(
        "the message marked sent",
        Duration::from_secs(5),
        async || {
            let messages = outbox(&server).await;
            messages[0]["sent_at"]
                .is_string()
                .then(|| messages[0].clone())
        },
    )
    .await;
    assert!(sent["attempts"].as_u64() >= Some(3), "{sent}");
    assert!(sent["failed_at"].is_null(), "{sent}");
    assert!(sent["body"].as_str().unwrap().contains(&link), "{sent}");
}

#[tokio::test]
async fn the_relay_gives_up_after_max_attempts() {
    let port = free_port();
    let server =
        TestServer::start_with(|c| smtp_config(c, format!("smtp://127.0.0.1:{port}"), 50, 2)).await;
    server
        .create_tenant_with_admin("acme", "admin@acme.io")
        .await;
    let frank = invite_with_email(&server, "frank@acme.io").await;
    let abandoned = eventually(
        "the relay to give up",
        Duration::from_secs(10),
        async || {
            let messages = outbox(&server).await;
            messages[0]["failed_at"]
                .is_string()
                .then(|| messages[0].clone())
        },
    )
    .await;
    assert_eq!(abandoned["attempts"], 2, "{abandoned}");
    assert!(abandoned["sent_at"].is_null(), "{abandoned}");
    assert!(abandoned["last_error"].is_string(), "{abandoned}");

    // With the server up, a new message goes out; the abandoned one does not.
    let sink = Sink::start_on_port(port);
    let (status, body) = server
        .call(
            Method::POST,
            &format!("/api/v1/tenants/acme/users/{frank}/reset-password"),
            OP,
            None,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let mail = sink
        .next(Duration::from_secs(5))
        .await
        .expect("the reset mail arrives");
    assert_eq!(mail.header("subject"), Some("Reset your password for acme"));
    assert!(sink.next(Duration::from_millis(500)).await.is_none());
    let messages = outbox(&server).await;
    assert_eq!(
        messages[0], abandoned,
        "the abandoned message is left as it was"
    );
}

#[test]
fn a_message_acknowledged_before_kill_9_is_sent_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("db");
    let port = free_port();
    let url = format!("smtp://127.0.0.1:{port}");
    let env = [
        ("GATEHOUSE_OPERATOR_TOKEN", OPERATOR_TOKEN),
        ("GATEHOUSE_PUBLIC_URL", PUBLIC_URL),
        ("GATEHOUSE_SMTP_URL", url.as_str()),
        ("GATEHOUSE_SMTP_FROM", FROM),
        ("GATEHOUSE_SMTP_BACKOFF_MS", "200"),
        ("GATEHOUSE_SMTP_POLL_INTERVAL_MS", "60000"),
    ];
    let client = reqwest::blocking::Client::new();
    let call = |base: &str, method: Method, path: &str, body: Option<Value>| {
        let mut request = client
            .request(method, format!("{base}{path}"))
            .bearer_auth(OPERATOR_TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().unwrap();
        (
            response.status().as_u16(),
            response.json::<Value>().unwrap_or(Value::Null),
        )
    };
    let outbox = |base: &str| call(base, Method::GET, "/api/v1/tenants/acme/outbox", None).1;
    let until = |what: &str, mut probe: Box<dyn FnMut() -> bool + '_>| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !probe() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(25));
        }
    };

    let first = Process::start_with_env(&data, &env).unwrap();
    let (status, body) = call(
        &first.base,
        Method::POST,
        "/api/v1/tenants",
        Some(json!({ "slug": "acme", "admin_email": "admin@acme.io" })),
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = call(
        &first.base,
        Method::POST,
        "/api/v1/tenants/acme/users",
        Some(json!({ "email": "gail@acme.io", "send_password_email": true })),
    );
    assert_eq!(status, 201, "{body}");
    until(
        "a recorded failed try",
        Box::new(|| outbox(&first.base)["messages"][0]["attempts"].as_u64() >= Some(1)),
    );
    // A try is visible as soon as it commits and durable once its flush ends; a write
    // acknowledged after it was seen is flushed by a flush that started after that commit,
    // so the try is on disk before the kill.
    let (status, body) = call(
        &first.base,
        Method::POST,
        "/api/v1/tenants",
        Some(json!({ "slug": "umbrella" })),
    );
    assert_eq!(status, 201, "{body}");
    let stderr = first.stderr();
    assert!(!stderr.contains("token="), "no link in the logs: {stderr}");
    first.kill9();

    let sink = Sink::start_on_port(port);
    let second = Process::start_with_env(&data, &env).unwrap();
    let mail = sink
        .mails
        .recv_timeout(Duration::from_secs(10))
        .map(Mail::parse)
        .expect("the message is sent after the restart");
    assert_eq!(mail.envelope_to, ["gail@acme.io"]);
    let link = mail.link();
    until(
        "the message marked sent",
        Box::new(|| outbox(&second.base)["messages"][0]["sent_at"].is_string()),
    );
    let message = outbox(&second.base)["messages"][0].clone();
    assert!(
        message["body"].as_str().unwrap().contains(&link),
        "{message}"
    );
    assert!(message["attempts"].as_u64() >= Some(2), "{message}");
    // Log lines reach stderr through the non-blocking writer: poll for the line.
    until(
        "the sent line in the log",
        Box::new(|| second.stderr().contains("outbox: message sent")),
    );
    let stderr = second.stderr();
    assert!(!stderr.contains("token="), "no link in the logs: {stderr}");
    second.kill9();
}

#[tokio::test]
async fn a_message_stored_before_the_relay_fields_existed_is_sent() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data: dir.path().join("db"),
        operator_token: Some(OPERATOR_TOKEN.into()),
        ..Default::default()
    };
    smtp_config(&mut config, sink.url(), 100, 5);
    let (app, _) = App::open(&config).unwrap();
    app.create_tenant("acme", "test").unwrap();
    // The record as the first outbox wrote it, and without a pending-index entry.
    let id = "00000000000000000001-msg_00000000000000000001";
    let old = json!({
        "id": id,
        "to": "hal@acme.io",
        "subject": "Set your password for acme",
        "body": format!("Use this link:\n\n{PUBLIC_URL}/v1/acme/password?token={}\n", "a".repeat(43)),
        "created_at": "2026-01-01T00:00:00Z",
        "sent_at": null,
        "attempts": 0,
    });
    let mut batch = Batch::new("acme");
    batch.put_raw(Space::Outbox, &[id], old.to_string().as_bytes());
    app.store.apply(&batch).unwrap();

    let app = Arc::new(app);
    let relay = gatehouse::outbox::start(app.clone(), &config)
        .unwrap()
        .expect("SMTP is configured");
    let mail = sink
        .next(Duration::from_secs(5))
        .await
        .expect("the old message is sent");
    assert_eq!(mail.envelope_to, ["hal@acme.io"]);
    token_of(&mail.link());
    relay.stop().await;
    let stored: OutboxMessage = app.store.get("acme", &[id]).unwrap().unwrap();
    assert!(stored.sent_at.is_some(), "{stored:?}");
    assert_eq!(stored.attempts, 1);
}
