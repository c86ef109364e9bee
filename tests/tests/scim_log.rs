//! Every SCIM request writes one log line with tenant, connection, operation, resource,
//! status and latency — and never the bearer token or a password from the body.

mod scim_common;

use reqwest::Method;
use scim_common::*;
use serde_json::json;
use std::io::Write;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn every_scim_request_is_logged_without_secrets() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();
    let scim = Scim::start().await;
    let (status, created) = scim
        .call(
            Method::POST,
            "/Users",
            Some(json!({ "userName": "ann@acme.io", "password": "pw-Secret-123" })),
        )
        .await;
    assert_eq!(status, 201);
    let id = created["id"].as_str().unwrap();
    let (status, _) = scim.call(Method::GET, &format!("/Users/{id}"), None).await;
    assert_eq!(status, 200);
    let (status, _, _) = scim
        .send_as(Some("gscim_wrong-token"), Method::GET, "/Users", None)
        .await;
    assert_eq!(status, 401);
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("scim request")).collect();
    assert_eq!(lines.len(), 3, "{log}");
    for (line, operation, resource, status) in [
        (lines[0], "users.create", "", "201"),
        (lines[1], "users.get", id, "200"),
        (lines[2], "auth", "", "401"),
    ] {
        for field in [
            "tenant=acme".to_owned(),
            "connection=idp".to_owned(),
            format!("operation=\"{operation}\""),
            format!("resource={resource}"),
            format!("status={status}"),
            "latency_us=".to_owned(),
        ] {
            assert!(line.contains(&field), "{field} missing from {line}");
        }
    }
    assert!(
        !log.contains(&scim.token)
            && !log.contains("gscim_wrong-token")
            && !log.contains("pw-Secret-123"),
        "{log}"
    );
}
