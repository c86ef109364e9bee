//! The admin API's OpenAPI document (`GET /api/v1/openapi.json`): a snapshot of it, its
//! inner consistency, and that it describes exactly the routes the router serves — read
//! from the router's source and probed on a real server.

use gatehouse_tests::{fixtures, TestServer};
use reqwest::Method;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Methods the admin API uses; HEAD and OPTIONS are axum's own.
const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// Tags an operation may carry.
const TAGS: &[&str] = &[
    "health",
    "edges",
    "tenants",
    "policies",
    "users",
    "teams",
    "tokens",
    "virtual-accounts",
    "identity-providers",
    "sso",
    "resources",
    "migration",
    "audit",
    "edge",
    "login",
];

/// Routes that answer every method (`any(...)`), documented as GET.
const ANY_METHOD: [&str; 2] = [
    "/v1/{tenant}/forward-auth",
    "/v1/{tenant}/forward-auth/{path}",
];

/// Routes that need no token.
const PUBLIC: [&str; 11] = [
    "/healthz",
    "/readyz",
    "/metrics",
    "/api/v1/openapi.json",
    "/v1/{tenant}/sso/{sso_id}/login",
    "/v1/{tenant}/sso/{sso_id}/callback",
    "/v1/{tenant}/sso/{sso_id}/token-login",
    "/v1/{tenant}/password",
    "/v1/{tenant}/password-login",
    "/v1/{tenant}/login",
    "/v1/{tenant}/logout",
];

/// The login routes (public; the probe's tenant does not exist, so they answer 404,
/// or 400 for a POST's missing body; a set-password link page answers 410, the same as
/// for any unusable link; logout has no body and answers 404).
const LOGIN: [&str; 7] = [
    "/v1/{tenant}/sso/{sso_id}/login",
    "/v1/{tenant}/sso/{sso_id}/callback",
    "/v1/{tenant}/sso/{sso_id}/token-login",
    "/v1/{tenant}/password",
    "/v1/{tenant}/password-login",
    "/v1/{tenant}/login",
    "/v1/{tenant}/logout",
];

fn document() -> Value {
    serde_json::from_str(gatehouse::http::openapi_json()).expect("the document is JSON")
}

/// `(method, path)` of every documented operation, with the operation.
fn operations(doc: &Value) -> BTreeMap<(String, String), Value> {
    let mut operations = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().expect("paths is an object") {
        for (method, operation) in item.as_object().expect("a path item is an object") {
            assert!(
                METHODS.contains(&method.as_str()),
                "{path}: unexpected key {method} in a path item"
            );
            operations.insert((method.clone(), path.clone()), operation.clone());
        }
    }
    operations
}

/// `(method, path)` of every `.route("...", ...)` in `text`, `prefix` prepended.
fn routes_in(text: &str, prefix: &str) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find(".route(") {
        rest = &rest[at + ".route(".len()..];
        let args = rest.trim_start();
        let path_and_more = args
            .strip_prefix('"')
            .expect("a route's path is a string literal");
        let (path, _) = path_and_more.split_once('"').expect("closing quote");
        // A catch-all `{*name}` is documented as the parameter `{name}`.
        let path = &path.replace("{*", "{");
        // The route's arguments run to the parenthesis that closes `.route(`.
        let mut depth = 1;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .map(|(i, _)| i)
            .expect("balanced parentheses");
        let method_router = &rest[..end];
        let mut found = false;
        // `any(handler)` answers every method; it is documented once, as GET.
        if method_router.contains("any(") {
            assert!(
                ANY_METHOD.contains(&format!("{prefix}{path}").as_str()),
                "{path}: any()"
            );
            routes.insert(("get".to_owned(), format!("{prefix}{path}")));
            found = true;
        }
        for method in METHODS {
            let call = format!("{method}(");
            let mut from = 0;
            while let Some(i) = method_router[from..].find(&call) {
                let start = from + i;
                let before = method_router[..start].chars().next_back();
                if !before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    routes.insert((method.to_owned(), format!("{prefix}{path}")));
                    found = true;
                }
                from = start + call.len();
            }
        }
        assert!(found, "no method found for route {path}");
        rest = &rest[end..];
    }
    routes
}

/// Every `(method, path)` the router's source declares.
fn routes_in_source() -> BTreeSet<(String, String)> {
    let dir = fixtures::root().join("host/src/http");
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let main = read("mod.rs");
    // `router()` builds the `/api/v1` routes as `api`, then nests them.
    assert!(
        main.contains(r#".nest("/api/v1", api)"#),
        "router() nests api"
    );
    let (outer_before, rest) = main
        .split_once("let api = Router::new()")
        .expect("router() builds `api`");
    let (api, outer_after) = rest.split_once(';').expect("the `api` statement ends");
    assert!(api.contains(".merge(identity::routes())"));
    assert!(api.contains(".merge(directory::routes())"));
    assert!(outer_after.contains(".merge(edge::routes())"));
    assert!(outer_after.contains(".merge(sso::routes())"));
    let mut routes = routes_in(outer_before, "");
    routes.extend(routes_in(outer_after, ""));
    routes.extend(routes_in(api, "/api/v1"));
    routes.extend(routes_in(&read("identity.rs"), "/api/v1"));
    routes.extend(routes_in(&read("directory.rs"), "/api/v1"));
    routes.extend(routes_in(&read("migration.rs"), "/api/v1"));
    routes.extend(routes_in(&read("edge.rs"), ""));
    routes.extend(routes_in(&read("sso.rs"), ""));
    assert!(outer_after.contains(".merge(password::routes())"));
    routes.extend(routes_in(&read("password.rs"), ""));
    // fleet.rs: the operator's `/api/v1/edges`, then the stream and the edge's own router.
    assert!(api.contains(".merge(fleet::admin_routes())"));
    assert!(outer_after.contains(".merge(fleet::stream_routes())"));
    let fleet = read("fleet.rs");
    let (fleet_admin, fleet_root) = fleet
        .split_once("pub(super) fn stream_routes")
        .expect("fleet.rs has the admin routes first");
    routes.extend(routes_in(fleet_admin, "/api/v1"));
    routes.extend(routes_in(fleet_root, ""));
    routes
}

/// Every `$ref` in `value`.
fn refs(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("$ref", Value::String(target)) => {
                        out.insert(target.clone());
                    }
                    _ => refs(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[test]
fn the_document_matches_its_snapshot() {
    let mut doc = document();
    // The version follows Cargo.toml; a release should not rewrite the snapshot.
    assert!(doc["info"]["version"]
        .as_str()
        .is_some_and(|v| !v.is_empty()));
    doc["info"]["version"] = Value::from("[version]");
    insta::assert_json_snapshot!("document", doc);
}

#[test]
fn the_document_describes_every_route_in_the_router_source() {
    let documented: BTreeSet<(String, String)> = operations(&document()).into_keys().collect();
    let declared = routes_in_source();
    assert!(
        declared.len() > 50,
        "the source scan found only {} routes",
        declared.len()
    );
    let undocumented: Vec<_> = declared.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&declared).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "routes without documentation: {undocumented:?}; documented but not routed: {unserved:?}"
    );
}

#[test]
fn the_document_is_consistent() {
    let doc = document();
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "openapi: {}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "Gatehouse admin API");
    let bearer = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(bearer["type"], "http", "{bearer}");
    assert_eq!(bearer["scheme"], "bearer", "{bearer}");
    let mut ids = BTreeSet::new();
    for ((method, path), operation) in operations(&doc) {
        let at = format!("{} {path}", method.to_uppercase());
        assert!(
            ids.insert(operation["operationId"].to_string()),
            "{at}: duplicate operationId"
        );
        let tags = operation["tags"].as_array().expect("tags");
        assert!(
            tags.len() == 1 && TAGS.contains(&tags[0].as_str().unwrap_or_default()),
            "{at}: tags {tags:?}"
        );
        assert!(
            operation["summary"].as_str().is_some_and(|s| !s.is_empty()),
            "{at}: no summary"
        );
        let responses = operation["responses"].as_object().expect("responses");
        assert!(
            // A login start succeeds with a redirect.
            responses
                .keys()
                .any(|status| status.starts_with('2') || status.starts_with('3')),
            "{at}: no success response"
        );
        // Path parameters: exactly the path's `{name}`s.
        let in_path: BTreeSet<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        let declared: BTreeSet<&str> = operation["parameters"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .filter(|p| p["in"] == "path")
                    .filter_map(|p| p["name"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(in_path, declared, "{at}: path parameters");
        if PUBLIC.contains(&path.as_str()) {
            assert!(operation.get("security").is_none(), "{at}: needs no token");
            continue;
        }
        assert_eq!(
            operation["security"],
            serde_json::json!([{ "bearer": [] }]),
            "{at}: bearer security"
        );
        for status in ["401", "500"] {
            assert!(responses.contains_key(status), "{at}: no {status}");
        }
        for (status, response) in responses {
            // The edge answers its refusals as `{decision, reason, message}` (gateways read
            // them); everything else (the edge fleet's stream too), and any 5xx, is a Problem.
            let edge_answer = path.starts_with("/v1/") && !path.starts_with("/v1/edge/");
            if edge_answer && status.starts_with('4') {
                assert_eq!(
                    response["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/EdgeDeny",
                    "{at}: {status} is an edge refusal"
                );
            } else if status.starts_with('4') || status.starts_with('5') {
                assert_eq!(
                    response["content"]["application/problem+json"]["schema"]["$ref"],
                    "#/components/schemas/Problem",
                    "{at}: {status} is a Problem"
                );
            }
        }
    }
    // Every reference resolves.
    let mut targets = BTreeSet::new();
    refs(&doc, &mut targets);
    assert!(targets.len() > 20, "only {} references", targets.len());
    for target in targets {
        let pointer = target
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{target} is not local"));
        assert!(doc.pointer(pointer).is_some(), "{target} does not resolve");
    }
}

/// `path` with each `{param}` filled in.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|segment| match segment {
            "{tenant}" => "acme",
            s if s.starts_with('{') => "x1",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn the_served_document_matches_what_the_server_answers() {
    let server = TestServer::start().await;
    let response = server
        .client
        .get(format!("{}/api/v1/openapi.json", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "the document needs no token");
    assert_eq!(response.headers()["content-type"], "application/json");
    let doc: Value = response.json().await.unwrap();
    assert_eq!(doc, document(), "the served document is the built one");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    let documented = operations(&doc);
    assert!(documented.len() > 50, "{} operations", documented.len());

    // Known routes, a sample of each part of the router.
    for (method, path) in [
        ("get", "/healthz"),
        ("post", "/api/v1/tenants"),
        ("post", "/api/v1/tenants/{tenant}/policy/versions"),
        ("get", "/api/v1/tenants/{tenant}/users"),
        (
            "delete",
            "/api/v1/tenants/{tenant}/users/{user}/tokens/{token}",
        ),
        ("patch", "/api/v1/tenants/{tenant}/teams/{team}/members"),
        ("get", "/api/v1/tenants/{tenant}/audit"),
        (
            "post",
            "/api/v1/tenants/{tenant}/virtual-accounts/{va}/tokens",
        ),
        ("put", "/api/v1/tenants/{tenant}/identity-providers/{idp}"),
        ("post", "/api/v1/tenants/{tenant}/sso/{sso}/scim-token"),
        (
            "put",
            "/api/v1/tenants/{tenant}/resources/{resource}/collaborators",
        ),
    ] {
        assert!(
            documented.contains_key(&(method.to_owned(), path.to_owned())),
            "{method} {path} is not documented"
        );
    }

    // Every documented operation is served, and answers (without a token) one of the
    // statuses it documents; every other method on a documented path is 405.
    let paths: BTreeSet<&String> = documented.keys().map(|(_, path)| path).collect();
    for path in paths {
        let url = format!("{}{}", server.base, concrete(path));
        for method in METHODS {
            let key = (method.to_owned(), path.clone());
            let response = server
                .client
                .request(
                    Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                    &url,
                )
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let at = format!("{} {path}", method.to_uppercase());
            match documented.get(&key) {
                None if ANY_METHOD.contains(&path.as_str()) => {
                    assert_eq!(status, 401, "{at}: any method is evaluated")
                }
                None => assert_eq!(status, 405, "{at} is not documented but answers {status}"),
                Some(operation) => {
                    assert_ne!(status, 405, "{at} is documented but not served");
                    let body = response.text().await.unwrap();
                    assert!(
                        !body.contains("route not found"),
                        "{at} is documented but not routed"
                    );
                    assert!(
                        operation["responses"].get(status.to_string()).is_some(),
                        "{at} answered {status}, which it does not document: {body}"
                    );
                    let expected = if LOGIN.contains(&path.as_str()) {
                        if method == "post" && path != "/v1/{tenant}/logout" {
                            400
                        } else if path == "/v1/{tenant}/password" {
                            410
                        } else {
                            404
                        }
                    } else if PUBLIC.contains(&path.as_str()) {
                        200
                    } else {
                        401
                    };
                    assert_eq!(status, expected, "{at} without a token: {body}");
                }
            }
        }
    }
    server.stop().await;
}
