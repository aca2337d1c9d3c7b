//! The case page of one alert: its signed header, every decision (shares
//! with the fields sent and withheld, denials with their reason), deliveries
//! and acknowledgements with their times, each with its entry index, and the
//! text of the rule and legal basis in the policy version then in force.
//!
//! Only entries the viewer may see are shown; field *values* never are (they
//! are personal data, held by the agencies that received them), only names.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use maud::html;
use samverkan_sdk::Envelope;
use samverkan_sdk::audit::EntryKind;
use samverkan_sdk::audit::evidence::{PolicyFile, block_with_id};
use samverkan_sdk::envelope::Disclosure;

use super::ConsoleError;
use super::i18n::local_time;
use super::record::{Action, record};
use super::search::{entries_table, kind_label, opt};
use super::templates::{Ctx, dash, layout};

/// `GET /case/{alert_id}`.
pub async fn page_handler(ctx: Ctx, alert_id: String) -> Result<Response, ConsoleError> {
    if alert_id.len() > 200 {
        return Err(ConsoleError::BadRequest(
            "alert id: at most 200 characters".into(),
        ));
    }
    let l = ctx.lang;
    let store = &ctx.state.store;
    let entries = store.console_alert(&ctx.viewer.scope(), &alert_id).await?;
    let decisions: Vec<_> = entries
        .iter()
        .filter(|e| e.kind != EntryKind::AuditorAccess)
        .collect();
    if decisions.is_empty() {
        return Err(ConsoleError::NotFound);
    }
    record(
        &ctx.state,
        &ctx.viewer,
        Action::Case,
        &format!("case page of alert {alert_id}"),
        Some(alert_id.clone()),
        None,
    )
    .await?;
    let publisher = decisions.iter().find_map(|e| e.publisher.clone());
    let envelope = match &publisher {
        Some(p) => store
            .signed_envelope(p, &alert_id)
            .await?
            .and_then(|b| Envelope::from_json(&b).ok()),
        None => None,
    };
    // The names of the alert's fields, from the stored alert (until purged).
    let all_fields: Option<BTreeSet<String>> = match &publisher {
        Some(p) => store.alert_content(p, &alert_id).await?.and_then(|b| {
            let env = Envelope::from_json(&b).ok()?;
            env.disclosures
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    Disclosure::decode(&d.0, i)
                        .ok()
                        .map(|d| d.name().to_string())
                })
                .collect()
        }),
        None => None,
    };
    let share_entries: Vec<u64> = decisions
        .iter()
        .filter(|e| e.share_id.is_some())
        .map(|e| e.index)
        .collect();
    let deliveries: BTreeMap<String, (i64, Option<i64>)> = store
        .console_deliveries(&share_entries)
        .await?
        .into_iter()
        .map(|(id, created, acked)| (id, (created, acked)))
        .collect();
    let mut policies: BTreeMap<String, Vec<PolicyFile>> = BTreeMap::new();
    for version in decisions.iter().filter_map(|e| e.policy_version.clone()) {
        if !policies.contains_key(&version)
            && let Some(files) = store.policy_files(&version).await?
        {
            policies.insert(version, files);
        }
    }
    let rule_text = |version: &Option<String>, rule: &Option<String>| -> Option<String> {
        let files = policies.get(version.as_ref()?)?;
        let rule = rule.as_ref()?;
        files
            .iter()
            .filter(|f| f.path.starts_with("rules/"))
            .find_map(|f| block_with_id(&f.text, "rule", rule))
    };
    let basis_text = |version: &Option<String>, basis: &Option<String>| -> Option<String> {
        let files = policies.get(version.as_ref()?)?;
        let basis = basis.as_ref()?;
        files
            .iter()
            .find(|f| f.path == "legal-bases.toml")
            .and_then(|f| block_with_id(&f.text, "legal_basis", basis))
    };
    let lookups: Vec<_> = entries
        .iter()
        .filter(|e| e.kind == EntryKind::AuditorAccess)
        .cloned()
        .collect();
    let body = html! {
        section.header {
            h2 { (l.t("Larmets signerade huvud", "The alert's signed header")) }
            @if let Some(env) = &envelope {
                dl {
                    dt { (l.t("Larm-id", "Alert id")) } dd id="alert-id" { (env.header.alert_id) }
                    dt { (l.t("Avsändare", "Publisher")) } dd { (env.header.publisher) " (" (l.t("nyckel", "key")) " " (env.header.key_id) ")" }
                    dt { (l.t("Larmtyp", "Alert type")) } dd { (env.header.alert_type) }
                    dt { (l.t("Ämne", "Topic")) } dd { (env.header.topic) }
                    dt { (l.t("Signerat", "Signed")) } dd { (local_time(env.header.issued_at_ms)) }
                    dt { (l.t("Adresserat till", "Addressed to")) } dd { @match &env.header.to { Some(to) => (to.join(", ")), None => (l.t("(ingen lista: policyn avgör)", "(no list: the policy decides)")) } }
                    dt { (l.t("Antal fält", "Fields")) } dd { (env.digests.len()) " " (l.t("(värden visas aldrig här)", "(values are never shown here)")) }
                }
            } @else {
                p { (l.t("Larmet lagrades inte (avvisat före beslut).", "The alert was not stored (refused before any decision).")) }
            }
        }
        section.decisions {
            h2 { (l.t("Beslut, leveranser och kvittenser", "Decisions, deliveries and acknowledgements")) }
            @for e in &decisions {
                article class={"decision kind-" (e.kind.as_str())} id={"entry-" (e.index)} {
                    h3 {
                        (kind_label(l, e.kind.as_str())) " "
                        @if let Some(r) = &e.recipient { "→ " strong.recipient { (r) } " " }
                        small { a href={"/entry/" (e.index)} { (l.t("post", "entry")) " " (e.index) } " · " (local_time(e.at_ms)) }
                    }
                    @match e.kind {
                        EntryKind::Share => {
                            dl {
                                dt { (l.t("Regel", "Rule")) } dd.rule { (opt(&e.rule_id)) }
                                dt { (l.t("Rättslig grund", "Legal basis")) } dd.legal-basis { (opt(&e.legal_basis)) }
                                dt { (l.t("Ändamål", "Purpose")) } dd { (opt(&e.purpose)) }
                                dt { (l.t("Fält som lämnades ut", "Fields sent")) } dd.sent { (e.fields.join(", ")) }
                                dt { (l.t("Fält som hölls inne", "Fields withheld")) } dd.withheld {
                                    @match &all_fields {
                                        Some(all) => {
                                            @let withheld: Vec<&String> = all.iter().filter(|f| !e.fields.contains(f)).collect();
                                            @if withheld.is_empty() { (l.t("inga", "none")) } @else { @for (i, f) in withheld.iter().enumerate() { @if i > 0 { ", " } (f) } }
                                        }
                                        None => (l.t("okänt (innehållet gallrat)", "unknown (content purged)")),
                                    }
                                }
                                @if let Some(id) = &e.share_id {
                                    @let delivery = deliveries.get(id);
                                    dt { (l.t("Lagd för leverans", "Queued for delivery")) } dd { @match delivery { Some((c, _)) => (local_time(*c)), None => (dash()) } }
                                    dt { (l.t("Kvitterad", "Acknowledged")) } dd.acked { @match delivery.and_then(|d| d.1) { Some(a) => (local_time(a)), None => (l.t("ännu inte", "not yet")) } }
                                }
                            }
                            @if let Some(text) = rule_text(&e.policy_version, &e.rule_id) {
                                details { summary { (l.t("Regeltext i den version som gällde", "Rule text in the version then in force")) } pre { (text) } }
                            }
                            @if let Some(text) = basis_text(&e.policy_version, &e.legal_basis) {
                                details { summary { (l.t("Rättslig grund i den version som gällde", "Legal basis in the version then in force")) } pre { (text) } }
                            }
                        }
                        EntryKind::Denial => {
                            dl {
                                dt { (l.t("Skäl", "Reason")) } dd.reason { (opt(&e.reason_code)) }
                                dt { (l.t("Förklaring", "Explanation")) } dd { (opt(&e.reason)) }
                                @if e.rule_id.is_some() { dt { (l.t("Regel", "Rule")) } dd { (opt(&e.rule_id)) } }
                            }
                        }
                        _ => {
                            dl {
                                @if e.share_id.is_some() { dt { (l.t("Delning", "Share")) } dd { (opt(&e.share_id)) } }
                                @if e.reason.is_some() { dt { (l.t("Skäl", "Reason")) } dd { (opt(&e.reason)) } }
                            }
                        }
                    }
                }
            }
        }
        @if !lookups.is_empty() {
            section.lookups {
                h2 { (l.t("Granskares visningar av detta ärende", "Auditors' views of this case")) }
                (entries_table(l, &lookups))
            }
        }
    };
    let title = format!("{} {}", l.t("Ärende", "Case"), alert_id);
    Ok(layout(&ctx, &title, body).into_response())
}

/// Route of [`page_handler`].
pub async fn page(ctx: Ctx, Path(alert_id): Path<String>) -> Result<Response, ConsoleError> {
    page_handler(ctx, alert_id).await
}
