//! The admin console at `/console`, driven in headless Chromium (Debian's `chromium` +
//! `chromium-driver`) through WebDriver against a real server: each journey asserts what
//! the page shows and what the admin API answers afterwards. Plus the refusals: a
//! cross-site form post, a member opening an admin page, an admin of one tenant opening
//! another tenant's pages.

mod browser_common;
mod mail_common;

use browser_common::*;
use fantoccini::{Client, Locator};
use gatehouse_tests::TestServer;
use mail_common::*;
use reqwest::Method;
use serde_json::{json, Value};

const PASSWORD: &str = "correct horse battery";

/// The token of the newest link in acme's outbox.
async fn outbox_token(server: &TestServer) -> String {
    let messages = outbox(server).await;
    let body = messages.last().unwrap()["body"].as_str().unwrap();
    body.split("token=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("a link in the message")
        .to_owned()
}

/// Gives user `id` of acme the password [`PASSWORD`] through a reset link.
async fn give_password(server: &TestServer, id: &str) {
    let (status, body) = server
        .call(
            Method::POST,
            &format!("/api/v1/tenants/acme/users/{id}/reset-password"),
            OP,
            None,
        )
        .await;
    assert!((200..300).contains(&status), "{status} {body}");
    let token = outbox_token(server).await;
    let response = server
        .client
        .post(format!("{}/v1/acme/password", server.base))
        .json(&json!({ "token": token, "password": PASSWORD, "confirm": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// A session token for `email` of acme (the login's JSON answer).
async fn session(server: &TestServer, email: &str) -> String {
    let response = server
        .client
        .post(format!("{}/v1/acme/password-login", server.base))
        .header("accept", "application/json")
        .json(&json!({ "email": email, "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["session_token"].as_str().unwrap().to_owned()
}

/// acme with its admin (password set) and the admin's user id.
async fn acme(server: &TestServer) -> String {
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
    let id = me["id"].as_str().unwrap().to_owned();
    give_password(server, &id).await;
    id
}

async fn get(server: &TestServer, path: &str) -> Value {
    let (status, body) = server.call(Method::GET, path, OP, None).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

#[tokio::test]
async fn an_admin_walks_the_console_journeys_in_headless_chromium() {
    let server = TestServer::start_with(|config| {
        config.allow_private_urls = true;
        config.policy.timeout_ms = 2_000;
    })
    .await;
    acme(&server).await;
    let driver = chromedriver();
    let profile = tempfile::tempdir().unwrap();
    let browser = chromium(&driver, profile.path()).await;
    let base = server.base.clone();
    let result: Step<()> = async {
        // Sign in: the console sends a signed-out browser to the tenant's login page,
        // which brings it back.
        browser.goto(&format!("{base}/console/acme/users")).await?;
        on(&browser, "/v1/acme/login").await?;
        fill(&browser, "#email", "admin@acme.io").await?;
        fill(&browser, "#password", PASSWORD).await?;
        click(&browser, "form button[type=submit]").await?;
        on(&browser, "/console/acme/users").await?;
        assert_eq!(text(&browser, "h1").await?, "Users");

        // Invite a user.
        fill(&browser, "#invite-email", "dan@acme.io").await?;
        fill(&browser, "#invite-name", "Dan").await?;
        click(&browser, "form[aria-labelledby=invite-heading] button").await?;
        let h1 = text(&browser, "h1").await?;
        assert_eq!(h1, "dan@acme.io", "{}", browser.source().await?);
        assert!(text(&browser, ".notice").await?.contains("invited"));
        let url = browser.current_url().await?;
        let dan = url.path().rsplit('/').next().unwrap().to_owned();
        let user = get(&server, &format!("/api/v1/tenants/acme/users/{dan}")).await;
        assert_eq!(user["status"], "invited");
        assert_eq!(user["display_name"], "Dan");

        // An invalid email is refused next to the field, nothing created.
        browser.goto(&format!("{base}/console/acme/users")).await?;
        fill(&browser, "#invite-email", "dan@acme.io").await?;
        click(&browser, "form[aria-labelledby=invite-heading] button").await?;
        let why = text(&browser, "#invite-email-error").await?;
        assert!(why.contains("exists") || why.contains("already"), "{why}");

        // Deactivate.
        browser
            .goto(&format!("{base}/console/acme/users/{dan}"))
            .await?;
        click(&browser, "#do-deactivate").await?;
        assert_eq!(text(&browser, "#user-status").await?, "deactivated");
        let user = get(&server, &format!("/api/v1/tenants/acme/users/{dan}")).await;
        assert_eq!(user["status"], "deactivated");

        // Delete is refused while Dan is in a team, naming the team.
        let (status, team) = server
            .call(
                Method::POST,
                "/api/v1/tenants/acme/teams",
                OP,
                Some(&json!({ "name": "eng", "members": [dan] })),
            )
            .await;
        assert_eq!(status, 201, "{team}");
        browser.refresh().await?;
        click(&browser, "#do-delete").await?;
        let why = text(&browser, "#delete-error").await?;
        assert!(why.contains("team eng"), "{why}");
        get(&server, &format!("/api/v1/tenants/acme/users/{dan}")).await;

        // Remove from the team, then delete.
        assert!(text(&browser, "#user-teams").await?.contains("eng"));
        click(&browser, "#user-teams form button").await?;
        assert!(!text(&browser, "#user-teams").await?.contains("eng"));
        let team = get(
            &server,
            &format!("/api/v1/tenants/acme/teams/{}", team["id"].as_str().unwrap()),
        )
        .await;
        assert!(!team["members"].as_array().unwrap().contains(&json!(dan)));
        click(&browser, "#do-delete").await?;
        on(&browser, "/console/acme/users").await?;
        assert!(text(&browser, ".notice").await?.contains("deleted"));
        let (status, _) = server
            .call(
                Method::GET,
                &format!("/api/v1/tenants/acme/users/{dan}"),
                OP,
                None,
            )
            .await;
        assert_eq!(status, 404);

        // SSO: add a configuration, generate its SCIM token, see it once.
        browser.goto(&format!("{base}/console/acme/sso")).await?;
        fill(&browser, "#sso-id", "corp").await?;
        fill(&browser, "#sso-issuer", "https://corp.example.test").await?;
        fill(&browser, "#sso-client_id", "gatehouse").await?;
        fill(&browser, "#sso-jwks_uri", "https://corp.example.test/jwks").await?;
        click(&browser, "form[aria-labelledby=add-sso] button").await?;
        on(&browser, "/console/acme/sso").await?;
        let configs = get(&server, "/api/v1/tenants/acme/sso").await;
        assert_eq!(configs["sso"].as_array().unwrap().len(), 1, "{configs}");
        click(&browser, "#scim-token-corp").await?;
        let scim_token = text(&browser, "#scim-token").await?;
        let scim_url = text(&browser, "#scim-url").await?;
        assert!(scim_url.ends_with("/scim/v2/acme/corp"), "{scim_url}");
        let response = server
            .client
            .get(format!("{base}/scim/v2/acme/corp/Users"))
            .bearer_auth(&scim_token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "the shown token works");
        browser.goto(&format!("{base}/console/acme/sso")).await?;
        assert!(!browser.source().await?.contains(&scim_token), "shown once");
        let configs = get(&server, "/api/v1/tenants/acme/sso").await;
        assert_eq!(configs["sso"][0]["scim_token_set"], true);

        // Provisioning: switch to SCIM through the confirmation.
        browser
            .goto(&format!("{base}/console/acme/provisioning"))
            .await?;
        assert_eq!(text(&browser, "#current-mode").await?, "Invite-only");
        pick(&browser, "input[name=mode][value=scim]").await?;
        click(&browser, "#review-switch").await?;
        assert!(text(&browser, "#what-changes").await?.contains("SCIM connections may"));
        assert_eq!(
            get(&server, "/api/v1/tenants/acme").await["mode"],
            "invite_only",
            "nothing changes before the confirmation"
        );
        click(&browser, "#confirm-switch").await?;
        on(&browser, "/console/acme/provisioning").await?;
        assert_eq!(text(&browser, "#current-mode").await?, "SCIM");
        assert_eq!(get(&server, "/api/v1/tenants/acme").await["mode"], "scim");

        // Identity providers: a refusal next to its field, then a valid one, then test a
        // token.
        browser.goto(&format!("{base}/console/acme/idps")).await?;
        fill(&browser, "#idp-name", "corp-api").await?;
        fill(&browser, "#idp-issuer", "https://idp.example.test").await?;
        fill(&browser, "#idp-jwks_uri", "https://idp.example.test/jwks").await?;
        fill(&browser, "#idp-discovery_url", "https://idp.example.test/.well-known/openid-configuration").await?;
        fill(&browser, "#idp-audiences", "api").await?;
        fill(&browser, "#idp-user_claim", "email").await?;
        click(&browser, "form[aria-labelledby=add-idp] button").await?;
        let why = text(&browser, "#idp-jwks_uri-error").await?;
        assert!(why.contains("exactly one"), "{why}");
        let idps = get(&server, "/api/v1/tenants/acme/identity-providers").await;
        assert_eq!(idps["identity_providers"].as_array().unwrap().len(), 0, "{idps}");
        browser.find(Locator::Css("#idp-discovery_url")).await?.clear().await?;
        click(&browser, "form[aria-labelledby=add-idp] button").await?;
        on(&browser, "/console/acme/idps").await?;
        let idps = get(&server, "/api/v1/tenants/acme/identity-providers").await;
        assert_eq!(idps["identity_providers"][0]["name"], "corp-api", "{idps}");
        let claims = json!({ "iss": "https://idp.example.test", "aud": "api", "sub": "s-1", "email": "admin@acme.io" });
        fill(&browser, "#test-input", &claims.to_string()).await?;
        click(&browser, "form[aria-labelledby=test-token] button").await?;
        let shown = text(&browser, "#explain-result").await?;
        let (status, explained) = server
            .call(
                Method::POST,
                "/api/v1/tenants/acme/policy/explain",
                OP,
                Some(&json!({ "claims": claims })),
            )
            .await;
        assert_eq!(status, 200, "{explained}");
        // The page shows the same decision the API explains.
        let identity: Value = serde_json::from_str(
            shown.strip_prefix("resolves to ").expect("the claims resolve"),
        )
        .unwrap();
        assert_eq!(identity, explained["identity"]);
        assert_eq!(identity["email"], "admin@acme.io");
        Ok(())
    }
    .await;
    let _ = browser.close().await;
    result.expect("the browser steps");
    server.stop().await;
}

// ------------------------------------------------------------------ refusals

/// A client that keeps redirects as answers.
fn plain() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The form token on a console page.
fn csrf_of(page: &str) -> String {
    page.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a form token on the page")
        .to_owned()
}

#[tokio::test]
async fn cross_site_posts_members_and_other_tenants_are_refused() {
    let server = TestServer::start_with(|config| config.policy.timeout_ms = 2_000).await;
    acme(&server).await;
    server
        .create_tenant_with_admin("globex", "boss@globex.io")
        .await;
    let admin = session(&server, "admin@acme.io").await;
    let cookie = format!("gatehouse_session={admin}");
    let client = plain();
    let base = &server.base;

    // Signed out: on to the tenant's login page, coming back here.
    let response = client
        .get(format!("{base}/console/acme/users"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(
        response.headers()["location"],
        "/v1/acme/login?return_to=%2Fconsole%2Facme%2Fusers"
    );

    // The page: a CSP without script, and a form token.
    let response = client
        .get(format!("{base}/console/acme/users"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let page = response.text().await.unwrap();
    assert!(!page.contains("<script"), "no script");
    let csrf = csrf_of(&page);

    let invite = |extra: &[(&str, &str)], email: &str| {
        let mut form = vec![("email", email.to_owned())];
        form.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        client
            .post(format!("{base}/console/acme/users"))
            .header("cookie", &cookie)
            .form(&form)
    };
    // Another site's form (its Origin, or the browser's Sec-Fetch-Site), and a post
    // without the page's token: refused, nothing created.
    for (request, why) in [
        (
            invite(&[("csrf", &csrf)], "x1@acme.io").header("origin", "https://evil.example"),
            "origin",
        ),
        (
            invite(&[("csrf", &csrf)], "x2@acme.io").header("sec-fetch-site", "cross-site"),
            "sec-fetch-site",
        ),
        (invite(&[], "x3@acme.io"), "no token"),
        (invite(&[("csrf", "0000")], "x4@acme.io"), "wrong token"),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 403, "{why}");
    }
    let users = get(&server, "/api/v1/tenants/acme/users").await;
    assert_eq!(users["items"].as_array().unwrap().len(), 1, "{users}");
    // The same form from this site works.
    let response = invite(&[("csrf", &csrf)], "ok@acme.io")
        .header("origin", base.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    let users = get(&server, "/api/v1/tenants/acme/users").await;
    assert_eq!(users["items"].as_array().unwrap().len(), 2, "{users}");

    // Teams: created through the console, listed by the API.
    let response = client
        .post(format!("{base}/console/acme/teams"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str()), ("name", "ops"), ("role", "member")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    let teams = get(&server, "/api/v1/tenants/acme/teams").await;
    assert!(teams.to_string().contains("\"ops\""), "{teams}");
    let ops = teams["teams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "ops")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let response = client
        .post(format!("{base}/console/acme/teams/{ops}/add-member"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str()), ("email", "OK@acme.io")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    let team = get(&server, &format!("/api/v1/tenants/acme/teams/{ops}")).await;
    assert_eq!(team["members"].as_array().unwrap().len(), 1, "{team}");
    // A mapping to an identity provider the tenant does not have: refused next to the team.
    let response = client
        .post(format!("{base}/console/acme/teams/{ops}/mappings"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str()), ("mappings", "nope:ops-group")])
        .send()
        .await
        .unwrap();
    assert!(response.status().is_client_error(), "{}", response.status());
    assert!(response
        .text()
        .await
        .unwrap()
        .contains(&format!("team-{ops}-error")));
    let team = get(&server, &format!("/api/v1/tenants/acme/teams/{ops}")).await;
    assert_eq!(team["mappings"], json!([]), "{team}");
    let response = client
        .post(format!("{base}/console/acme/teams"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str()), ("name", "a b")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("team-name-error"));

    // The audit log, filtered by action prefix; a bad time is refused in words.
    let page = client
        .get(format!("{base}/console/acme/audit?action=user.*"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("user.invite") && !page.contains("team.create"),
        "{page}"
    );
    let response = client
        .get(format!("{base}/console/acme/audit?since=yesterday"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("RFC 3339"));
    // The outbox is the operator's.
    let response = client
        .get(format!("{base}/console/acme/outbox"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);

    // A virtual account: created, a token shown once, rotated with a grace period.
    let response = client
        .post(format!("{base}/console/acme/virtual-accounts"))
        .header("cookie", &cookie)
        .form(&[
            ("csrf", csrf.as_str()),
            ("name", "ci-bot"),
            ("role", "member"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    let va_page = response.headers()["location"].to_str().unwrap().to_owned();
    let vas = get(&server, "/api/v1/tenants/acme/virtual-accounts").await;
    let va = vas["virtual_accounts"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(va_page, format!("/console/acme/virtual-accounts/{va}"));
    let new_token = |form: Vec<(&'static str, String)>| {
        let mut form = form;
        form.push(("csrf", csrf.clone()));
        client
            .post(format!("{base}{va_page}/tokens"))
            .header("cookie", &cookie)
            .form(&form)
            .send()
    };
    let response = new_token(vec![("name", "one".into()), ("days", "30".into())])
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let shown = response.text().await.unwrap();
    let secret = shown
        .split("id=\"va-secret\">")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .unwrap()
        .to_owned();
    assert!(secret.starts_with("gva_acme_"), "{secret}");
    let tokens = get(
        &server,
        &format!("/api/v1/tenants/acme/virtual-accounts/{va}/tokens"),
    )
    .await;
    let first = tokens["tokens"][0]["id"].as_str().unwrap().to_owned();
    let response = new_token(vec![
        ("name", "two".into()),
        ("replaces", first.clone()),
        ("grace_seconds", "60".into()),
    ])
    .await
    .unwrap();
    assert_eq!(response.status(), 201);
    let tokens = get(
        &server,
        &format!("/api/v1/tenants/acme/virtual-accounts/{va}/tokens"),
    )
    .await;
    let tokens = tokens["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 2, "{tokens:?}");
    let old = tokens.iter().find(|t| t["id"] == first.as_str()).unwrap();
    let ends = time::OffsetDateTime::parse(
        old["revoked_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let left = ends - time::OffsetDateTime::now_utc();
    assert!(
        left > time::Duration::seconds(30) && left <= time::Duration::seconds(61),
        "the old token works for the grace period: {left}"
    );
    let again = client
        .get(format!("{base}{va_page}"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!again.contains(&secret), "shown once");

    // A resource.
    let response = client
        .post(format!("{base}/console/acme/resources"))
        .header("cookie", &cookie)
        .form(&[
            ("csrf", csrf.as_str()),
            ("kind", "model"),
            ("name", "gpt-x"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    let resources = get(&server, "/api/v1/tenants/acme/resources").await;
    assert_eq!(resources["resources"][0]["name"], "gpt-x", "{resources}");
    let resource = resources["resources"][0]["id"].as_str().unwrap().to_owned();
    let collaborators = |lines: String| {
        client
            .post(format!(
                "{base}/console/acme/resources/{resource}/collaborators"
            ))
            .header("cookie", &cookie)
            .form(&[("csrf", csrf.clone()), ("collaborators", lines)])
            .send()
    };
    let response = collaborators(format!("team:{ops}:editor\nvirtual_account:{va}:viewer"))
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    let resources = get(&server, "/api/v1/tenants/acme/resources").await;
    assert_eq!(
        resources["resources"][0]["collaborators"],
        json!([
            { "subject": { "team": ops }, "role": "editor" },
            { "subject": { "virtual_account": va }, "role": "viewer" },
        ])
    );
    let response = collaborators("user:usr_nobody:editor".into())
        .await
        .unwrap();
    assert!(response.status().is_client_error(), "{}", response.status());
    assert!(response
        .text()
        .await
        .unwrap()
        .contains(&format!("collab-{resource}-error")));

    // An admin of acme opening globex: no such tenant for this session.
    for path in [
        "/console/globex/users",
        "/console/globex/provisioning",
        "/console/globex",
    ] {
        let response = client
            .get(format!("{base}{path}"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path}");
        assert!(!response.text().await.unwrap().contains("boss@globex.io"));
    }

    // A member: their own profile, and no admin page.
    let (_, member) = server
        .call(
            Method::POST,
            "/api/v1/tenants/acme/users",
            OP,
            Some(&json!({ "email": "mo@acme.io" })),
        )
        .await;
    give_password(&server, member["id"].as_str().unwrap()).await;
    let member_cookie = format!("gatehouse_session={}", session(&server, "mo@acme.io").await);
    for path in [
        "/console/acme/users",
        "/console/acme/teams",
        "/console/acme/audit",
        "/console/acme/provisioning",
        "/console/acme/sso",
        "/console/acme/idps",
    ] {
        let response = client
            .get(format!("{base}{path}"))
            .header("cookie", &member_cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{path}");
        assert!(!response.text().await.unwrap().contains("admin@acme.io"));
    }
    let response = client
        .get(format!("{base}/console/acme"))
        .header("cookie", &member_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let page = response.text().await.unwrap();
    assert!(page.contains("My profile") && page.contains("mo@acme.io"));
    // The member's post to an admin form, with their own valid token, is refused too.
    let response = client
        .post(format!("{base}/console/acme/users"))
        .header("cookie", &member_cookie)
        .form(&[
            ("csrf", csrf_of(&page).as_str()),
            ("email", "sneak@acme.io"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    // Their own token: created, the secret shown once on that answer.
    let response = client
        .post(format!("{base}/console/acme/tokens"))
        .header("cookie", &member_cookie)
        .form(&[
            ("csrf", csrf_of(&page).as_str()),
            ("name", "laptop"),
            ("days", "30"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let shown = response.text().await.unwrap();
    let secret = shown
        .split("id=\"new-secret\">")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .unwrap()
        .to_owned();
    let (status, me) = server
        .call(
            Method::GET,
            "/api/v1/tenants/acme/users/me",
            Some(&secret),
            None,
        )
        .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["email"], "mo@acme.io");
    let again = client
        .get(format!("{base}/console/acme"))
        .header("cookie", &member_cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(again.contains("laptop") && !again.contains(&secret));

    // The operator: a separate form; the cookie is opaque, never the token.
    let response = client
        .post(format!("{base}/console/operator"))
        .form(&[("token", "wrong")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = client
        .post(format!("{base}/console/operator"))
        .form(&[("token", gatehouse_tests::OPERATOR_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    let set = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        set.contains("SameSite=Strict") && set.contains("HttpOnly"),
        "{set}"
    );
    assert!(!set.contains(gatehouse_tests::OPERATOR_TOKEN));
    let op_cookie = set.split(';').next().unwrap().to_owned();
    let tenants = client
        .get(format!("{base}/console"))
        .header("cookie", &op_cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(tenants.contains("acme") && tenants.contains("globex"));
    let outbox_page = client
        .get(format!("{base}/console/acme/outbox"))
        .header("cookie", &op_cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(outbox_page.contains("admin@acme.io"), "{outbox_page}");
    assert!(!outbox_page.contains("token="), "no link is shown");
    let response = client
        .get(format!("{base}/console/globex/users"))
        .header("cookie", &op_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("boss@globex.io"));
    server.stop().await;
}

/// Signs `browser` in to acme's console as its admin, landing on `path`.
async fn sign_in(browser: &Client, base: &str, path: &str) -> Step<()> {
    browser.goto(&format!("{base}{path}")).await?;
    on(browser, "/v1/acme/login").await?;
    fill(browser, "#email", "admin@acme.io").await?;
    fill(browser, "#password", PASSWORD).await?;
    click(browser, "form button[type=submit]").await?;
    on(browser, path).await
}

#[tokio::test]
async fn an_admin_uploads_activates_and_rolls_back_a_policy_and_migrates_in_headless_chromium() {
    let server = TestServer::start_with(|config| {
        config.allow_private_urls = true;
        // A debug build beside a browser on a busy machine: room for the policy's calls.
        config.policy.timeout_ms = 2_000;
    })
    .await;
    acme(&server).await;
    let files = tempfile::tempdir().unwrap();
    let component = files.path().join("nested-claims.wasm");
    std::fs::write(&component, gatehouse_tests::fixtures::NESTED_CLAIMS).unwrap();
    let export_text = std::fs::read_to_string(
        gatehouse_tests::fixtures::root().join("tests/fixtures/migration/role-mapping.json"),
    )
    .unwrap()
    .replace("JWKS_URI", "https://jwks.example.test/keys");
    let export_file = files.path().join("export.json");
    std::fs::write(&export_file, &export_text).unwrap();
    let export: Value = serde_json::from_str(&export_text).unwrap();

    let driver = chromedriver();
    let profile = tempfile::tempdir().unwrap();
    let browser = chromium(&driver, profile.path()).await;
    let base = server.base.clone();
    let result: Step<()> = async {
        sign_in(&browser, &base, "/console/acme/policies").await?;
        assert_eq!(
            text(&browser, "#active-version").await?,
            "the built-in default"
        );

        // Upload and activate.
        browser
            .find(Locator::Css("#upload-component"))
            .await?
            .send_keys(&component.display().to_string())
            .await?;
        pick(&browser, "input[name=activate]").await?;
        click(&browser, "#upload-button").await?;
        on(&browser, "/console/acme/policies").await?;
        assert_eq!(text(&browser, "#active-version").await?, "v1");
        let policy = get(&server, "/api/v1/tenants/acme/policy").await;
        assert_eq!(policy["active"], 1, "{policy}");

        // Roll back to the built-in default, then activate v1 again.
        click(&browser, "#rollback").await?;
        assert_eq!(
            text(&browser, "#active-version").await?,
            "the built-in default"
        );
        let policy = get(&server, "/api/v1/tenants/acme/policy").await;
        assert_eq!(policy["active"], Value::Null, "{policy}");
        click(&browser, "#activate-1").await?;
        assert_eq!(text(&browser, "#active-version").await?, "v1");
        let policy = get(&server, "/api/v1/tenants/acme/policy").await;
        assert_eq!(policy["active"], 1, "{policy}");

        // Migration: upload the export, read the plan, apply it.
        browser
            .goto(&format!("{base}/console/acme/migration"))
            .await?;
        browser
            .find(Locator::Css("#export"))
            .await?
            .send_keys(&export_file.display().to_string())
            .await?;
        click(&browser, "#plan-button").await?;
        let (status, plan) = server
            .call(
                Method::POST,
                "/api/v1/tenants/acme/migration/plan",
                OP,
                Some(&export),
            )
            .await;
        assert_eq!(status, 200, "{plan}");
        assert_eq!(
            text(&browser, "#plan-changes").await?,
            plan["changes"].to_string()
        );
        let steps = text(&browser, "#human-steps").await?;
        for step in plan["human_steps"].as_array().unwrap() {
            assert!(
                steps.contains(step.as_str().unwrap()),
                "{steps} lacks {step}"
            );
        }
        let page = browser.source().await?;
        assert!(page.contains("alice@acme.io"), "the plan names the users");
        let users = get(&server, "/api/v1/tenants/acme/users").await;
        assert_eq!(
            users["items"].as_array().unwrap().len(),
            1,
            "the plan changed nothing"
        );
        click(&browser, "#apply-button").await?;
        assert_eq!(
            text(&browser, "#applied-changes").await?,
            format!("{} change(s) carried out.", plan["changes"])
        );
        let users = get(&server, "/api/v1/tenants/acme/users?q=alice").await;
        assert_eq!(users["items"][0]["email"], "alice@acme.io", "{users}");
        assert_eq!(
            get(&server, "/api/v1/tenants/acme").await["mode"],
            plan["provisioning_mode"]["to"]
        );
        Ok(())
    }
    .await;
    let _ = browser.close().await;
    result.expect("the browser steps");
    server.stop().await;
}
