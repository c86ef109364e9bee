//! The SCIM protocol around the replays: authentication, discovery, errors, limits,
//! versions, projections, sorting and paging, connection scope, and concurrent membership
//! changes to one group.

mod scim_common;

use reqwest::Method;
use scim_common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;

fn user(email: &str) -> Value {
    json!({ "schemas": [USER], "userName": email, "externalId": format!("x-{email}"), "active": true })
}

#[tokio::test]
async fn tokens_are_checked_and_never_reveal_a_tenant() {
    let scim = Scim::start().await;
    let unauthorized = error(
        401,
        None,
        "a valid SCIM bearer token for this endpoint is required",
    );
    // Another tenant with its own connection.
    scim.server
        .create_tenant_with_admin("globex", "g@globex.io")
        .await;
    let globex_token = connect(&scim.server, "globex", "idp").await;
    for (token, path) in [
        (None, "/scim/v2/acme/idp/Users"),
        (Some("gscim_not-a-token"), "/scim/v2/acme/idp/Users"),
        (Some(globex_token.as_str()), "/scim/v2/acme/idp/Users"),
        (Some(scim.token.as_str()), "/scim/v2/nope/idp/Users"),
        (Some(scim.token.as_str()), "/scim/v2/acme/other/Users"),
        (Some(scim.token.as_str()), "/scim/v2/globex/idp/Users"),
    ] {
        let mut request = scim
            .server
            .client
            .get(format!("{}{path}", scim.server.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{path}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        assert_eq!(response.headers()["content-type"], "application/scim+json");
        assert_eq!(
            response.json::<Value>().await.unwrap(),
            unauthorized,
            "{path}"
        );
    }
    // Rotating the token invalidates the old one at once.
    let (status, body) = scim
        .server
        .call(
            Method::POST,
            "/api/v1/tenants/acme/sso/idp/scim-token",
            Some(&scim.admin),
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let new = body["token"].as_str().unwrap();
    let (status, body) = scim.call(Method::GET, "/Users", None).await;
    assert_eq!((status, body), (401, unauthorized));
    let (status, _, _) = scim.send_as(Some(new), Method::GET, "/Users", None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn discovery_tells_the_truth() {
    let scim = Scim::start().await;
    let (status, body) = scim.call(Method::GET, "/ServiceProviderConfig", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            &body["patch"],
            &body["bulk"]["supported"],
            &body["filter"],
            &body["sort"],
            &body["etag"],
            &body["changePassword"]
        ),
        (
            &json!({ "supported": true }),
            &json!(false),
            &json!({ "supported": true, "maxResults": 1000 }),
            &json!({ "supported": true }),
            &json!({ "supported": true }),
            &json!({ "supported": false })
        )
    );
    // Only RFC 7643 keys at the top level: the request limit is a response header.
    let custom: Vec<&String> = body
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with("urn:"))
        .collect();
    assert!(custom.is_empty(), "non-standard keys {custom:?} in {body}");
    let (status, body) = scim.call(Method::GET, "/ResourceTypes", None).await;
    assert_eq!((status, body["totalResults"].clone()), (200, json!(2)));
    let (status, body) = scim.call(Method::GET, "/ResourceTypes/Group", None).await;
    assert_eq!(
        (status, body["endpoint"].clone(), body["schema"].clone()),
        (200, json!("/Groups"), json!(GROUP))
    );
    assert_eq!(body["schemaExtensions"], json!([]), "{body}");
    let (status, body) = scim.call(Method::GET, "/Schemas", None).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = body["Resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [USER, ENTERPRISE, GROUP]);
    let (status, body) = scim
        .call(Method::GET, &format!("/Schemas/{USER}"), None)
        .await;
    assert_eq!(status, 200);
    let names: Vec<&str> = body["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "userName",
            "name",
            "displayName",
            "title",
            "emails",
            "active"
        ]
    );
    let (status, body) = scim.call(Method::GET, "/Schemas/urn:nope", None).await;
    assert_eq!(
        (status, body),
        (404, error(404, None, "Schemas/urn:nope not found"))
    );
}

#[tokio::test]
async fn errors_are_scim_errors() {
    let scim = Scim::start_with(|c| c.scim.max_body_kib = 1).await;
    let (status, body) = scim.call(Method::GET, "/Widgets", None).await;
    assert_eq!((status, body), (404, error(404, None, "path /Widgets: use Users, Groups, ServiceProviderConfig, ResourceTypes or Schemas not found")));
    let (status, body) = scim.call(Method::GET, "/Me", None).await;
    assert_eq!(
        (status, body),
        (501, error(501, None, "/Me is not implemented"))
    );
    let (status, body) = scim.call(Method::POST, "/Bulk", Some(json!({}))).await;
    assert_eq!(
        (status, body),
        (501, error(501, None, "/Bulk is not implemented"))
    );
    let (status, body) = scim
        .call(
            Method::POST,
            "/Users",
            Some(json!({ "userName": "x".repeat(2000) })),
        )
        .await;
    assert_eq!(
        (status, body),
        (
            413,
            error(413, None, "the request body is larger than 1024 bytes")
        )
    );
    let (status, body) = scim
        .call(Method::GET, "/Users?filter=userName+eq", None)
        .await;
    assert_eq!(
        (status, body),
        (
            400,
            error(
                400,
                Some("invalidFilter"),
                "filter expected a value after userName eq but found the end of the filter"
            )
        )
    );
    let (status, body) = scim
        .call(Method::GET, "/Users?filter=userName+xx+%22a%22", None)
        .await;
    assert_eq!(
        (status, body),
        (
            400,
            error(
                400,
                Some("invalidFilter"),
                "filter \"xx\" is not an operator: use eq, ne, co, sw, ew, gt, ge, lt, le or pr"
            )
        )
    );
    let (status, body) = scim
        .call(Method::GET, "/Users?filter=active+gt+true", None)
        .await;
    assert_eq!(status, 200, "no users yet: nothing to compare {body}");
    let (status, body) = scim
        .call(
            Method::POST,
            "/Users",
            Some(json!({ "userName": "no-email", "emails": [{ "value": "not an address" }] })),
        )
        .await;
    // (No email at all is accepted: see a_user_without_an_email_is_matched_by_user_name.)
    assert_eq!(
        (status, body),
        (
            400,
            error(
                400,
                Some("invalidValue"),
                "email \"not an address\" is invalid: use an address like name@example.com"
            )
        )
    );
    let (status, body) = scim
        .call(Method::POST, "/Users", Some(json!({ "emails": [] })))
        .await;
    assert_eq!(
        (status, body),
        (
            400,
            error(400, Some("invalidValue"), "userName is required")
        )
    );
    let (status, body) = scim.call(Method::DELETE, "/Users", None).await;
    assert_eq!(
        (status, body),
        (
            405,
            error(405, None, "method not allowed here: use GET, HEAD, POST")
        )
    );
    // RFC 9110 §15.5.6: a 405 names what the resource allows.
    for (method, path, allowed) in [
        (Method::DELETE, "/Users", "GET, HEAD, POST"),
        (Method::PUT, "/Groups", "GET, HEAD, POST"),
        (
            Method::POST,
            "/Users/usr_x",
            "GET, HEAD, PUT, PATCH, DELETE",
        ),
        (Method::POST, "/ServiceProviderConfig", "GET, HEAD"),
    ] {
        let (status, headers, _) = scim.send(method.clone(), path, None).await;
        assert_eq!(status, 405, "{method} {path}");
        assert_eq!(headers["allow"], allowed, "{method} {path}");
    }
    let (status, created) = scim
        .call(Method::POST, "/Users", Some(user("ann@acme.io")))
        .await;
    assert_eq!(status, 201);
    let id = created["id"].as_str().unwrap();
    // HEAD answers as GET would, without the body (RFC 9110 §9.3.2).
    let (_, got, _) = scim.send(Method::GET, &format!("/Users/{id}"), None).await;
    let (status, headers, body) = scim.send(Method::HEAD, &format!("/Users/{id}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(headers["etag"], got["etag"]);
    assert!(body.is_null(), "{body}");
    let (status, _, body) = scim
        .send(Method::HEAD, "/ServiceProviderConfig", None)
        .await;
    assert_eq!((status, body), (200, Value::Null));
    let (status, _, _) = scim.send(Method::HEAD, "/Users/usr_nobody", None).await;
    assert_eq!(status, 404);
    let (status, body) = scim
        .call(Method::GET, "/Users?filter=active+gt+true", None)
        .await;
    assert_eq!(
        (status, body),
        (
            400,
            error(
                400,
                Some("invalidFilter"),
                "filter operator gt does not apply to booleans: use eq or ne"
            )
        )
    );
    let (status, body) = scim
        .call(
            Method::PATCH,
            &format!("/Users/{id}"),
            Some(json!({ "Operations": [{ "op": "remove" }] })),
        )
        .await;
    assert_eq!(
        (status, body),
        (
            400,
            error(400, Some("noTarget"), "operation 1 (remove) needs a path")
        )
    );
    let (status, body) = scim
        .call(
            Method::PATCH,
            &format!("/Users/{id}"),
            Some(
                json!({ "Operations": [{ "op": "add", "path": "emails[type eq", "value": "x" }] }),
            ),
        )
        .await;
    assert_eq!((status, body), (400, error(400, Some("invalidPath"), "operation 1: path \"emails[type eq\" expected a value after type eq but found the end of the filter")));
}

#[tokio::test]
async fn the_rate_limit_answers_429_with_retry_after() {
    let scim = Scim::start_with(|c| {
        c.scim.rate_per_second = 1;
        c.scim.burst = 3;
    })
    .await;
    for _ in 0..3 {
        let (status, _) = scim.call(Method::GET, "/Users", None).await;
        assert_eq!(status, 200);
    }
    let (status, headers, body) = scim.send(Method::GET, "/Users", None).await;
    assert_eq!(
        (status, body),
        (
            429,
            error(
                429,
                None,
                "too many requests for this SCIM connection: retry after 1 s"
            )
        )
    );
    assert_eq!(headers["retry-after"], "1");
}

#[tokio::test]
async fn versions_projections_sorting_and_paging() {
    let scim = Scim::start().await;
    let (_, headers, created) = scim.send(Method::POST, "/Users", Some(json!({ "userName": "b@acme.io", "name": { "givenName": "B", "familyName": "Z" }, "title": "t" }))).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let etag = headers["etag"].to_str().unwrap().to_owned();
    // If-None-Match: 304; If-Match on a stale version: 412.
    let response = scim
        .server
        .client
        .get(format!("{}{}/Users/{id}", scim.server.base, scim.base))
        .bearer_auth(&scim.token)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 304);
    let response = scim
        .server
        .client
        .patch(format!("{}{}/Users/{id}", scim.server.base, scim.base))
        .bearer_auth(&scim.token)
        .header("if-match", &etag)
        .body(patch(json!([{ "op": "replace", "path": "title", "value": "u" }])).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = scim
        .server
        .client
        .patch(format!("{}{}/Users/{id}", scim.server.base, scim.base))
        .bearer_auth(&scim.token)
        .header("if-match", &etag)
        .body(patch(json!([{ "op": "replace", "path": "title", "value": "v" }])).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 412);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "412");
    let response = scim
        .server
        .client
        .delete(format!("{}{}/Users/{id}", scim.server.base, scim.base))
        .bearer_auth(&scim.token)
        .header("if-match", "W/\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 412);

    // attributes / excludedAttributes on reads and writes.
    let (status, body) = scim
        .call(
            Method::GET,
            &format!("/Users/{id}?attributes=userName,name.givenName"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        without_meta(&body, &scim.base),
        json!({ "schemas": [USER], "id": id, "userName": "b@acme.io", "name": { "givenName": "B" } })
    );
    let (status, body) = scim
        .call(
            Method::PATCH,
            &format!("/Users/{id}?excludedAttributes=name,title,active"),
            Some(patch(
                json!([{ "op": "replace", "path": "title", "value": "w" }]),
            )),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        without_meta(&body, &scim.base),
        json!({ "schemas": [USER], "id": id, "userName": "b@acme.io" })
    );

    for email in ["c@acme.io", "a@acme.io", "d@acme.io"] {
        let (status, _) = scim.call(Method::POST, "/Users", Some(user(email))).await;
        assert_eq!(status, 201);
    }
    let (status, body) = scim
        .call(
            Method::GET,
            "/Users?sortBy=userName&sortOrder=descending&startIndex=2&count=2&attributes=userName",
            None,
        )
        .await;
    assert_eq!(status, 200);
    let names: Vec<&str> = body["Resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["userName"].as_str().unwrap())
        .collect();
    assert_eq!(
        (
            body["totalResults"].clone(),
            body["startIndex"].clone(),
            body["itemsPerPage"].clone(),
            names
        ),
        (json!(4), json!(2), json!(2), vec!["c@acme.io", "b@acme.io"])
    );
    let (status, body) = scim.call(Method::GET, "/Users?count=0", None).await;
    assert_eq!(
        (
            status,
            body["totalResults"].clone(),
            body["Resources"].clone()
        ),
        (200, json!(4), json!([]))
    );
    // POST .search takes the same parameters in a body.
    let (status, body) = scim
        .call(Method::POST, "/Users/.search", Some(json!({ "schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"], "filter": "userName sw \"a\" or userName sw \"d\"", "sortBy": "userName", "attributes": ["userName"] })))
        .await;
    assert_eq!(status, 200, "{body}");
    let names: Vec<&str> = body["Resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["userName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a@acme.io", "d@acme.io"]);
}

#[tokio::test]
async fn a_connection_sees_only_what_it_provisioned() {
    let scim = Scim::start().await;
    let other_token = connect(&scim.server, "acme", "other").await;
    // An invited user and the admin exist; neither is listed.
    let (status, invited) = scim
        .admin(
            Method::POST,
            "/users",
            Some(&json!({ "email": "inv@acme.io" })),
        )
        .await;
    assert_eq!(status, 201, "{invited}");
    let (status, body) = scim.call(Method::GET, "/Users", None).await;
    assert_eq!((status, body), (200, empty_list()));
    let (status, body) = scim
        .call(
            Method::GET,
            &format!("/Users/{}", invited["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, 404, "{body}");
    // Creating the invited email adopts that user (same id), audited.
    let (status, adopted) = scim
        .call(Method::POST, "/Users", Some(user("inv@acme.io")))
        .await;
    assert_eq!(status, 201, "{adopted}");
    assert_eq!(adopted["id"], invited["id"]);
    let (_, record) = scim
        .admin(
            Method::GET,
            &format!("/users/{}", invited["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(
        (record["status"].as_str(), record["source"].as_str()),
        (Some("active"), Some("invite"))
    );
    let (_, audit) = scim.admin(Method::GET, "/audit?limit=1000", None).await;
    assert!(audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "scim.user.adopt" && e["target"] == invited["id"]));
    // The admin's own user (created with the tenant) cannot be taken over.
    let (status, body) = scim
        .call(Method::POST, "/Users", Some(user("admin@acme.io")))
        .await;
    assert_eq!(
        (status, body),
        (409, error(409, Some("uniqueness"), "a user with email admin@acme.io already exists and is a tenant admin; SCIM does not take over tenant admins"))
    );
    // Another connection neither sees nor changes it, nor can it adopt it.
    let (status, _, body) = scim
        .send_at(
            "/scim/v2/acme/other",
            Some(&other_token),
            Method::GET,
            "/Users",
            None,
        )
        .await;
    assert_eq!((status, body["totalResults"].clone()), (200, json!(0)));
    let path = format!("/Users/{}", adopted["id"].as_str().unwrap());
    let (status, _, _) = scim
        .send_at(
            "/scim/v2/acme/other",
            Some(&other_token),
            Method::PATCH,
            &path,
            Some(patch(
                json!([{ "op": "replace", "value": { "active": false } }]),
            )),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _, body) = scim
        .send_at(
            "/scim/v2/acme/other",
            Some(&other_token),
            Method::POST,
            "/Users",
            Some(user("inv@acme.io")),
        )
        .await;
    assert_eq!(
        (status, body["scimType"].clone()),
        (409, json!("uniqueness"))
    );
}

#[tokio::test]
async fn eight_clients_changing_one_group_lose_no_member() {
    let scim = Scim::start().await;
    let mut ids = Vec::new();
    for i in 0..160 {
        let (status, body) = scim
            .call(Method::POST, "/Users", Some(user(&format!("m{i}@acme.io"))))
            .await;
        assert_eq!(status, 201);
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    let (status, group) = scim
        .call(
            Method::POST,
            "/Groups",
            Some(json!({ "displayName": "Busy" })),
        )
        .await;
    assert_eq!(status, 201);
    let gid = group["id"].as_str().unwrap().to_owned();
    let scim = std::sync::Arc::new(scim);
    // Client k owns ids[k*20 .. k*20+20]: adds each in turn, then removes the odd ones.
    let mut tasks = Vec::new();
    for k in 0..8 {
        let scim = scim.clone();
        let mine: Vec<String> = ids[k * 20..k * 20 + 20].to_vec();
        let gid = gid.clone();
        tasks.push(tokio::spawn(async move {
            for id in &mine {
                let (status, body) = scim
                    .call(Method::PATCH, &format!("/Groups/{gid}?excludedAttributes=members"), Some(patch(json!([{ "op": "add", "path": "members", "value": [{ "value": id }] }]))))
                    .await;
                assert_eq!(status, 200, "{body}");
            }
            for id in mine.iter().skip(1).step_by(2) {
                let (status, body) = scim
                    .call(Method::PATCH, &format!("/Groups/{gid}?excludedAttributes=members"), Some(patch(json!([{ "op": "remove", "path": format!("members[value eq \"{id}\"]") }]))))
                    .await;
                assert_eq!(status, 200, "{body}");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let expected: BTreeSet<String> = (0..8)
        .flat_map(|k| {
            ids[k * 20..k * 20 + 20]
                .iter()
                .step_by(2)
                .cloned()
                .collect::<Vec<_>>()
        })
        .collect();
    let (status, body) = scim
        .call(Method::GET, &format!("/Groups/{gid}"), None)
        .await;
    assert_eq!(status, 200);
    let members: BTreeSet<String> = body["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["value"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(members, expected);
}

#[tokio::test]
async fn deactivation_revokes_access_at_once_and_keeps_memberships() {
    let scim = Scim::start().await;
    let (status, created) = scim
        .call(Method::POST, "/Users", Some(user("tok@acme.io")))
        .await;
    assert_eq!(status, 201);
    let id = created["id"].as_str().unwrap().to_owned();
    let (status, group) = scim
        .call(
            Method::POST,
            "/Groups",
            Some(json!({ "displayName": "G1", "members": [{ "value": id }] })),
        )
        .await;
    assert_eq!(status, 201);
    let (status, token) = scim
        .admin(
            Method::POST,
            &format!("/users/{id}/tokens"),
            Some(&json!({ "name": "cli" })),
        )
        .await;
    assert_eq!(status, 201, "{token}");
    let pat = token["secret"].as_str().unwrap().to_owned();
    let me = |pat: String| {
        let server = &scim.server;
        async move {
            server
                .call(
                    Method::GET,
                    "/api/v1/tenants/acme/users/me",
                    Some(&pat),
                    None,
                )
                .await
                .0
        }
    };
    assert_eq!(me(pat.clone()).await, 200);
    let (status, _) = scim
        .call(
            Method::PATCH,
            &format!("/Users/{id}"),
            Some(patch(
                json!([{ "op": "replace", "value": { "active": false } }]),
            )),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(me(pat.clone()).await, 401);
    let (_, body) = scim
        .call(
            Method::GET,
            &format!("/Groups/{}", group["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(body["members"][0]["value"], json!(id));
    let (status, _) = scim
        .call(
            Method::PATCH,
            &format!("/Users/{id}"),
            Some(patch(
                json!([{ "op": "replace", "path": "active", "value": true }]),
            )),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(me(pat).await, 200);
}

#[tokio::test]
async fn pending_memberships_expire() {
    let scim = Scim::start_with(|c| c.scim.pending_ttl_hours = 0).await;
    let (status, headers, group) = scim
        .send(
            Method::POST,
            "/Groups",
            Some(json!({ "displayName": "Later", "members": [{ "value": "ext-late" }] })),
        )
        .await;
    assert_eq!(status, 201, "{group}");
    assert_eq!(
        report(&headers),
        json!({ "pending": ["ext-late"], "refused": [] })
    );
    assert!(!group.to_string().contains("MembershipReport"), "{group}");
    let (_, pending) = scim.admin(Method::GET, "/sso/idp/scim/pending", None).await;
    assert_eq!(pending, json!({ "pending": [] }), "expired at once");
    let (status, _) = scim
        .call(
            Method::POST,
            "/Users",
            Some(json!({ "userName": "late@acme.io", "externalId": "ext-late" })),
        )
        .await;
    assert_eq!(status, 201);
    let (_, body) = scim
        .call(
            Method::GET,
            &format!("/Groups/{}", group["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(body["members"], json!([]));
}

#[tokio::test]
async fn paths_outside_a_connection_are_scim_404s() {
    let scim = Scim::start().await;
    for path in ["/scim", "/scim/v2", "/scim/v2/acme", "/scim/v1/x/y/Users"] {
        let response = scim
            .server
            .client
            .get(format!("{}{path}", scim.server.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path}");
        assert_eq!(response.headers()["content-type"], "application/scim+json");
        assert_eq!(
            response.json::<Value>().await.unwrap(),
            error(
                404,
                None,
                "SCIM endpoint: use /scim/v2/{tenant}/{ssoId}/ not found"
            ),
            "{path}"
        );
    }
}

#[tokio::test]
async fn records_an_admin_deleted_are_provisioned_again() {
    let scim = Scim::start().await;
    let (status, created) = scim
        .call(Method::POST, "/Users", Some(user("gone@acme.io")))
        .await;
    assert_eq!(status, 201);
    let (status, body) = scim
        .admin(
            Method::DELETE,
            &format!("/users/{}", created["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, 204, "{body}");
    // The connection sees the deletion at once: no stale SCIM record answers for it.
    let old = created["id"].as_str().unwrap();
    let (status, _) = scim.call(Method::GET, &format!("/Users/{old}"), None).await;
    assert_eq!(status, 404);
    let (status, found) = scim
        .call(
            Method::GET,
            "/Users?filter=userName%20eq%20%22gone@acme.io%22",
            None,
        )
        .await;
    assert_eq!(
        (status, &found["totalResults"]),
        (200, &json!(0)),
        "{found}"
    );
    let (status, again) = scim
        .call(Method::POST, "/Users", Some(user("gone@acme.io")))
        .await;
    assert_eq!(status, 201, "{again}");
    assert_ne!(again["id"], created["id"]);

    let group = json!({ "displayName": "Temp", "externalId": "g-1" });
    let (status, first) = scim
        .call(Method::POST, "/Groups", Some(group.clone()))
        .await;
    assert_eq!(status, 201);
    let (status, body) = scim
        .call(
            Method::POST,
            "/Groups",
            Some(json!({ "displayName": "Other", "externalId": "g-1" })),
        )
        .await;
    assert_eq!(
        (status, body),
        (
            409,
            error(
                409,
                Some("uniqueness"),
                "externalId \"g-1\" already belongs to group \"Temp\""
            )
        )
    );
    let (status, _) = scim
        .admin(
            Method::DELETE,
            &format!("/teams/{}", first["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, second) = scim.call(Method::POST, "/Groups", Some(group)).await;
    assert_eq!(status, 201, "{second}");
    assert_ne!(second["id"], first["id"]);
}

#[tokio::test]
async fn only_a_tenant_in_scim_mode_is_changed_by_scim() {
    let scim = Scim::start().await;
    let (status, _) = scim
        .admin(
            Method::PUT,
            "/provisioning",
            Some(&json!({ "mode": "invite_only" })),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = scim
        .call(Method::GET, "/Users?count=1&startIndex=1", None)
        .await;
    assert_eq!((status, body), (200, empty_list()));
    let (status, body) = scim
        .call(Method::POST, "/Users", Some(user("ann@acme.io")))
        .await;
    assert_eq!(
        (status, body),
        (403, error(403, None, "tenant acme is in provisioning mode invite_only: SCIM changes need mode scim (an admin sets it with PUT /api/v1/tenants/acme/provisioning)"))
    );
}

#[tokio::test]
async fn the_service_provider_config_is_exact() {
    let scim = Scim::start().await;
    let (status, body) = scim.call(Method::GET, "/ServiceProviderConfig", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
            "patch": { "supported": true },
            "bulk": { "supported": false, "maxOperations": 0, "maxPayloadSize": 0 },
            "filter": { "supported": true, "maxResults": 1000 },
            "changePassword": { "supported": false },
            "sort": { "supported": true },
            "etag": { "supported": true },
            "authenticationSchemes": [{
                "type": "oauthbearertoken",
                "name": "OAuth Bearer Token",
                "description": "The SCIM token of the SSO configuration, sent as Authorization: Bearer <token>",
                "primary": true
            }],
            "meta": { "resourceType": "ServiceProviderConfig", "location": "/scim/v2/acme/idp/ServiceProviderConfig" }
        })
    );
}

#[tokio::test]
async fn filters_use_indexes_or_scan_and_agree() {
    let scim = Scim::start().await;
    let mut ids = Vec::new();
    for (email, family) in [
        ("ann@acme.io", "Lee"),
        ("bob@acme.io", "Leeds"),
        ("cy@other.io", "Ng"),
    ] {
        let body = json!({ "userName": email, "externalId": format!("x-{email}"), "name": { "familyName": family },
            "emails": [{ "value": email.replace("@", "+w@"), "type": "work" }] });
        let (status, created) = scim.call(Method::POST, "/Users", Some(body)).await;
        assert_eq!(status, 201, "{created}");
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    let names = |body: &Value| -> Vec<String> {
        body["Resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["userName"].as_str().unwrap().to_owned())
            .collect()
    };
    for (filter, expected) in [
        (format!("id eq \"{}\"", ids[1]), vec!["bob@acme.io"]),
        (
            "externalId eq \"x-cy@other.io\"".to_owned(),
            vec!["cy@other.io"],
        ),
        ("externalId eq \"X-CY@OTHER.IO\"".to_owned(), vec![]),
        (
            "emails.value eq \"ANN+w@acme.io\"".to_owned(),
            vec!["ann@acme.io"],
        ),
        (
            "emails eq \"bob+w@acme.io\"".to_owned(),
            vec!["bob@acme.io"],
        ),
        (
            "name.familyName sw \"lee\"".to_owned(),
            vec!["ann@acme.io", "bob@acme.io"],
        ),
        (
            "name.familyName sw \"lee\" and not (userName ew \"ann@acme.io\")".to_owned(),
            vec!["bob@acme.io"],
        ),
        (
            "userName co \"other\" or externalId eq \"x-ann@acme.io\"".to_owned(),
            vec!["ann@acme.io", "cy@other.io"],
        ),
        (
            "meta.lastModified gt \"2000-01-01T00:00:00Z\" and title pr".to_owned(),
            vec![],
        ),
        (
            "urn:ietf:params:scim:schemas:core:2.0:User:userName eq \"cy@other.io\"".to_owned(),
            vec!["cy@other.io"],
        ),
    ] {
        let (status, body) = scim
            .call(
                Method::POST,
                "/Users/.search",
                Some(json!({ "filter": filter, "sortBy": "userName" })),
            )
            .await;
        assert_eq!(status, 200, "{filter}: {body}");
        assert_eq!(names(&body), expected, "{filter}");
        assert_eq!(body["totalResults"], json!(expected.len()), "{filter}");
    }
}

#[tokio::test]
async fn a_change_that_changes_nothing_keeps_the_version() {
    let scim = Scim::start().await;
    let (_, user) = scim
        .call(Method::POST, "/Users", Some(user("v@acme.io")))
        .await;
    let uid = user["id"].as_str().unwrap().to_owned();
    let (_, group) = scim
        .call(
            Method::POST,
            "/Groups",
            Some(json!({ "displayName": "V", "members": [{ "value": uid }] })),
        )
        .await;
    let gid = group["id"].as_str().unwrap().to_owned();
    for operations in [
        json!([{ "op": "add", "path": "members", "value": [{ "value": uid }] }]),
        json!([{ "op": "remove", "path": "members[value eq \"usr_notamember\"]" }]),
        json!([{ "op": "replace", "value": { "displayName": "V" } }]),
    ] {
        let (status, body) = scim
            .call(
                Method::PATCH,
                &format!("/Groups/{gid}"),
                Some(patch(operations.clone())),
            )
            .await;
        assert_eq!(status, 200, "{operations}: {body}");
        assert_eq!(
            body["meta"]["version"], group["meta"]["version"],
            "{operations}"
        );
    }
    let mut same = user.clone();
    same.as_object_mut().unwrap().remove("meta");
    let (status, body) = scim
        .call(Method::PUT, &format!("/Users/{uid}"), Some(same))
        .await;
    assert_eq!(
        (status, &body["meta"]["version"]),
        (200, &user["meta"]["version"])
    );
}

#[tokio::test]
async fn a_pending_value_removed_in_the_same_patch_is_not_kept() {
    let scim = Scim::start().await;
    let (_, group) = scim
        .call(Method::POST, "/Groups", Some(json!({ "displayName": "P" })))
        .await;
    let gid = group["id"].as_str().unwrap().to_owned();
    let (status, headers, body) = scim
        .send(Method::PATCH, &format!("/Groups/{gid}"), Some(patch(json!([
            { "op": "add", "path": "members", "value": [{ "value": "ghost-1" }, { "value": "ghost-2" }] },
            { "op": "remove", "path": "members[value eq \"ghost-1\"]" }
        ]))))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        report(&headers),
        json!({ "pending": ["ghost-2"], "refused": [] })
    );
    let (_, pending) = scim.admin(Method::GET, "/sso/idp/scim/pending", None).await;
    let values: Vec<&str> = pending["pending"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["value"].as_str().unwrap())
        .collect();
    assert_eq!(values, ["ghost-2"]);
}

#[tokio::test]
async fn patch_remove_of_active_and_of_the_enterprise_extension_removes_them() {
    let scim = Scim::start().await;
    let mut body = user("rem@acme.io");
    body["schemas"] = json!([USER, ENTERPRISE]);
    body[ENTERPRISE] = json!({ "department": "R&D", "employeeNumber": "7" });
    let (status, created) = scim.call(Method::POST, "/Users", Some(body)).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created[ENTERPRISE]["department"], "R&D", "{created}");
    let id = created["id"].as_str().unwrap();
    let path = format!("/Users/{id}");
    let remove = |attr: &str| patch(json!([{ "op": "remove", "path": attr }]));
    let (status, patched) = scim
        .call(Method::PATCH, &path, Some(remove(ENTERPRISE)))
        .await;
    assert_eq!(status, 200, "{patched}");
    let (_, read) = scim.call(Method::GET, &path, None).await;
    assert!(read.get(ENTERPRISE).is_none(), "extension removed: {read}");
    let (status, patched) = scim
        .call(Method::PATCH, &path, Some(remove("active")))
        .await;
    assert_eq!(status, 200, "{patched}");
    let (_, read) = scim.call(Method::GET, &path, None).await;
    assert!(read.get("active").is_none(), "active removed: {read}");
    // Unassigned fails closed: the user is deactivated for the rest of Gatehouse.
    let (status, record) = scim.admin(Method::GET, &format!("/users/{id}"), None).await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["status"], "deactivated", "{record}");
}

/// A user whose `userName` is opaque and who has no `emails` is accepted (RFC 7643 needs
/// only `userName`), stored without an email, never collides with another such user, is
/// resolved at the edge by a JWT whose user claim is that userName, and is refused by
/// password and SSO login until an email arrives (SPEC §7).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_an_email_is_matched_by_user_name_and_cannot_log_in() {
    use gatehouse_tests::jwt::{jwk, sign, Jwks};
    const ISSUER: &str = "https://login.corp.example";
    let jwks = Jwks::serve(vec![jwk("rsa-a")], 300).await;
    let scim = Scim::start_with(|config| config.allow_private_urls = true).await;
    let op = Some(gatehouse_tests::OPERATOR_TOKEN);
    for (path, body) in [
        (
            "/api/v1/tenants/acme/identity-providers",
            json!({
                "name": "corp", "issuer": ISSUER, "jwks_uri": jwks.url, "audiences": ["api"],
                "algorithms": ["RS256"], "user_claim": "preferred_username"
            }),
        ),
        (
            "/api/v1/tenants/acme/sso",
            json!({ "id": "corp-sso", "issuer": ISSUER, "client_id": "api", "jwks_uri": jwks.url }),
        ),
    ] {
        let (status, body) = scim.server.call(Method::POST, path, op, Some(&body)).await;
        assert_eq!(status, 201, "{path}: {body}");
    }

    // Two users with opaque userNames and no emails: both accepted, neither has an email.
    let mut ids = Vec::new();
    for name in ["U-7731", "U-7732"] {
        let (status, body) = scim
            .call(
                Method::POST,
                "/Users",
                Some(json!({ "schemas": [USER], "userName": name, "active": true })),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["userName"], name, "{body}");
        assert!(body.get("emails").is_none(), "{body}");
        let id = body["id"].as_str().unwrap().to_owned();
        let (_, user) = scim.admin(Method::GET, &format!("/users/{id}"), None).await;
        assert!(
            user.get("email").is_none(),
            "stored without an email: {user}"
        );
        assert_eq!(user["status"], "active", "{user}");
        ids.push(id);
    }
    let (status, found) = scim
        .call(
            Method::GET,
            "/Users?filter=userName%20eq%20%22u-7731%22",
            None,
        )
        .await;
    assert_eq!(
        (status, &found["totalResults"]),
        (200, &json!(1)),
        "{found}"
    );

    // The edge resolves the user by the IdP's user claim against userName.
    let jwt = |claims: Value| {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut all = json!({ "iss": ISSUER, "aud": "api", "iat": now, "exp": now + 300 });
        for (k, v) in claims.as_object().unwrap() {
            all[k] = v.clone();
        }
        sign("rsa-a", jsonwebtoken::Algorithm::RS256, &all)
    };
    let token = jwt(json!({ "preferred_username": "U-7731", "sub": "s-1" }));
    let (status, body) = scim
        .server
        .call(Method::POST, "/v1/acme/resolve", Some(&token), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], ids[0].as_str(), "{body}");
    assert!(body["email"].is_null(), "{body}");
    let token = jwt(json!({ "preferred_username": "U-0000", "sub": "s-1" }));
    let (status, body) = scim
        .server
        .call(Method::POST, "/v1/acme/resolve", Some(&token), None)
        .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (403, Some("not_provisioned")),
        "{body}"
    );

    // No login without an email: SSO (the ID token's email claim is the userName), and
    // password (no link can even be sent; the login answers as for anyone unknown).
    let sso_login = |email: &str| {
        let token = jwt(json!({ "email": email, "sub": "s-1" }));
        let server = &scim.server;
        async move {
            server
                .call(
                    Method::POST,
                    "/v1/acme/sso/corp-sso/token-login",
                    None,
                    Some(&json!({ "id_token": token })),
                )
                .await
        }
    };
    let (status, body) = sso_login("U-7731").await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = scim
        .admin(
            Method::POST,
            &format!("/users/{}/reset-password", ids[0]),
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("has no email"), "{body}");
    let password_login = |email: &str| {
        let server = &scim.server;
        let email = email.to_owned();
        async move {
            let response = server
                .client
                .post(format!("{}/v1/acme/password-login", server.base))
                .header("accept", "application/json")
                .json(&json!({ "email": email, "password": "anything-at-all" }))
                .send()
                .await
                .unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (status, refused) = password_login("U-7731").await;
    let unknown = password_login("nobody@acme.io").await;
    assert_eq!((status, &refused), (unknown.0, &unknown.1), "{refused}");
    assert!(status == 401 || status == 400, "{status} {refused}");

    // An email arrives: the user now has it, and SSO login lets it in.
    let (status, body) = scim
        .call(
            Method::PATCH,
            &format!("/Users/{}", ids[0]),
            Some(patch(json!([{ "op": "add", "path": "emails", "value": [{ "value": "uma@acme.io", "primary": true }] }]))),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, user) = scim
        .admin(Method::GET, &format!("/users/{}", ids[0]), None)
        .await;
    assert_eq!(user["email"], "uma@acme.io", "{user}");
    let (status, body) = sso_login("uma@acme.io").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["id"], ids[0].as_str(), "{body}");
}

/// The users a filter finds, by id.
async fn found(scim: &Scim, resource: &str, filter: &str) -> (u16, Value) {
    scim.call(
        Method::GET,
        &format!(
            "/{resource}?filter={}&attributes=id&count=1000",
            encode(filter)
        ),
        None,
    )
    .await
}

/// `meta.created` and `meta.lastModified` are dateTime: a filter compares instants
/// (RFC 7644 §3.4.2.2), whatever the offset or the digits of the second's fraction, and
/// an operand that is not a date-time is an `invalidFilter` that says so.
#[tokio::test]
async fn date_time_filters_compare_instants() {
    use time::format_description::well_known::Rfc3339;
    use time::{Duration, OffsetDateTime, UtcOffset};
    let scim = Scim::start().await;
    let (status, created) = scim
        .call(Method::POST, "/Users", Some(user("when@acme.io")))
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].clone();
    let modified = created["meta"]["lastModified"].as_str().unwrap();
    let at = OffsetDateTime::parse(modified, &Rfc3339).unwrap();
    // The same instant and its whole second, written in three offsets and two ways.
    let second = at.replace_nanosecond(0).unwrap();
    let nanos = at.nanosecond();
    let written = |t: OffsetDateTime, hours: i8| {
        t.to_offset(UtcOffset::from_hms(hours, 0, 0).unwrap())
            .format(&Rfc3339)
            .unwrap()
    };
    let plus_zero = |t: OffsetDateTime| written(t, 0).replace('Z', "+00:00");
    let mut cases = vec![
        (format!("meta.lastModified eq \"{}\"", written(at, 1)), true),
        (
            format!("meta.lastModified eq \"{}\"", written(at, -1)),
            true,
        ),
        (format!("meta.lastModified eq \"{}\"", plus_zero(at)), true),
        (format!("meta.lastModified ge \"{}\"", written(at, 1)), true),
        (
            format!("meta.lastModified le \"{}\"", written(at, -1)),
            true,
        ),
        (
            format!("meta.lastModified ne \"{}\"", written(at, 1)),
            false,
        ),
        (
            format!("meta.lastModified gt \"{}\"", written(at, 1)),
            false,
        ),
        (
            format!(
                "meta.lastModified gt \"{}\"",
                written(at + Duration::seconds(1), 1)
            ),
            false,
        ),
        (
            format!(
                "meta.lastModified lt \"{}\"",
                written(at + Duration::seconds(1), -1)
            ),
            true,
        ),
        (
            format!(
                "meta.created gt \"{}\" and meta.created lt \"{}\"",
                plus_zero(second - Duration::seconds(1)),
                written(second + Duration::seconds(1), 1)
            ),
            true,
        ),
    ];
    // The reported case: a whole-second operand before a time with a fraction.
    if nanos != 0 {
        for hours in [0, 1, -1] {
            cases.push((
                format!("meta.lastModified gt \"{}\"", written(second, hours)),
                true,
            ));
        }
        cases.push((
            format!("meta.lastModified gt \"{}\"", plus_zero(second)),
            true,
        ));
    }
    for (filter, matches) in cases {
        let (status, body) = found(&scim, "Users", &filter).await;
        assert_eq!(status, 200, "{filter}: {body}");
        let ids: Vec<Value> = body["Resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].clone())
            .collect();
        let expected = if matches { vec![id.clone()] } else { vec![] };
        assert_eq!(ids, expected, "{filter} (lastModified {modified})");
    }
    // Groups carry the same dateTime attributes.
    let (_, group) = scim
        .call(
            Method::POST,
            "/Groups",
            Some(json!({ "displayName": "When" })),
        )
        .await;
    let group_at =
        OffsetDateTime::parse(group["meta"]["created"].as_str().unwrap(), &Rfc3339).unwrap();
    let (status, body) = found(
        &scim,
        "Groups",
        &format!("meta.created eq \"{}\"", written(group_at, 1)),
    )
    .await;
    assert_eq!(
        (status, body["totalResults"].clone()),
        (200, json!(1)),
        "{body}"
    );
    // Not a date-time: 400 invalidFilter, with the reason.
    for filter in [
        "meta.lastModified gt \"yesterday\"",
        "meta.created ge \"2026-12-07\"",
        "meta.created lt 20261207",
    ] {
        let (status, body) = found(&scim, "Users", filter).await;
        assert_eq!(
            (status, body["scimType"].as_str()),
            (400, Some("invalidFilter")),
            "{filter}: {body}"
        );
        let detail = body["detail"].as_str().unwrap();
        assert!(
            detail.contains("not an RFC 3339 date-time"),
            "{filter}: {detail}"
        );
    }
}

/// SPEC §2: only an admin or SCIM `active=true` reactivates. A PUT that leaves `active`
/// out asserts nothing about it, so the user keeps its status, whichever it is.
#[tokio::test]
async fn a_put_without_active_keeps_the_status() {
    let scim = Scim::start().await;
    let (_, created) = scim
        .call(
            Method::POST,
            "/Users",
            Some(json!({ "schemas": [USER], "userName": "put@acme.io" })),
        )
        .await;
    assert_eq!(
        created["active"], true,
        "a POST without active is active: {created}"
    );
    let id = created["id"].as_str().unwrap().to_owned();
    let path = format!("/Users/{id}");
    let status_of = || async {
        let (_, record) = scim.admin(Method::GET, &format!("/users/{id}"), None).await;
        record["status"].as_str().unwrap().to_owned()
    };
    let put = json!({ "schemas": [USER], "userName": "put@acme.io", "title": "Ops" });
    let (status, body) = scim.call(Method::PUT, &path, Some(put.clone())).await;
    assert_eq!(
        (status, body["active"].clone()),
        (200, json!(true)),
        "{body}"
    );
    assert_eq!(status_of().await, "active");

    let (status, body) = scim
        .call(
            Method::PATCH,
            &path,
            Some(patch(
                json!([{ "op": "replace", "path": "active", "value": false }]),
            )),
        )
        .await;
    assert_eq!(
        (status, body["active"].clone()),
        (200, json!(false)),
        "{body}"
    );
    let mut put = put;
    put["title"] = json!("Sales");
    let (status, body) = scim.call(Method::PUT, &path, Some(put.clone())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["active"].clone(), body["title"].clone()),
        (json!(false), json!("Sales")),
        "{body}"
    );
    assert_eq!(status_of().await, "deactivated");
    let (_, read) = scim.call(Method::GET, &path, None).await;
    assert_eq!(read["active"], false, "{read}");

    // A PATCH that removed `active` leaves it unassigned; a PUT without it keeps that.
    let (status, _) = scim
        .call(
            Method::PATCH,
            &path,
            Some(patch(json!([{ "op": "remove", "path": "active" }]))),
        )
        .await;
    assert_eq!(status, 200);
    put["title"] = json!("Legal");
    let (status, body) = scim.call(Method::PUT, &path, Some(put.clone())).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("active").is_none(), "{body}");
    assert_eq!(status_of().await, "deactivated");

    // `active: true` is what reactivates.
    put["active"] = json!(true);
    let (status, body) = scim.call(Method::PUT, &path, Some(put)).await;
    assert_eq!(
        (status, body["active"].clone()),
        (200, json!(true)),
        "{body}"
    );
    assert_eq!(status_of().await, "active");
    let (_, audit) = scim.admin(Method::GET, "/audit?limit=1000", None).await;
    let statuses: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["target"] == json!(id))
        .filter_map(|e| e["action"].as_str())
        .filter(|a| *a == "user.deactivate" || *a == "user.reactivate")
        .collect();
    assert_eq!(statuses, ["user.deactivate", "user.reactivate"]);
}

/// A PATCH of `ops` on `path` answers 400 `mutability`, saying what is read-only.
async fn refused_as_read_only(scim: &Scim, path: &str, ops: Value) {
    let (status, body) = scim
        .call(Method::PATCH, path, Some(patch(ops.clone())))
        .await;
    assert_eq!(
        (status, body["scimType"].as_str()),
        (400, Some("mutability")),
        "{ops}: {body}"
    );
    assert!(
        body["detail"].as_str().unwrap().contains("read-only"),
        "{body}"
    );
}

/// RFC 7644 §3.5.2: an operation on a read-only attribute (`id`, `meta`, `schemas`) is a
/// 400 `mutability`, and nothing of the PATCH applies; a no-path value may carry the
/// resource's own `id` (Entra's group rename does), not another.
#[tokio::test]
async fn patches_of_read_only_attributes_are_refused() {
    let scim = Scim::start().await;
    let (_, created) = scim
        .call(Method::POST, "/Users", Some(user("ro@acme.io")))
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let path = format!("/Users/{id}");
    for ops in [
        json!([{ "op": "replace", "path": "id", "value": "usr_other" }]),
        json!([{ "op": "replace", "path": "title", "value": "t" }, { "op": "replace", "path": "meta.lastModified", "value": "2020-01-01T00:00:00Z" }]),
        json!([{ "op": "add", "path": "meta", "value": { "resourceType": "Group" } }]),
        json!([{ "op": "remove", "path": "schemas" }]),
        json!([{ "op": "replace", "path": "urn:ietf:params:scim:schemas:core:2.0:User:id", "value": "x" }]),
        json!([{ "op": "replace", "value": { "id": "usr_other", "title": "t" } }]),
    ] {
        refused_as_read_only(&scim, &path, ops).await;
    }
    let (_, read) = scim.call(Method::GET, &path, None).await;
    assert_eq!(read, created, "nothing changed");
    let (status, body) = scim
        .call(
            Method::PATCH,
            &path,
            Some(patch(
                json!([{ "op": "replace", "value": { "id": id, "title": "t" } }]),
            )),
        )
        .await;
    assert_eq!((status, body["title"].clone()), (200, json!("t")), "{body}");

    let (_, group) = scim
        .call(
            Method::POST,
            "/Groups",
            Some(json!({ "displayName": "RO" })),
        )
        .await;
    let gid = group["id"].as_str().unwrap().to_owned();
    let gpath = format!("/Groups/{gid}");
    for ops in [
        json!([{ "op": "replace", "path": "id", "value": "team_other" }]),
        json!([{ "op": "replace", "path": "meta.created", "value": "2020-01-01T00:00:00Z" }]),
        json!([{ "op": "Replace", "value": { "id": "team_other", "displayName": "RO2" } }]),
    ] {
        refused_as_read_only(&scim, &gpath, ops).await;
    }
    let (_, read) = scim.call(Method::GET, &gpath, None).await;
    assert_eq!(read["displayName"], "RO", "{read}");
    // Entra's no-path rename with the group's own id still renames.
    let (status, body) = scim
        .call(
            Method::PATCH,
            &gpath,
            Some(patch(
                json!([{ "op": "Replace", "value": { "id": gid, "displayName": "RO2" } }]),
            )),
        )
        .await;
    assert_eq!(
        (status, body["displayName"].clone()),
        (200, json!("RO2")),
        "{body}"
    );
}

/// RFC 7644 §3.4.2.3: resources without the `sortBy` attribute come last when ascending
/// and first when descending.
#[tokio::test]
async fn resources_without_the_sort_attribute_come_first_when_descending() {
    let scim = Scim::start().await;
    for (email, title) in [
        ("a@acme.io", Some("Beta")),
        ("b@acme.io", None),
        ("c@acme.io", Some("Alpha")),
        ("d@acme.io", None),
    ] {
        let mut body = user(email);
        if let Some(title) = title {
            body["title"] = json!(title);
        }
        let (status, _) = scim.call(Method::POST, "/Users", Some(body)).await;
        assert_eq!(status, 201);
    }
    let order = |direction: &'static str| {
        let scim = &scim;
        async move {
            let (status, body) = scim
                .call(
                    Method::GET,
                    &format!("/Users?sortBy=title&sortOrder={direction}&attributes=userName"),
                    None,
                )
                .await;
            assert_eq!(status, 200, "{body}");
            body["Resources"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["userName"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    let ascending = order("ascending").await;
    let descending = order("descending").await;
    let (untitled_a, untitled_d) = (&ascending[2..], &descending[..2]);
    assert_eq!(&ascending[..2], ["c@acme.io", "a@acme.io"]);
    assert_eq!(&descending[2..], ["a@acme.io", "c@acme.io"]);
    let mut both = [untitled_a.to_vec(), untitled_d.to_vec()];
    for list in &mut both {
        list.sort();
    }
    assert_eq!(both[0], ["b@acme.io", "d@acme.io"], "{ascending:?}");
    assert_eq!(both[1], ["b@acme.io", "d@acme.io"], "{descending:?}");
}

/// A member value longer than any user's id, userName or externalId can be (513-1024
/// bytes: still a valid string) cannot be kept pending; it is refused in the membership
/// report and the audit log like any value not applied, never dropped unsaid.
#[tokio::test]
async fn member_values_too_long_to_keep_pending_are_reported() {
    let scim = Scim::start().await;
    let (_, member) = scim
        .call(Method::POST, "/Users", Some(user("m@acme.io")))
        .await;
    let uid = member["id"].as_str().unwrap().to_owned();
    let long = "x".repeat(600);
    let (status, headers, group) = scim
        .send(
            Method::POST,
            "/Groups",
            Some(json!({ "displayName": "Long", "members": [{ "value": long }, { "value": uid }, { "value": "ghost" }] })),
        )
        .await;
    assert_eq!(status, 201, "{group}");
    assert_eq!(group["members"][0]["value"], json!(uid), "{group}");
    let reported = report(&headers);
    assert_eq!(reported["pending"], json!(["ghost"]), "{reported}");
    assert_eq!(reported["refused"][0]["value"], json!(long), "{reported}");
    assert!(
        reported["refused"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("cannot be kept pending"),
        "{reported}"
    );
    let gid = group["id"].as_str().unwrap().to_owned();
    let longer = "y".repeat(1024);
    let (status, headers, body) = scim
        .send(
            Method::PATCH,
            &format!("/Groups/{gid}"),
            Some(patch(
                json!([{ "op": "add", "path": "members", "value": [{ "value": longer }] }]),
            )),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let reported = report(&headers);
    assert_eq!(
        (
            reported["pending"].clone(),
            reported["refused"][0]["value"].clone()
        ),
        (json!([]), json!(longer)),
        "{reported}"
    );
    let (_, audit) = scim.admin(Method::GET, "/audit?limit=1000", None).await;
    let refused: Vec<Value> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "scim.group.members_not_applied" && e["target"] == json!(gid))
        .flat_map(|e| {
            e["after"]["refused"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|r| r["value"].clone())
        .collect();
    assert_eq!(refused, [json!(long), json!(longer)]);
}

/// RFC 7643 §2.4: at most one primary email. POST and PUT with two are refused; a PATCH
/// that makes a new one primary takes the flag from the old one, and the user's email
/// (the primary one when `userName` is not an address) follows it.
#[tokio::test]
async fn one_primary_email() {
    let scim = Scim::start().await;
    let two = json!([
        { "value": "p1@acme.io", "type": "work", "primary": true },
        { "value": "p2@acme.io", "type": "home", "primary": true }
    ]);
    let (status, body) = scim
        .call(
            Method::POST,
            "/Users",
            Some(json!({ "schemas": [USER], "userName": "U-1", "emails": two })),
        )
        .await;
    assert_eq!(
        (status, body["scimType"].as_str()),
        (400, Some("invalidValue")),
        "{body}"
    );
    assert!(
        body["detail"].as_str().unwrap().contains("primary"),
        "{body}"
    );
    let (status, created) = scim
        .call(
            Method::POST,
            "/Users",
            Some(json!({ "schemas": [USER], "userName": "U-1", "emails": [{ "value": "p1@acme.io", "type": "work", "primary": true }] })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let path = format!("/Users/{id}");
    let (status, body) = scim
        .call(
            Method::PUT,
            &path,
            Some(json!({ "schemas": [USER], "userName": "U-1", "emails": two })),
        )
        .await;
    assert_eq!(
        (status, body["scimType"].as_str()),
        (400, Some("invalidValue")),
        "{body}"
    );
    let email = || async {
        let (_, record) = scim.admin(Method::GET, &format!("/users/{id}"), None).await;
        record["email"].clone()
    };
    assert_eq!(email().await, "p1@acme.io");

    let (status, body) = scim
        .call(
            Method::PATCH,
            &path,
            Some(patch(json!([{ "op": "add", "path": "emails", "value": [{ "value": "p2@acme.io", "type": "home", "primary": true }] }]))),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["emails"],
        json!([
            { "value": "p1@acme.io", "type": "work", "primary": false },
            { "value": "p2@acme.io", "type": "home", "primary": true }
        ])
    );
    assert_eq!(email().await, "p2@acme.io");
    // Entra sets the flag through a filtered path, as a string.
    let (status, body) = scim
        .call(
            Method::PATCH,
            &path,
            Some(patch(json!([{ "op": "Replace", "path": "emails[type eq \"work\"].primary", "value": "True" }]))),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, read) = scim.call(Method::GET, &path, None).await;
    assert_eq!(
        read["emails"],
        json!([
            { "value": "p1@acme.io", "type": "work", "primary": true },
            { "value": "p2@acme.io", "type": "home", "primary": false }
        ])
    );
    assert_eq!(email().await, "p1@acme.io");
    let (_, body) = found(
        &scim,
        "Users",
        "emails[primary eq true and value eq \"p2@acme.io\"]",
    )
    .await;
    assert_eq!(body["totalResults"], 0, "{body}");
}

/// Two users of one connection cannot share an email: the 409 says the email is this
/// connection's own user's, not that some other connection manages it.
#[tokio::test]
async fn an_email_of_another_user_of_the_same_connection_is_named_as_such() {
    let scim = Scim::start().await;
    let (status, first) = scim
        .call(
            Method::POST,
            "/Users",
            Some(json!({ "userName": "U-1", "emails": [{ "value": "ann@acme.io", "primary": true }] })),
        )
        .await;
    assert_eq!(status, 201, "{first}");
    let (status, body) = scim
        .call(
            Method::POST,
            "/Users",
            Some(json!({ "userName": "U-2", "emails": [{ "value": "ann@acme.io", "primary": true }] })),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["scimType"], "uniqueness", "{body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("of this connection") && detail.contains(first["id"].as_str().unwrap()),
        "{detail}"
    );
    // A 0 byte in a userName is refused for what it is, not for a length it does not have.
    let (status, body) = scim
        .call(
            Method::POST,
            "/Users",
            Some(json!({ "userName": "nul\u{0}x" })),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("no 0 byte"),
        "{body}"
    );
}
