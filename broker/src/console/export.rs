//! Exports of a filtered list: CSV (for spreadsheets, every cell that a
//! spreadsheet would read as a formula neutralised) and JSON Lines (one
//! entry per line, exactly as in the log).

use axum::extract::Query;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::ConsoleError;
use super::i18n::local_time;
use super::record::{Action, record};
use super::search::SearchParams;
use super::templates::Ctx;
use crate::audit::AuditEntry;
use crate::store::console::{ConsoleFilter, Cursor, Scope};
use crate::store::{Store, StoreError};

/// Most entries one export holds.
pub const EXPORT_LIMIT: usize = 100_000;
const CHUNK: u32 = 1000;

/// A cell as a spreadsheet must not execute it: a leading `=`, `+`, `-`,
/// `@`, tab or carriage return is preceded by `'` (OWASP's advice).
pub fn spreadsheet_safe(cell: &str) -> String {
    match cell.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{cell}"),
        _ => cell.to_string(),
    }
}

/// The entries of an export, newest first, at most [`EXPORT_LIMIT`]: the
/// filtered list read page by page (keyset, as the search pages).
pub async fn collect(
    store: &Store,
    scope: &Scope,
    filter: &ConsoleFilter,
) -> Result<Vec<AuditEntry>, StoreError> {
    let mut out: Vec<AuditEntry> = Vec::new();
    let mut cursor = Cursor::Newest;
    for _ in 0..EXPORT_LIMIT / CHUNK as usize {
        let page = store.console_search(scope, filter, cursor, CHUNK).await?;
        let done = page.len() < CHUNK as usize;
        if let Some(last) = page.last() {
            cursor = Cursor::Before(last.index);
        }
        out.extend(page);
        if done {
            break;
        }
    }
    Ok(out)
}

async fn entries(
    ctx: &Ctx,
    params: &SearchParams,
    format: &str,
) -> Result<Vec<AuditEntry>, ConsoleError> {
    let filter = params.filter()?;
    let out = collect(&ctx.state.store, &ctx.viewer.scope(), &filter).await?;
    record(
        &ctx.state,
        &ctx.viewer,
        Action::Export,
        &format!(
            "export {format} of ?{} ({} entries)",
            params.filter_query(),
            out.len()
        ),
        None,
        None,
    )
    .await?;
    Ok(out)
}

fn attachment(name: &str, content_type: &'static str, body: Vec<u8>) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        body,
    )
        .into_response()
}

/// `GET /export.csv?<filters>`.
pub async fn csv(ctx: Ctx, Query(params): Query<SearchParams>) -> Result<Response, ConsoleError> {
    let entries = entries(&ctx, &params, "csv").await?;
    let mut w = ::csv::Writer::from_writer(Vec::new());
    let header = [
        "index",
        "kind",
        "at_ms",
        "time",
        "alert_id",
        "publisher",
        "recipient",
        "topic",
        "alert_type",
        "rule_id",
        "legal_basis",
        "purpose",
        "fields",
        "reason_code",
        "reason",
        "policy_version",
        "share_id",
        "envelope_hash",
    ];
    let failed = |e: ::csv::Error| ConsoleError::Unavailable(format!("CSV: {e}"));
    w.write_record(header).map_err(failed)?;
    for e in &entries {
        let o = |v: &Option<String>| spreadsheet_safe(v.as_deref().unwrap_or(""));
        w.write_record([
            e.index.to_string(),
            e.kind.as_str().to_string(),
            e.at_ms.to_string(),
            local_time(e.at_ms),
            o(&e.alert_id),
            o(&e.publisher),
            o(&e.recipient),
            o(&e.topic),
            o(&e.alert_type),
            o(&e.rule_id),
            o(&e.legal_basis),
            o(&e.purpose),
            spreadsheet_safe(&e.fields.join(";")),
            o(&e.reason_code),
            o(&e.reason),
            o(&e.policy_version),
            o(&e.share_id),
            o(&e.envelope_hash),
        ])
        .map_err(failed)?;
    }
    let body = w
        .into_inner()
        .map_err(|e| ConsoleError::Unavailable(format!("CSV: {e}")))?;
    Ok(attachment(
        "samverkan-audit.csv",
        "text/csv; charset=utf-8",
        body,
    ))
}

/// `GET /export.jsonl?<filters>`.
pub async fn jsonl(ctx: Ctx, Query(params): Query<SearchParams>) -> Result<Response, ConsoleError> {
    let entries = entries(&ctx, &params, "jsonl").await?;
    let mut body = Vec::new();
    for e in &entries {
        let line =
            serde_json::to_vec(e).map_err(|e| ConsoleError::Unavailable(format!("JSON: {e}")))?;
        body.extend(line);
        body.push(b'\n');
    }
    Ok(attachment(
        "samverkan-audit.jsonl",
        "application/jsonl; charset=utf-8",
        body,
    ))
}

#[cfg(test)]
mod tests {
    use super::spreadsheet_safe;

    #[test]
    fn formulas_are_neutralised() {
        for bad in ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"] {
            assert_eq!(spreadsheet_safe(bad), format!("'{bad}"));
        }
        assert_eq!(spreadsheet_safe("polisen"), "polisen");
        assert_eq!(spreadsheet_safe(""), "");
    }
}
