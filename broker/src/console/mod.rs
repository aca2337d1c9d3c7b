//! The auditor console: the web pages where legal staff see, search and
//! prove every share, served by the broker on an HTTPS listener of its own.
//!
//! * [`auth`] — who is asking: an auditor or supervisor certificate; CSRF;
//! * [`record`] — every search, view, lookup and export is an audit entry;
//! * [`search`] — filtered, paginated lists with permalinks; subject search;
//! * [`case`] — everything that happened to one alert;
//! * [`evidence`] — entry pages, evidence bundles, the in-browser check;
//! * [`export`] — CSV and JSON Lines;
//! * [`overview`] — who shares with whom, counts per kind, the latest checkpoint;
//! * [`policy`] — policy versions and their differences;
//! * [`i18n`] — Swedish and English, Swedish local time;
//! * [`templates`] — the page frame and the vendored assets.
//!
//! The TLS layer asks for a client certificate of the federation CA but lets
//! a connection without one through, so that the page can say which
//! certificate is needed; [`auth`] then refuses every request that does not
//! come with an auditor's or the supervisor's certificate.

pub mod auth;
pub mod case;
pub mod evidence;
pub mod export;
pub mod i18n;
pub mod overview;
pub mod policy;
pub mod record;
pub mod search;
pub mod templates;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use samverkan_sdk::keys::KeyRegistry;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::audit::subject::SubjectHasher;
use crate::gateway::{GatewayError, TlsFiles};
use crate::pipeline::Command;
use crate::policy::PolicyHandle;
use crate::store::{Store, StoreError};

/// Everything the console's handlers share.
pub struct ConsoleState {
    /// The database (read only, except through the pipeline).
    pub store: Store,
    /// The policy in force (which agencies exist).
    pub policy: Arc<PolicyHandle>,
    /// Where access records are sent to be appended to the log.
    pub commands: mpsc::Sender<Command>,
    /// Hashes subject identifiers typed into the subject search.
    pub subjects: SubjectHasher,
    /// The broker's public keys, handed to the in-browser check.
    pub broker_keys: KeyRegistry,
    /// The log's origin (checkpoint name).
    pub origin: String,
    /// Secret of the CSRF tokens, random per start.
    pub csrf_key: [u8; 32],
}

/// The console's TLS configuration, replaced when the CRL changes.
pub struct ConsoleTls(RwLock<Arc<ServerConfig>>);

impl ConsoleTls {
    /// Builds it from the broker's TLS files.
    pub fn new(files: &TlsFiles) -> Result<Self, GatewayError> {
        Ok(Self(RwLock::new(tls_config(files)?)))
    }

    /// Rebuilds it (reload, changed CRL).
    pub fn reload(&self, files: &TlsFiles) -> Result<(), GatewayError> {
        let config = tls_config(files)?;
        if let Ok(mut current) = self.0.write() {
            *current = config;
        }
        Ok(())
    }

    fn current(&self) -> Option<Arc<ServerConfig>> {
        self.0.read().ok().map(|c| c.clone())
    }
}

/// The server side of the console's TLS: the broker's certificate, client
/// certificates of the federation CA checked against the CRL, but optional
/// at the TLS layer (see the module header).
fn tls_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, GatewayError> {
    let bad = |path: &std::path::Path, reason: String| GatewayError::File {
        path: path.display().to_string(),
        reason,
    };
    let read = |path: &std::path::Path| std::fs::read(path).map_err(|e| bad(path, e.to_string()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&read(&files.ca)?) {
        let cert = cert.map_err(|e| bad(&files.ca, format!("not a PEM certificate: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| bad(&files.ca, format!("not a usable CA certificate: {e}")))?;
    }
    let mut crls = Vec::new();
    if let Some(path) = &files.crl {
        for crl in CertificateRevocationListDer::pem_slice_iter(&read(path)?) {
            crls.push(crl.map_err(|e| bad(path, format!("not a PEM CRL: {e}")))?);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .with_crls(crls)
        .allow_unauthenticated()
        .build()
        .map_err(|e| GatewayError::Tls(e.to_string()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(&files.cert)?)
        .collect::<Result<_, _>>()
        .map_err(|e| bad(&files.cert, format!("not a PEM certificate: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(&read(&files.key)?)
        .map_err(|e| bad(&files.key, format!("not a PEM private key: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| GatewayError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| GatewayError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Why a console request was not answered with its page.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConsoleError {
    /// No such entry, alert or page within what the viewer may see.
    #[error("not found")]
    NotFound,
    /// The request's parameters are wrong; the message says which and how.
    #[error("{0}")]
    BadRequest(String),
    /// The viewer may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The access could not be recorded, or the database failed: nothing is shown.
    #[error("{0}")]
    Unavailable(String),
}

impl From<StoreError> for ConsoleError {
    fn from(e: StoreError) -> Self {
        ConsoleError::Unavailable(format!("database: {e}"))
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let status = match &self {
            ConsoleError::NotFound => StatusCode::NOT_FOUND,
            ConsoleError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ConsoleError::Forbidden(_) => StatusCode::FORBIDDEN,
            ConsoleError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        if status == StatusCode::SERVICE_UNAVAILABLE {
            warn!(error = %self, "console request failed");
        }
        (status, templates::error_page(status, &self.to_string())).into_response()
    }
}

/// The certificate the client presented on this connection, if any.
#[derive(Clone)]
pub struct PeerCertificate(pub Option<Arc<Vec<u8>>>);

/// The console's routes.
pub fn routes(state: Arc<ConsoleState>) -> Router {
    Router::new()
        .route("/", get(overview::page))
        .route("/search", get(search::page))
        .route("/subject", get(search::subject_form).post(search::subject))
        .route("/export.csv", get(export::csv))
        .route("/export.jsonl", get(export::jsonl))
        .route("/entry/:index", get(evidence::entry_page))
        .route("/entry/:index/evidence.json", get(evidence::bundle))
        .route("/case/:alert_id", get(case::page))
        .route("/policy", get(policy::history))
        .route("/policy/diff", get(policy::diff))
        .route(
            "/consistency",
            get(evidence::consistency_form).post(evidence::consistency),
        )
        .route("/lang/:code", get(i18n::switch))
        .route("/static/:name", get(templates::asset))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .layer(middleware::from_fn(harden))
        .with_state(state)
}

/// Headers every answer carries: no script, style or frame from anywhere
/// else, nothing cached (the pages are about people), no referrer.
async fn harden(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let set = |headers: &mut axum::http::HeaderMap, name, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    // `same-origin`, not `no-referrer`: with the latter, browsers send
    // `Origin: null` on the console's own forms.
    set(headers, header::REFERRER_POLICY, "same-origin");
    if !path.starts_with("/static/") {
        set(headers, header::CACHE_CONTROL, "no-store");
    }
    // The request log names the path only: query strings hold filters, and
    // the subject search is a POST whose body is never logged.
    info!(target: "samverkan::console::request", %method, path, status = response.status().as_u16(), "console request");
    response
}

/// Serves the console on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    state: Arc<ConsoleState>,
    tls: Arc<ConsoleTls>,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = routes(state);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "console: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(config) = tls.current() else {
            continue;
        };
        let app = app.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let stream =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        debug!(%peer, error = %e, "console: TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let certificate = PeerCertificate(
                stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| Arc::new(c.to_vec())),
            );
            let service = tower::ServiceExt::map_request(
                app,
                move |mut request: Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(certificate.clone());
                    request
                },
            );
            let service = hyper_util::service::TowerToHyperService::new(service);
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = stop.changed() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), connection).await;
                }
            }
        });
    }
}

/// Starts the console on `listener`; logs where.
pub fn spawn(
    listener: TcpListener,
    state: Arc<ConsoleState>,
    tls: Arc<ConsoleTls>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let addr = listener.local_addr()?;
    info!(listen = %addr, "auditor console (HTTPS, auditor certificates)");
    Ok((addr, tokio::spawn(serve(listener, state, tls, shutdown))))
}
