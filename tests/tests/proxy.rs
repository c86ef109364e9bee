//! A real proxy in front of the edge evaluator: Debian's nginx with `auth_request` to
//! `/v1/{tenant}/forward-auth`, configured with the very snippet docs/edge.md shows. An
//! allowed request reaches the upstream with the identity headers and without the token; a
//! refused one never reaches it.
//!
//! nginx comes from the project's own files (`.ci/run` installs `nginx-light`); a machine
//! without it fails this test with a message saying so rather than skipping it.

use gatehouse_tests::{TestServer, OPERATOR_TOKEN};
use reqwest::Method;
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const OP: Option<&str> = Some(OPERATOR_TOKEN);

/// What the upstream saw of one request: its path and headers (lowercase names).
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    headers: Vec<(String, String)>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An upstream application on loopback that records every request it receives.
async fn upstream() -> (String, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let log = log.clone();
        async move {
            let headers = request
                .headers()
                .iter()
                .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                .collect();
            log.lock().unwrap().push(Seen {
                path: request.uri().path().to_owned(),
                headers,
            });
            "hello from upstream"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{address}"), seen)
}

/// The nginx block of docs/edge.md, pointed at this test's Gatehouse and upstream.
fn documented_locations(gatehouse: &str, upstream: &str) -> String {
    let doc = std::fs::read_to_string(gatehouse_tests::fixtures::root().join("docs/edge.md"))
        .expect("docs/edge.md");
    let start = doc
        .find("```nginx\n")
        .expect("docs/edge.md has an nginx block")
        + 9;
    let end = start + doc[start..].find("```").expect("the nginx block ends");
    let block = &doc[start..end];
    assert!(block.contains("http://gatehouse:8080") && block.contains("http://app;"));
    block
        .replace("http://gatehouse:8080", gatehouse)
        .replace("http://app;", &format!("{upstream};"))
}

/// nginx in the foreground, one process, everything under a temporary prefix.
struct Nginx {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Nginx {
    async fn start(locations: &str) -> Nginx {
        let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("nginx is not installed: run .ci/run, which installs Debian's nginx-light");
        let dir = tempfile::tempdir().unwrap();
        // nginx cannot listen on port 0: take a free port and hand it over.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let prefix = dir.path().display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {prefix}/nginx.pid;\n\
             error_log {prefix}/error.log info;\nevents {{ worker_connections 64; }}\n\
             http {{\n  access_log {prefix}/access.log;\n\
               client_body_temp_path {prefix}/body;\n  proxy_temp_path {prefix}/proxy;\n\
               fastcgi_temp_path {prefix}/fastcgi;\n  uwsgi_temp_path {prefix}/uwsgi;\n\
               scgi_temp_path {prefix}/scgi;\n\
               server {{\n    listen 127.0.0.1:{port};\n{locations}\n  }}\n}}\n"
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nginx starts");
        let nginx = Nginx {
            child,
            base: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return nginx;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = std::fs::read_to_string(nginx._dir.path().join("error.log")).unwrap_or_default();
        panic!("nginx did not start listening: {log}");
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn nginx_auth_request_passes_identities_and_stops_refusals() {
    let server = TestServer::start().await;
    server
        .create_tenant_with_admin("acme", "root@acme.io")
        .await;
    let post = |path: String, body: Value| {
        let server = &server;
        async move {
            let (status, body) = server.call(Method::POST, &path, OP, Some(&body)).await;
            assert!(status == 200 || status == 201, "{path}: {status} {body}");
            body
        }
    };
    let ann = post(
        "/api/v1/tenants/acme/users".into(),
        json!({ "email": "ann@acme.io" }),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    post(
        format!("/api/v1/tenants/acme/users/{ann}/reactivate"),
        json!({}),
    )
    .await;
    post(
        "/api/v1/tenants/acme/teams".into(),
        json!({ "name": "eng", "members": [ann] }),
    )
    .await;
    let pat = post(
        format!("/api/v1/tenants/acme/users/{ann}/tokens"),
        json!({ "name": "laptop" }),
    )
    .await["secret"]
        .as_str()
        .unwrap()
        .to_owned();

    let (app, seen) = upstream().await;
    let nginx = Nginx::start(&documented_locations(&server.base, &app)).await;
    let client = reqwest::Client::new();
    let get = |token: Option<&str>| {
        let request = client.get(format!("{}/models/42?x=1", nginx.base));
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
        .send()
    };

    // Allowed: the upstream answers, and it saw who, not the token.
    let response = get(Some(&pat)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "hello from upstream");
    let first = seen.lock().unwrap().clone();
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].path, "/models/42");
    assert_eq!(first[0].header("x-user-id"), Some(ann.as_str()));
    assert_eq!(first[0].header("x-user-teams"), Some("eng,everyone"));
    assert_eq!(first[0].header("authorization"), None, "token stripped");

    // Refused: no token, junk, a token of another kind's shape; none reaches the upstream.
    for (token, status) in [
        (None, 401),
        (Some("not-a-token"), 401),
        (Some("ghp_0000000000000000000000000000000000000000"), 401),
        (Some("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."), 401),
    ] {
        let response = get(token).await.unwrap();
        assert_eq!(response.status(), status, "{token:?}");
    }
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "a refused request got through"
    );

    // Authenticated but not allowed: the user is deactivated; the next request is 403.
    post(
        format!("/api/v1/tenants/acme/users/{ann}/deactivate"),
        json!({}),
    )
    .await;
    let response = get(Some(&pat)).await.unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "a deactivated user got through"
    );

    // And back: reactivated, the same token passes again.
    post(
        format!("/api/v1/tenants/acme/users/{ann}/reactivate"),
        json!({}),
    )
    .await;
    assert_eq!(get(Some(&pat)).await.unwrap().status(), 200);
    assert_eq!(seen.lock().unwrap().len(), 2);

    // Envoy's ext_authz appends the original path (and keeps the method) to its
    // `path_prefix`: same answer below, whatever the path holds, escapes that are not
    // UTF-8 (Latin-1) included.
    for (method, below) in [
        (Method::POST, "models/42"),
        (Method::GET, "files/caf%E9.txt"),
        (Method::GET, "a%00b/%ff"),
        (Method::GET, "files/caf%C3%A9.txt"),
    ] {
        let response = client
            .request(
                method,
                format!("{}/v1/acme/forward-auth/{below}", server.base),
            )
            .bearer_auth(&pat)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{below}");
        assert_eq!(
            response.headers()["x-gatehouse-id"],
            ann.as_str(),
            "{below}"
        );
    }
    let response = client
        .get(format!("{}/v1/acme/forward-auth/models/42", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    drop(nginx);
    server.stop().await;
}
