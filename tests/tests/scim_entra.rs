//! What Microsoft Entra ID sends, replayed step by step (connection test with a random
//! GUID filter, create with the enterprise extension, `Replace` with `"False"`,
//! `emails[type eq "work"].value`, no-path replace, group membership `Add`/`Remove` with a
//! value list, DELETE after the soft-delete period); each step asserts the exact status
//! and body.

mod scim_common;

use reqwest::Method;
use scim_common::*;
use serde_json::{json, Value};

fn entra_user(upn: &str, nickname: &str) -> Value {
    json!({
        "schemas": [USER, ENTERPRISE],
        "externalId": nickname,
        "userName": upn,
        "active": true,
        "addresses": [{ "primary": true, "type": "work", "country": "NL" }],
        "displayName": "Eve Example",
        "emails": [{ "primary": true, "type": "work", "value": upn }],
        "meta": { "resourceType": "User" },
        "name": { "formatted": "Eve Example", "familyName": "Example", "givenName": "Eve" },
        "title": "Engineer",
        ENTERPRISE: { "department": "R&D", "employeeNumber": "1042" }
    })
}

#[tokio::test]
async fn entra_user_replay() {
    let scim = Scim::start().await;

    // Connection test: a filter on a random GUID must answer 200 with nothing.
    let (status, body) = scim
        .call(
            Method::GET,
            "/Users?filter=userName+eq+%22b1f7c2e4-5d6a-4c3b-9e8f-0a1b2c3d4e5f%22",
            None,
        )
        .await;
    assert_eq!((status, body), (200, empty_list()));
    let (status, body) = scim
        .call(Method::GET, "/Groups?excludedAttributes=members&filter=displayName+eq+%2279a1c0d2-2f6b-4e44-8a4b-4a0e2f7b3c11%22", None)
        .await;
    assert_eq!((status, body), (200, empty_list()));

    // Create.
    let (status, created) = scim
        .call(
            Method::POST,
            "/Users",
            Some(entra_user("eve@acme.io", "eve")),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let mut expected = json!({
        "schemas": [USER, ENTERPRISE], "id": id, "externalId": "eve", "userName": "eve@acme.io",
        "name": { "formatted": "Eve Example", "familyName": "Example", "givenName": "Eve" },
        "displayName": "Eve Example", "title": "Engineer",
        "emails": [{ "value": "eve@acme.io", "type": "work", "primary": true }],
        "active": true,
        ENTERPRISE: { "department": "R&D", "employeeNumber": "1042" }
    });
    assert_eq!(without_meta(&created, &scim.base), expected);

    // Entra matches by userName, then by the work email.
    let (status, body) = scim
        .call(
            Method::GET,
            "/Users?filter=userName+eq+%22EVE%40acme.io%22",
            None,
        )
        .await;
    assert_eq!((status, body["totalResults"].clone()), (200, json!(1)));
    let (status, body) = scim
        .call(
            Method::GET,
            "/Users?filter=emails%5Btype+eq+%22work%22+and+value+eq+%22eve%40acme.io%22%5D",
            None,
        )
        .await;
    assert_eq!(
        (status, body["Resources"][0]["id"].clone()),
        (200, json!(id))
    );

    // Replace with string booleans and value-filter paths, ops capitalised.
    let (status, body) = scim
        .call(
            Method::PATCH,
            &format!("/Users/{id}"),
            Some(patch(json!([
                { "op": "Replace", "path": "displayName", "value": "Eve E." },
                { "op": "Replace", "path": "emails[type eq \"work\"].value", "value": "eve.e@acme.io" },
                { "op": "Add", "path": "emails[type eq \"other\"].value", "value": "eve@home.example" },
                { "op": "Replace", "path": "name.familyName", "value": "E." },
                { "op": "Replace", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department", "value": "Platform" },
                { "op": "Replace", "path": "addresses[type eq \"work\"].locality", "value": "Utrecht" },
                { "op": "Replace", "path": "active", "value": "False" }
            ]))),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    expected["displayName"] = json!("Eve E.");
    expected["emails"] = json!([{ "value": "eve.e@acme.io", "type": "work", "primary": true }, { "value": "eve@home.example", "type": "other", "primary": false }]);
    expected["name"]["familyName"] = json!("E.");
    expected[ENTERPRISE]["department"] = json!("Platform");
    expected["active"] = json!(false);
    assert_eq!(without_meta(&body, &scim.base), expected);
    let (_, user) = scim.admin(Method::GET, &format!("/users/{id}"), None).await;
    assert_eq!(
        (user["status"].as_str(), user["email"].as_str()),
        (Some("deactivated"), Some("eve@acme.io"))
    );

    // No-path replace with dotted and URN-qualified keys; "True" reactivates.
    let (status, body) = scim
        .call(
            Method::PATCH,
            &format!("/Users/{id}"),
            Some(patch(json!([{ "op": "replace", "value": {
                "active": "True", "name.givenName": "Evelyn",
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber": "2084"
            } }]))),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    expected["active"] = json!(true);
    expected["name"]["givenName"] = json!("Evelyn");
    expected[ENTERPRISE]["employeeNumber"] = json!("2084");
    assert_eq!(without_meta(&body, &scim.base), expected);

    // An empty Operations list changes nothing (same version).
    let (status, same) = scim
        .call(
            Method::PATCH,
            &format!("/Users/{id}"),
            Some(patch(json!([]))),
        )
        .await;
    assert_eq!((status, &same), (200, &body));

    // A failing operation leaves the user untouched (PATCH is atomic).
    let (status, error_body) = scim
        .call(
            Method::PATCH,
            &format!("/Users/{id}"),
            Some(patch(json!([
                { "op": "Replace", "path": "displayName", "value": "Changed" },
                { "op": "Replace", "path": "active", "value": "perhaps" }
            ]))),
        )
        .await;
    assert_eq!(
        (status, error_body),
        (
            400,
            error(
                400,
                Some("invalidValue"),
                "active must be a boolean, not \"perhaps\""
            )
        )
    );
    let (_, unchanged) = scim.call(Method::GET, &format!("/Users/{id}"), None).await;
    assert_eq!(unchanged, body);

    // Soft delete (active false), then DELETE after the soft-delete period: 204, then 404.
    let (status, _) = scim
        .call(
            Method::PATCH,
            &format!("/Users/{id}"),
            Some(patch(
                json!([{ "op": "Replace", "path": "active", "value": "False" }]),
            )),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = scim
        .call(Method::DELETE, &format!("/Users/{id}"), None)
        .await;
    assert_eq!((status, body), (204, Value::Null));
    let (status, body) = scim.call(Method::GET, &format!("/Users/{id}"), None).await;
    assert_eq!(
        (status, body),
        (404, error(404, None, &format!("user {id} not found")))
    );
    let (status, body) = scim
        .call(Method::DELETE, &format!("/Users/{id}"), None)
        .await;
    assert_eq!(
        (status, body),
        (404, error(404, None, &format!("user {id} not found")))
    );
    let (status, body) = scim
        .call(
            Method::GET,
            "/Users?filter=userName+eq+%22eve.e%40acme.io%22",
            None,
        )
        .await;
    assert_eq!((status, body), (200, empty_list()));
    let (status, _) = scim.admin(Method::GET, &format!("/users/{id}"), None).await;
    assert_eq!(status, 404);
    // The audit log keeps the history.
    let (_, audit) = scim.admin(Method::GET, "/audit?limit=1000", None).await;
    let deleted = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "scim.user.delete")
        .expect("delete audited");
    assert_eq!(
        (
            deleted["target"].as_str(),
            deleted["before"]["email"].as_str()
        ),
        (Some(id.as_str()), Some("eve@acme.io"))
    );
    // The address can be provisioned again, as a new user.
    let (status, again) = scim
        .call(
            Method::POST,
            "/Users",
            Some(entra_user("eve@acme.io", "eve")),
        )
        .await;
    assert_eq!(status, 201, "{again}");
    assert_ne!(again["id"], json!(id));
}

#[tokio::test]
async fn entra_group_replay() {
    let scim = Scim::start().await;
    let mut ids = Vec::new();
    for n in ["a", "b", "c", "d"] {
        let (status, body) = scim
            .call(
                Method::POST,
                "/Users",
                Some(entra_user(&format!("{n}@acme.io"), n)),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    let (status, group) = scim
        .call(Method::POST, "/Groups", Some(json!({ "schemas": [GROUP], "externalId": "8aa1a0c0-c4c3-4bc0-b4a5-2ef676900159", "displayName": "Sales", "members": [] })))
        .await;
    assert_eq!(status, 201, "{group}");
    let gid = group["id"].as_str().unwrap().to_owned();
    assert_eq!(
        without_meta(&group, &scim.base),
        json!({ "schemas": [GROUP], "id": gid, "externalId": "8aa1a0c0-c4c3-4bc0-b4a5-2ef676900159", "displayName": "Sales", "members": [] })
    );

    let member = |id: &str| json!({ "value": id, "$ref": format!("{}/Users/{id}", scim.base), "type": "User" });
    let sorted = |list: &[&String]| -> Vec<Value> {
        let mut list: Vec<&String> = list.to_vec();
        list.sort();
        list.into_iter().map(|i| member(i)).collect()
    };

    // Add (capitalised) members.
    let (status, body) = scim
        .call(Method::PATCH, &format!("/Groups/{gid}"), Some(patch(json!([{ "op": "Add", "path": "members", "value": [{ "value": ids[0] }, { "value": ids[1] }, { "value": ids[2] }] }]))))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["members"], json!(sorted(&[&ids[0], &ids[1], &ids[2]])));

    // Remove with a value list removes only those.
    let (status, body) = scim
        .call(
            Method::PATCH,
            &format!("/Groups/{gid}"),
            Some(patch(
                json!([{ "op": "Remove", "path": "members", "value": [{ "value": ids[1] }] }]),
            )),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["members"], json!(sorted(&[&ids[0], &ids[2]])));

    // No-path replace of displayName renames and keeps members.
    let (status, body) = scim
        .call(
            Method::PATCH,
            &format!("/Groups/{gid}"),
            Some(patch(
                json!([{ "op": "Replace", "value": { "displayName": "Sales-EMEA" } }]),
            )),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        without_meta(&body, &scim.base),
        json!({ "schemas": [GROUP], "id": gid, "externalId": "8aa1a0c0-c4c3-4bc0-b4a5-2ef676900159", "displayName": "Sales-EMEA", "members": sorted(&[&ids[0], &ids[2]]) })
    );

    // A nested group is refused for that member; an unknown id is kept pending; the rest applies.
    let (status, other) = scim
        .call(
            Method::POST,
            "/Groups",
            Some(json!({ "schemas": [GROUP], "displayName": "Nested" })),
        )
        .await;
    assert_eq!(status, 201);
    let nested = other["id"].as_str().unwrap().to_owned();
    let (status, headers, body) = scim
        .send(Method::PATCH, &format!("/Groups/{gid}"), Some(patch(json!([{ "op": "Add", "path": "members", "value": [{ "value": nested }, { "value": "late-user" }, { "value": ids[3] }] }]))))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["members"], json!(sorted(&[&ids[0], &ids[2], &ids[3]])));
    assert_eq!(
        report(&headers),
        json!({ "pending": ["late-user"], "refused": [{ "value": nested, "reason": "nested groups are not supported: a group cannot be a member of a group; assign its users instead" }] })
    );
    let (status, pending) = scim.admin(Method::GET, "/sso/idp/scim/pending", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            pending["pending"][0]["team"].as_str(),
            pending["pending"][0]["value"].as_str()
        ),
        (Some(gid.as_str()), Some("late-user"))
    );
    // The user appears (externalId "late-user"): the membership applies and stops pending.
    let (status, late) = scim
        .call(
            Method::POST,
            "/Users",
            Some(entra_user("late@acme.io", "late-user")),
        )
        .await;
    assert_eq!(status, 201);
    let late_id = late["id"].as_str().unwrap().to_owned();
    let (_, body) = scim
        .call(Method::GET, &format!("/Groups/{gid}"), None)
        .await;
    assert_eq!(
        body["members"],
        json!(sorted(&[&ids[0], &ids[2], &ids[3], &late_id]))
    );
    let (_, pending) = scim.admin(Method::GET, "/sso/idp/scim/pending", None).await;
    assert_eq!(pending, json!({ "pending": [] }));

    // Remove by filter, then replace exactly, then clear.
    let (status, body) = scim
        .call(
            Method::PATCH,
            &format!("/Groups/{gid}"),
            Some(patch(
                json!([{ "op": "Remove", "path": format!("members[value eq \"{}\"]", ids[0]) }]),
            )),
        )
        .await;
    assert_eq!(
        (status, body["members"].clone()),
        (200, json!(sorted(&[&ids[2], &ids[3], &late_id])))
    );
    let (status, body) = scim
        .call(
            Method::PATCH,
            &format!("/Groups/{gid}"),
            Some(patch(
                json!([{ "op": "Replace", "path": "members", "value": [{ "value": ids[1] }] }]),
            )),
        )
        .await;
    assert_eq!(
        (status, body["members"].clone()),
        (200, json!([member(&ids[1])]))
    );
    let (status, body) = scim
        .call(
            Method::PATCH,
            &format!("/Groups/{gid}"),
            Some(patch(json!([{ "op": "Remove", "path": "members" }]))),
        )
        .await;
    assert_eq!((status, body["members"].clone()), (200, json!([])));

    // Deactivated members stay listed (and carry no access).
    let (status, _) = scim
        .call(
            Method::PATCH,
            &format!("/Groups/{gid}"),
            Some(patch(
                json!([{ "op": "Add", "path": "members", "value": [{ "value": ids[2] }] }]),
            )),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = scim
        .call(
            Method::PATCH,
            &format!("/Users/{}", ids[2]),
            Some(patch(
                json!([{ "op": "Replace", "path": "active", "value": "False" }]),
            )),
        )
        .await;
    assert_eq!(status, 200);
    let (_, body) = scim
        .call(Method::GET, &format!("/Groups/{gid}"), None)
        .await;
    assert_eq!(body["members"], json!([member(&ids[2])]));

    let (status, body) = scim
        .call(Method::DELETE, &format!("/Groups/{gid}"), None)
        .await;
    assert_eq!((status, body), (204, Value::Null));
}

/// Entra's group provisioning with directory group names: POST with an `externalId`,
/// capitalised `Add`, `Remove` with a value list, the path `displayName` `Replace`, and a
/// PUT rename.
#[tokio::test]
async fn entra_groups_with_directory_names() {
    let scim = Scim::start().await;
    group_names_flow(
        &scim,
        &GroupShapes {
            create: |display, n| json!({ "schemas": [GROUP], "externalId": format!("8aa1a0c0-0000-4bc0-b4a5-00000000000{n}"), "displayName": display, "members": [] }),
            add: |ids| {
                let members: Vec<Value> = ids.iter().map(|id| json!({ "value": id })).collect();
                patch(json!([{ "op": "Add", "path": "members", "value": members }]))
            },
            remove: |id| patch(json!([{ "op": "Remove", "path": "members", "value": [{ "value": id }] }])),
            rename: |_, display| patch(json!([{ "op": "Replace", "path": "displayName", "value": display }])),
        },
    )
    .await;
}
