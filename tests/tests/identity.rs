//! The identity model through the admin API: tenants and their first admin, callers,
//! users, teams, role precedence through the real policy, tokens, audit.

use gatehouse_tests::{TestServer, OPERATOR_TOKEN};
use reqwest::Method;
use serde_json::{json, Value};

const OP: Option<&str> = Some(OPERATOR_TOKEN);

async fn invite(server: &TestServer, tenant: &str, email: &str) -> String {
    let (status, body) = server
        .call(
            Method::POST,
            &format!("/api/v1/tenants/{tenant}/users"),
            OP,
            Some(&json!({ "email": email })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

async fn team(
    server: &TestServer,
    tenant: &str,
    name: &str,
    role: Value,
    members: &[&str],
) -> String {
    let body = json!({ "name": name, "role": role, "members": members });
    let (status, body) = server
        .call(
            Method::POST,
            &format!("/api/v1/tenants/{tenant}/teams"),
            OP,
            Some(&body),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

async fn user(server: &TestServer, tenant: &str, id: &str) -> Value {
    let (status, body) = server
        .call(
            Method::GET,
            &format!("/api/v1/tenants/{tenant}/users/{id}"),
            OP,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// (role, role_source) of a user.
async fn role(server: &TestServer, tenant: &str, id: &str) -> (String, String) {
    let body = user(server, tenant, id).await;
    (
        body["role"].as_str().unwrap().to_owned(),
        body["role_source"].as_str().unwrap().to_owned(),
    )
}

fn pair(role: &str, source: &str) -> (String, String) {
    (role.to_owned(), source.to_owned())
}

#[tokio::test]
async fn a_new_tenant_comes_with_its_first_admin_and_a_working_token() {
    let server = TestServer::start().await;
    let token = server
        .create_tenant_with_admin("acme", "Alice@Acme.io")
        .await;
    let (status, me) = server
        .call(
            Method::GET,
            "/api/v1/tenants/acme/users/me",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(
        (
            me["email"].as_str(),
            me["role"].as_str(),
            me["role_source"].as_str()
        ),
        (Some("Alice@Acme.io"), Some("admin"), Some("manual"))
    );
    let (status, teams) = server
        .call(
            Method::GET,
            "/api/v1/tenants/acme/teams",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{teams}");
    assert_eq!(teams["teams"][0]["name"], "everyone");
    assert_eq!(teams["teams"][0]["members"], json!([me["id"]]));
}

#[tokio::test]
async fn a_token_of_one_tenant_never_reaches_another() {
    let server = TestServer::start().await;
    let acme = server.create_tenant_with_admin("acme", "a@acme.io").await;
    let _ = server
        .create_tenant_with_admin("globex", "g@globex.io")
        .await;
    for path in [
        "/api/v1/tenants/globex/users",
        "/api/v1/tenants/globex/teams",
        "/api/v1/tenants/nosuch/users",
    ] {
        let (status, body) = server.call(Method::GET, path, Some(&acme), None).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    let (status, _) = server
        .call(
            Method::GET,
            "/api/v1/tenants/acme/users",
            Some("ghp_acme_forged"),
            None,
        )
        .await;
    assert_eq!(status, 401);
    let (status, _) = server
        .call(Method::GET, "/api/v1/tenants/acme/users", None, None)
        .await;
    assert_eq!(status, 401);
    let (status, _) = server
        .call(Method::GET, "/api/v1/tenants", Some(&acme), None)
        .await;
    assert_eq!(status, 401, "listing tenants is the operator's");
}

#[tokio::test]
async fn a_members_token_reads_itself_only() {
    let server = TestServer::start().await;
    server.create_tenant_with_admin("acme", "a@acme.io").await;
    let bob = invite(&server, "acme", "bob@acme.io").await;
    // Bob becomes active (as a first login would) so his token authenticates.
    let (status, _) = server
        .call(
            Method::POST,
            &format!("/api/v1/tenants/acme/users/{bob}/reactivate"),
            OP,
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, created) = server
        .call(
            Method::POST,
            &format!("/api/v1/tenants/acme/users/{bob}/tokens"),
            OP,
            Some(&json!({ "name": "laptop" })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let token = created["secret"].as_str().unwrap().to_owned();
    let (status, me) = server
        .call(
            Method::GET,
            &format!("/api/v1/tenants/acme/users/{bob}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!((status, me["email"].as_str()), (200, Some("bob@acme.io")));
    for (method, path) in [
        (Method::GET, "/api/v1/tenants/acme/users".to_owned()),
        (Method::GET, "/api/v1/tenants/acme/teams".to_owned()),
        (Method::GET, "/api/v1/tenants/acme/audit".to_owned()),
        (Method::POST, "/api/v1/tenants/acme/users".to_owned()),
    ] {
        let (status, body) = server
            .call(
                method,
                &path,
                Some(&token),
                Some(&json!({ "email": "x@acme.io" })),
            )
            .await;
        assert_eq!(status, 403, "{path}: {body}");
    }
}

#[tokio::test]
async fn deactivation_makes_the_users_tokens_fail_on_the_next_request() {
    let server = TestServer::start().await;
    server.create_tenant_with_admin("acme", "a@acme.io").await;
    let bob = invite(&server, "acme", "bob@acme.io").await;
    server
        .call(
            Method::POST,
            &format!("/api/v1/tenants/acme/users/{bob}/reactivate"),
            OP,
            None,
        )
        .await;
    let (_, created) = server
        .call(
            Method::POST,
            &format!("/api/v1/tenants/acme/users/{bob}/tokens"),
            OP,
            Some(&json!({ "name": "ci" })),
        )
        .await;
    let token = created["secret"].as_str().unwrap().to_owned();
    assert_eq!(
        server
            .call(
                Method::GET,
                "/api/v1/tenants/acme/users/me",
                Some(&token),
                None
            )
            .await
            .0,
        200
    );

    let (status, body) = server
        .call(
            Method::POST,
            &format!("/api/v1/tenants/acme/users/{bob}/deactivate"),
            OP,
            None,
        )
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("deactivated"))
    );
    assert_eq!(
        server
            .call(
                Method::GET,
                "/api/v1/tenants/acme/users/me",
                Some(&token),
                None
            )
            .await
            .0,
        401
    );
    let team_id = team(&server, "acme", "ml", Value::Null, &[&bob]).await;
    let (_, team_view) = server
        .call(
            Method::GET,
            &format!("/api/v1/tenants/acme/teams/{team_id}"),
            OP,
            None,
        )
        .await;
    assert_eq!(
        team_view["members"],
        json!([bob]),
        "a deactivated user keeps its memberships"
    );

    server
        .call(
            Method::POST,
            &format!("/api/v1/tenants/acme/users/{bob}/reactivate"),
            OP,
            None,
        )
        .await;
    assert_eq!(
        server
            .call(
                Method::GET,
                "/api/v1/tenants/acme/users/me",
                Some(&token),
                None
            )
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn invitations_check_emails_and_queue_the_password_link() {
    let server = TestServer::start().await;
    server.create_tenant_with_admin("acme", "a@acme.io").await;
    let id = invite(&server, "acme", "Carol@Acme.io").await;
    let carol = user(&server, "acme", &id).await;
    assert_eq!(
        (
            carol["status"].as_str(),
            carol["source"].as_str(),
            carol["role"].as_str()
        ),
        (Some("invited"), Some("invite"), Some("member"))
    );
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/tenants/acme/users",
            OP,
            Some(&json!({ "email": "carol@ACME.io" })),
        )
        .await;
    assert_eq!(status, 409, "emails are unique case-insensitively: {body}");
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/tenants/acme/users",
            OP,
            Some(&json!({ "email": "not an email" })),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("is invalid"),
        "{body}"
    );

    let (status, _) = server
        .call(
            Method::POST,
            "/api/v1/tenants/acme/users",
            OP,
            Some(&json!({ "email": "dan@acme.io", "send_password_email": true })),
        )
        .await;
    assert_eq!(status, 201);
    let (status, body) = server
        .call(Method::GET, "/api/v1/tenants/acme/outbox", OP, None)
        .await;
    assert_eq!(status, 200, "{body}");
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "{body}");
    assert_eq!(messages[0]["to"], "dan@acme.io");
    assert!(
        messages[0]["body"]
            .as_str()
            .unwrap()
            .contains("/v1/acme/password?token="),
        "{body}"
    );
}

#[tokio::test]
async fn user_lists_filter_and_page_stably() {
    let server = TestServer::start().await;
    server.create_tenant_with_admin("acme", "a@acme.io").await;
    for name in ["u1", "u2", "u3", "u4", "u5"] {
        invite(&server, "acme", &format!("{name}@acme.io")).await;
    }
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let path = format!("/api/v1/tenants/acme/users?limit=2{after}");
        let (status, page) = server.call(Method::GET, &path, OP, None).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u["email"].as_str().unwrap().to_owned()),
        );
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            "a@acme.io",
            "u1@acme.io",
            "u2@acme.io",
            "u3@acme.io",
            "u4@acme.io",
            "u5@acme.io"
        ]
    );
    let (_, page) = server
        .call(
            Method::GET,
            "/api/v1/tenants/acme/users?status=invited&q=U3",
            OP,
            None,
        )
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["items"][0]["email"], "u3@acme.io");
    for bad in ["limit=0", "limit=9999", "status=sleeping", "colour=red"] {
        let (status, body) = server
            .call(
                Method::GET,
                &format!("/api/v1/tenants/acme/users?{bad}"),
                OP,
                None,
            )
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
}

#[tokio::test]
async fn deleting_a_user_is_refused_while_it_is_in_a_team_and_names_the_team() {
    let server = TestServer::start().await;
    server.create_tenant_with_admin("acme", "a@acme.io").await;
    let bob = invite(&server, "acme", "bob@acme.io").await;
    let ml = team(&server, "acme", "ml", Value::Null, &[&bob]).await;
    team(&server, "acme", "data", Value::Null, &[&bob]).await;
    let (status, body) = server
        .call(
            Method::DELETE,
            &format!("/api/v1/tenants/acme/users/{bob}"),
            OP,
            None,
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("team ml") && detail.contains("team data") && !detail.contains("everyone"),
        "{detail}"
    );

    server
        .call(
            Method::PATCH,
            &format!("/api/v1/tenants/acme/teams/{ml}/members"),
            OP,
            Some(&json!({ "remove": [bob] })),
        )
        .await;
    // The audit entry records the change, not the whole member list.
    let (_, audit) = server
        .call(
            Method::GET,
            "/api/v1/tenants/acme/audit?limit=1000",
            OP,
            None,
        )
        .await;
    let last = audit["items"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (
            &last["action"],
            &last["target"],
            &last["before"],
            &last["after"]
        ),
        (
            &json!("team.members"),
            &json!(ml),
            &Value::Null,
            &json!({ "added": [], "removed": [bob], "members": 0 })
        ),
        "{last}"
    );
    let (status, body) = server
        .call(
            Method::DELETE,
            &format!("/api/v1/tenants/acme/users/{bob}"),
            OP,
            None,
        )
        .await;
    assert_eq!(status, 409, "still in data: {body}");
    let (_, teams) = server
        .call(Method::GET, "/api/v1/tenants/acme/teams", OP, None)
        .await;
    let data = teams["teams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "data")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    server
        .call(
            Method::PUT,
            &format!("/api/v1/tenants/acme/teams/{data}/members"),
            OP,
            Some(&json!({ "members": [] })),
        )
        .await;
    let (status, _) = server
        .call(
            Method::DELETE,
            &format!("/api/v1/tenants/acme/users/{bob}"),
            OP,
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = server
        .call(
            Method::GET,
            &format!("/api/v1/tenants/acme/users/{bob}"),
            OP,
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = server
        .call(
            Method::POST,
            "/api/v1/tenants/acme/users",
            OP,
            Some(&json!({ "email": "bob@acme.io" })),
        )
        .await;
    assert_eq!(status, 201, "the email is free again");
}

#[tokio::test]
async fn team_rules_are_enforced_with_clear_messages() {
    let server = TestServer::start().await;
    server.create_tenant_with_admin("acme", "a@acme.io").await;
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/tenants/acme/teams",
            OP,
            Some(&json!({ "name": "a b" })),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("1-36 of A-Z a-z 0-9 _ -"),
        "{body}"
    );
    let ml = team(&server, "acme", "ML", Value::Null, &[]).await;
    let (status, _) = server
        .call(
            Method::POST,
            "/api/v1/tenants/acme/teams",
            OP,
            Some(&json!({ "name": "ml" })),
        )
        .await;
    assert_eq!(status, 409, "names are unique case-insensitively");
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/tenants/acme/teams",
            OP,
            Some(&json!({ "name": "x", "members": ["usr_nope"] })),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        body["detail"].as_str().unwrap().contains("usr_nope"),
        "{body}"
    );
    team(&server, "acme", "data", Value::Null, &[]).await;
    let (status, _) = server
        .call(
            Method::PATCH,
            &format!("/api/v1/tenants/acme/teams/{ml}"),
            OP,
            Some(&json!({ "name": "DATA" })),
        )
        .await;
    assert_eq!(status, 409);
    let (status, body) = server
        .call(
            Method::PATCH,
            &format!("/api/v1/tenants/acme/teams/{ml}"),
            OP,
            Some(&json!({ "name": "ml-ops" })),
        )
        .await;
    assert_eq!((status, body["name"].as_str()), (200, Some("ml-ops")));
    let (status, _) = server
        .call(
            Method::POST,
            "/api/v1/tenants/acme/teams",
            OP,
            Some(&json!({ "name": "ML" })),
        )
        .await;
    assert_eq!(status, 201, "the old name is free after a rename");

    let (_, teams) = server
        .call(Method::GET, "/api/v1/tenants/acme/teams", OP, None)
        .await;
    let everyone = teams["teams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "everyone")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (method, path, body) in [
        (
            Method::DELETE,
            format!("/api/v1/tenants/acme/teams/{everyone}"),
            json!({}),
        ),
        (
            Method::PATCH,
            format!("/api/v1/tenants/acme/teams/{everyone}"),
            json!({ "name": "all" }),
        ),
        (
            Method::PUT,
            format!("/api/v1/tenants/acme/teams/{everyone}/members"),
            json!({ "members": [] }),
        ),
    ] {
        let (status, body) = server.call(method, &path, OP, Some(&body)).await;
        assert_eq!(status, 409, "{path}: {body}");
        assert!(
            body["detail"].as_str().unwrap().contains("everyone"),
            "{body}"
        );
    }
}

/// SPEC §5 through the real policy component.
#[tokio::test]
async fn role_precedence_follows_the_policy() {
    let server = TestServer::start().await;
    server.create_tenant_with_admin("acme", "a@acme.io").await;
    let t = "acme";
    let ann = invite(&server, t, "ann@acme.io").await;
    let ben = invite(&server, t, "ben@acme.io").await;
    assert_eq!(
        role(&server, t, &ann).await,
        pair("member", "initial"),
        "nothing applies: initial member"
    );

    // A team with the admin role makes its members admins (group).
    let admins = team(&server, t, "admins", json!("admin"), &[&ann, &ben]).await;
    assert_eq!(role(&server, t, &ann).await, pair("admin", "group"));
    // A manual member role beats the group's admin role.
    server
        .call(
            Method::PUT,
            &format!("/api/v1/tenants/{t}/users/{ben}/role"),
            OP,
            Some(&json!({ "role": "member" })),
        )
        .await;
    assert_eq!(role(&server, t, &ben).await, pair("member", "manual"));
    // The team loses its role: group admins become members; the manual role is untouched.
    server
        .call(
            Method::PATCH,
            &format!("/api/v1/tenants/{t}/teams/{admins}"),
            OP,
            Some(&json!({ "role": null })),
        )
        .await;
    assert_eq!(role(&server, t, &ann).await, pair("member", "initial"));
    assert_eq!(role(&server, t, &ben).await, pair("member", "manual"));
    // A manual admin stays admin when removed from every team.
    server
        .call(
            Method::PATCH,
            &format!("/api/v1/tenants/{t}/teams/{admins}"),
            OP,
            Some(&json!({ "role": "admin" })),
        )
        .await;
    server
        .call(
            Method::PUT,
            &format!("/api/v1/tenants/{t}/users/{ann}/role"),
            OP,
            Some(&json!({ "role": "admin" })),
        )
        .await;
    server
        .call(
            Method::PUT,
            &format!("/api/v1/tenants/{t}/teams/{admins}/members"),
            OP,
            Some(&json!({ "members": [] })),
        )
        .await;
    assert_eq!(role(&server, t, &ann).await, pair("admin", "manual"));
    // Clearing a manual role falls back to the derived one.
    server
        .call(
            Method::DELETE,
            &format!("/api/v1/tenants/{t}/users/{ann}/role"),
            OP,
            None,
        )
        .await;
    assert_eq!(role(&server, t, &ann).await, pair("member", "initial"));
    server
        .call(
            Method::PATCH,
            &format!("/api/v1/tenants/{t}/teams/{admins}/members"),
            OP,
            Some(&json!({ "add": [ben] })),
        )
        .await;
    server
        .call(
            Method::DELETE,
            &format!("/api/v1/tenants/{t}/users/{ben}/role"),
            OP,
            None,
        )
        .await;
    assert_eq!(
        role(&server, t, &ben).await,
        pair("admin", "group"),
        "cleared: back to the team's admin role"
    );
    // The highest team role wins; deleting the admin team recomputes.
    team(&server, t, "members", json!("member"), &[&ben]).await;
    assert_eq!(role(&server, t, &ben).await, pair("admin", "group"));
    server
        .call(
            Method::DELETE,
            &format!("/api/v1/tenants/{t}/teams/{admins}"),
            OP,
            None,
        )
        .await;
    assert_eq!(role(&server, t, &ben).await, pair("member", "group"));
}

#[tokio::test]
async fn tokens_are_shown_once_and_revocable() {
    let server = TestServer::start().await;
    let admin = server.create_tenant_with_admin("acme", "a@acme.io").await;
    let (_, me) = server
        .call(
            Method::GET,
            "/api/v1/tenants/acme/users/me",
            Some(&admin),
            None,
        )
        .await;
    let me = me["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/tenants/acme/users/{me}/tokens");
    let (status, created) = server
        .call(
            Method::POST,
            &path,
            Some(&admin),
            Some(&json!({ "name": "ci", "expires_in_days": 7 })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().unwrap().to_owned();
    let (_, list) = server.call(Method::GET, &path, Some(&admin), None).await;
    let listed = list.to_string();
    assert!(
        !listed.contains(&secret) && listed.contains("\"ci\""),
        "{listed}"
    );
    let (status, _) = server
        .call(
            Method::POST,
            &path,
            Some(&admin),
            Some(&json!({ "name": "x", "expires_in_days": 0 })),
        )
        .await;
    assert_eq!(status, 400);

    let id = created["id"].as_str().unwrap();
    assert_eq!(
        server
            .call(Method::DELETE, &format!("{path}/{id}"), Some(&admin), None)
            .await
            .0,
        204
    );
    assert_eq!(
        server
            .call(
                Method::GET,
                "/api/v1/tenants/acme/users/me",
                Some(&secret),
                None
            )
            .await
            .0,
        401
    );
    assert_eq!(
        server
            .call(
                Method::GET,
                "/api/v1/tenants/acme/users/me",
                Some(&admin),
                None
            )
            .await
            .0,
        200
    );
    let (status, body) = server.call(Method::DELETE, &path, OP, None).await;
    assert_eq!(
        (status, body["revoked"].as_u64()),
        (200, Some(1)),
        "revoke all: the bootstrap token"
    );
    assert_eq!(
        server
            .call(
                Method::GET,
                "/api/v1/tenants/acme/users/me",
                Some(&admin),
                None
            )
            .await
            .0,
        401
    );
}

#[tokio::test]
async fn every_change_is_audited_without_secrets() {
    let server = TestServer::start().await;
    let admin = server.create_tenant_with_admin("acme", "a@acme.io").await;
    let bob = invite(&server, "acme", "bob@acme.io").await;
    server
        .call(
            Method::POST,
            &format!("/api/v1/tenants/acme/users/{bob}/deactivate"),
            Some(&admin),
            None,
        )
        .await;
    let (status, page) = server
        .call(
            Method::GET,
            "/api/v1/tenants/acme/audit?limit=1000",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 200, "{page}");
    let entries = page["items"].as_array().unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "team.create",
            "user.create",
            "token.create",
            "user.invite",
            "user.deactivate"
        ]
    );
    let last = entries.last().unwrap();
    assert!(
        last["actor"].as_str().unwrap().starts_with("user:usr_"),
        "{last}"
    );
    assert_eq!(
        (
            last["before"]["status"].as_str(),
            last["after"]["status"].as_str()
        ),
        (Some("invited"), Some("deactivated"))
    );
    let text = page.to_string();
    assert!(
        !text.contains("sha256") && !text.contains(&admin),
        "no secret or hash in the audit log"
    );
    let (_, first) = server
        .call(Method::GET, "/api/v1/tenants/acme/audit?limit=2", OP, None)
        .await;
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    let (_, rest) = server
        .call(
            Method::GET,
            &format!(
                "/api/v1/tenants/acme/audit?after={}",
                first["next"].as_str().unwrap()
            ),
            OP,
            None,
        )
        .await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn switching_the_provisioning_mode_removes_no_one() {
    let server = TestServer::start().await;
    let admin = server.create_tenant_with_admin("acme", "a@acme.io").await;
    invite(&server, "acme", "bob@acme.io").await;
    let (status, body) = server
        .call(
            Method::PUT,
            "/api/v1/tenants/acme/provisioning",
            Some(&admin),
            Some(&json!({ "mode": "scim" })),
        )
        .await;
    assert_eq!(
        (status, body["mode"].as_str()),
        (200, Some("scim")),
        "{body}"
    );
    let (status, body) = server
        .call(
            Method::PUT,
            "/api/v1/tenants/acme/provisioning",
            Some(&admin),
            Some(&json!({ "mode": "jit" })),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("SSO configuration"),
        "{body}"
    );
    let (status, _) = server
        .call(
            Method::PUT,
            "/api/v1/tenants/acme/provisioning",
            Some(&admin),
            Some(&json!({ "mode": "open" })),
        )
        .await;
    assert_eq!(status, 400);
    server
        .call(
            Method::PUT,
            "/api/v1/tenants/acme/provisioning",
            Some(&admin),
            Some(&json!({ "mode": "invite_only" })),
        )
        .await;
    let (_, users) = server
        .call(
            Method::GET,
            "/api/v1/tenants/acme/users",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(users["items"].as_array().unwrap().len(), 2);
    assert!(users["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|u| u["status"] != "deactivated"));
}
