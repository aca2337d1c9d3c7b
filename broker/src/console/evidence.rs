//! One entry's page, its evidence bundle, and the checks that run in the
//! viewer's own browser (`static/verify.js`, Web Crypto's SHA-256 and
//! Ed25519): the bundle against the broker's public keys, and a checkpoint
//! the viewer kept earlier against today's log (consistency proof).
//!
//! The server hands the browser the broker's public keys with the page; the
//! page prints each key's fingerprint, so an auditor can compare it with the
//! `broker-keys.toml` their agency holds.

use axum::Form;
use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use maud::{Markup, html};
use samverkan_sdk::audit::checkpoint::{verifier_key_string, verify_checkpoint};
use serde::Deserialize;

use super::ConsoleError;
use super::i18n::local_time;
use super::record::{Action, record};
use super::search::{kind_label, opt};
use super::templates::{Ctx, data_block, layout, verify_script};
use crate::audit::evidence::{EvidenceError, build_bundle};
use crate::audit::tree::consistency_proof;
use crate::pki::BROKER_KEY_OWNER;

fn parse_index(text: &str) -> Result<u64, ConsoleError> {
    text.parse::<u64>().map_err(|_| {
        ConsoleError::BadRequest(format!("`{text}` is not an entry number (0, 1, 2, …)"))
    })
}

/// The broker keys as the script reads them.
fn broker_keys_json(ctx: &Ctx) -> String {
    let keys: Vec<serde_json::Value> = ctx
        .state
        .broker_keys
        .keys_of(BROKER_KEY_OWNER)
        .map(|k| {
            serde_json::json!({
                "id": k.key_id,
                "public_key": base64::engine::general_purpose::STANDARD.encode(k.public_key.as_bytes()),
                "not_before_ms": k.not_before_ms,
                "not_after_ms": k.not_after_ms,
                "revoked_at_ms": k.revoked_at_ms,
            })
        })
        .collect();
    serde_json::json!({ "origin": ctx.state.origin, "keys": keys }).to_string()
}

fn keys_markup(ctx: &Ctx) -> Markup {
    let l = ctx.lang;
    html! {
        details.keys {
            summary { (l.t("Brokerns publika nycklar som kontrollen använder", "The broker's public keys the check uses")) }
            ul { @for k in ctx.state.broker_keys.keys_of(BROKER_KEY_OWNER) {
                li { code { (k.key_id) } ": " code { (verifier_key_string(&ctx.state.origin, &k.public_key)) } }
            } }
            p { (l.t("Jämför med broker-keys.toml som er myndighet har fått.", "Compare with the broker-keys.toml your agency holds.")) }
        }
        (data_block("broker-keys", &broker_keys_json(ctx)))
    }
}

/// `GET /entry/{index}`.
pub async fn entry_page(ctx: Ctx, Path(index): Path<String>) -> Result<Response, ConsoleError> {
    let index = parse_index(&index)?;
    let l = ctx.lang;
    let entry = ctx
        .state
        .store
        .console_entry(&ctx.viewer.scope(), index)
        .await?
        .ok_or(ConsoleError::NotFound)?;
    record(
        &ctx.state,
        &ctx.viewer,
        Action::Entry,
        &format!("entry {index}"),
        None,
        None,
    )
    .await?;
    let checkpoint = ctx.state.store.checkpoint_covering(index).await?;
    let e = &entry;
    let row = |name: &'static str, value: Markup| html! { tr { th { (name) } td { (value) } } };
    let body = html! {
        table.entry {
            (row("index", html! { (e.index) }))
            (row("kind", html! { (e.kind.as_str()) " (" (kind_label(l, e.kind.as_str())) ")" }))
            (row("at_ms", html! { (e.at_ms) " = " (local_time(e.at_ms)) }))
            (row("alert_id", html! { @if let Some(a) = &e.alert_id { a href={"/case/" (a)} { (a) } } @else { (opt(&None)) } }))
            (row("publisher", opt(&e.publisher)))
            (row("recipient", opt(&e.recipient)))
            (row("topic", opt(&e.topic)))
            (row("alert_type", opt(&e.alert_type)))
            (row("rule_id", opt(&e.rule_id)))
            (row("legal_basis", opt(&e.legal_basis)))
            (row("purpose", opt(&e.purpose)))
            (row("fields", html! { (e.fields.join(", ")) }))
            (row("disclosed_digest", opt(&e.disclosed_digest)))
            (row("envelope_hash", opt(&e.envelope_hash)))
            (row("signature", opt(&e.signature)))
            (row("policy_version", opt(&e.policy_version)))
            (row("share_id", opt(&e.share_id)))
            (row("reason_code", opt(&e.reason_code)))
            (row("reason", opt(&e.reason)))
            (row("subject_hashes", html! { (e.subject_hashes.len()) }))
        }
        section.evidence {
            h2 { (l.t("Bevis", "Evidence")) }
            @match &checkpoint {
                Some(cp) => {
                    p {
                        (l.t("Täcks av kontrollpunkten med", "Covered by the checkpoint of")) " "
                        (l.number(cp.size)) " " (l.t("poster, signerad", "entries, signed")) " " (local_time(cp.at_ms)) "."
                    }
                    p.actions {
                        a id="download" href={"/entry/" (index) "/evidence.json"} download={"evidence-" (index) ".json"} { (l.t("Ladda ned beviset (JSON)", "Download the evidence (JSON)")) }
                        " "
                        button id="verify" type="button" data-index=(index) { (l.t("Kontrollera i webbläsaren", "Verify in this browser")) }
                    }
                    div id="verify-result" role="status" {}
                    details id="paste" {
                        summary { (l.t("Kontrollera en annan bevisfil", "Check another evidence file")) }
                        input id="bundle-file" type="file" accept=".json,application/json";
                        textarea id="bundle-text" rows="6" spellcheck="false" {}
                        button id="verify-pasted" type="button" { (l.t("Kontrollera denna fil", "Check this file")) }
                    }
                }
                None => p { (l.t("Ingen signerad kontrollpunkt täcker posten ännu; brokern signerar en inom en minut.",
                                 "No signed checkpoint covers this entry yet; the broker signs one within a minute.")) }
            }
            (keys_markup(&ctx))
        }
        (verify_script())
    };
    let title = format!("{} {}", l.t("Post", "Entry"), index);
    Ok(layout(&ctx, &title, body).into_response())
}

/// `GET /entry/{index}/evidence.json`: the bundle, byte for byte as
/// `samverkan audit prove` writes it.
pub async fn bundle(ctx: Ctx, Path(index): Path<String>) -> Result<Response, ConsoleError> {
    let index = parse_index(&index)?;
    // The scope check first: a bundle of an entry outside it is "not found".
    ctx.state
        .store
        .console_entry(&ctx.viewer.scope(), index)
        .await?
        .ok_or(ConsoleError::NotFound)?;
    let bundle = build_bundle(&ctx.state.store, index)
        .await
        .map_err(|e| match e {
            EvidenceError::NoEntry(_) => ConsoleError::NotFound,
            EvidenceError::NotYetCheckpointed(_) => ConsoleError::BadRequest(e.to_string()),
            other => ConsoleError::Unavailable(other.to_string()),
        })?;
    record(
        &ctx.state,
        &ctx.viewer,
        Action::Evidence,
        &format!("evidence bundle of entry {index}"),
        None,
        None,
    )
    .await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/json".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"evidence-{index}.json\""),
            ),
        ],
        bundle.to_canonical_json(),
    )
        .into_response())
}

fn consistency_markup(ctx: &Ctx, error: Option<&str>) -> Markup {
    let l = ctx.lang;
    html! {
        p { (l.t(
            "Lämna en kontrollpunkt som er myndighet sparat tidigare. Sidan visar beviset för att loggen sedan dess bara har byggts på, och kontrollerar det i webbläsaren.",
            "Give a checkpoint your agency kept earlier. The page shows the proof that the log has only been appended to since, and checks it in the browser.")) }
        @if let Some(e) = error { p.error { (e) } }
        form method="post" action="/consistency" {
            (ctx.csrf_field())
            input id="checkpoint-file" type="file" accept=".txt,text/plain";
            textarea id="checkpoint-text" name="checkpoint" rows="8" spellcheck="false" required {}
            button type="submit" { (l.t("Kontrollera", "Check")) }
        }
        (verify_script())
    }
}

/// `GET /consistency`: the form.
pub async fn consistency_form(ctx: Ctx) -> Response {
    let title = ctx.t(
        "Kontrollpunkt mot dagens logg",
        "A kept checkpoint against today's log",
    );
    layout(&ctx, title, consistency_markup(&ctx, None)).into_response()
}

/// The consistency form's fields.
#[derive(Deserialize)]
pub struct CheckpointForm {
    csrf: Option<String>,
    checkpoint: Option<String>,
}

/// `POST /consistency`: the proof from the kept checkpoint to the newest one.
pub async fn consistency(
    ctx: Ctx,
    Form(form): Form<CheckpointForm>,
) -> Result<Response, ConsoleError> {
    super::auth::check_csrf(&ctx.state, &ctx.viewer, form.csrf.as_deref().unwrap_or(""))?;
    let l = ctx.lang;
    let title = l.t(
        "Kontrollpunkt mot dagens logg",
        "A kept checkpoint against today's log",
    );
    // Notes travel with CRLF through some forms and editors.
    let note = form.checkpoint.unwrap_or_default().replace("\r\n", "\n");
    let kept = match verify_checkpoint(&note, &ctx.state.broker_keys) {
        Ok(k) => k,
        Err(e) => {
            let message = format!(
                "{}: {e}",
                l.t(
                    "Kontrollpunkten godtas inte",
                    "The checkpoint is not accepted"
                )
            );
            return Ok((
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                layout(&ctx, title, consistency_markup(&ctx, Some(&message))),
            )
                .into_response());
        }
    };
    let latest = ctx.state.store.latest_checkpoint().await?.ok_or_else(|| {
        ConsoleError::Unavailable("the broker has signed no checkpoint yet".into())
    })?;
    if kept.size > latest.size {
        let message = format!(
            "{} {} > {}",
            l.t("Er kontrollpunkt omfattar fler poster än dagens logg: loggen har kortats (återställd)!",
                "Your checkpoint covers more entries than today's log: the log was cut back (rolled back)!"),
            kept.size, latest.size
        );
        return Ok((
            axum::http::StatusCode::CONFLICT,
            layout(&ctx, title, consistency_markup(&ctx, Some(&message))),
        )
            .into_response());
    }
    let proof = consistency_proof(&ctx.state.store, latest.size, kept.size).await?;
    record(
        &ctx.state,
        &ctx.viewer,
        Action::Consistency,
        &format!(
            "consistency of a kept checkpoint of size {} with size {}",
            kept.size, latest.size
        ),
        None,
        None,
    )
    .await?;
    let data = serde_json::json!({
        "old": note,
        "new": latest.note,
        "proof": proof.iter().map(hex::encode).collect::<Vec<_>>(),
    })
    .to_string();
    let body = html! {
        dl {
            dt { (l.t("Er kontrollpunkt", "Your checkpoint")) } dd { (l.number(kept.size)) " " (l.t("poster", "entries")) ", " (local_time(kept.time_ms)) }
            dt { (l.t("Dagens kontrollpunkt", "Today's checkpoint")) } dd { (l.number(latest.size)) " " (l.t("poster", "entries")) ", " (local_time(latest.at_ms)) }
            dt { (l.t("Konsistensbevis", "Consistency proof")) } dd { (proof.len()) " " (l.t("hashar", "hashes")) }
        }
        details { summary { (l.t("Beviset", "The proof")) } pre { @for h in &proof { (hex::encode(h)) "\n" } } }
        div id="consistency-result" role="status" { (l.t("Kontrollerar…", "Checking…")) }
        (data_block("consistency", &data))
        (keys_markup(&ctx))
        (verify_script())
    };
    Ok(layout(&ctx, title, body).into_response())
}
