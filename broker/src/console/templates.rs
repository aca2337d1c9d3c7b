//! The page frame (maud: compile-checked, every value HTML-escaped) and the
//! vendored assets, served with their subresource-integrity hashes.

use std::sync::{Arc, LazyLock};

use axum::async_trait;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use base64::Engine as _;
use maud::{DOCTYPE, Markup, PreEscaped, html};
use sha2::{Digest as _, Sha384};

use super::auth::{Role, Viewer, csrf_token};
use super::i18n::Lang;
use super::{ConsoleError, ConsoleState};

/// A vendored file, with its integrity hash.
pub struct Asset {
    /// Name under `/static/`.
    pub name: &'static str,
    /// Content type.
    pub content_type: &'static str,
    /// The bytes.
    pub body: &'static str,
    /// `sha384-…` of the bytes.
    pub integrity: String,
}

fn make_asset(name: &'static str, content_type: &'static str, body: &'static str) -> Asset {
    let integrity = format!(
        "sha384-{}",
        base64::engine::general_purpose::STANDARD.encode(Sha384::digest(body.as_bytes()))
    );
    Asset {
        name,
        content_type,
        body,
        integrity,
    }
}

/// The style sheet.
pub static CSS: LazyLock<Asset> = LazyLock::new(|| {
    make_asset(
        "console.css",
        "text/css; charset=utf-8",
        include_str!("static/console.css"),
    )
});
/// The in-browser evidence and consistency check (the only script).
pub static VERIFY_JS: LazyLock<Asset> = LazyLock::new(|| {
    make_asset(
        "verify.js",
        "text/javascript; charset=utf-8",
        include_str!("static/verify.js"),
    )
});

/// `GET /static/{name}`.
pub async fn asset_handler(name: &str) -> Response {
    let found = [&*CSS, &*VERIFY_JS].into_iter().find(|a| a.name == name);
    match found {
        Some(a) => (
            [
                (header::CONTENT_TYPE, a.content_type),
                (header::CACHE_CONTROL, "private, max-age=3600"),
            ],
            a.body,
        )
            .into_response(),
        None => ConsoleError::NotFound.into_response(),
    }
}

/// Route of [`asset_handler`].
pub async fn asset(Path(name): Path<String>) -> Response {
    asset_handler(&name).await
}

/// What every page needs: who is looking, in which language, where.
pub struct Ctx {
    /// The viewer.
    pub viewer: Viewer,
    /// The language.
    pub lang: Lang,
    /// The request's path and query (for the language switch).
    pub here: String,
    /// The viewer's CSRF token for forms.
    pub csrf: String,
    /// The shared state.
    pub state: Arc<ConsoleState>,
}

#[async_trait]
impl FromRequestParts<Arc<ConsoleState>> for Ctx {
    type Rejection = ConsoleError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ConsoleState>,
    ) -> Result<Self, Self::Rejection> {
        let viewer = parts
            .extensions
            .get::<Viewer>()
            .cloned()
            .ok_or_else(|| ConsoleError::Forbidden("not authenticated".into()))?;
        let csrf = csrf_token(state, &viewer);
        Ok(Ctx {
            lang: Lang::of(&parts.headers),
            here: parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into()),
            csrf,
            viewer,
            state: state.clone(),
        })
    }
}

impl Ctx {
    /// Text in the page's language.
    pub fn t(&self, sv: &'static str, en: &'static str) -> &'static str {
        self.lang.t(sv, en)
    }

    /// The hidden CSRF field of a form.
    pub fn csrf_field(&self) -> Markup {
        html! { input type="hidden" name="csrf" value=(self.csrf); }
    }
}

/// A whole page: navigation, who is logged in, the language switch, `body`.
pub fn layout(ctx: &Ctx, title: &str, body: Markup) -> Html<String> {
    let l = ctx.lang;
    let role = match ctx.viewer.role {
        Role::Supervisor => l.t("tillsyn – ser alla poster", "supervisor – sees every entry"),
        Role::Auditor => l.t("granskare", "auditor"),
    };
    let back = urlencode(&ctx.here);
    Html(html! {
        (DOCTYPE)
        html lang=(l.code()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " – Samverkan" }
                link rel="stylesheet" href={"/static/" (CSS.name)} integrity=(CSS.integrity);
            }
            body {
                header {
                    a.brand href="/" { "Samverkan" }
                    nav {
                        a href="/" { (l.t("Översikt", "Overview")) }
                        a href="/search" { (l.t("Sök", "Search")) }
                        a href="/subject" { (l.t("Person/företag", "Person/company")) }
                        a href="/policy" { (l.t("Policyhistorik", "Policy history")) }
                        a href="/consistency" { (l.t("Kontrollpunkt", "Checkpoint")) }
                    }
                    span.who {
                        (ctx.viewer.common_name) " · " strong { (ctx.viewer.organization) } " · " (role)
                    }
                    span.lang {
                        @if l == Lang::Sv { strong { "sv" } } @else { a href={"/lang/sv?back=" (back)} { "sv" } }
                        " | "
                        @if l == Lang::En { strong { "en" } } @else { a href={"/lang/en?back=" (back)} { "en" } }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
                footer {
                    (l.t("Tider i svensk tid (Europe/Stockholm). Varje sökning, visning och export registreras i granskningsloggen.",
                         "Times in Swedish time (Europe/Stockholm). Every search, view and export is recorded in the audit log."))
                }
            }
        }
    }.into_string())
}

/// The page of a refused or failed request (no viewer may be known).
pub fn error_page(status: StatusCode, message: &str) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="sv" {
                head {
                    meta charset="utf-8";
                    title { (status.as_u16()) " – Samverkan" }
                    link rel="stylesheet" href={"/static/" (CSS.name)} integrity=(CSS.integrity);
                }
                body {
                    main {
                        h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
                        p.error { (message) }
                        p { a href="/" { "Samverkan" } }
                    }
                }
            }
        }
        .into_string(),
    )
}

/// The script tag of the in-browser check.
pub fn verify_script() -> Markup {
    html! { script src={"/static/" (VERIFY_JS.name)} integrity=(VERIFY_JS.integrity) defer {} }
}

/// Percent-encodes a query value.
pub fn urlencode(s: &str) -> String {
    serde_urlencoded::to_string([("", s)])
        .map(|q| q.trim_start_matches('=').to_string())
        .unwrap_or_default()
}

/// Data for the script, as text in a hidden element (the script reads
/// `textContent`; HTML escaping keeps it inert and exact).
pub fn data_block(id: &str, json: &str) -> Markup {
    html! { pre hidden id=(id) { (json) } }
}

/// A non-breaking em dash for empty cells.
pub fn dash() -> Markup {
    PreEscaped("&mdash;".into())
}
