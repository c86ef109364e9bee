//! Screenshots of the console's main pages: starts a server in this process, seeds a tenant,
//! signs in through the login page in headless Chromium and saves a PNG per page.
//!
//! `tests/console-screenshots.sh [DIR]` (default `target/console-screenshots`); needs
//! Debian's `chromium` and `chromium-driver`, like the browser tests.

use fantoccini::{ClientBuilder, Locator};
use gatehouse_tests::{TestServer, OPERATOR_TOKEN};
use reqwest::Method;
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PASSWORD: &str = "correct horse battery";
const OP: Option<&str> = Some(OPERATOR_TOKEN);

async fn call(server: &TestServer, method: Method, path: &str, body: Option<Value>) -> Value {
    let (status, body) = server.call(method, path, OP, body.as_ref()).await;
    assert!((200..300).contains(&status), "{path}: {status} {body}");
    body
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "target/console-screenshots".into()),
    );
    std::fs::create_dir_all(&dir)?;
    let server = TestServer::start_with(|c| c.allow_private_urls = true).await;
    let token = server
        .create_tenant_with_admin("acme", "admin@acme.io")
        .await;
    let (_, me) = server
        .call(
            Method::GET,
            "/api/v1/tenants/acme/users/me",
            Some(&token),
            None,
        )
        .await;
    let admin = me["id"].as_str().unwrap().to_owned();
    call(
        &server,
        Method::POST,
        &format!("/api/v1/tenants/acme/users/{admin}/reset-password"),
        None,
    )
    .await;
    let outbox = call(&server, Method::GET, "/api/v1/tenants/acme/outbox", None).await;
    let body = outbox["messages"].as_array().unwrap().last().unwrap()["body"]
        .as_str()
        .unwrap()
        .to_owned();
    let link = body
        .split("token=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap();
    server
        .client
        .post(format!("{}/v1/acme/password", server.base))
        .json(&json!({ "token": link, "password": PASSWORD, "confirm": PASSWORD }))
        .send()
        .await?;
    let mut ids = Vec::new();
    for (email, name) in [
        ("dan@acme.io", "Dan Brown"),
        ("eve@acme.io", "Eve Stone"),
        ("fay@acme.io", "Fay Lin"),
    ] {
        let user = call(
            &server,
            Method::POST,
            "/api/v1/tenants/acme/users",
            Some(json!({ "email": email, "display_name": name })),
        )
        .await;
        ids.push(user["id"].as_str().unwrap().to_owned());
    }
    call(
        &server,
        Method::POST,
        "/api/v1/tenants/acme/teams",
        Some(json!({ "name": "platform", "role": "admin", "members": [ids[0]] })),
    )
    .await;
    call(
        &server,
        Method::POST,
        "/api/v1/tenants/acme/sso",
        Some(json!({
        "id": "okta", "issuer": "https://acme.okta.example", "client_id": "gatehouse",
        "jwks_uri": "https://acme.okta.example/keys" })),
    )
    .await;
    call(
        &server,
        Method::POST,
        "/api/v1/tenants/acme/identity-providers",
        Some(json!({
        "name": "ci", "issuer": "https://ci.example", "jwks_uri": "https://ci.example/jwks",
        "audiences": ["api"], "user_claim": "email", "team_claim": "groups" })),
    )
    .await;
    server
        .upload(
            "acme",
            gatehouse_tests::fixtures::NESTED_CLAIMS,
            json!({}),
            true,
        )
        .await;

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut driver = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let profile = tempfile::tempdir()?;
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                     "--window-size=1100,1100", format!("--user-data-dir={}", profile.path().display())],
        }),
    );
    let browser = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await?;
    let base = server.base.clone();
    let result: anyhow::Result<()> = async {
        browser.goto(&format!("{base}/console/acme/users")).await?;
        browser
            .find(Locator::Id("email"))
            .await?
            .send_keys("admin@acme.io")
            .await?;
        browser
            .find(Locator::Id("password"))
            .await?
            .send_keys(PASSWORD)
            .await?;
        browser
            .find(Locator::Css("form button[type=submit]"))
            .await?
            .click()
            .await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while browser.current_url().await?.path() != "/console/acme/users" {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the login did not land on the console"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let pages = [
            ("users", "/console/acme/users".to_owned()),
            ("user", format!("/console/acme/users/{}", ids[0])),
            ("provisioning", "/console/acme/provisioning".to_owned()),
            ("sso", "/console/acme/sso".to_owned()),
            ("identity-providers", "/console/acme/idps".to_owned()),
            ("policies", "/console/acme/policies".to_owned()),
            ("migration", "/console/acme/migration".to_owned()),
            ("teams", "/console/acme/teams".to_owned()),
            (
                "virtual-accounts",
                "/console/acme/virtual-accounts".to_owned(),
            ),
            ("resources", "/console/acme/resources".to_owned()),
            ("audit", "/console/acme/audit".to_owned()),
        ];
        for (name, path) in &pages {
            browser.goto(&format!("{base}{path}")).await?;
            let png = browser.screenshot().await?;
            let file = dir.join(format!("{name}.png"));
            std::fs::write(&file, png)?;
            println!("{}", file.display());
        }
        browser.set_window_size(360, 800).await?;
        browser.goto(&format!("{base}/console/acme/users")).await?;
        std::fs::write(dir.join("users-360px.png"), browser.screenshot().await?)?;
        println!("{}", dir.join("users-360px.png").display());
        browser.goto(&format!("{base}/console")).await?;
        Ok(())
    }
    .await;
    let _ = browser.close().await;
    let _ = driver.kill();
    let _ = driver.wait();
    server.stop().await;
    result
}
