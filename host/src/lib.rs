//! Gatehouse: a multi-tenant identity edge. See ARCHITECTURE.md for the map.
//!
//! Module boundaries (each owns one outside dependency):
//! - [`policy`] names wasmtime: the sandboxed policy engine and per-tenant hot swap;
//! - [`store`] names sled: durable, tenant-prefixed state behind a narrow interface;
//! - [`http`] names axum: routes, extraction, the one error-to-answer mapping;
//! - [`outbox`] names lettre: the relay that mails queued messages over SMTP;
//! - [`app`] is the core that ties them together, free of all three.

pub mod app;
pub mod config;
pub mod edge;
pub mod http;
pub mod identity;
pub mod jwt;
pub mod logging;
pub mod migrate;
pub mod model;
pub mod netguard;
pub mod outbox;
pub mod policy;
pub mod scaffold;
pub mod scim;
pub mod store;
