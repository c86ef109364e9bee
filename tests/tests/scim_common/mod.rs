//! Shared setup of the SCIM tests: a tenant in `scim` mode with an SSO configuration and
//! its SCIM token, a client that speaks `application/scim+json`, and exact-body checks
//! that pin every field but the server-made ones (ids, timestamps), which are checked for
//! shape instead.
#![allow(dead_code)]

use gatehouse_tests::{TestServer, OPERATOR_TOKEN};
use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::{json, Value};

pub const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
pub const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
pub const LIST: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
pub const PATCH: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
pub const ERROR: &str = "urn:ietf:params:scim:api:messages:2.0:Error";

/// A server with tenant `acme` (admin `admin@acme.io`) and SCIM connection `idp`.
pub struct Scim {
    pub server: TestServer,
    pub admin: String,
    pub token: String,
    pub base: String,
}

impl Scim {
    pub async fn start() -> Scim {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut gatehouse::config::Config)) -> Scim {
        let server = TestServer::start_with(tweak).await;
        let admin = server
            .create_tenant_with_admin("acme", "admin@acme.io")
            .await;
        let token = connect(&server, "acme", "idp").await;
        let (status, body) = server
            .call(
                Method::PUT,
                "/api/v1/tenants/acme/provisioning",
                Some(&admin),
                Some(&json!({ "mode": "scim" })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        Scim {
            server,
            admin,
            token,
            base: "/scim/v2/acme/idp".into(),
        }
    }

    /// A SCIM request with the connection's token; status, headers, JSON body (null when
    /// empty).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, HeaderMap, Value) {
        self.send_as(Some(&self.token), method, path, body).await
    }

    pub async fn send_as(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, HeaderMap, Value) {
        self.send_at(&self.base, token, method, path, body).await
    }

    /// A request to another connection's endpoint `base`.
    pub async fn send_at(
        &self,
        base: &str,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, HeaderMap, Value) {
        let mut request = self
            .server
            .client
            .request(method, format!("{}{base}{path}", self.server.base))
            .header("accept", "application/scim+json");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/scim+json; charset=utf-8")
                .body(body.to_string());
        }
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status} {text}: {e}"))
        };
        if !text.is_empty() {
            assert_eq!(
                headers["content-type"], "application/scim+json",
                "{status} {body}"
            );
        }
        (status, headers, body)
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, _, body) = self.send(method, path, body).await;
        (status, body)
    }

    /// An admin API call (tenant admin token).
    pub async fn admin(&self, method: Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.server
            .call(
                method,
                &format!("/api/v1/tenants/acme{path}"),
                Some(&self.admin),
                body,
            )
            .await
    }
}

/// Creates SSO configuration `sso` in `tenant` and returns its SCIM token.
pub async fn connect(server: &TestServer, tenant: &str, sso: &str) -> String {
    let (status, body) = server
        .call(
            Method::POST,
            &format!("/api/v1/tenants/{tenant}/sso"),
            Some(OPERATOR_TOKEN),
            Some(&json!({
                "id": sso, "issuer": format!("https://{sso}.example.com"), "client_id": "gatehouse",
                "jwks_uri": "https://203.0.113.10/jwks"
            })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = server
        .call(
            Method::POST,
            &format!("/api/v1/tenants/{tenant}/sso/{sso}/scim-token"),
            Some(OPERATOR_TOKEN),
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

/// Checks `meta` of a resource (location, type, RFC 3339 times, weak version) and
/// returns the resource without it, for an exact comparison of everything else.
pub fn without_meta(resource: &Value, base: &str) -> Value {
    let meta = &resource["meta"];
    let kind = meta["resourceType"]
        .as_str()
        .unwrap_or_else(|| panic!("no meta: {resource}"));
    let plural = match kind {
        "User" => "Users",
        "Group" => "Groups",
        other => panic!("resource type {other}"),
    };
    let id = resource["id"].as_str().unwrap();
    assert_eq!(meta["location"], format!("{base}/{plural}/{id}"));
    for at in ["created", "lastModified"] {
        let text = meta[at].as_str().unwrap();
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("{at} {text}: {e}"));
    }
    let version = meta["version"].as_str().unwrap();
    assert!(
        version.starts_with("W/\"")
            && version.ends_with('"')
            && version[3..version.len() - 1]
                .chars()
                .all(|c| c.is_ascii_digit()),
        "{version}"
    );
    let mut rest = resource.clone();
    rest.as_object_mut().unwrap().remove("meta");
    rest
}

/// A SCIM error body.
pub fn error(status: u16, scim_type: Option<&str>, detail: &str) -> Value {
    let mut body = json!({ "schemas": [ERROR], "status": status.to_string(), "detail": detail });
    if let Some(kind) = scim_type {
        body["scimType"] = json!(kind);
    }
    body
}

/// An empty list response.
pub fn empty_list() -> Value {
    json!({ "schemas": [LIST], "totalResults": 0, "startIndex": 1, "itemsPerPage": 0, "Resources": [] })
}

/// A PATCH body.
pub fn patch(operations: Value) -> Value {
    json!({ "schemas": [PATCH], "Operations": operations })
}
