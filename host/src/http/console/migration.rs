//! Migration: upload a legacy export, read the plan (the same sections as the CLI's
//! report: who loses admin, what a human must do), apply exactly the reviewed plan.

use super::{admin_only, checked_upload, field_error, here, page, seg, signed_in, words, Con, Ctx};
use crate::app::App;
use crate::http::Shared;
use axum::extract::{Multipart, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use maud::html;

pub(super) async fn page_get(
    State(app): Shared,
    Extension(console): Con,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    let ctx = match signed_in(
        &app,
        &console,
        &tenant,
        &headers,
        &here(&tenant, "/migration"),
    ) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    if let Err(r) = admin_only(&ctx) {
        return r.into_response();
    }
    migration_page(&ctx, StatusCode::OK, None, None)
}

/// What the page shows under the form: a plan (with the export to apply it) or the
/// result of an apply.
enum Shown {
    Plan {
        plan: Box<crate::migrate::Plan>,
        export: String,
    },
    Applied(Box<crate::app::MigrationApplied>),
}

fn migration_page(
    ctx: &Ctx,
    status: StatusCode,
    error: Option<String>,
    shown: Option<Shown>,
) -> Response {
    let action = format!("/console/{}/migration", seg(&ctx.tenant));
    let sections = |plan: &crate::migrate::Plan| {
        html! {
            @for (title, header, rows) in crate::migrate::sections(plan) {
                h3 { (title) }
                @if rows.is_empty() { p.muted { "None." } } @else {
                    table {
                        thead { tr { @for h in &header { th scope="col" { (h) } } } }
                        tbody { @for row in &rows { tr { @for cell in row { td { (cell) } } } } }
                    }
                }
            }
            @if !plan.manual_roles_kept.is_empty() {
                p { "Manual roles kept (they win): " (plan.manual_roles_kept.join(", ")) }
            }
            h3 { "Left to a human" }
            ul id="human-steps" { @for step in &plan.human_steps { li { (step) } } }
        }
    };
    page(
        status,
        Some(ctx),
        "Migration",
        html! {
            p.muted { "Upload the legacy export (JSON, docs/migration.md). The plan changes nothing; apply carries out exactly the plan you read, in one audited change." }
            form method="post" action=(action) enctype="multipart/form-data" aria-labelledby="export-label" {
                input type="hidden" name="csrf" value=(ctx.csrf);
                input type="hidden" name="step" value="plan";
                label for="export" id="export-label" { "Legacy export (.json)" }
                input id="export" name="export" type="file" accept=".json,application/json" required
                    aria-describedby=[error.as_ref().map(|_| "export-error")];
                (field_error("export", error.as_deref()))
                button type="submit" id="plan-button" { "Show the plan" }
            }
            @match &shown {
                Some(Shown::Plan { plan, export }) => {
                    section id="plan" aria-labelledby="plan-heading" {
                        h2 id="plan-heading" { "Plan for " (plan.tenant) ": " span id="plan-changes" { (plan.changes) } " change(s)" }
                        p { "Digest " code { (plan.digest) } }
                        (sections(plan))
                        form method="post" action=(action) enctype="multipart/form-data" {
                            input type="hidden" name="csrf" value=(ctx.csrf);
                            input type="hidden" name="step" value="apply";
                            input type="hidden" name="plan" value=(plan.digest);
                            input type="hidden" name="export_text" value=(export);
                            button type="submit" id="apply-button" disabled[plan.changes == 0] { "Apply this plan" }
                        }
                    }
                }
                Some(Shown::Applied(applied)) => {
                    section id="applied" role="status" {
                        h2 { (if applied.applied { "Applied" } else { "Nothing to apply" }) }
                        p id="applied-changes" { (applied.changes) " change(s) carried out." }
                        h3 { "Left to a human" }
                        ul { @for step in &applied.human_steps { li { (step) } } }
                    }
                }
                None => {}
            }
        },
    )
}

/// `step=plan` (an uploaded file) shows the plan; `step=apply` (the export carried in
/// the plan's form, with its digest) applies it, refused if the plan changed meanwhile.
pub(super) async fn plan_or_apply(
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
        &here(&tenant, "/migration"),
    ) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let (form, files) = match checked_upload(&app, &ctx, &headers, multipart).await {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    if let Err(r) = admin_only(&ctx) {
        return r.into_response();
    }
    let export: Vec<u8> = match form.get("step") {
        Some("apply") => form
            .get("export_text")
            .unwrap_or_default()
            .as_bytes()
            .to_vec(),
        _ => files.get("export").cloned().unwrap_or_default(),
    };
    if export.is_empty() {
        return migration_page(
            &ctx,
            StatusCode::BAD_REQUEST,
            Some("choose the export file".into()),
            None,
        );
    }
    let worker: std::sync::Arc<App> = app.clone();
    let (t, caller) = (ctx.tenant.clone(), ctx.caller.clone());
    let apply = form.get("step") == Some("apply");
    let digest = form.text("plan");
    let bytes = export.clone();
    let result = super::blocking(move || {
        if apply {
            worker
                .migration_apply(&t, &bytes, digest.as_deref(), &caller)
                .map(|a| Shown::Applied(Box::new(a)))
        } else {
            worker
                .migration_plan(&t, &bytes, &caller)
                .map(|plan| Shown::Plan {
                    plan: Box::new(plan),
                    export: String::from_utf8_lossy(&bytes).into_owned(),
                })
        }
    })
    .await;
    match result {
        Ok(shown) => migration_page(&ctx, StatusCode::OK, None, Some(shown)),
        Err(e) => migration_page(&ctx, e.status(), Some(words(&e)), None),
    }
}
