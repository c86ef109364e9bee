//! Passwords and the login page: the whole set-password / login / reset flow with the links
//! read from mails a real SMTP server on loopback received; one-time and replaced links;
//! the same answer for an unknown email and a wrong password; the policy deciding
//! activation and refusing deactivated users; attempt limits per user and per address
//! (429 with Retry-After); the login page's escaping; and the login page driven in
//! headless Chromium (Debian's `chromium` + `chromium-driver`) through WebDriver, logging in
//! with a password and then through an IdP button at a certified OpenID provider.

mod browser_common;
mod mail_common;

use browser_common::*;
use fantoccini::Locator;
use gatehouse_tests::openid::OpenIdProvider;
use gatehouse_tests::TestServer;
use mail_common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const PASSWORD: &str = "correct horse battery";
const NEW_PASSWORD: &str = "tr0ub4dor and then some";

/// The mail's link as a URL on the test server (the mail names the public URL).
fn local(server: &TestServer, link: &str) -> String {
    format!(
        "{}{}",
        server.base,
        link.strip_prefix(PUBLIC_URL)
            .expect("a link on the public URL")
    )
}

async fn set_password(server: &TestServer, token: &str, password: &str) -> (u16, Value) {
    let response = server
        .client
        .post(format!("{}/v1/acme/password", server.base))
        .json(&json!({ "token": token, "password": password, "confirm": password }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn login(server: &TestServer, email: &str, password: &str) -> (u16, Value) {
    let response = server
        .client
        .post(format!("{}/v1/acme/password-login", server.base))
        .header("accept", "application/json")
        .json(&json!({ "email": email, "password": password }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn reset(server: &TestServer, user: &str) {
    let (status, body) = server
        .call(
            Method::POST,
            &format!("/api/v1/tenants/acme/users/{user}/reset-password"),
            OP,
            None,
        )
        .await;
    assert!((200..300).contains(&status), "{status} {body}");
}

/// The token of the newest link in acme's outbox (no SMTP: the operator reads it there).
async fn outbox_token(server: &TestServer) -> String {
    let messages = outbox(server).await;
    let body = messages.last().unwrap()["body"].as_str().unwrap();
    body.split("token=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("a link in the message")
        .to_owned()
}

async fn next_token(sink: &Sink) -> String {
    let mail = sink
        .next(Duration::from_secs(10))
        .await
        .expect("the mail arrives");
    token_of(&mail.link())
}

#[tokio::test]
async fn set_password_log_in_reset_and_log_in_again_through_mailed_links() {
    let sink = Sink::start();
    let server = TestServer::start_with(|c| smtp_config(c, sink.url(), 100, 5)).await;
    server
        .create_tenant_with_admin("acme", "admin@acme.io")
        .await;
    let dan = invite_with_email(&server, "dan@acme.io").await;
    let mail = sink
        .next(Duration::from_secs(10))
        .await
        .expect("the set-password mail arrives");
    assert_eq!(mail.envelope_to, vec!["dan@acme.io".to_owned()]);
    let link = mail.link();
    let token = token_of(&link);

    // Invited without a password yet: the same answer as a wrong password.
    let (status, unknown) = login(&server, "nobody@acme.io", PASSWORD).await;
    assert_eq!(status, 401, "{unknown}");
    assert_eq!(unknown["reason"], "invalid_credentials");
    let (status, no_password) = login(&server, "dan@acme.io", PASSWORD).await;
    assert_eq!((status, &no_password), (401, &unknown));

    // The mailed link opens the form.
    let page = server
        .client
        .get(local(&server, &link))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()["referrer-policy"], "no-referrer");
    assert_eq!(page.headers()["cache-control"], "no-store");
    let html = page.text().await.unwrap();
    assert!(html.contains("dan@acme.io"), "{html}");
    assert!(html.contains("name=\"confirm\""), "{html}");
    assert!(html.contains(&format!("value=\"{token}\"")), "{html}");

    // Bad entries are refused with a reason and leave the link usable.
    let (status, body) = set_password(&server, &token, "short").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("at least 12 characters"),
        "{body}"
    );
    let response = server
        .client
        .post(format!("{}/v1/acme/password", server.base))
        .json(&json!({ "token": token, "password": PASSWORD, "confirm": "something else!!" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    // A form sent from another site is refused (login CSRF), whatever it carries.
    let response = server
        .client
        .post(format!("{}/v1/acme/password", server.base))
        .header("sec-fetch-site", "cross-site")
        .json(&json!({ "token": token, "password": PASSWORD, "confirm": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);

    // Set: once.
    let (status, body) = set_password(&server, &token, PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], dan);
    let (status, used) = set_password(&server, &token, NEW_PASSWORD).await;
    assert_eq!(status, 410, "{used}");
    assert_eq!(used["reason"], "invalid_link");
    let (status, unknown_link) = set_password(&server, &"x".repeat(43), NEW_PASSWORD).await;
    assert_eq!(
        (status, &unknown_link),
        (410, &used),
        "used and unknown answer the same"
    );
    let page = server
        .client
        .get(local(&server, &link))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::GONE);

    // Still invited until the first login, which the policy turns into an activation.
    let (_, user) = server
        .call(
            Method::GET,
            &format!("/api/v1/tenants/acme/users/{dan}"),
            OP,
            None,
        )
        .await;
    assert_eq!(user["status"], "invited");
    assert!(
        user.get("password_hash").is_none(),
        "the hash is never answered: {user}"
    );
    let (status, wrong) = login(&server, "dan@acme.io", NEW_PASSWORD).await;
    assert_eq!(
        (status, &wrong),
        (401, &unknown),
        "wrong password = unknown email"
    );
    let (status, first) = login(&server, "DAN@acme.io", PASSWORD).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["outcome"], "activated");
    assert_eq!(first["user"]["status"], "active");
    let session = first["session_token"].as_str().unwrap().to_owned();
    assert!(session.starts_with("ghs_"), "{session}");
    let (status, me) = server
        .call(
            Method::GET,
            "/api/v1/tenants/acme/users/me",
            Some(&session),
            None,
        )
        .await;
    assert_eq!(
        (status, me["id"].as_str()),
        (200, Some(dan.as_str())),
        "{me}"
    );
    let response = server
        .client
        .post(format!("{}/v1/acme/password-login", server.base))
        .header("sec-fetch-site", "cross-site")
        .json(&json!({ "email": "dan@acme.io", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403, "a login posted from another site");
    let (status, again) = login(&server, "dan@acme.io", PASSWORD).await;
    assert_eq!(
        (status, again["outcome"].as_str()),
        (200, Some("allowed")),
        "{again}"
    );

    // Reset twice: the first reset's link is replaced by the second's.
    reset(&server, &dan).await;
    let old_reset = next_token(&sink).await;
    reset(&server, &dan).await;
    let new_reset = next_token(&sink).await;
    let (status, body) = set_password(&server, &old_reset, NEW_PASSWORD).await;
    assert_eq!(
        (status, &body),
        (410, &used),
        "the replaced link is refused like any"
    );
    let (status, body) = set_password(&server, &new_reset, NEW_PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = login(&server, "dan@acme.io", PASSWORD).await;
    assert_eq!(status, 401, "the old password no longer works: {body}");
    let (status, body) = login(&server, "dan@acme.io", NEW_PASSWORD).await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (200, Some("allowed")),
        "{body}"
    );

    // Deactivated: refused by the policy, with its reason, right password or not.
    let (status, body) = server
        .call(
            Method::POST,
            &format!("/api/v1/tenants/acme/users/{dan}/deactivate"),
            OP,
            None,
        )
        .await;
    assert!((200..300).contains(&status), "{status} {body}");
    let (status, body) = login(&server, "dan@acme.io", NEW_PASSWORD).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (403, Some("deactivated")),
        "{body}"
    );
    let (status, body) = server
        .call(
            Method::PUT,
            "/api/v1/tenants/acme/provisioning",
            OP,
            Some(&json!({ "mode": "scim" })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = login(&server, "dan@acme.io", NEW_PASSWORD).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (403, Some("deactivated")),
        "in scim mode too: {body}"
    );
    let (_, user) = server
        .call(
            Method::GET,
            &format!("/api/v1/tenants/acme/users/{dan}"),
            OP,
            None,
        )
        .await;
    assert_eq!(user["status"], "deactivated", "a login never reactivates");

    // Every login and password change is in the audit log, never a hash.
    let (status, audit) = server
        .call(
            Method::GET,
            "/api/v1/tenants/acme/audit?limit=200",
            OP,
            None,
        )
        .await;
    assert_eq!(status, 200, "{audit}");
    let text = audit.to_string();
    for action in [
        "user.password_set",
        "user.password_reset",
        "login.password",
        "user.activate",
    ] {
        assert!(text.contains(action), "{action} in {text}");
    }
    assert!(!text.contains("$argon2"), "no hash in the audit log");
    server.stop().await;
}

#[tokio::test]
async fn failed_attempts_are_limited_per_user_and_per_address() {
    let server = TestServer::start_with(|c| {
        c.password.attempts_per_user = 3;
        c.password.attempts_per_address = 5;
    })
    .await;
    server
        .create_tenant_with_admin("acme", "admin@acme.io")
        .await;
    invite_with_email(&server, "dan@acme.io").await;
    // No SMTP: the operator reads the link from the outbox (a path without public_url).
    let token = outbox_token(&server).await;
    assert_eq!(set_password(&server, &token, PASSWORD).await.0, 200);

    for _ in 0..3 {
        assert_eq!(
            login(&server, "dan@acme.io", "wrong password!").await.0,
            401
        );
    }
    // dan's bucket is empty: even the right password waits.
    let response = server
        .client
        .post(format!("{}/v1/acme/password-login", server.base))
        .json(&json!({ "email": "dan@acme.io", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=900).contains(&retry), "{retry}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["reason"], "rate_limited");

    // Other emails from this address: two more failures fill the address's 5 ...
    for _ in 0..2 {
        assert_eq!(
            login(&server, "eve@acme.io", "guess number one").await.0,
            401
        );
    }
    // ... and then a fresh email from the same address is limited too.
    let (status, body) = login(&server, "mallory@acme.io", "guess number two").await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (429, Some("rate_limited")),
        "{body}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_successful_login_does_not_use_up_attempts() {
    let server = TestServer::start_with(|c| {
        c.password.attempts_per_user = 2;
        c.password.attempts_per_address = 2;
    })
    .await;
    server
        .create_tenant_with_admin("acme", "admin@acme.io")
        .await;
    invite_with_email(&server, "dan@acme.io").await;
    let token = outbox_token(&server).await;
    assert_eq!(set_password(&server, &token, PASSWORD).await.0, 200);
    for _ in 0..5 {
        assert_eq!(login(&server, "dan@acme.io", PASSWORD).await.0, 200);
    }
    server.stop().await;
}

#[tokio::test]
async fn the_login_page_escapes_what_it_shows_and_knows_its_tenants() {
    let server = TestServer::start().await;
    server
        .create_tenant_with_admin("acme", "admin@acme.io")
        .await;
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/tenants/acme/sso",
            OP,
            Some(&json!({
                "id": "corp", "issuer": "https://login.example.test", "client_id": "gatehouse",
                "jwks_uri": "https://login.example.test/jwks",
            })),
        )
        .await;
    assert!(status == 200 || status == 201, "{status} {body}");

    let hostile = "/app\"><script>alert(1)</script>";
    let response = server
        .client
        .get(format!(
            "{}/v1/acme/login?return_to={}",
            server.base,
            url_encode(hostile)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let html = response.text().await.unwrap();
    assert!(!html.contains("<script"), "nothing is injected: {html}");
    assert!(html.contains("&quot;&gt;&lt;script&gt;"), "{html}");
    assert!(html.contains(">Login with corp</a>"), "{html}");
    assert!(
        html.contains("href=\"/v1/acme/sso/corp/login?return_to=%2Fapp%22%3E%3Cscript%3Ealert%281%29%3C%2Fscript%3E\""),
        "{html}"
    );
    assert!(
        html.contains("action=\"/v1/acme/password-login\""),
        "{html}"
    );

    // Not a path on this site: refused.
    let response = server
        .client
        .get(format!(
            "{}/v1/acme/login?return_to=https://evil.example",
            server.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    // An unknown tenant: 404, like everywhere.
    let response = server
        .client
        .get(format!("{}/v1/nope/login", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    // A link page of an unknown tenant reads like any unusable link.
    let response = server
        .client
        .get(format!("{}/v1/nope/password?token=abc", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 410);
    server.stop().await;
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

// ------------------------------------------------------------------ headless Chromium

#[tokio::test]
async fn the_login_page_in_headless_chromium_shows_the_idp_buttons_and_logs_in() {
    let server = TestServer::start_with(|config| config.allow_private_urls = true).await;
    server
        .create_tenant_with_admin("acme", "admin@acme.io")
        .await;
    // `corp` is a certified OpenID provider on loopback; `partners` is only listed.
    let idp = OpenIdProvider::start(&[json!({
        "client_id": "gatehouse", "client_secret": "corp-secret",
        "redirect_uris": [format!("{}/v1/acme/sso/corp/callback", server.base)],
    })])
    .await;
    for config in [
        json!({
            "id": "corp", "issuer": idp.issuer, "client_id": "gatehouse",
            "client_secret": "corp-secret", "discovery_url": idp.discovery_url(),
        }),
        json!({
            "id": "partners", "issuer": "https://partners.example.test", "client_id": "gatehouse",
            "jwks_uri": "https://partners.example.test/jwks",
        }),
    ] {
        let (status, body) = server
            .call(Method::POST, "/api/v1/tenants/acme/sso", OP, Some(&config))
            .await;
        assert!(status == 200 || status == 201, "{status} {body}");
    }
    let dan = invite_with_email(&server, "dan@acme.io").await;
    let token = outbox_token(&server).await;

    let driver = chromedriver();
    let profile = tempfile::tempdir().unwrap();
    let browser = chromium(&driver, profile.path()).await;

    let result = async {
        // The person sets a password on the mailed link's page.
        browser
            .goto(&format!("{}/v1/acme/password?token={token}", server.base))
            .await?;
        fill(&browser, "#password", PASSWORD).await?;
        fill(&browser, "#confirm", PASSWORD).await?;
        click(&browser, "button[type=submit]").await?;
        assert_eq!(text(&browser, "h1").await?, "Your password is set");

        // The login page shows one button per SSO configuration, passing return_to on.
        browser
            .goto(&format!("{}/v1/acme/login?return_to=/healthz", server.base))
            .await?;
        let mut buttons = Vec::new();
        for button in browser.find_all(Locator::Css("a.sso")).await? {
            buttons.push((
                button.text().await?,
                button.attr("href").await?.unwrap_or_default(),
            ));
        }
        assert_eq!(
            buttons,
            vec![
                (
                    "Login with corp".to_owned(),
                    "/v1/acme/sso/corp/login?return_to=%2Fhealthz".to_owned()
                ),
                (
                    "Login with partners".to_owned(),
                    "/v1/acme/sso/partners/login?return_to=%2Fhealthz".to_owned()
                ),
            ]
        );

        // A wrong password shows the page again with the reason.
        fill(&browser, "#email", "dan@acme.io").await?;
        fill(&browser, "#password", "not the password").await?;
        click(&browser, "form button[type=submit]").await?;
        let error = text(&browser, "p.error").await?;
        assert!(error.contains("not right"), "{error}");

        // The right one lands on return_to with the session cookie set.
        fill(&browser, "#email", "dan@acme.io").await?;
        fill(&browser, "#password", PASSWORD).await?;
        click(&browser, "form button[type=submit]").await?;
        on(&browser, "/healthz").await?;
        let by_password = browser.get_named_cookie("gatehouse_session").await?;

        // "Login with corp": the provider's sign-in page, then back on return_to with a new
        // session from the SSO login.
        browser
            .goto(&format!("{}/v1/acme/login?return_to=/healthz", server.base))
            .await?;
        click(&browser, "a.sso[href^='/v1/acme/sso/corp/']").await?;
        for (field, value) in [
            ("sub", "dan-at-corp"),
            ("email", "dan@acme.io"),
            ("name", "Dan"),
        ] {
            fill(&browser, &format!("input[name={field}]"), value).await?;
        }
        assert!(browser
            .current_url()
            .await?
            .as_str()
            .starts_with(&idp.issuer));
        browser
            .find(Locator::Css("form button"))
            .await?
            .click()
            .await?;
        // Back through the callback's redirect to return_to, on Gatehouse's origin.
        let deadline = Instant::now() + Duration::from_secs(10);
        while browser.current_url().await?.path() != "/healthz"
            || !browser
                .current_url()
                .await?
                .as_str()
                .starts_with(&server.base)
        {
            assert!(Instant::now() < deadline, "did not come back to return_to");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let by_sso = browser.get_named_cookie("gatehouse_session").await?;
        Ok::<_, fantoccini::error::CmdError>((
            by_password.value().to_owned(),
            by_sso.value().to_owned(),
        ))
    }
    .await;
    let _ = browser.close().await;
    let (session, sso_session) = result.expect("the browser steps");
    assert!(session.starts_with("ghs_"), "{session}");
    assert!(sso_session.starts_with("ghs_"), "{sso_session}");
    assert_ne!(session, sso_session, "the SSO login made its own session");
    let (status, me) = server
        .call(
            Method::GET,
            "/api/v1/tenants/acme/users/me",
            Some(&sso_session),
            None,
        )
        .await;
    assert_eq!(
        (status, me["id"].as_str()),
        (200, Some(dan.as_str())),
        "{me}"
    );

    // The cookie's value is a session of dan, now active.
    let (status, me) = server
        .call(
            Method::GET,
            "/api/v1/tenants/acme/users/me",
            Some(&session),
            None,
        )
        .await;
    assert_eq!(
        (status, me["id"].as_str()),
        (200, Some(dan.as_str())),
        "{me}"
    );
    assert_eq!(me["status"], "active");
    server.stop().await;
}
