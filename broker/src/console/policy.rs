//! Policy history: every version the broker put in force, when it was first
//! loaded, and a readable line diff between any two versions.

use std::collections::BTreeSet;

use axum::extract::Query;
use axum::response::{IntoResponse, Response};
use maud::html;
use serde::Deserialize;
use similar::{ChangeTag, TextDiff};

use super::ConsoleError;
use super::i18n::local_time;
use super::templates::{Ctx, layout};

fn short(version: &str) -> &str {
    let hex = version.strip_prefix("sha256:").unwrap_or(version);
    hex.get(..12).unwrap_or(hex)
}

/// `GET /policy`.
pub async fn history(ctx: Ctx) -> Result<Response, ConsoleError> {
    let l = ctx.lang;
    let versions = ctx.state.store.policy_versions().await?;
    let current = ctx.state.policy.current().version().to_string();
    let body = html! {
        table.versions id="policy-versions" {
            thead { tr { th { (l.t("Version", "Version")) } th { (l.t("Först laddad", "First loaded")) } th {} } }
            tbody { @for (v, at) in versions.iter().rev() { tr {
                td { code title=(v) { (short(v)) } }
                td { (local_time(*at)) }
                td { @if *v == current { strong { (l.t("gäller nu", "in force")) } } }
            } } }
        }
        @if versions.len() >= 2 {
            form method="get" action="/policy/diff" {
                label { (l.t("Från version", "From version")) select name="a" { @for (i, (v, at)) in versions.iter().enumerate() { option value=(v) selected[i + 2 == versions.len()] { (short(v)) " – " (local_time(*at)) } } } }
                label { (l.t("Till version", "To version")) select name="b" { @for (i, (v, at)) in versions.iter().enumerate() { option value=(v) selected[i + 1 == versions.len()] { (short(v)) " – " (local_time(*at)) } } } }
                button type="submit" { (l.t("Visa skillnader", "Show differences")) }
            }
        }
    };
    Ok(layout(&ctx, l.t("Policyhistorik", "Policy history"), body).into_response())
}

/// The two versions to compare.
#[derive(Deserialize)]
pub struct DiffParams {
    a: Option<String>,
    b: Option<String>,
}

/// `GET /policy/diff?a=…&b=…`.
pub async fn diff(ctx: Ctx, Query(params): Query<DiffParams>) -> Result<Response, ConsoleError> {
    let l = ctx.lang;
    let (Some(a), Some(b)) = (params.a, params.b) else {
        return Err(ConsoleError::BadRequest(
            "give two versions: ?a=sha256:…&b=sha256:…".into(),
        ));
    };
    let store = &ctx.state.store;
    let old = store
        .policy_files(&a)
        .await?
        .ok_or(ConsoleError::NotFound)?;
    let new = store
        .policy_files(&b)
        .await?
        .ok_or(ConsoleError::NotFound)?;
    let paths: BTreeSet<&str> = old
        .iter()
        .chain(new.iter())
        .map(|f| f.path.as_str())
        .collect();
    let text = |files: &[samverkan_sdk::audit::evidence::PolicyFile], p: &str| {
        files
            .iter()
            .find(|f| f.path == p)
            .map(|f| f.text.clone())
            .unwrap_or_default()
    };
    let body = html! {
        p { code { (short(&a)) } " → " code { (short(&b)) } }
        @for p in &paths {
            @let (before, after) = (text(&old, p), text(&new, p));
            @if before != after {
                section.diff {
                    h2 { code { (p) } }
                    pre.diff { @for group in TextDiff::from_lines(&before, &after).grouped_ops(3) {
                        span.hunk { "…\n" }
                        @for op in group { @for change in TextDiff::from_lines(&before, &after).iter_changes(&op) {
                            @match change.tag() {
                                ChangeTag::Delete => span.del { "- " (change.value()) },
                                ChangeTag::Insert => span.ins { "+ " (change.value()) },
                                ChangeTag::Equal => span { "  " (change.value()) },
                            }
                        } }
                    } }
                }
            }
        }
        @if paths.iter().all(|p| text(&old, p) == text(&new, p)) { p { (l.t("Inga skillnader.", "No differences.")) } }
    };
    Ok(layout(
        &ctx,
        l.t(
            "Skillnader mellan policyversioner",
            "Differences between policy versions",
        ),
        body,
    )
    .into_response())
}
