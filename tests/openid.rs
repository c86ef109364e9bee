//! A real OpenID provider on loopback: panva's `oidc-provider` (OpenID Certified), run by
//! Node from `tests/oidc-provider/` (see `server.mjs` there). It is installed from the
//! committed lockfile with `npm ci` the first time a test needs it (`.ci/run` does it too).

use serde_json::Value;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use tokio::io::{AsyncBufReadExt, BufReader};

fn dir() -> PathBuf {
    crate::fixtures::root().join("tests/oidc-provider")
}

/// Runs `npm ci` once per test process when the package is not installed yet.
fn ensure_installed() {
    static INSTALLED: Mutex<bool> = Mutex::new(false);
    let mut done = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
    if *done
        || dir()
            .join("node_modules/oidc-provider/package.json")
            .exists()
    {
        *done = true;
        return;
    }
    let status = std::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir())
        .status()
        .expect("npm is needed for the OpenID provider tests (bash .ci/run installs it)");
    assert!(status.success(), "npm ci in tests/oidc-provider failed");
    *done = true;
}

/// One running provider. Dropping it stops the process.
pub struct OpenIdProvider {
    pub issuer: String,
    child: tokio::process::Child,
}

impl OpenIdProvider {
    /// Starts a provider with these registered clients (`client_id`, `client_secret`,
    /// `redirect_uris`, ...: OpenID Connect client metadata).
    pub async fn start(clients: &[Value]) -> OpenIdProvider {
        ensure_installed();
        let options = serde_json::json!({ "clients": clients });
        let mut child = tokio::process::Command::new("node")
            .arg(dir().join("server.mjs"))
            .arg(options.to_string())
            .current_dir(dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node is needed for the OpenID provider tests (bash .ci/run installs it)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Ok(Value::Object(ready)) = serde_json::from_str(&line) {
                    return ready["issuer"].as_str().map(str::to_owned);
                }
            }
            None
        })
        .await;
        let issuer = match ready {
            Ok(Some(issuer)) => issuer,
            other => panic!("the OpenID provider did not start: {other:?}"),
        };
        // Keep draining its stdout so the process never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        OpenIdProvider { issuer, child }
    }

    /// The provider's discovery document URL.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer)
    }

    /// Walks the provider's side of a login as a person in a fresh browser would: follows
    /// `authorize` to the sign-in page, submits who they are, and follows the provider's
    /// redirects until it sends the browser back to the client. Returns that URL.
    pub async fn sign_in(&self, authorize: &str, sub: &str, email: &str, name: &str) -> String {
        let browser = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let mut url = reqwest::Url::parse(authorize).unwrap();
        let mut signed_in = false;
        for _ in 0..8 {
            if !url.as_str().starts_with(&self.issuer) {
                return url.into();
            }
            let response = if url.path().starts_with("/interaction/") && !signed_in {
                let page = browser.get(url.clone()).send().await.unwrap();
                assert_eq!(page.status(), 200, "the sign-in page");
                let page = page.text().await.unwrap();
                let action = format!("{}/login", url.path());
                assert!(page.contains(&action), "{page}");
                signed_in = true;
                browser
                    .post(url.join(&action).unwrap())
                    .form(&[("sub", sub), ("email", email), ("name", name)])
                    .send()
                    .await
                    .unwrap()
            } else {
                browser.get(url.clone()).send().await.unwrap()
            };
            let status = response.status();
            let Some(location) = response.headers().get("location") else {
                panic!(
                    "the provider answered {status} at {url}: {}",
                    response.text().await.unwrap_or_default()
                );
            };
            url = url.join(location.to_str().unwrap()).unwrap();
        }
        panic!("the provider redirected too often");
    }

    /// Stops the provider and waits until it is gone (the "IdP down" case).
    pub async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }
}
