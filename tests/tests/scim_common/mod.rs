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

/// How an identity provider shapes the group requests of [`group_names_flow`].
pub struct GroupShapes {
    /// The POST body of a new, empty group.
    pub create: fn(display: &str, n: usize) -> Value,
    /// A PATCH body adding these user ids.
    pub add: fn(ids: &[&str]) -> Value,
    /// A PATCH body removing one user id.
    pub remove: fn(id: &str) -> Value,
    /// A PATCH body renaming group `gid`.
    pub rename: fn(gid: &str, display: &str) -> Value,
}

/// The team name the default rule gives a display name that collides with another team's:
/// the cut base, `-`, six hex digits of SHA-256 over the display name.
pub fn suffixed(base: &str, display: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(display.as_bytes());
    let hex: String = digest[..3].iter().map(|b| format!("{b:02x}")).collect();
    format!("{base}-{hex}")
}

/// Percent-encodes a query parameter value (a filter).
pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Groups as directories name them (SPEC §7): `Data Science`, `Engineering (EU)`,
/// `Ingeniería` and `Data/Science` (which normalises to the same team name as `Data
/// Science`) are created, found by a `displayName` filter, given and relieved of members,
/// and renamed by PATCH and by PUT; the display names come back exactly, the team names
/// follow the default rule (a collision gets the deterministic suffix), the members
/// inherit the team's role, and the admin API and the audit log show both names.
pub async fn group_names_flow(scim: &Scim, shapes: &GroupShapes) {
    let mut users = Vec::new();
    for n in ["ana", "ben", "cy"] {
        let (status, body) = scim
            .call(
                Method::POST,
                "/Users",
                Some(json!({
                    "schemas": [USER], "userName": format!("{n}@acme.io"), "active": true,
                    "emails": [{ "value": format!("{n}@acme.io"), "primary": true }]
                })),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        users.push(body["id"].as_str().unwrap().to_owned());
    }
    let names = [
        ("Data Science", "Data-Science".to_owned()),
        ("Engineering (EU)", "Engineering-EU".to_owned()),
        ("Ingeniería", "Ingenier-a".to_owned()),
        ("Data/Science", suffixed("Data-Science", "Data/Science")),
    ];
    let mut gids = Vec::new();
    for (n, (display, team)) in names.iter().enumerate() {
        let (status, body) = scim
            .call(Method::POST, "/Groups", Some((shapes.create)(display, n)))
            .await;
        assert_eq!(status, 201, "{display}: {body}");
        assert_eq!(body["displayName"], *display, "{body}");
        let gid = body["id"].as_str().unwrap().to_owned();
        let (status, view) = scim
            .admin(Method::GET, &format!("/teams/{gid}"), None)
            .await;
        assert_eq!(status, 200, "{view}");
        assert_eq!(
            (view["name"].as_str(), view["display_name"].as_str()),
            (Some(team.as_str()), Some(*display)),
            "{view}"
        );
        gids.push(gid);
    }
    // The same display name again (any case) is refused, naming the group that has it.
    let (status, body) = scim
        .call(
            Method::POST,
            "/Groups",
            Some((shapes.create)("data science", 9)),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["scimType"], "uniqueness", "{body}");

    // Filters on displayName find each group, case-insensitively, accents and all.
    for (filter, gid) in [
        ("displayName eq \"Engineering (EU)\"", &gids[1]),
        ("displayName eq \"INGENIERÍA\"", &gids[2]),
        ("displayName eq \"Data/Science\"", &gids[3]),
    ] {
        let (status, body) = scim
            .call(
                Method::GET,
                &format!(
                    "/Groups?filter={}&excludedAttributes=members",
                    encode(filter)
                ),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["totalResults"], 1, "{filter}: {body}");
        assert_eq!(body["Resources"][0]["id"], json!(gid), "{filter}: {body}");
    }
    let (_, body) = scim
        .call(
            Method::GET,
            &format!(
                "/Groups?filter={}",
                encode("displayName eq \"Data-Science\"")
            ),
            None,
        )
        .await;
    assert_eq!(
        body["totalResults"], 0,
        "the team name is not the display name: {body}"
    );

    // Members inherit the team's role; removing one takes it away.
    let (status, body) = scim
        .admin(
            Method::PATCH,
            &format!("/teams/{}", gids[0]),
            Some(&json!({ "role": "admin" })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let ids: Vec<&str> = users.iter().map(String::as_str).collect();
    for (gid, members) in [(&gids[0], &ids[..2]), (&gids[2], &ids[1..])] {
        let (status, body) = scim
            .call(
                Method::PATCH,
                &format!("/Groups/{gid}"),
                Some((shapes.add)(members)),
            )
            .await;
        assert!(status == 200 || status == 204, "{status} {body}");
    }
    let role = |id: &str| {
        let id = id.to_owned();
        async move {
            let (_, user) = scim.admin(Method::GET, &format!("/users/{id}"), None).await;
            (
                user["role"].as_str().unwrap().to_owned(),
                user["role_source"].as_str().unwrap().to_owned(),
            )
        }
    };
    assert_eq!(role(ids[0]).await, ("admin".into(), "group".into()));
    assert_eq!(role(ids[1]).await, ("admin".into(), "group".into()));
    assert_eq!(role(ids[2]).await, ("member".into(), "initial".into()));
    let (status, body) = scim
        .call(
            Method::PATCH,
            &format!("/Groups/{}", gids[0]),
            Some((shapes.remove)(ids[0])),
        )
        .await;
    assert!(status == 200 || status == 204, "{status} {body}");
    assert_eq!(role(ids[0]).await, ("member".into(), "initial".into()));

    // Rename by PATCH renames both names; members and role stay.
    let (status, body) = scim
        .call(
            Method::PATCH,
            &format!("/Groups/{}", gids[0]),
            Some((shapes.rename)(&gids[0], "Data Science (old)")),
        )
        .await;
    assert!(status == 200 || status == 204, "{status} {body}");
    let (_, view) = scim
        .admin(Method::GET, &format!("/teams/{}", gids[0]), None)
        .await;
    assert_eq!(
        (
            view["name"].as_str(),
            view["display_name"].as_str(),
            view["role"].as_str()
        ),
        (
            Some("Data-Science-old"),
            Some("Data Science (old)"),
            Some("admin")
        ),
        "{view}"
    );
    assert_eq!(view["members"], json!([ids[1]]), "{view}");
    assert_eq!(role(ids[1]).await, ("admin".into(), "group".into()));

    // Rename by PUT: `Data/Science` now gets the freed name without a suffix.
    let (status, body) = scim
        .call(
            Method::PUT,
            &format!("/Groups/{}", gids[3]),
            Some(json!({ "schemas": [GROUP], "id": gids[3], "displayName": "Data Science", "members": [{ "value": ids[2] }] })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["displayName"], "Data Science", "{body}");
    let (_, view) = scim
        .admin(Method::GET, &format!("/teams/{}", gids[3]), None)
        .await;
    assert_eq!(
        (view["name"].as_str(), view["display_name"].as_str()),
        (Some("Data-Science"), Some("Data Science")),
        "{view}"
    );
    assert_eq!(view["members"], json!([ids[2]]), "{view}");
    let (_, body) = scim
        .call(
            Method::GET,
            &format!(
                "/Groups?filter={}",
                encode("displayName eq \"data science\"")
            ),
            None,
        )
        .await;
    assert_eq!(body["totalResults"], 1, "{body}");
    assert_eq!(body["Resources"][0]["id"], json!(gids[3]), "{body}");
    assert_eq!(
        body["Resources"][0]["members"][0]["value"],
        json!(ids[2]),
        "{body}"
    );

    // Every team, by both names, in the admin list.
    let (_, teams) = scim.admin(Method::GET, "/teams", None).await;
    let mut listed: Vec<(String, String, usize)> = teams["teams"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["scim"].is_object())
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_owned(),
                t["display_name"].as_str().unwrap().to_owned(),
                t["members"].as_array().unwrap().len(),
            )
        })
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            ("Data-Science".into(), "Data Science".into(), 1),
            ("Data-Science-old".into(), "Data Science (old)".into(), 1),
            ("Engineering-EU".into(), "Engineering (EU)".into(), 0),
            ("Ingenier-a".into(), "Ingeniería".into(), 2),
        ]
    );

    // The audit log shows both names before and after each rename.
    let (_, audit) = scim.admin(Method::GET, "/audit?limit=1000", None).await;
    let renames: Vec<(Value, Value)> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "scim.group.patch" || e["action"] == "scim.group.replace")
        .filter(|e| e["before"]["name"] != e["after"]["name"])
        .map(|e| {
            (
                json!([e["before"]["name"], e["before"]["display_name"]]),
                json!([e["after"]["name"], e["after"]["display_name"]]),
            )
        })
        .collect();
    let data_slash = suffixed("Data-Science", "Data/Science");
    assert_eq!(
        renames,
        [
            (
                json!(["Data-Science", "Data Science"]),
                json!(["Data-Science-old", "Data Science (old)"])
            ),
            (
                json!([data_slash, "Data/Science"]),
                json!(["Data-Science", "Data Science"])
            ),
        ]
    );
}

/// The membership report of a group write (header `Gatehouse-Scim-Membership-Report`,
/// JSON), or null when the answer has none.
pub fn report(headers: &HeaderMap) -> Value {
    headers
        .get("gatehouse-scim-membership-report")
        .map(|v| serde_json::from_str(v.to_str().unwrap()).unwrap())
        .unwrap_or(Value::Null)
}
