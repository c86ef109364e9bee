//! SSO login (SPEC §2, §3) against OpenID providers on loopback.
//!
//! Most tests log in at a real, certified provider: panva's `oidc-provider` run by Node
//! (`gatehouse_tests::openid`), where the test signs in on the provider's own sign-in page
//! as a person would. Faults a correct provider never produces — an ID token for another
//! audience or nonce, an expired one — and counting the provider's requests need a provider
//! the test controls: the scripted one below (discovery, JWKS, an authorization endpoint that
//! redirects back with a one-time code, a token endpoint checking client authentication, the
//! redirect URI and PKCE S256, answering ID tokens signed with the fixture keys).

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use gatehouse_tests::openid::OpenIdProvider;
use gatehouse_tests::{TestServer, OPERATOR_TOKEN};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const OP: Option<&str> = Some(OPERATOR_TOKEN);
const CLIENT_ID: &str = "gatehouse-app";
const CLIENT_SECRET: &str = "client-secret-for-tests";
const FRONT_END_ID: &str = "front-end-app";
const FRONT_END_CALLBACK: &str = "http://127.0.0.1:9/front-end/callback";

fn keys_dir() -> std::path::PathBuf {
    gatehouse_tests::fixtures::root().join("tests/fixtures/keys")
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Faults the provider can inject into the next ID tokens.
#[derive(Default, Clone)]
struct Faults {
    audience: Option<String>,
    nonce: Option<String>,
    /// Added to `exp` (negative: expired).
    exp_shift: i64,
}

/// A code the provider handed out, waiting for the token request.
struct Grant {
    redirect_uri: String,
    challenge: String,
    nonce: String,
    claims: Value,
}

#[derive(Default)]
struct ProviderState {
    issuer: String,
    /// Who logs in next: claims merged into the ID token.
    user: Value,
    faults: Faults,
    codes: HashMap<String, Grant>,
    token_requests: usize,
    discovery_requests: usize,
}

/// The scripted OpenID provider on loopback.
struct Provider {
    issuer: String,
    state: Arc<Mutex<ProviderState>>,
}

impl Provider {
    async fn start() -> Provider {
        use axum::extract::{Query, State};
        use axum::http::{HeaderMap, StatusCode};
        use axum::response::{IntoResponse, Redirect};
        use axum::routing::{get, post};
        type St = State<Arc<Mutex<ProviderState>>>;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(ProviderState {
            issuer: issuer.clone(),
            ..Default::default()
        }));
        async fn discovery(State(s): St) -> impl IntoResponse {
            let issuer = {
                let mut st = s.lock().unwrap();
                st.discovery_requests += 1;
                st.issuer.clone()
            };
            // Short on purpose: Gatehouse clamps it to `edge.jwks_min_ttl_secs`.
            let cache = [("cache-control", "public, max-age=1")];
            (
                cache,
                axum::Json(json!({
                    "issuer": issuer,
                    "authorization_endpoint": format!("{issuer}/authorize"),
                    "token_endpoint": format!("{issuer}/token"),
                    "jwks_uri": format!("{issuer}/jwks"),
                    "response_types_supported": ["code"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "code_challenge_methods_supported": ["S256"],
                })),
            )
        }
        async fn jwks() -> impl IntoResponse {
            let all: Value = serde_json::from_str(
                &std::fs::read_to_string(keys_dir().join("jwks.json")).unwrap(),
            )
            .unwrap();
            axum::Json(json!({ "keys": [all["rsa-a"]] }))
        }
        async fn authorize(
            State(s): St,
            Query(q): Query<HashMap<String, String>>,
        ) -> axum::response::Response {
            let get = |k: &str| q.get(k).cloned().unwrap_or_default();
            if get("response_type") != "code"
                || get("client_id") != CLIENT_ID
                || get("code_challenge_method") != "S256"
                || get("code_challenge").is_empty()
                || get("state").is_empty()
                || get("nonce").is_empty()
                || !get("scope").split(' ').any(|s| s == "openid")
            {
                return (StatusCode::BAD_REQUEST, "bad authorization request").into_response();
            }
            let code = URL_SAFE_NO_PAD.encode(rand_bytes());
            let mut st = s.lock().unwrap();
            let claims = st.user.clone();
            st.codes.insert(
                code.clone(),
                Grant {
                    redirect_uri: get("redirect_uri"),
                    challenge: get("code_challenge"),
                    nonce: get("nonce"),
                    claims,
                },
            );
            let mut to = reqwest::Url::parse(&get("redirect_uri")).unwrap();
            to.query_pairs_mut()
                .append_pair("code", &code)
                .append_pair("state", &get("state"));
            Redirect::to(to.as_str()).into_response()
        }
        async fn token(
            State(s): St,
            headers: HeaderMap,
            axum::Form(form): axum::Form<HashMap<String, String>>,
        ) -> axum::response::Response {
            let refuse = |error: &str| {
                (
                    StatusCode::BAD_REQUEST,
                    axum::Json(json!({ "error": error })),
                )
                    .into_response()
            };
            let expected = format!(
                "Basic {}",
                STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"))
            );
            if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&expected) {
                return (
                    StatusCode::UNAUTHORIZED,
                    axum::Json(json!({ "error": "invalid_client" })),
                )
                    .into_response();
            }
            let get = |k: &str| form.get(k).cloned().unwrap_or_default();
            if get("grant_type") != "authorization_code" {
                return refuse("unsupported_grant_type");
            }
            let mut st = s.lock().unwrap();
            st.token_requests += 1;
            // One-time: a code is gone after its first use, right or wrong.
            let Some(grant) = st.codes.remove(&get("code")) else {
                return refuse("invalid_grant");
            };
            let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(get("code_verifier").as_bytes()));
            if grant.redirect_uri != get("redirect_uri") || grant.challenge != challenge {
                return refuse("invalid_grant");
            }
            let faults = st.faults.clone();
            let mut claims = json!({
                "iss": st.issuer,
                "aud": faults.audience.unwrap_or_else(|| CLIENT_ID.into()),
                "iat": now(),
                "exp": now() + 300 + faults.exp_shift,
                "nonce": faults.nonce.unwrap_or(grant.nonce),
            });
            for (k, v) in grant.claims.as_object().unwrap() {
                claims[k] = v.clone();
            }
            axum::Json(json!({
                "access_token": "opaque-access-token",
                "token_type": "Bearer",
                "expires_in": 300,
                "id_token": sign(&claims),
            }))
            .into_response()
        }
        let app = axum::Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Provider { issuer, state }
    }

    fn login_as(&self, email: &str, sub: &str) {
        self.state.lock().unwrap().user =
            json!({ "email": email, "sub": sub, "name": format!("Person {sub}") });
    }

    fn faults(&self, faults: Faults) {
        self.state.lock().unwrap().faults = faults;
    }
}

/// Unguessable enough for a test provider, and never repeated within a run.
fn rand_bytes() -> [u8; 24] {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let seed = Sha256::digest(format!("{n}:{:?}", std::time::SystemTime::now()));
    let mut bytes = [0u8; 24];
    bytes.copy_from_slice(&seed[..24]);
    bytes
}

/// An ID token signed with the fixture key the provider's JWKS publishes.
fn sign(claims: &Value) -> String {
    let pem = std::fs::read(keys_dir().join("rsa-a.pem")).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-a".into());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap()
}

/// Which provider a test logs in at.
enum Idp {
    /// `oidc-provider`, the certified one.
    Certified(OpenIdProvider),
    /// The scripted one, for faults and request counts.
    Scripted(Provider),
}

impl Idp {
    fn issuer(&self) -> &str {
        match self {
            Idp::Certified(p) => &p.issuer,
            Idp::Scripted(p) => &p.issuer,
        }
    }

    fn scripted(&self) -> &Provider {
        match self {
            Idp::Scripted(p) => p,
            Idp::Certified(_) => panic!("this test needs the scripted provider"),
        }
    }
}

/// Gatehouse with tenant `acme` (SSO configuration `corp` at the provider) and `other`.
struct World {
    server: TestServer,
    idp: Idp,
    /// Follows no redirects (the test walks the flow); keeps cookies like a browser.
    browser: reqwest::Client,
}

/// At the certified provider.
async fn world() -> World {
    world_with(true, |_| {}).await
}

/// At the scripted provider.
async fn world_scripted() -> World {
    world_with(false, |_| {}).await
}

async fn world_with(certified: bool, tweak: impl FnOnce(&mut gatehouse::config::Config)) -> World {
    let server = TestServer::start_with(|config| {
        config.allow_private_urls = true;
        config.edge.jwks_fetch_timeout_ms = 2000;
        tweak(config);
    })
    .await;
    let idp = if certified {
        let callbacks: Vec<String> = ["acme", "other"]
            .iter()
            .map(|t| format!("{}/v1/{t}/sso/corp/callback", server.base))
            .collect();
        Idp::Certified(
            OpenIdProvider::start(&[
                json!({
                    "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                    "redirect_uris": callbacks,
                }),
                // A trusted front end that signs people in itself and hands Gatehouse the
                // ID token (`/token-login`).
                json!({
                    "client_id": FRONT_END_ID, "client_secret": CLIENT_SECRET,
                    "redirect_uris": [FRONT_END_CALLBACK],
                }),
            ])
            .await,
        )
    } else {
        Idp::Scripted(Provider::start().await)
    };
    server
        .create_tenant_with_admin("acme", "root@acme.io")
        .await;
    server
        .create_tenant_with_admin("other", "root@other.io")
        .await;
    add_sso(
        &server,
        "acme",
        json!({
            "id": "corp", "issuer": idp.issuer(), "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "discovery_url": format!("{}/.well-known/openid-configuration", idp.issuer()),
        }),
    )
    .await;
    World {
        server,
        idp,
        browser: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .cookie_store(true)
            .build()
            .unwrap(),
    }
}

/// Adds an SSO configuration to `tenant` through the admin API.
async fn add_sso(server: &TestServer, tenant: &str, config: Value) {
    let (status, body) = server
        .call(
            Method::POST,
            &format!("/api/v1/tenants/{tenant}/sso"),
            OP,
            Some(&config),
        )
        .await;
    assert!(status == 200 || status == 201, "{status} {body}");
}

fn location(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("location")
        .expect("a Location header")
        .to_str()
        .unwrap()
        .to_owned()
}

impl World {
    async fn set_mode(&self, mode: &str) {
        let (status, body) = self
            .server
            .call(
                Method::PUT,
                "/api/v1/tenants/acme/provisioning",
                OP,
                Some(&json!({ "mode": mode })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    /// Starts a login at Gatehouse and lets the provider log `email` in; returns the
    /// callback URL the provider redirected to (not yet visited).
    async fn start(&self, email: &str, sub: &str, return_to: &str) -> String {
        let response = self
            .browser
            .get(format!(
                "{}/v1/acme/sso/corp/login?return_to={return_to}",
                self.server.base
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 302, "{}", response.text().await.unwrap());
        let authorize = location(&response);
        assert!(authorize.starts_with(self.idp.issuer()), "{authorize}");
        assert!(authorize.contains("code_challenge_method=S256"));
        let callback = match &self.idp {
            Idp::Certified(idp) => {
                idp.sign_in(&authorize, sub, email, &format!("Person {sub}"))
                    .await
            }
            Idp::Scripted(idp) => {
                idp.login_as(email, sub);
                let response = self.browser.get(&authorize).send().await.unwrap();
                assert!(response.status().is_redirection(), "{}", response.status());
                location(&response)
            }
        };
        assert!(callback.starts_with(&format!("{}/v1/acme/sso/corp/callback?", self.server.base)));
        callback
    }

    /// Visits a callback URL as an API client; returns status and JSON.
    async fn finish(&self, callback: &str) -> (u16, Value) {
        let response = self
            .browser
            .get(callback)
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn login(&self, email: &str, sub: &str) -> (u16, Value) {
        let callback = self.start(email, sub, "/").await;
        self.finish(&callback).await
    }

    /// Creates a user in state `state` (`invited`, `active`, `deactivated`); returns its id.
    async fn user(&self, email: &str, state: &str) -> String {
        let (status, body) = self
            .server
            .call(
                Method::POST,
                "/api/v1/tenants/acme/users",
                OP,
                Some(&json!({ "email": email })),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let id = body["id"].as_str().unwrap().to_owned();
        for action in match state {
            "invited" => &[][..],
            "active" => &["reactivate"][..],
            _ => &["reactivate", "deactivate"][..],
        } {
            let (status, body) = self
                .server
                .call(
                    Method::POST,
                    &format!("/api/v1/tenants/acme/users/{id}/{action}"),
                    OP,
                    Some(&json!({})),
                )
                .await;
            assert_eq!(status, 200, "{action}: {body}");
        }
        id
    }

    async fn user_record(&self, id: &str) -> Value {
        let (status, body) = self
            .server
            .call(
                Method::GET,
                &format!("/api/v1/tenants/acme/users/{id}"),
                OP,
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    async fn users_with(&self, email: &str) -> Vec<Value> {
        let (status, body) = self
            .server
            .call(
                Method::GET,
                &format!("/api/v1/tenants/acme/users?q={email}"),
                OP,
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["items"].as_array().unwrap().clone()
    }

    async fn audit(&self) -> Vec<Value> {
        let (status, body) = self
            .server
            .call(
                Method::GET,
                "/api/v1/tenants/acme/audit?limit=1000",
                OP,
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["items"].as_array().unwrap().clone()
    }

    async fn resolve(&self, tenant: &str, token: &str) -> (u16, Value) {
        self.server
            .call(
                Method::POST,
                &format!("/v1/{tenant}/resolve"),
                Some(token),
                None,
            )
            .await
    }
}

#[tokio::test]
async fn every_mode_and_user_state_of_the_table() {
    let w = world().await;
    for mode in ["scim", "jit", "invite_only"] {
        w.set_mode(mode).await;
        let tag = mode.replace('_', "-");
        for state in ["none", "invited", "active", "deactivated"] {
            let email = format!("{state}-{tag}@acme.io");
            let existing = match state {
                "none" => None,
                state => Some(w.user(&email, state).await),
            };
            let (status, body) = w.login(&email, &format!("sub-{state}-{tag}")).await;
            let case = format!("{mode} × {state}: {status} {body}");
            match (state, mode) {
                ("none", "jit") => {
                    assert_eq!(status, 200, "{case}");
                    assert_eq!(body["outcome"], "created", "{case}");
                    assert_eq!(body["user"]["source"], "jit", "{case}");
                    assert_eq!(body["user"]["status"], "active", "{case}");
                    assert_eq!(body["user"]["email"], email.as_str(), "{case}");
                    assert_eq!(
                        body["user"]["display_name"],
                        format!("Person sub-none-{tag}")
                    );
                }
                ("none", _) => {
                    assert_eq!(status, 403, "{case}");
                    assert_eq!(body["reason"], "not_provisioned", "{case}");
                    assert!(w.users_with(&email).await.is_empty(), "{case}");
                }
                ("invited", _) => {
                    assert_eq!(status, 200, "{case}");
                    assert_eq!(body["outcome"], "activated", "{case}");
                    let id = existing.as_deref().unwrap();
                    assert_eq!(body["user"]["id"], id, "{case}");
                    assert_eq!(w.user_record(id).await["status"], "active", "{case}");
                }
                ("active", _) => {
                    assert_eq!(status, 200, "{case}");
                    assert_eq!(body["outcome"], "allowed", "{case}");
                    assert_eq!(body["user"]["id"], existing.as_deref().unwrap(), "{case}");
                }
                ("deactivated", _) => {
                    assert_eq!(status, 403, "{case}");
                    assert_eq!(body["reason"], "deactivated", "{case}");
                    let id = existing.as_deref().unwrap();
                    assert_eq!(w.user_record(id).await["status"], "deactivated", "{case}");
                }
                _ => unreachable!(),
            }
            if status == 200 {
                assert!(body["session_token"].as_str().unwrap().starts_with("ghs_"));
            } else {
                assert!(body.get("session_token").is_none());
            }
        }
    }
    // Every outcome is audited, refusals too; never a code or a token.
    let audit = w.audit().await;
    let logins: Vec<&Value> = audit
        .iter()
        .filter(|e| e["action"] == "login.sso")
        .collect();
    assert_eq!(logins.len(), 12, "one entry per login");
    let outcomes = |o: &str| logins.iter().filter(|e| e["after"]["outcome"] == o).count();
    assert_eq!(outcomes("created"), 1);
    assert_eq!(outcomes("activated"), 3);
    assert_eq!(outcomes("allowed"), 3);
    assert_eq!(outcomes("refused"), 5);
    let text = serde_json::to_string(&audit).unwrap();
    assert!(!text.contains("ghs_") && !text.contains(CLIENT_SECRET));
}

#[tokio::test]
async fn two_simultaneous_first_logins_make_one_user() {
    let w = world().await;
    w.set_mode("jit").await;
    let first = w.start("twin@acme.io", "twin", "/").await;
    let second = w.start("twin@acme.io", "twin", "/").await;
    let ((s1, b1), (s2, b2)) = tokio::join!(w.finish(&first), w.finish(&second));
    assert_eq!((s1, s2), (200, 200), "{b1} {b2}");
    assert_eq!(b1["user"]["id"], b2["user"]["id"]);
    let mut outcomes = [b1["outcome"].clone(), b2["outcome"].clone()];
    outcomes.sort_by_key(|v| v.to_string());
    assert_eq!(outcomes, [json!("allowed"), json!("created")]);
    assert_eq!(w.users_with("twin@acme.io").await.len(), 1);
}

#[tokio::test]
async fn a_login_session_resolves_until_the_user_is_deactivated() {
    let w = world().await;
    w.set_mode("jit").await;
    // The browser flow: a cookie and a redirect to the requested page.
    let callback = w.start("bea@acme.io", "bea", "/app/home").await;
    let response = w
        .browser
        .get(&callback)
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(location(&response), "/app/home");
    let cookie = response
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cookie.starts_with("gatehouse_session=ghs_"), "{cookie}");
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(
        !cookie.contains("Secure"),
        "no Secure on plain http: {cookie}"
    );
    let token = cookie
        .trim_start_matches("gatehouse_session=")
        .split(';')
        .next()
        .unwrap()
        .to_owned();

    let (status, body) = w.resolve("acme", &token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["kind"], "user");
    assert_eq!(body["token"], "session");
    assert_eq!(body["email"], "bea@acme.io");
    let id = body["id"].as_str().unwrap().to_owned();
    // Never on another tenant's route, and without naming the tenant it is for.
    let (status, body) = w.resolve("other", &token).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["reason"], "unknown_token");
    assert!(!body.to_string().contains("acme"));
    // The admin API takes it as that (member) user.
    let (status, body) = w
        .server
        .call(
            Method::GET,
            "/api/v1/tenants/acme/users/me",
            Some(&token),
            None,
        )
        .await;
    assert_eq!((status, body["id"].as_str()), (200, Some(id.as_str())));
    let (status, _) = w
        .server
        .call(
            Method::GET,
            "/api/v1/tenants/acme/users",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 403, "a member's session is not an admin");

    // Forward-auth takes the browser's cookie when no Authorization header is sent.
    let forward = |cookie: String| {
        let w = &w;
        async move {
            let response = w
                .browser
                .get(format!("{}/v1/acme/forward-auth", w.server.base))
                .header("cookie", cookie)
                .send()
                .await
                .unwrap();
            let kind = response
                .headers()
                .get("x-gatehouse-token-kind")
                .map(|v| v.to_str().unwrap().to_owned());
            (response.status().as_u16(), kind)
        }
    };
    assert_eq!(
        forward(format!("theme=dark; gatehouse_session={token}")).await,
        (200, Some("session".to_owned()))
    );
    assert_eq!(
        forward("gatehouse_session=ghp_acme_notasession".into())
            .await
            .0,
        401,
        "only a session token is read from the cookie"
    );

    // Deactivation through the admin API revokes it on the next request.
    let (server, session) = (&w.server, token.as_str());
    let set_status = |action: &'static str| {
        let path = format!("/api/v1/tenants/acme/users/{id}/{action}");
        async move {
            let (status, body) = server.call(Method::POST, &path, OP, Some(&json!({}))).await;
            assert_eq!(status, 200, "{action}: {body}");
        }
    };
    let me = || async move {
        let path = "/api/v1/tenants/acme/users/me";
        server.call(Method::GET, path, Some(session), None).await.0
    };
    set_status("deactivate").await;
    let (status, body) = w.resolve("acme", &token).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["reason"], "deactivated");
    assert_eq!(me().await, 401);
    assert_eq!(forward(format!("gatehouse_session={token}")).await.0, 403);
    // And a new login is refused, never reactivating.
    let (status, body) = w.login("bea@acme.io", "bea").await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (403, Some("deactivated"))
    );

    // Reactivated, the user logs in again, but the session the deactivation revoked stays
    // revoked (SPEC §3), at the edge and on the admin API.
    set_status("reactivate").await;
    let (status, body) = w.resolve("acme", &token).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (401, Some("revoked")),
        "{body}"
    );
    assert_eq!(me().await, 401);
    assert_eq!(forward(format!("gatehouse_session={token}")).await.0, 401);
    // A new login passes (one issued in the second of the deactivation counts as issued
    // before it, so it may take another second).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let fresh = loop {
        let (status, body) = w.login("bea@acme.io", "bea").await;
        assert_eq!(status, 200, "{body}");
        let fresh = body["session_token"].as_str().unwrap().to_owned();
        if w.resolve("acme", &fresh).await.0 == 200 {
            break fresh;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a session from after the reactivation never passes"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_ne!(fresh, token);
}

#[tokio::test]
async fn bad_and_replayed_state_and_code_are_refused() {
    let w = world().await;
    w.set_mode("jit").await;
    // A state Gatehouse never issued.
    let callback = w.start("sam@acme.io", "sam", "/").await;
    let forged = callback.replace("state=", "state=x");
    let (status, body) = w.finish(&forged).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (401, Some("bad_state")),
        "{body}"
    );
    // A callback URL carried to another browser (login CSRF: someone else's login links
    // this browser to their account) is refused there, and the login is used up.
    let carried = w.start("mallory@acme.io", "mallory", "/").await;
    let elsewhere = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(&carried)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), 401);
    let body: Value = elsewhere.json().await.unwrap();
    assert_eq!(body["reason"], "browser_mismatch", "{body}");
    assert!(w.users_with("mallory@acme.io").await.is_empty());
    let (status, body) = w.finish(&carried).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (401, Some("bad_state")),
        "{body}"
    );
    // The certified provider names itself (RFC 9207): a response naming another issuer is
    // refused, and uses up the login it claimed to complete.
    assert!(callback.contains("iss="), "{callback}");
    let mixed_up = w.start("sam@acme.io", "sam", "/").await;
    let mut mixed_up = reqwest::Url::parse(&mixed_up).unwrap();
    let pairs: Vec<(String, String)> = mixed_up
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "iss" {
                "https://evil.example".into()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    mixed_up.query_pairs_mut().clear().extend_pairs(pairs);
    let (status, body) = w.finish(mixed_up.as_str()).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (401, Some("issuer_mismatch")),
        "{body}"
    );
    let (status, body) = w.finish(mixed_up.as_str()).await;
    assert_eq!((status, body["reason"].as_str()), (401, Some("bad_state")));
    // It says so in its discovery document, so a response without `iss` is refused too.
    let stripped = w.start("sam@acme.io", "sam", "/").await;
    let mut stripped = reqwest::Url::parse(&stripped).unwrap();
    let pairs: Vec<(String, String)> = stripped
        .query_pairs()
        .filter(|(k, _)| k != "iss")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    stripped.query_pairs_mut().clear().extend_pairs(pairs);
    let (status, body) = w.finish(stripped.as_str()).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (401, Some("issuer_mismatch")),
        "{body}"
    );
    // The real one still works once...
    let (status, body) = w.finish(&callback).await;
    assert_eq!(status, 200, "{body}");
    // ...and never again (replayed state and code).
    let (status, body) = w.finish(&callback).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (401, Some("bad_state")),
        "{body}"
    );
    // The used code with a fresh state: the provider refuses it.
    let code = reqwest::Url::parse(&callback)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let fresh = w.start("sam@acme.io", "sam", "/").await;
    let fresh_url = reqwest::Url::parse(&fresh).unwrap();
    let state = fresh_url
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    let mut replay = fresh_url.clone();
    replay
        .query_pairs_mut()
        .clear()
        .append_pair("code", &code)
        .append_pair("state", &state)
        .append_pair("iss", w.idp.issuer());
    let (status, body) = w.finish(replay.as_str()).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (401, Some("code_rejected")),
        "{body}"
    );
    // Missing parameters and an IdP error are refusals too, not 500s.
    let (status, body) = w
        .finish(&format!("{}/v1/acme/sso/corp/callback", w.server.base))
        .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (401, Some("bad_state")),
        "{body}"
    );
    let (status, body) = w
        .finish(&format!(
            "{}/v1/acme/sso/corp/callback?error=access_denied&state=x",
            w.server.base
        ))
        .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (401, Some("idp_refused")),
        "{body}"
    );
}

#[tokio::test]
async fn wrong_nonce_audience_and_expired_id_tokens_are_refused() {
    let w = world_scripted().await;
    w.set_mode("jit").await;
    for (faults, reason) in [
        (
            Faults {
                nonce: Some("another-login".into()),
                ..Default::default()
            },
            "nonce",
        ),
        (
            Faults {
                audience: Some("someone-else".into()),
                ..Default::default()
            },
            "audience",
        ),
        (
            Faults {
                exp_shift: -3600,
                ..Default::default()
            },
            "expired",
        ),
    ] {
        w.idp.scripted().faults(faults);
        let (status, body) = w.login("eve@acme.io", "eve").await;
        assert_eq!(
            (status, body["reason"].as_str()),
            (401, Some(reason)),
            "{body}"
        );
        assert!(body.get("session_token").is_none());
    }
    assert!(
        w.users_with("eve@acme.io").await.is_empty(),
        "nobody was created"
    );
    w.idp.scripted().faults(Faults::default());
    let (status, body) = w.login("eve@acme.io", "eve").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn the_direct_form_verifies_the_id_token_the_same_way() {
    let w = world_scripted().await;
    w.set_mode("jit").await;
    let id_token = |aud: &str, exp: i64| {
        sign(&json!({
            "iss": w.idp.issuer(), "aud": aud, "iat": now(), "exp": exp,
            "sub": "dee", "email": "dee@acme.io", "nonce": "n-1",
        }))
    };
    let post = |body: Value| {
        let w = &w;
        async move {
            w.server
                .call(
                    Method::POST,
                    "/v1/acme/sso/corp/token-login",
                    None,
                    Some(&body),
                )
                .await
        }
    };
    let (status, body) =
        post(json!({ "id_token": id_token(CLIENT_ID, now() + 300), "nonce": "n-1" })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outcome"], "created");
    let token = body["session_token"].as_str().unwrap().to_owned();
    assert_eq!(w.resolve("acme", &token).await.0, 200);
    for (body, reason) in [
        (
            json!({ "id_token": id_token("other-app", now() + 300) }),
            "audience",
        ),
        (
            json!({ "id_token": id_token(CLIENT_ID, now() - 3600) }),
            "expired",
        ),
        (
            json!({ "id_token": id_token(CLIENT_ID, now() + 300), "nonce": "n-2" }),
            "nonce",
        ),
        (json!({ "id_token": "not.a.token" }), "malformed"),
    ] {
        let (status, answer) = post(body).await;
        assert_eq!(
            (status, answer["reason"].as_str()),
            (401, Some(reason)),
            "{answer}"
        );
    }
    let (status, answer) = post(json!({ "token": "x" })).await;
    assert_eq!(status, 400, "{answer}");
    // No unique id claim: refused, and audited like every outcome.
    let no_sub = sign(&json!({
        "iss": w.idp.issuer(), "aud": CLIENT_ID, "iat": now(), "exp": now() + 300,
        "email": "nosub@acme.io",
    }));
    let (status, answer) = post(json!({ "id_token": no_sub })).await;
    assert_eq!(
        (status, answer["reason"].as_str()),
        (403, Some("missing_subject")),
        "{answer}"
    );
    assert!(w
        .audit()
        .await
        .iter()
        .any(|e| e["action"] == "login.sso" && e["after"]["reason"] == "missing_subject"));
    // The configuration's claims choose email and unique id (Entra: `upn`, `oid`).
    add_sso(
        &w.server,
        "acme",
        json!({
            "id": "entra", "issuer": w.idp.issuer(), "client_id": "entra-app",
            "jwks_uri": format!("{}/jwks", w.idp.issuer()),
            "email_claim": "upn", "unique_id_claim": "oid",
        }),
    )
    .await;
    let entra = |claims: Value| {
        let w = &w;
        let mut all =
            json!({ "iss": w.idp.issuer(), "aud": "entra-app", "iat": now(), "exp": now() + 300 });
        for (k, v) in claims.as_object().unwrap() {
            all[k] = v.clone();
        }
        async move {
            w.server
                .call(
                    Method::POST,
                    "/v1/acme/sso/entra/token-login",
                    None,
                    Some(&json!({ "id_token": sign(&all) })),
                )
                .await
        }
    };
    let (status, body) = entra(json!({ "upn": "Uma@Acme.io", "oid": "o-1", "email": "x@else.io", "given_name": "Uma", "family_name": "U" })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["email"], "Uma@Acme.io");
    assert_eq!(body["user"]["display_name"], "Uma U");
    let (status, body) = entra(json!({ "upn": "uma@acme.io", "sub": "s" })).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (403, Some("missing_subject")),
        "{body}"
    );
    let (status, body) = entra(json!({ "upn": "UMA@acme.io", "oid": "o-1" })).await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (200, Some("allowed")),
        "{body}"
    );

    // Counted by outcome and reason, never by who.
    let metrics = w
        .server
        .client
        .get(format!("{}/metrics", w.server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("gatehouse_sso_logins_total"), "{metrics}");
    assert!(!metrics.contains("dee@acme.io") && !metrics.contains("ghs_"));
}

/// What a trusted front end does before `/token-login`: its own code flow (PKCE S256) at the
/// certified provider, as client `FRONT_END_ID`; returns the ID token it receives.
async fn front_end_id_token(idp: &OpenIdProvider, sub: &str, email: &str, nonce: &str) -> String {
    let client = reqwest::Client::new();
    let discovery: Value = client
        .get(idp.discovery_url())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let verifier = URL_SAFE_NO_PAD.encode([rand_bytes(), rand_bytes()].concat());
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let mut authorize =
        reqwest::Url::parse(discovery["authorization_endpoint"].as_str().unwrap()).unwrap();
    authorize
        .query_pairs_mut()
        .append_pair("client_id", FRONT_END_ID)
        .append_pair("response_type", "code")
        .append_pair("scope", "openid email profile")
        .append_pair("redirect_uri", FRONT_END_CALLBACK)
        .append_pair("state", "front-end-state")
        .append_pair("nonce", nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let back = idp
        .sign_in(authorize.as_str(), sub, email, &format!("Person {sub}"))
        .await;
    assert!(back.starts_with(FRONT_END_CALLBACK), "{back}");
    let code = reqwest::Url::parse(&back)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .expect("a code")
        .1
        .into_owned();
    let answer: Value = client
        .post(discovery["token_endpoint"].as_str().unwrap())
        .basic_auth(FRONT_END_ID, Some(CLIENT_SECRET))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", FRONT_END_CALLBACK),
            ("code_verifier", &verifier),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["id_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no ID token: {answer}"))
        .to_owned()
}

#[tokio::test]
async fn the_direct_form_takes_a_certified_providers_id_token_for_its_own_client_only() {
    let w = world().await;
    w.set_mode("jit").await;
    let Idp::Certified(idp) = &w.idp else {
        unreachable!()
    };
    let id_token = front_end_id_token(idp, "fay-sub", "fay@acme.io", "n-fay").await;
    let post = |sso: &'static str, body: Value| {
        let w = &w;
        async move {
            w.server
                .call(
                    Method::POST,
                    &format!("/v1/acme/sso/{sso}/token-login"),
                    None,
                    Some(&body),
                )
                .await
        }
    };
    // `corp` is Gatehouse's own client: a token the provider issued to the front end is
    // for another audience, and substituting it is refused.
    let (status, body) = post("corp", json!({ "id_token": id_token, "nonce": "n-fay" })).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (401, Some("audience")),
        "{body}"
    );
    // The front end's own SSO configuration takes it, with its nonce only.
    add_sso(
        &w.server,
        "acme",
        json!({
            "id": "front", "issuer": idp.issuer, "client_id": FRONT_END_ID,
            "discovery_url": idp.discovery_url(),
        }),
    )
    .await;
    let (status, body) = post("front", json!({ "id_token": id_token, "nonce": "n-other" })).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (401, Some("nonce")),
        "{body}"
    );
    assert!(w.users_with("fay@acme.io").await.is_empty());
    let (status, body) = post("front", json!({ "id_token": id_token, "nonce": "n-fay" })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outcome"], "created");
    assert_eq!(body["user"]["email"], "fay@acme.io");
    assert_eq!(body["user"]["display_name"], "Person fay-sub");
    let session = body["session_token"].as_str().unwrap();
    let (status, body) = w.resolve("acme", session).await;
    assert_eq!((status, body["email"].as_str()), (200, Some("fay@acme.io")));
}

#[tokio::test]
async fn unknown_logins_look_alike_and_return_to_stays_on_site() {
    let w = world().await;
    let get = |path: String| {
        let w = &w;
        async move {
            let response = w
                .browser
                .get(format!("{}{path}", w.server.base))
                .header("accept", "application/json")
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let unknown_tenant = get("/v1/nope/sso/corp/login".into()).await;
    let unknown_sso = get("/v1/acme/sso/nope/login".into()).await;
    let other_tenants = get("/v1/other/sso/corp/login".into()).await;
    assert_eq!(unknown_tenant.0, 404);
    assert_eq!(unknown_tenant.1["detail"], "SSO login not found");
    assert_eq!(unknown_tenant, unknown_sso);
    assert_eq!(unknown_tenant, other_tenants);
    for bad in ["//evil.io/x", "https://evil.io/", "app"] {
        let (status, body) = get(format!("/v1/acme/sso/corp/login?return_to={bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    // A browser gets a page it can read, with the reason.
    w.set_mode("invite_only").await;
    let callback = w.start("stranger@acme.io", "stranger", "/").await;
    let response = w
        .browser
        .get(&callback)
        .header("accept", "text/html,application/xhtml+xml")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert!(response
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = response.text().await.unwrap();
    assert!(page.contains("not_provisioned"), "{page}");
}

#[tokio::test]
async fn an_unreachable_provider_is_a_clear_502_not_a_hang() {
    let mut w = world().await;
    w.set_mode("jit").await;
    // Logins started while it was up, completed after it went down.
    let callback = w.start("dot@acme.io", "dot", "/").await;
    match &mut w.idp {
        Idp::Certified(idp) => idp.stop().await,
        Idp::Scripted(_) => unreachable!(),
    }
    let started = std::time::Instant::now();
    let (status, body) = w.finish(&callback).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (502, Some("idp_unavailable")),
        "{body}"
    );
    // Its discovery document is cached: a new login still redirects to it.
    let response = w
        .browser
        .get(format!("{}/v1/acme/sso/corp/login", w.server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 302);
    // A provider whose discovery document was never fetched: 502 at /login.
    let gone = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    add_sso(
        &w.server,
        "acme",
        json!({
            "id": "gone", "issuer": gone, "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "discovery_url": format!("{gone}/.well-known/openid-configuration"),
        }),
    )
    .await;
    let response = w
        .browser
        .get(format!("{}/v1/acme/sso/gone/login", w.server.base))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["reason"], "idp_unavailable");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[tokio::test]
async fn the_discovery_document_is_fetched_once_for_many_logins() {
    let w = world_scripted().await;
    w.set_mode("jit").await;
    // Concurrent first logins share one fetch (single flight).
    let starts = (0..8).map(|_| {
        w.browser
            .get(format!("{}/v1/acme/sso/corp/login", w.server.base))
            .send()
    });
    for response in futures::future::join_all(starts).await {
        assert_eq!(response.unwrap().status(), 302);
    }
    // Then complete logins (login, callback and ID token keys) reuse it: the provider's
    // `max-age=1` is clamped up to `edge.jwks_min_ttl_secs` (60 s).
    for n in 0..5 {
        let (status, body) = w
            .login(&format!("many{n}@acme.io"), &format!("many{n}"))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let state = w.idp.scripted().state.lock().unwrap();
    assert_eq!(state.discovery_requests, 1);
    assert_eq!(state.token_requests, 5);
}

#[tokio::test]
async fn the_discovery_document_is_refetched_after_its_max_age() {
    let w = world_with(false, |config| config.edge.jwks_min_ttl_secs = 0).await;
    w.set_mode("jit").await;
    let (status, body) = w.login("ttl1@acme.io", "ttl1").await;
    assert_eq!(status, 200, "{body}");
    let before = w.idp.scripted().state.lock().unwrap().discovery_requests;
    assert!(before >= 1);
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    // `max-age=1` has passed: the next login fetches it again.
    let (status, body) = w.login("ttl2@acme.io", "ttl2").await;
    assert_eq!(status, 200, "{body}");
    assert!(w.idp.scripted().state.lock().unwrap().discovery_requests > before);
}

#[tokio::test]
async fn pending_logins_are_capped_per_tenant_and_expired_ones_swept() {
    // The scripted provider: a 1 s pending-login lifetime is shorter than a sign-in on the
    // certified provider's page takes on a busy machine.
    let w = world_with(false, |config| {
        config.sso.max_pending_logins = 3;
        config.sso.pending_login_ttl_secs = 1;
    })
    .await;
    w.set_mode("jit").await;
    let begin = |tenant: &'static str, sso: &'static str| {
        w.browser
            .get(format!("{}/v1/{tenant}/sso/{sso}/login", w.server.base))
            .header("accept", "application/json")
            .send()
    };
    for _ in 0..3 {
        assert_eq!(begin("acme", "corp").await.unwrap().status(), 302);
    }
    // Full: refused with a reason, nothing more stored.
    let response = begin("acme", "corp").await.unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "60");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["reason"], "too_many_pending_logins", "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("at most 3"),
        "{body}"
    );
    // The cap is per tenant: another tenant's logins are not refused.
    add_sso(
        &w.server,
        "other",
        json!({
            "id": "corp", "issuer": w.idp.issuer(), "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "discovery_url": format!("{}/.well-known/openid-configuration", w.idp.issuer()),
        }),
    )
    .await;
    assert_eq!(begin("other", "corp").await.unwrap().status(), 302);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    // Once they expired they are swept: the tenant can start logins again...
    for _ in 0..2 {
        assert_eq!(begin("acme", "corp").await.unwrap().status(), 302);
    }
    let callback = w.start("flood@acme.io", "flood", "/").await;
    assert_eq!(begin("acme", "corp").await.unwrap().status(), 429);
    // ...and a completed login frees its place at once.
    let (status, body) = w.finish(&callback).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(begin("acme", "corp").await.unwrap().status(), 302);
    // ...and the expired ones are gone from the store, not merely ignored.
    let (app, _data) = w.server.stop_and_reopen().await;
    assert_eq!(app.sso_pending_stored("acme").unwrap(), 3);
    assert_eq!(app.sso_pending_stored("other").unwrap(), 1);
}

#[tokio::test]
async fn the_idps_unique_id_is_bound_at_first_login() {
    let w = world().await;
    w.set_mode("jit").await;
    let (status, body) = w.login("ann@acme.io", "ann-sub").await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (200, Some("created")),
        "{body}"
    );
    let ann = body["user"]["id"].as_str().unwrap().to_owned();

    // Her email changed at the IdP, her unique id did not: still her, no second user.
    let (status, body) = w.login("ann.new@acme.io", "ann-sub").await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (200, Some("allowed")),
        "{body}"
    );
    assert_eq!(body["user"]["id"], ann.as_str(), "{body}");
    assert!(w.users_with("ann.new@acme.io").await.is_empty());

    // Her old address given to someone else at the IdP: refused, never merged into her.
    let (status, body) = w.login("ann@acme.io", "someone-else").await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (403, Some("subject_mismatch")),
        "{body}"
    );
    assert!(
        body["detail"].as_str().unwrap().contains("ask your admin"),
        "{body}"
    );
    assert_eq!(w.users_with("ann@acme.io").await.len(), 1);

    // An invited user is bound by the login that activates her.
    let ivy = w.user("ivy@acme.io", "invited").await;
    let (status, body) = w.login("ivy@acme.io", "ivy-sub").await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (200, Some("activated")),
        "{body}"
    );
    let (status, body) = w.login("ivy@acme.io", "not-ivy").await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (403, Some("subject_mismatch")),
        "{body}"
    );
    let (status, body) = w.login("ivy@acme.io", "ivy-sub").await;
    assert_eq!(
        (status, body["user"]["id"].as_str()),
        (200, Some(ivy.as_str())),
        "{body}"
    );

    // Deactivating her is not undone by logging in under a new email.
    let (status, _) = w
        .server
        .call(
            Method::POST,
            &format!("/api/v1/tenants/acme/users/{ann}/deactivate"),
            OP,
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = w.login("ann.third@acme.io", "ann-sub").await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (403, Some("deactivated")),
        "{body}"
    );
    assert!(w.users_with("ann.third@acme.io").await.is_empty());

    // Refusals are audited with the reason.
    let refused: Vec<_> = w
        .audit()
        .await
        .into_iter()
        .filter(|e| e["action"] == "login.sso" && e["after"]["reason"] == "subject_mismatch")
        .collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
}

#[tokio::test]
async fn deleting_a_user_or_an_sso_configuration_forgets_its_bindings() {
    let w = world_scripted().await;
    w.set_mode("jit").await;
    for (email, sub) in [("kim@acme.io", "kim-sub"), ("lou@acme.io", "lou-sub")] {
        let (status, body) = w.login(email, sub).await;
        assert_eq!((status, body["outcome"].as_str()), (200, Some("created")));
    }
    let lou = w.users_with("lou@acme.io").await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Lou is deleted: his bindings go with him, Kim's stay.
    let (status, body) = w
        .server
        .call(
            Method::DELETE,
            &format!("/api/v1/tenants/acme/users/{lou}"),
            OP,
            None,
        )
        .await;
    assert!(status == 200 || status == 204, "{status} {body}");
    // The configuration is replaced by a new one under the same id and issuer (say, after
    // a misconfiguration): Kim's old binding is gone with the old one, so her account is
    // bound anew by email at her next login instead of being refused as a mismatch.
    w.set_mode("invite_only").await;
    let (status, body) = w
        .server
        .call(Method::DELETE, "/api/v1/tenants/acme/sso/corp", OP, None)
        .await;
    assert!(status == 200 || status == 204, "{status} {body}");
    add_sso(
        &w.server,
        "acme",
        json!({
            "id": "corp", "issuer": w.idp.issuer(), "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "discovery_url": format!("{}/.well-known/openid-configuration", w.idp.issuer()),
        }),
    )
    .await;
    let (status, body) = w.login("kim@acme.io", "kim-new-sub").await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (200, Some("allowed")),
        "{body}"
    );
    // In the store: only Kim's new binding (two entries).
    let (app, _data) = w.server.stop_and_reopen().await;
    assert_eq!(app.sso_bindings_stored("acme").unwrap(), 2);
}

#[tokio::test]
async fn logging_out_ends_that_session_only() {
    let w = world_scripted().await;
    w.set_mode("jit").await;
    let mut sessions = Vec::new();
    for _ in 0..2 {
        let (status, body) = w.login("lia@acme.io", "lia").await;
        assert_eq!(status, 200, "{body}");
        sessions.push(body["session_token"].as_str().unwrap().to_owned());
    }
    let logout = |headers: Vec<(&'static str, String)>| {
        let w = &w;
        async move {
            let mut request = w.browser.post(format!("{}/v1/acme/logout", w.server.base));
            for (name, value) in headers {
                request = request.header(name, value);
            }
            request.send().await.unwrap()
        }
    };
    let me = |token: String| {
        let w = &w;
        async move {
            w.server
                .call(
                    Method::GET,
                    "/api/v1/tenants/acme/users/me",
                    Some(&token),
                    None,
                )
                .await
                .0
        }
    };
    // An Authorization header that is not a bearer token is refused, not read as "no token".
    let response = logout(vec![("authorization", "Basic Zm9vOmJhcg==".into())]).await;
    assert_eq!(response.status(), 400);
    assert_eq!(w.resolve("acme", &sessions[0]).await.0, 200);
    // An API client logs its session out with the bearer token (any case of the scheme).
    let response = logout(vec![("authorization", format!("bearer {}", sessions[0]))]).await;
    assert_eq!(response.status(), 204);
    let (status, body) = w.resolve("acme", &sessions[0]).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (401, Some("revoked")),
        "{body}"
    );
    assert_eq!(me(sessions[0].clone()).await, 401);
    // The user's other session still works, at the edge and on the admin API.
    assert_eq!(w.resolve("acme", &sessions[1]).await.0, 200);
    assert_eq!(me(sessions[1].clone()).await, 200);
    // Again, or with junk: nothing to do, same answer.
    for token in [sessions[0].clone(), "ghs_junk".into(), "ghp_acme_x".into()] {
        let response = logout(vec![("authorization", format!("Bearer {token}"))]).await;
        assert_eq!(response.status(), 204);
    }
    let audit = w.audit().await;
    assert_eq!(
        audit
            .iter()
            .filter(|e| e["action"] == "session.logout")
            .count(),
        1
    );

    // A browser logs out with its cookie: cleared, and on to the login page. A post from
    // another site is refused and changes nothing.
    let cookie = format!("gatehouse_session={}", sessions[1]);
    let response = logout(vec![
        ("cookie", cookie.clone()),
        ("accept", "text/html".into()),
        ("sec-fetch-site", "cross-site".into()),
    ])
    .await;
    assert_eq!(response.status(), 403);
    assert_eq!(w.resolve("acme", &sessions[1]).await.0, 200);
    let response = logout(vec![
        ("cookie", cookie),
        ("accept", "text/html".into()),
        ("sec-fetch-site", "same-origin".into()),
    ])
    .await;
    assert_eq!(response.status(), 303);
    assert_eq!(location(&response), "/v1/acme/login");
    let cleared = response.headers()["set-cookie"].to_str().unwrap();
    assert!(cleared.starts_with("gatehouse_session=;") && cleared.contains("Max-Age=0"));
    assert_eq!(w.resolve("acme", &sessions[1]).await.0, 401);
    // Logging out is not deactivation: a new login makes a new session.
    let (status, body) = w.login("lia@acme.io", "lia").await;
    assert_eq!((status, body["outcome"].as_str()), (200, Some("allowed")));
    let fresh = body["session_token"].as_str().unwrap();
    assert_eq!(w.resolve("acme", fresh).await.0, 200);
}
