//! What Okta sends, replayed step by step (connector test, assign → filter → create,
//! profile push, unassign → `PATCH active=false`, reassign, group push with membership
//! batches of 100, rename, the PUT-only custom app flow); each step asserts the exact
//! status and body.

mod scim_common;

use reqwest::Method;
use scim_common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;

fn okta_user(email: &str, external_id: &str, given: &str, family: &str) -> Value {
    json!({
        "schemas": [USER], "userName": email,
        "name": { "givenName": given, "familyName": family },
        "emails": [{ "primary": true, "value": email, "type": "work" }],
        "displayName": format!("{given} {family}"), "locale": "en-US",
        "externalId": external_id, "groups": [], "password": "Xy9-s3cret-pw", "active": true
    })
}

fn expected_user(
    id: &str,
    email: &str,
    external_id: &str,
    given: &str,
    family: &str,
    active: bool,
) -> Value {
    json!({
        "schemas": [USER], "id": id, "externalId": external_id, "userName": email,
        "name": { "givenName": given, "familyName": family },
        "displayName": format!("{given} {family}"),
        "emails": [{ "value": email, "type": "work", "primary": true }],
        "active": active
    })
}

fn filter_path(resource: &str, filter: &str) -> String {
    let encoded: String = url_encode(filter);
    format!("/{resource}?filter={encoded}&startIndex=1&count=100")
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

#[tokio::test]
async fn okta_user_lifecycle_replay() {
    let scim = Scim::start().await;
    let (status, _) = scim
        .admin(
            Method::PUT,
            "/provisioning",
            Some(&json!({ "mode": "scim" })),
        )
        .await;
    assert_eq!(status, 200);

    // Test Connector Configuration.
    let (status, body) = scim
        .call(Method::GET, "/Users?count=2&startIndex=1", None)
        .await;
    assert_eq!((status, body), (200, empty_list()));
    let (status, body) = scim
        .call(Method::GET, "/Groups?count=100&startIndex=1", None)
        .await;
    assert_eq!((status, body), (200, empty_list()));
    let (status, headers, body) = scim
        .send_as(
            Some("gscim_wrong"),
            Method::GET,
            "/Users?count=2&startIndex=1",
            None,
        )
        .await;
    assert_eq!(
        (status, body),
        (
            401,
            error(
                401,
                None,
                "a valid SCIM bearer token for this endpoint is required"
            )
        )
    );
    assert_eq!(headers["www-authenticate"], "Bearer");

    // Assign: Okta looks the user up by userName, then creates it.
    let lookup = filter_path("Users", r#"userName eq "ann@acme.io""#);
    let (status, body) = scim.call(Method::GET, &lookup, None).await;
    assert_eq!((status, body), (200, empty_list()));
    let (status, headers, created) = scim
        .send(
            Method::POST,
            "/Users",
            Some(okta_user("ann@acme.io", "00u1ann", "Ann", "Lee")),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("usr_"), "{id}");
    assert_eq!(
        without_meta(&created, &scim.base),
        expected_user(&id, "ann@acme.io", "00u1ann", "Ann", "Lee", true)
    );
    assert_eq!(headers["location"], format!("{}/Users/{id}", scim.base));
    assert_eq!(
        headers["etag"],
        created["meta"]["version"].as_str().unwrap()
    );

    // A retried create (same externalId) returns the same user, never a duplicate.
    let (status, again) = scim
        .call(
            Method::POST,
            "/Users",
            Some(okta_user("ann@acme.io", "00u1ann", "Ann", "Lee")),
        )
        .await;
    assert_eq!((status, &again), (200, &created));
    // The same userName with another externalId is a uniqueness conflict.
    let (status, body) = scim
        .call(
            Method::POST,
            "/Users",
            Some(okta_user("ann@acme.io", "00u9other", "Ann", "Lee")),
        )
        .await;
    assert_eq!((status, body), (409, error(409, Some("uniqueness"), &format!("userName \"ann@acme.io\" is already taken by user {id} with another externalId"))));

    let (status, body) = scim.call(Method::GET, &lookup, None).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({ "schemas": [LIST], "totalResults": 1, "startIndex": 1, "itemsPerPage": 1, "Resources": [created.clone()] })
    );
    let (status, body) = scim.call(Method::GET, &format!("/Users/{id}"), None).await;
    assert_eq!((status, &body), (200, &created));

    // Profile push: Okta sends the whole user with PUT.
    let mut update = okta_user("ann@acme.io", "00u1ann", "Ann", "Lee-Smith");
    update["id"] = json!(id);
    let (status, updated) = scim
        .call(Method::PUT, &format!("/Users/{id}"), Some(update))
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(
        without_meta(&updated, &scim.base),
        expected_user(&id, "ann@acme.io", "00u1ann", "Ann", "Lee-Smith", true)
    );
    assert_eq!(updated["meta"]["created"], created["meta"]["created"]);
    assert_ne!(updated["meta"]["version"], created["meta"]["version"]);

    // Unassign: PATCH active=false (never DELETE); the user is deactivated, kept.
    let (status, body) = scim
        .call(
            Method::PATCH,
            &format!("/Users/{id}"),
            Some(patch(
                json!([{ "op": "replace", "value": { "active": false } }]),
            )),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        without_meta(&body, &scim.base),
        expected_user(&id, "ann@acme.io", "00u1ann", "Ann", "Lee-Smith", false)
    );
    let (status, user) = scim.admin(Method::GET, &format!("/users/{id}"), None).await;
    assert_eq!(
        (status, user["status"].as_str(), user["source"].as_str()),
        (200, Some("deactivated"), Some("scim"))
    );

    // Reassign: the lookup finds the same user, and PATCH active=true reactivates it.
    let (status, body) = scim.call(Method::GET, &lookup, None).await;
    assert_eq!(
        (
            status,
            body["totalResults"].clone(),
            body["Resources"][0]["active"].clone()
        ),
        (200, json!(1), json!(false))
    );
    let (status, body) = scim
        .call(
            Method::PATCH,
            &format!("/Users/{id}"),
            Some(patch(
                json!([{ "op": "replace", "value": { "active": true } }]),
            )),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        without_meta(&body, &scim.base),
        expected_user(&id, "ann@acme.io", "00u1ann", "Ann", "Lee-Smith", true)
    );
    let (_, user) = scim.admin(Method::GET, &format!("/users/{id}"), None).await;
    assert_eq!(user["status"], "active");

    // The audit log has every change, and never the password Okta sent.
    let (status, audit) = scim.admin(Method::GET, "/audit?limit=1000", None).await;
    assert_eq!(status, 200);
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["actor"] == "scim:idp")
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "scim.user.create",
            "scim.user.replace",
            "scim.user.patch",
            "user.deactivate",
            "scim.user.patch",
            "user.reactivate"
        ]
    );
    assert!(!audit.to_string().contains("Xy9-s3cret-pw"));
}

#[tokio::test]
async fn okta_group_push_replay() {
    let scim = Scim::start().await;
    let mut users = Vec::new();
    for i in 0..250 {
        let email = format!("user{i:03}@acme.io");
        let (status, body) = scim
            .call(
                Method::POST,
                "/Users",
                Some(okta_user(&email, &format!("00u{i}"), "U", &format!("N{i}"))),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        users.push(body["id"].as_str().unwrap().to_owned());
    }

    // Push group: created empty.
    let (status, headers, group) = scim
        .send(
            Method::POST,
            "/Groups",
            Some(json!({ "schemas": [GROUP], "displayName": "Engineering", "members": [] })),
        )
        .await;
    assert_eq!(status, 201, "{group}");
    let gid = group["id"].as_str().unwrap().to_owned();
    assert_eq!(
        without_meta(&group, &scim.base),
        json!({ "schemas": [GROUP], "id": gid, "displayName": "Engineering", "members": [] })
    );
    assert_eq!(headers["location"], format!("{}/Groups/{gid}", scim.base));
    let (status, body) = scim
        .call(
            Method::POST,
            "/Groups",
            Some(json!({ "schemas": [GROUP], "displayName": "engineering" })),
        )
        .await;
    assert_eq!(
        (status, body),
        (
            409,
            error(
                409,
                Some("uniqueness"),
                &format!("a group with displayName \"Engineering\" already exists ({gid})")
            )
        )
    );
    // Membership in batches of 100 (Okta's limit per PATCH).
    for batch in users.chunks(100) {
        let members: Vec<Value> = batch
            .iter()
            .map(|id| json!({ "value": id, "display": "x" }))
            .collect();
        let (status, body) = scim
            .call(
                Method::PATCH,
                &format!("/Groups/{gid}?excludedAttributes=members"),
                Some(patch(
                    json!([{ "op": "add", "path": "members", "value": members }]),
                )),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            without_meta(&body, &scim.base),
            json!({ "schemas": [GROUP], "id": gid, "displayName": "Engineering" })
        );
    }
    // Adding again is de-duplicated.
    let (status, _) = scim
        .call(
            Method::PATCH,
            &format!("/Groups/{gid}"),
            Some(patch(
                json!([{ "op": "add", "path": "members", "value": [{ "value": users[0] }] }]),
            )),
        )
        .await;
    assert_eq!(status, 200);
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
    assert_eq!(members, users.iter().cloned().collect());
    assert_eq!(
        body["members"][0],
        json!({ "value": members.iter().next().unwrap(), "$ref": format!("{}/Users/{}", scim.base, members.iter().next().unwrap()), "type": "User" })
    );

    // Removal: one `members[value eq "…"]` operation per member, 100 per PATCH.
    let removals: Vec<Value> = users[..100]
        .iter()
        .map(|id| json!({ "op": "remove", "path": format!("members[value eq \"{id}\"]") }))
        .collect();
    let (status, body) = scim
        .call(
            Method::PATCH,
            &format!("/Groups/{gid}"),
            Some(patch(json!(removals))),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let left: BTreeSet<String> = body["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["value"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(left, users[100..].iter().cloned().collect());
    let (status, team) = scim
        .admin(Method::GET, &format!("/teams/{gid}"), None)
        .await;
    assert_eq!(
        (status, team["members"].as_array().unwrap().len()),
        (200, 150)
    );

    // Rename: a no-path replace carrying id and displayName; members stay.
    let (status, body) = scim
        .call(
            Method::PATCH,
            &format!("/Groups/{gid}?excludedAttributes=members"),
            Some(patch(
                json!([{ "op": "replace", "value": { "id": gid, "displayName": "Platform" } }]),
            )),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        without_meta(&body, &scim.base),
        json!({ "schemas": [GROUP], "id": gid, "displayName": "Platform" })
    );
    let (_, team) = scim
        .admin(Method::GET, &format!("/teams/{gid}"), None)
        .await;
    assert_eq!(
        (
            team["name"].as_str(),
            team["members"].as_array().unwrap().len()
        ),
        (Some("Platform"), 150)
    );

    // Membership changes recompute roles through the policy.
    let (status, _) = scim
        .admin(
            Method::PATCH,
            &format!("/teams/{gid}"),
            Some(&json!({ "role": "admin" })),
        )
        .await;
    assert_eq!(status, 200);
    let (_, user) = scim
        .admin(Method::GET, &format!("/users/{}", users[200]), None)
        .await;
    assert_eq!(
        (user["role"].as_str(), user["role_source"].as_str()),
        (Some("admin"), Some("group"))
    );
    let (status, _) = scim
        .call(Method::PATCH, &format!("/Groups/{gid}"), Some(patch(json!([{ "op": "remove", "path": format!("members[value eq \"{}\"]", users[200]) }]))))
        .await;
    assert_eq!(status, 200);
    let (_, user) = scim
        .admin(Method::GET, &format!("/users/{}", users[200]), None)
        .await;
    assert_eq!(
        (user["role"].as_str(), user["role_source"].as_str()),
        (Some("member"), Some("initial"))
    );

    // Group list and lookup by name, members excluded.
    let path = format!(
        "{}&excludedAttributes=members",
        filter_path("Groups", r#"displayName eq "platform""#)
    );
    let (status, body) = scim.call(Method::GET, &path, None).await;
    assert_eq!(status, 200);
    assert_eq!(body["totalResults"], 1);
    assert_eq!(
        without_meta(&body["Resources"][0], &scim.base),
        json!({ "schemas": [GROUP], "id": gid, "displayName": "Platform" })
    );

    // Delete: the team goes; its members stay users.
    let (status, body) = scim
        .call(Method::DELETE, &format!("/Groups/{gid}"), None)
        .await;
    assert_eq!((status, body), (204, Value::Null));
    let (status, body) = scim
        .call(Method::GET, &format!("/Groups/{gid}"), None)
        .await;
    assert_eq!(
        (status, body),
        (404, error(404, None, &format!("group {gid} not found")))
    );
    let (status, _) = scim
        .admin(Method::GET, &format!("/users/{}", users[0]), None)
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn okta_put_only_custom_app_flow() {
    let scim = Scim::start().await;
    let mut ids = Vec::new();
    for name in ["bo", "cy", "di"] {
        let (status, body) = scim
            .call(
                Method::POST,
                "/Users",
                Some(okta_user(
                    &format!("{name}@acme.io"),
                    &format!("ext-{name}"),
                    "X",
                    name,
                )),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    let (status, group) = scim
        .call(Method::POST, "/Groups", Some(json!({ "schemas": [GROUP], "displayName": "Ops", "members": [{ "value": ids[0] }, { "value": ids[1] }] })))
        .await;
    assert_eq!(status, 201, "{group}");
    let gid = group["id"].as_str().unwrap().to_owned();
    let member = |id: &str| json!({ "value": id, "$ref": format!("{}/Users/{id}", scim.base), "type": "User" });
    let mut sorted = [ids[0].clone(), ids[1].clone()];
    sorted.sort();
    assert_eq!(
        without_meta(&group, &scim.base),
        json!({ "schemas": [GROUP], "id": gid, "displayName": "Ops", "members": sorted.iter().map(|i| member(i)).collect::<Vec<_>>() })
    );

    // PUT replaces name and members exactly.
    let (status, body) = scim
        .call(Method::PUT, &format!("/Groups/{gid}"), Some(json!({ "schemas": [GROUP], "id": gid, "displayName": "Ops-Team", "members": [{ "value": ids[2] }] })))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        without_meta(&body, &scim.base),
        json!({ "schemas": [GROUP], "id": gid, "displayName": "Ops-Team", "members": [member(&ids[2])] })
    );

    // PUT of a user is a full replace: attributes left out are cleared; it never creates.
    let (status, body) = scim
        .call(Method::PUT, &format!("/Users/{}", ids[0]), Some(json!({ "schemas": [USER], "userName": "bo@acme.io", "externalId": "ext-bo", "active": false })))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        without_meta(&body, &scim.base),
        json!({ "schemas": [USER], "id": ids[0], "externalId": "ext-bo", "userName": "bo@acme.io", "active": false })
    );
    let (status, body) = scim
        .call(
            Method::PUT,
            "/Users/usr_00000000000000000000",
            Some(okta_user("new@acme.io", "x", "N", "U")),
        )
        .await;
    assert_eq!(
        (status, body),
        (
            404,
            error(404, None, "user usr_00000000000000000000 not found")
        )
    );
    let (status, body) = scim
        .call(
            Method::GET,
            &filter_path("Users", r#"userName eq "new@acme.io""#),
            None,
        )
        .await;
    assert_eq!((status, body), (200, empty_list()));
}

/// Okta's group push with directory group names (spaces, parentheses, accents, and two
/// names with the same team name): POST, filter, PATCH add and
/// `members[value eq "…"]` remove, the `{id, displayName}` replace and a PUT rename.
#[tokio::test]
async fn okta_group_push_with_directory_names() {
    let scim = Scim::start().await;
    group_names_flow(
        &scim,
        &GroupShapes {
            create: |display, _| json!({ "schemas": [GROUP], "displayName": display, "members": [] }),
            add: |ids| {
                let members: Vec<Value> = ids.iter().map(|id| json!({ "value": id, "display": "x" })).collect();
                patch(json!([{ "op": "add", "path": "members", "value": members }]))
            },
            remove: |id| patch(json!([{ "op": "remove", "path": format!("members[value eq \"{id}\"]") }])),
            rename: |gid, display| patch(json!([{ "op": "replace", "value": { "id": gid, "displayName": display } }])),
        },
    )
    .await;
}
