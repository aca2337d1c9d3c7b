//! Who shares with whom: agency × agency over a chosen period, counts per
//! legal basis, denials apart, every cell a link to its filtered list; the
//! number of entries per kind per day; the latest signed checkpoint and its age.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::Query;
use axum::response::{IntoResponse, Response};
use maud::html;
use serde::Deserialize;

use super::ConsoleError;
use super::i18n::{local_date, local_time, parse_local_date};
use super::search::kind_label;
use super::templates::{Ctx, layout, urlencode};

/// The chosen period.
#[derive(Debug, Default, Deserialize)]
pub struct Period {
    from: Option<String>,
    to: Option<String>,
}

const DAY_MS: i64 = 86_400_000;

/// `GET /`.
pub async fn page_handler(ctx: Ctx, period: Period) -> Result<Response, ConsoleError> {
    let l = ctx.lang;
    let now = samverkan_sdk::time::now_ms();
    let date = |v: &Option<String>, name: &str| -> Result<Option<i64>, ConsoleError> {
        match v.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(d) => parse_local_date(d).map(Some).ok_or_else(|| {
                ConsoleError::BadRequest(format!("{name}: `{d}` is not a date like 2026-11-30"))
            }),
        }
    };
    let to_ms = date(&period.to, "to")?
        .map(|t| t + DAY_MS)
        .unwrap_or(now + 1);
    let from_ms = date(&period.from, "from")?.unwrap_or(to_ms - 30 * DAY_MS);
    if from_ms >= to_ms {
        return Err(ConsoleError::BadRequest("from must be before to".into()));
    }
    let (from_date, to_date) = (local_date(from_ms), local_date(to_ms - 1));
    let scope = ctx.viewer.scope();
    let store = &ctx.state.store;
    let flows = store.console_flows(&scope, from_ms, to_ms).await?;
    // Days of Swedish winter time; a summer day is shifted by an hour.
    let counts = store.console_kind_counts(&scope, from_ms, to_ms).await?;
    let latest = store.latest_checkpoint().await?;

    let mut publishers = BTreeSet::new();
    let mut recipients = BTreeSet::new();
    let mut shares: BTreeMap<(String, String), Vec<(String, i64)>> = BTreeMap::new();
    let mut denials: BTreeMap<(String, String), i64> = BTreeMap::new();
    for f in &flows {
        let recipient = f.recipient.clone().unwrap_or_default();
        publishers.insert(f.publisher.clone());
        recipients.insert(recipient.clone());
        let key = (f.publisher.clone(), recipient);
        if f.kind == "share" {
            shares
                .entry(key)
                .or_default()
                .push((f.legal_basis.clone().unwrap_or_default(), f.count));
        } else {
            *denials.entry(key).or_default() += f.count;
        }
    }
    let link = |kind: &str, publisher: &str, recipient: &str, basis: Option<&str>| {
        let mut q = format!(
            "/search?kind={kind}&publisher={}&from={from_date}&to={to_date}",
            urlencode(publisher)
        );
        if !recipient.is_empty() {
            q.push_str(&format!("&recipient={}", urlencode(recipient)));
        }
        if let Some(b) = basis {
            q.push_str(&format!("&legal_basis={}", urlencode(b)));
        }
        q
    };
    let mut days: BTreeMap<i64, BTreeMap<String, i64>> = BTreeMap::new();
    let mut kinds = BTreeSet::new();
    for (day, kind, n) in &counts {
        kinds.insert(kind.clone());
        *days
            .entry(*day)
            .or_default()
            .entry(kind.clone())
            .or_default() += n;
    }
    let body = html! {
        form.period method="get" action="/" {
            label { (l.t("Från", "From")) input type="date" name="from" value=(from_date); }
            label { (l.t("Till och med", "To (inclusive)")) input type="date" name="to" value=(to_date); }
            button type="submit" { (l.t("Visa", "Show")) }
        }
        section.checkpoint {
            h2 { (l.t("Senaste signerade kontrollpunkt", "Latest signed checkpoint")) }
            @match &latest {
                Some(cp) => p id="latest-checkpoint" {
                    (l.number(cp.size)) " " (l.t("poster, signerad", "entries, signed")) " " (local_time(cp.at_ms))
                    " (" (age(l, now - cp.at_ms)) ")"
                },
                None => p { (l.t("Ingen ännu.", "None yet.")) },
            }
        }
        section.flows {
            h2 { (l.t("Vem delar med vem (delningar per rättslig grund)", "Who shares with whom (shares per legal basis)")) }
            @if shares.is_empty() { p.empty { (l.t("Inga delningar under perioden.", "No shares in the period.")) } } @else {
                table.matrix id="share-matrix" {
                    thead { tr { th { (l.t("Avsändare ↓ / mottagare →", "Publisher ↓ / recipient →")) } @for r in &recipients { th { (r) } } } }
                    tbody { @for p in &publishers { tr { th { (p) } @for r in &recipients { td {
                        @if let Some(list) = shares.get(&(p.clone(), r.clone())) {
                            @for (basis, n) in list { a.cell href=(link("share", p, r, Some(basis))) { (basis) ": " strong { (n) } } br; }
                        }
                    } } } } }
                }
            }
            h2 { (l.t("Nekade (visas för sig)", "Denials (shown apart)")) }
            @if denials.is_empty() { p.empty { (l.t("Inga nekanden under perioden.", "No denials in the period.")) } } @else {
                table.matrix.denials id="denial-matrix" {
                    thead { tr { th { (l.t("Avsändare ↓ / nekad mottagare →", "Publisher ↓ / denied recipient →")) } @for r in &recipients { th { @if r.is_empty() { (l.t("(alla)", "(all)")) } @else { (r) } } } } }
                    tbody { @for p in &publishers { tr { th { (p) } @for r in &recipients { td {
                        @if let Some(n) = denials.get(&(p.clone(), r.clone())) { a.cell href=(link("denial", p, r, None)) { strong { (n) } } }
                    } } } } }
                }
            }
        }
        section.kinds {
            h2 { (l.t("Poster per typ och dag", "Entries per kind and day")) }
            @if days.is_empty() { p.empty { (l.t("Inga poster under perioden.", "No entries in the period.")) } } @else {
                table.counts {
                    thead { tr { th { (l.t("Dag", "Day")) } @for k in &kinds { th { (kind_label(l, k)) } } } }
                    tbody { @for (day, per) in days.iter().rev() { tr {
                        td { (local_date(*day + 3_600_000)) }
                        @for k in &kinds { td { @if let Some(n) = per.get(k) { (n) } } }
                    } } }
                }
            }
        }
    };
    Ok(layout(&ctx, l.t("Översikt", "Overview"), body).into_response())
}

fn age(l: super::i18n::Lang, ms: i64) -> String {
    let s = (ms / 1000).max(0);
    match s {
        0..=119 => format!("{s} s {}", l.t("sedan", "ago")),
        120..=7199 => format!("{} min {}", s / 60, l.t("sedan", "ago")),
        _ => format!("{} h {}", s / 3600, l.t("sedan", "ago")),
    }
}

/// Route of [`page_handler`].
pub async fn page(ctx: Ctx, Query(period): Query<Period>) -> Result<Response, ConsoleError> {
    page_handler(ctx, period).await
}
