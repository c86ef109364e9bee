//! Shared by the browser tests (`console.rs`, `password.rs`): Debian's `chromium-driver` on a
//! free loopback port, a headless Chromium session 360 px wide, and steps that wait for the
//! page they lead to instead of sleeping.
#![allow(dead_code)]

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// chromedriver on a free loopback port, killed when dropped.
pub struct Driver {
    child: Child,
    pub port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn chromedriver() -> Driver {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver runs (Debian's chromium-driver; .ci/run installs it)");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Driver { child, port }
}

pub async fn chromium(driver: &Driver, profile: &std::path::Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--window-size=360,800",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a Chromium session")
}

pub type Step<T> = Result<T, fantoccini::error::CmdError>;

pub async fn fill(b: &Client, css: &str, text: &str) -> Step<()> {
    let field = b.find(Locator::Css(css)).await?;
    field.clear().await?;
    field.send_keys(text).await
}

/// Clicks a control that submits a form, and waits until the next page replaced this one.
pub async fn click(b: &Client, css: &str) -> Step<()> {
    let old = b.find(Locator::Css("html")).await?;
    b.find(Locator::Css(css)).await?.click().await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while old.tag_name().await.is_ok() {
        assert!(Instant::now() < deadline, "{css} did not load a page");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok(())
}

/// Clicks a control that does not leave the page (a radio button).
pub async fn pick(b: &Client, css: &str) -> Step<()> {
    b.find(Locator::Css(css)).await?.click().await
}

pub async fn text(b: &Client, css: &str) -> Step<String> {
    b.find(Locator::Css(css)).await?.text().await
}

/// Waits until the browser is on `path` (a page load after a form post or redirect).
pub async fn on(b: &Client, path: &str) -> Step<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.current_url().await?.path() != path {
        assert!(
            Instant::now() < deadline,
            "not on {path}: {}",
            b.current_url().await?
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
