//! Filtered lists of entries: any combination of publisher, recipient,
//! kind, legal basis, rule, alert type, topic, dates, alert id and index;
//! newest first, by index, 50 to a page, each view a permalink. And the
//! subject search, a POST whose identifier is hashed on the server and never
//! appears in a URL, a log line or the page's links.

use axum::Form;
use axum::extract::Query;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use samverkan_sdk::audit::EntryKind;
use serde::{Deserialize, Serialize};

use super::ConsoleError;
use super::i18n::{Lang, local_time, parse_local_date};
use super::record::{Action, record};
use super::templates::{Ctx, dash, layout};
use crate::audit::AuditEntry;
use crate::store::console::{ConsoleFilter, Cursor};

/// Entries per page.
pub const PAGE_SIZE: u32 = 50;

/// The query string of a filtered list, as in a permalink.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct SearchParams {
    #[serde(default, skip_serializing_if = "is_blank")]
    publisher: Option<String>,
    #[serde(default, skip_serializing_if = "is_blank")]
    recipient: Option<String>,
    #[serde(default, skip_serializing_if = "is_blank")]
    kind: Option<String>,
    #[serde(default, skip_serializing_if = "is_blank")]
    legal_basis: Option<String>,
    #[serde(default, skip_serializing_if = "is_blank")]
    rule: Option<String>,
    #[serde(default, skip_serializing_if = "is_blank")]
    alert_type: Option<String>,
    #[serde(default, skip_serializing_if = "is_blank")]
    topic: Option<String>,
    #[serde(default, skip_serializing_if = "is_blank")]
    from: Option<String>,
    #[serde(default, skip_serializing_if = "is_blank")]
    to: Option<String>,
    #[serde(default, skip_serializing_if = "is_blank")]
    alert_id: Option<String>,
    #[serde(default, skip_serializing_if = "is_blank")]
    index: Option<String>,
    /// Page: entries older than this index.
    #[serde(default, skip_serializing_if = "is_blank")]
    before: Option<String>,
    /// Page: entries newer than this index.
    #[serde(default, skip_serializing_if = "is_blank")]
    after: Option<String>,
}

fn is_blank(v: &Option<String>) -> bool {
    v.as_deref().is_none_or(|s| s.trim().is_empty())
}

fn value(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

impl SearchParams {
    /// Checks the parameters; each mistake is named with what is expected.
    pub fn filter(&self) -> Result<ConsoleFilter, ConsoleError> {
        let bad = |m: String| ConsoleError::BadRequest(m);
        for (name, v) in [
            ("publisher", &self.publisher),
            ("recipient", &self.recipient),
            ("legal_basis", &self.legal_basis),
            ("rule", &self.rule),
            ("alert_type", &self.alert_type),
            ("topic", &self.topic),
            ("alert_id", &self.alert_id),
        ] {
            if v.as_deref().is_some_and(|s| s.len() > 200) {
                return Err(bad(format!("{name}: at most 200 characters")));
            }
        }
        let kind = match value(&self.kind) {
            None => None,
            Some(k) => Some(
                EntryKind::parse(&k)
                    .ok_or_else(|| {
                        bad(format!(
                            "kind `{k}` is not one of {}",
                            EntryKind::ALL.map(|k| k.as_str()).join(", ")
                        ))
                    })?
                    .as_str()
                    .to_string(),
            ),
        };
        let date = |name: &str, v: &Option<String>, plus_day: bool| match value(v) {
            None => Ok(None),
            Some(d) => parse_local_date(&d)
                .map(|ms| Some(if plus_day { ms + 86_400_000 } else { ms }))
                .ok_or_else(|| bad(format!("{name}: `{d}` is not a date like 2026-11-30"))),
        };
        let index =
            match value(&self.index) {
                None => None,
                Some(i) => Some(i.parse::<u64>().map_err(|_| {
                    bad(format!("index: `{i}` is not an entry number (0, 1, 2, …)"))
                })?),
            };
        Ok(ConsoleFilter {
            publisher: value(&self.publisher),
            recipient: value(&self.recipient),
            kind,
            legal_basis: value(&self.legal_basis),
            rule_id: value(&self.rule),
            alert_type: value(&self.alert_type),
            topic: value(&self.topic),
            alert_id: value(&self.alert_id),
            from_ms: date("from", &self.from, false)?,
            // `to` is inclusive: the whole day.
            to_ms: date("to", &self.to, true)?,
            index,
        })
    }

    /// Which page.
    pub fn cursor(&self) -> Result<Cursor, ConsoleError> {
        let number = |name: &str, v: &Option<String>| -> Result<Option<u64>, ConsoleError> {
            value(v)
                .map(|s| {
                    s.parse::<u64>().map_err(|_| {
                        ConsoleError::BadRequest(format!("{name}: `{s}` is not an entry number"))
                    })
                })
                .transpose()
        };
        Ok(
            match (
                number("before", &self.before)?,
                number("after", &self.after)?,
            ) {
                (Some(b), _) => Cursor::Before(b),
                (None, Some(a)) => Cursor::After(a),
                (None, None) => Cursor::Newest,
            },
        )
    }

    /// The filters alone (no page), as a query string.
    pub fn filter_query(&self) -> String {
        let mut only = self.clone();
        only.before = None;
        only.after = None;
        serde_urlencoded::to_string(&only).unwrap_or_default()
    }

    /// The query string of another page of the same list.
    fn page_query(&self, before: Option<u64>, after: Option<u64>) -> String {
        let mut other = self.clone();
        other.before = before.map(|b| b.to_string());
        other.after = after.map(|a| a.to_string());
        serde_urlencoded::to_string(&other).unwrap_or_default()
    }

    /// This exact view (filters and page), as a query string.
    pub fn permalink_query(&self) -> String {
        serde_urlencoded::to_string(self).unwrap_or_default()
    }
}

/// `GET /search`.
pub async fn page(ctx: Ctx, Query(params): Query<SearchParams>) -> Result<Response, ConsoleError> {
    let filter = params.filter()?;
    let cursor = params.cursor()?;
    let l = ctx.lang;
    let entries = ctx
        .state
        .store
        .console_search(&ctx.viewer.scope(), &filter, cursor, PAGE_SIZE)
        .await?;
    record(
        &ctx.state,
        &ctx.viewer,
        Action::Search,
        &format!("search ?{}", params.permalink_query()),
        None,
        None,
    )
    .await?;
    let newest = entries.first().map(|e| e.index);
    let oldest = entries.last().map(|e| e.index);
    let full = entries.len() == PAGE_SIZE as usize;
    let has_newer = cursor != Cursor::Newest && newest.is_some();
    let has_older = match cursor {
        Cursor::After(_) => oldest.is_some(),
        _ => full,
    };
    let permalink = format!("/search?{}", params.permalink_query());
    let filters = params.filter_query();
    let body = html! {
        (search_form(&ctx, &params))
        p.actions {
            a.permalink href=(permalink) { (l.t("Permalänk till denna vy", "Permalink to this view")) }
            " · "
            a href={"/export.csv?" (filters)} { "CSV" }
            " · "
            a href={"/export.jsonl?" (filters)} { "JSON Lines" }
        }
        (entries_table(l, &entries))
        nav.pages {
            @if has_newer {
                @if let Some(n) = newest { a id="newer" href={"/search?" (params.page_query(None, Some(n)))} { "← " (l.t("Nyare", "Newer")) } }
            }
            " "
            @if has_older {
                @if let Some(o) = oldest { a id="older" href={"/search?" (params.page_query(Some(o), None))} { (l.t("Äldre", "Older")) " →" } }
            }
        }
    };
    Ok(layout(
        &ctx,
        l.t("Sök i granskningsloggen", "Search the audit log"),
        body,
    )
    .into_response())
}

fn search_form(ctx: &Ctx, p: &SearchParams) -> Markup {
    let l = ctx.lang;
    let v = |x: &Option<String>| x.clone().unwrap_or_default();
    let policy = ctx.state.policy.current();
    let agencies: Vec<String> = policy.agencies().keys().cloned().collect();
    let kind = v(&p.kind);
    html! {
        form.search method="get" action="/search" {
            label { (l.t("Avsändare", "Publisher")) input name="publisher" list="agencies" value=(v(&p.publisher)); }
            label { (l.t("Mottagare", "Recipient")) input name="recipient" list="agencies" value=(v(&p.recipient)); }
            label { (l.t("Typ av post", "Kind")) select name="kind" {
                option value="" { (l.t("alla", "all")) }
                @for k in EntryKind::ALL { option value=(k.as_str()) selected[kind == k.as_str()] { (kind_label(l, k.as_str())) } }
            } }
            label { (l.t("Rättslig grund", "Legal basis")) input name="legal_basis" value=(v(&p.legal_basis)); }
            label { (l.t("Regel", "Rule")) input name="rule" value=(v(&p.rule)); }
            label { (l.t("Larmtyp", "Alert type")) input name="alert_type" value=(v(&p.alert_type)); }
            label { (l.t("Ämne", "Topic")) input name="topic" value=(v(&p.topic)); }
            label { (l.t("Från (datum)", "From (date)")) input type="date" name="from" value=(v(&p.from)); }
            label { (l.t("Till och med", "To (inclusive)")) input type="date" name="to" value=(v(&p.to)); }
            label { (l.t("Larm-id", "Alert id")) input name="alert_id" value=(v(&p.alert_id)); }
            label { (l.t("Postnummer", "Entry index")) input name="index" inputmode="numeric" value=(v(&p.index)); }
            datalist id="agencies" { @for a in &agencies { option value=(a) {} } }
            button type="submit" { (l.t("Sök", "Search")) }
        }
    }
}

/// A kind's name for people.
pub fn kind_label(l: Lang, kind: &str) -> &'static str {
    match kind {
        "share" => l.t("delning", "share"),
        "denial" => l.t("nekad", "denial"),
        "rejection" => l.t("avvisat larm", "rejection"),
        "ack" => l.t("kvittens", "acknowledgement"),
        "policy_loaded" => l.t("policy laddad", "policy loaded"),
        "key_revoked" => l.t("nyckel spärrad", "key revoked"),
        "retention_purge" => l.t("gallring", "retention purge"),
        "auditor_access" => l.t("granskarens åtkomst", "auditor access"),
        _ => "?",
    }
}

/// The list of entries, each linked to its page and its case.
pub fn entries_table(l: Lang, entries: &[AuditEntry]) -> Markup {
    html! {
        @if entries.is_empty() {
            p.empty { (l.t("Inga poster.", "No entries.")) }
        } @else {
            table.entries {
                thead { tr {
                    th { "#" } th { (l.t("Tid", "Time")) } th { (l.t("Typ", "Kind")) }
                    th { (l.t("Avsändare", "Publisher")) } th { (l.t("Mottagare", "Recipient")) }
                    th { (l.t("Larmtyp", "Alert type")) } th { (l.t("Regel / rättslig grund", "Rule / legal basis")) }
                    th { (l.t("Skäl", "Reason")) } th { (l.t("Larm", "Alert")) }
                } }
                tbody {
                    @for e in entries {
                        tr class={"kind-" (e.kind.as_str())} {
                            td { a href={"/entry/" (e.index)} { (e.index) } }
                            td { (local_time(e.at_ms)) }
                            td { (kind_label(l, e.kind.as_str())) }
                            td { (opt(&e.publisher)) }
                            td { (opt(&e.recipient)) }
                            td { (opt(&e.alert_type)) }
                            td { (opt(&e.rule_id)) @if let Some(b) = &e.legal_basis { br; small { (b) } } }
                            td { (opt(&e.reason_code)) }
                            td { @if let Some(a) = &e.alert_id { a href={"/case/" (a)} { (short(a)) } } @else { (dash()) } }
                        }
                    }
                }
            }
        }
    }
}

/// An optional text, or a dash.
pub fn opt(v: &Option<String>) -> Markup {
    match v {
        Some(s) => html! { (s) },
        None => dash(),
    }
}

fn short(id: &str) -> String {
    id.chars().take(8).collect::<String>() + "…"
}

/// The subject search form.
fn subject_form_markup(ctx: &Ctx, error: Option<&str>) -> Markup {
    let l = ctx.lang;
    html! {
        p { (l.t(
            "Ange ett personnummer, samordningsnummer eller organisationsnummer. Det skickas med POST, kontrolleras (kontrollsiffra) och omvandlas på servern till sin nyckelhash; numret sparas, loggas och visas aldrig.",
            "Give a personnummer, samordningsnummer or organisationsnummer. It is sent by POST, checked (check digit) and turned into its keyed hash on the server; the number is never stored, logged or shown.")) }
        @if let Some(e) = error { p.error { (e) } }
        form.subject method="post" action="/subject" autocomplete="off" {
            (ctx.csrf_field())
            label { (l.t("Identitet", "Identifier")) input name="identifier" required autocomplete="off" spellcheck="false"; }
            button type="submit" { (l.t("Sök", "Search")) }
        }
    }
}

/// `GET /subject`: the form.
pub async fn subject_form(ctx: Ctx) -> Response {
    let title = ctx.t("Sök person eller företag", "Search a person or company");
    layout(&ctx, title, subject_form_markup(&ctx, None)).into_response()
}

/// The subject search form's fields.
#[derive(Deserialize)]
pub struct SubjectForm {
    csrf: Option<String>,
    identifier: Option<String>,
}

/// `POST /subject`: every visible entry about one person or company.
pub async fn subject(ctx: Ctx, Form(form): Form<SubjectForm>) -> Result<Response, ConsoleError> {
    super::auth::check_csrf(&ctx.state, &ctx.viewer, form.csrf.as_deref().unwrap_or(""))?;
    let l = ctx.lang;
    let title = l.t("Sök person eller företag", "Search a person or company");
    let text = form.identifier.unwrap_or_default();
    let hash = match ctx.state.subjects.hash_identifier(text.trim()) {
        Ok(h) => h,
        Err(e) => {
            // The error names what is wrong with the check digit or form,
            // never the number itself.
            let message = format!(
                "{}: {e}",
                l.t("Inte ett giltigt nummer", "Not a valid identifier")
            );
            let body = subject_form_markup(&ctx, Some(&message));
            return Ok((
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                layout(&ctx, title, body),
            )
                .into_response());
        }
    };
    const LIMIT: u32 = 500;
    let entries = ctx
        .state
        .store
        .console_subject(&ctx.viewer.scope(), &hash, LIMIT)
        .await?;
    record(
        &ctx.state,
        &ctx.viewer,
        Action::Subject,
        "subject search (identifier as its keyed hash in subject_hashes)",
        None,
        Some(hash),
    )
    .await?;
    let shares = entries
        .iter()
        .filter(|e| e.kind == EntryKind::Share)
        .count();
    let lookups = entries
        .iter()
        .filter(|e| e.kind == EntryKind::AuditorAccess)
        .count();
    let body = html! {
        (subject_form_markup(&ctx, None))
        p.summary id="subject-summary" {
            (shares) " " (l.t("delningar", "shares")) ", "
            (entries.len() - shares - lookups) " " (l.t("övriga beslut", "other decisions")) ", "
            (lookups) " " (l.t("tidigare sökningar på samma person/företag", "earlier lookups of the same person/company"))
            @if entries.len() == LIMIT as usize { " (" (l.t("de senaste 500", "the latest 500")) ")" }
        }
        (entries_table(l, &entries))
    };
    Ok(layout(&ctx, title, body).into_response())
}
