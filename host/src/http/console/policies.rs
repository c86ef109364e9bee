//! Policies: the active version, history, every stored version with *Activate*, *Roll
//! back*, upload, dry run against the recent decisions, and a shadow candidate with its
//! difference counts. Explanations are on the Identity providers page ("test a token").

use super::{
    admin_only, checked_form, checked_upload, field_error, here, page, redirect, seg, signed_in,
    words, Con, Ctx, Refusal,
};
use crate::app::{App, AppError, DryRunReport, Upload};
use crate::http::Shared;
use axum::body::Bytes;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use maud::{html, Markup};
use std::collections::HashMap;
use std::sync::Arc;

fn version_name(v: Option<u64>) -> String {
    v.map(|v| format!("v{v}"))
        .unwrap_or_else(|| "the built-in default".into())
}

/// What a page shows besides the overview: a notice, an error next to a form, a report.
#[derive(Default)]
struct Extra {
    done: Option<String>,
    error: Option<(&'static str, String)>,
    dry_run: Option<DryRunReport>,
}

pub(super) async fn overview(
    State(app): Shared,
    Extension(console): Con,
    Path(tenant): Path<String>,
    Query(raw): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let ctx = match signed_in(
        &app,
        &console,
        &tenant,
        &headers,
        &here(&tenant, "/policies"),
    ) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    if let Err(r) = admin_only(&ctx) {
        return r.into_response();
    }
    let done = match raw.get("done").map(String::as_str) {
        Some("uploaded") => Some("The version is stored.".to_owned()),
        Some("activated") => Some("The version is active.".to_owned()),
        Some("rolled-back") => Some("Rolled back to the previous version.".to_owned()),
        Some("shadow") => Some("The shadow candidate changed.".to_owned()),
        _ => None,
    };
    policy_page(
        &app,
        &ctx,
        StatusCode::OK,
        Extra {
            done,
            ..Extra::default()
        },
    )
}

fn policy_page(app: &App, ctx: &Ctx, status: StatusCode, extra: Extra) -> Response {
    let overview = match app.policy_overview(&ctx.tenant) {
        Ok(o) => o,
        Err(e) => return Refusal::from(e).into_response(),
    };
    let shadow = app.shadow_state(&ctx.tenant).ok();
    let err = |f: &str| {
        extra
            .error
            .as_ref()
            .filter(|(n, _)| *n == f)
            .map(|(_, w)| w.as_str())
    };
    let base = format!("/console/{}/policies", seg(&ctx.tenant));
    let upload_fields = |id: &str| -> Markup {
        html! {
            label for={ (id) "-component" } { "Component (.wasm)" }
            input id={ (id) "-component" } name="component" type="file" accept=".wasm,application/wasm" required
                aria-describedby=[err(id).map(|_| format!("{id}-error"))];
            label for={ (id) "-settings" } { "Settings (JSON, optional)" }
            textarea id={ (id) "-settings" } name="settings" { "{}" }
        }
    };
    page(
        status,
        Some(ctx),
        "Policies",
        html! {
            @if let Some(done) = &extra.done { p.notice role="status" { (done) } }
            p { "Active: " strong id="active-version" { (version_name(overview.active)) }
                " — " (overview.active_policy.name) " " (overview.active_policy.version) }
            p { "History (roll back returns to the last): "
                span id="history" { @for (i, v) in overview.history.iter().enumerate() { @if i > 0 { ", " } (version_name(*v)) } }
                @if overview.history.is_empty() { span.muted { "none" } } }
            form method="post" action={ (base) "/rollback" } {
                input type="hidden" name="csrf" value=(ctx.csrf);
                button.secondary type="submit" id="rollback" disabled[overview.history.is_empty()]
                    aria-describedby=[err("rollback").map(|_| "rollback-error")] { "Roll back" }
                (field_error("rollback", err("rollback")))
            }
            h2 { "Versions" }
            table {
                thead { tr { th scope="col" { "Version" } th scope="col" { "Policy" } th scope="col" { "SHA-256" } th scope="col" { "Uploaded" } th scope="col" { "" } } }
                tbody {
                    @for v in &overview.versions {
                        tr {
                            td { "v" (v.version) }
                            td { (v.name) " " (v.policy_version) }
                            td { code { (v.sha256.get(..12).unwrap_or(&v.sha256)) } }
                            td { (v.uploaded_at) " by " (v.uploaded_by) }
                            td {
                                @if overview.active == Some(v.version) { span.badge { "active" } } @else {
                                    form method="post" action={ (base) "/activate" } {
                                        input type="hidden" name="csrf" value=(ctx.csrf);
                                        input type="hidden" name="version" value=(v.version);
                                        button type="submit" id={ "activate-" (v.version) } { "Activate v" (v.version) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            (field_error("activate", err("activate")))
            h2 id="upload-heading" { "Upload a version" }
            form method="post" action=(base) enctype="multipart/form-data" aria-labelledby="upload-heading" {
                input type="hidden" name="csrf" value=(ctx.csrf);
                (upload_fields("upload"))
                label.check { input type="checkbox" name="activate" value="yes"; "Activate it once stored" }
                (field_error("upload", err("upload")))
                button type="submit" id="upload-button" { "Upload" }
            }
            h2 id="dry-heading" { "Dry run" }
            p.muted { "Replays the tenant's recent decisions through a candidate; nothing changes." }
            form method="post" action={ (base) "/dry-run" } enctype="multipart/form-data" aria-labelledby="dry-heading" {
                input type="hidden" name="csrf" value=(ctx.csrf);
                (upload_fields("dry"))
                (field_error("dry", err("dry")))
                button type="submit" { "Dry run" }
            }
            @if let Some(report) = &extra.dry_run {
                section id="dry-run-report" aria-label="Dry-run result" {
                    p { strong { (report.changed.len()) " of " (report.evaluated) " recent decisions would change" }
                        " (candidate " (report.candidate.name) " " (report.candidate.version) ", against " (version_name(report.active)) ")." }
                    @for change in &report.changed {
                        details { summary { (change.decision) }
                            pre { "before: " (change.before) "\nafter:  " (change.after) "\ninput:  " (change.input) } }
                    }
                }
            }
            h2 id="shadow-heading" { "Shadow" }
            @if let Some(shadow) = &shadow {
                p id="shadow-state" { "Candidate " (shadow.candidate.name) " " (shadow.candidate.version) ": "
                    (shadow.stats.evaluated) " evaluated, " (shadow.stats.differed) " differed, "
                    (shadow.stats.failed) " failed, " (shadow.stats.dropped) " dropped." }
                form method="post" action={ (base) "/discard-shadow" } {
                    input type="hidden" name="csrf" value=(ctx.csrf);
                    button.secondary type="submit" { "Stop the shadow" }
                }
            } @else {
                p.muted { "No shadow candidate. A shadow runs beside the active policy on live decisions and counts where it would differ." }
            }
            form method="post" action={ (base) "/shadow" } enctype="multipart/form-data" aria-labelledby="shadow-heading" {
                input type="hidden" name="csrf" value=(ctx.csrf);
                (upload_fields("shadow"))
                (field_error("shadow", err("shadow")))
                button type="submit" { "Start shadow" }
            }
        },
    )
}

fn candidate(
    form: &super::Form,
    files: &HashMap<String, Vec<u8>>,
) -> Result<(Vec<u8>, String), String> {
    let component = files
        .get("component")
        .filter(|b| !b.is_empty())
        .cloned()
        .ok_or("choose the component file (.wasm)")?;
    let settings = form.text("settings").unwrap_or_else(|| "{}".into());
    serde_json::from_str::<serde_json::Value>(&settings)
        .map_err(|e| format!("the settings are not valid JSON: {e}"))?;
    Ok((component, settings))
}

async fn upload_request(
    app: &Arc<App>,
    ctx: &Ctx,
    headers: &HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<(super::Form, HashMap<String, Vec<u8>>), Response> {
    let (form, files) = checked_upload(app, ctx, headers, multipart)
        .await
        .map_err(IntoResponse::into_response)?;
    admin_only(ctx).map_err(IntoResponse::into_response)?;
    Ok((form, files))
}

/// Uploads a version (its cases run first), activating it when asked.
pub(super) async fn upload(
    State(app): Shared,
    Extension(console): Con,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    let ctx = match signed_in(
        &app,
        &console,
        &tenant,
        &headers,
        &here(&tenant, "/policies"),
    ) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let (form, files) = match upload_request(&app, &ctx, &headers, multipart).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let fail = |status, why| {
        policy_page(
            &app,
            &ctx,
            status,
            Extra {
                error: Some(("upload", why)),
                ..Extra::default()
            },
        )
    };
    let (component, settings) = match candidate(&form, &files) {
        Ok(c) => c,
        Err(why) => return fail(StatusCode::BAD_REQUEST, why),
    };
    let upload = Upload {
        component,
        settings,
        cases: Vec::new(),
        activate: form.get("activate").is_some(),
    };
    match app
        .upload_policy(&ctx.tenant, upload, &ctx.caller.actor())
        .await
    {
        Ok(_) => redirect(&format!(
            "/console/{}/policies?done=uploaded",
            seg(&ctx.tenant)
        )),
        Err(e) => fail(e.status(), words(&e)),
    }
}

/// A dry run of a candidate: the report on this answer.
pub(super) async fn dry_run(
    State(app): Shared,
    Extension(console): Con,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    let ctx = match signed_in(
        &app,
        &console,
        &tenant,
        &headers,
        &here(&tenant, "/policies"),
    ) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let (form, files) = match upload_request(&app, &ctx, &headers, multipart).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let result = match candidate(&form, &files) {
        Ok((component, settings)) => app
            .dry_run_policy(&ctx.tenant, component, settings)
            .await
            .map_err(|e| (e.status(), words(&e))),
        Err(why) => Err((StatusCode::BAD_REQUEST, why)),
    };
    match result {
        Ok(report) => policy_page(
            &app,
            &ctx,
            StatusCode::OK,
            Extra {
                dry_run: Some(report),
                ..Extra::default()
            },
        ),
        Err((status, why)) => policy_page(
            &app,
            &ctx,
            status,
            Extra {
                error: Some(("dry", why)),
                ..Extra::default()
            },
        ),
    }
}

/// Starts a shadow candidate.
pub(super) async fn shadow(
    State(app): Shared,
    Extension(console): Con,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    let ctx = match signed_in(
        &app,
        &console,
        &tenant,
        &headers,
        &here(&tenant, "/policies"),
    ) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let (form, files) = match upload_request(&app, &ctx, &headers, multipart).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let result = match candidate(&form, &files) {
        Ok((component, settings)) => app
            .start_shadow(&ctx.tenant, component, settings)
            .await
            .map_err(|e| (e.status(), words(&e))),
        Err(why) => Err((StatusCode::BAD_REQUEST, why)),
    };
    match result {
        Ok(_) => redirect(&format!(
            "/console/{}/policies?done=shadow",
            seg(&ctx.tenant)
        )),
        Err((status, why)) => policy_page(
            &app,
            &ctx,
            status,
            Extra {
                error: Some(("shadow", why)),
                ..Extra::default()
            },
        ),
    }
}

/// Activate a version, roll back, stop the shadow.
pub(super) async fn act(
    State(app): Shared,
    Extension(console): Con,
    Path((tenant, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ctx = match signed_in(
        &app,
        &console,
        &tenant,
        &headers,
        &here(&tenant, "/policies"),
    ) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let form = match checked_form(&app, &ctx, &headers, &body) {
        Ok(f) => f,
        Err(r) => return r.into_response(),
    };
    if let Err(r) = admin_only(&ctx) {
        return r.into_response();
    }
    let (field, result): (&'static str, Result<&str, AppError>) = match action.as_str() {
        "activate" => {
            let version = match form.text("version").map(|v| v.parse::<u64>()) {
                Some(Ok(v)) => Some(v),
                None => None,
                Some(Err(_)) => {
                    return Refusal::Page(
                        StatusCode::BAD_REQUEST,
                        "version must be a number".into(),
                    )
                    .into_response()
                }
            };
            (
                "activate",
                app.activate_policy(&ctx.tenant, version)
                    .await
                    .map(|_| "activated"),
            )
        }
        "rollback" => (
            "rollback",
            app.rollback_policy(&ctx.tenant)
                .await
                .map(|_| "rolled-back"),
        ),
        "discard-shadow" => ("shadow", app.discard_shadow(&ctx.tenant).map(|_| "shadow")),
        _ => {
            return Refusal::Page(StatusCode::NOT_FOUND, format!("no action {action:?}"))
                .into_response()
        }
    };
    match result {
        Ok(done) => redirect(&format!(
            "/console/{}/policies?done={done}",
            seg(&ctx.tenant)
        )),
        Err(e) => policy_page(
            &app,
            &ctx,
            e.status(),
            Extra {
                error: Some((field, words(&e))),
                ..Extra::default()
            },
        ),
    }
}
