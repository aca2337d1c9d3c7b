//! Who is asking, and what they may see.
//!
//! A request is answered only for a client certificate of the federation CA
//! (checked by the TLS layer, CRL included) whose subject carries exactly one
//! role mark (OU=):
//!
//! * `samverkan-auditor` with O = an agency of the policy in force: that
//!   agency's auditor, who sees the entries in which the agency is publisher
//!   or recipient;
//! * `samverkan-supervisor`: the federation's supervisor, who sees every entry.
//!
//! An agency's MQTT certificate (no OU) and anything else is refused: the
//! answer says which certificate is needed. Every form that changes or asks
//! something by POST carries a CSRF token bound to the certificate.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::{ConsoleError, ConsoleState, PeerCertificate};
use crate::identity::{AUDITOR_OU, SUPERVISOR_OU, subject_identity};
use crate::store::console::Scope;

/// What a viewer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// An agency's auditor.
    Auditor,
    /// The federation's supervisor.
    Supervisor,
}

/// The authenticated person behind a request.
#[derive(Debug, Clone)]
pub struct Viewer {
    /// The certificate's organization: the agency, or the supervising body.
    pub organization: String,
    /// Auditor or supervisor.
    pub role: Role,
    /// The certificate's common name (the person or function).
    pub common_name: String,
    /// The certificate's serial number, hex.
    pub serial: String,
    /// Hex SHA-256 of the certificate (binds the CSRF token).
    pub fingerprint: String,
}

impl Viewer {
    /// The entries this viewer may see.
    pub fn scope(&self) -> Scope {
        match self.role {
            Role::Supervisor => Scope::All,
            Role::Auditor => Scope::Agency(self.organization.clone()),
        }
    }

    /// Who, as recorded in access entries.
    pub fn who(&self) -> String {
        format!("{} (certificate {})", self.common_name, self.serial)
    }
}

/// Reads the viewer from a certificate (DER) verified by the TLS layer.
pub fn viewer_of(der: &[u8], state: &ConsoleState) -> Result<Viewer, ConsoleError> {
    let refused = |why: String| ConsoleError::Forbidden(why);
    let (identity, units) =
        subject_identity(der).map_err(|e| refused(format!("client certificate refused: {e}")))?;
    let role = match units.as_slice() {
        [] => {
            return Err(refused(format!(
                "this is an agency's MQTT client certificate (O={}, no OU): the console needs an auditor certificate (OU={AUDITOR_OU}) or the supervisor's (OU={SUPERVISOR_OU})",
                identity.agency
            )));
        }
        [one] if one == AUDITOR_OU => Role::Auditor,
        [one] if one == SUPERVISOR_OU => Role::Supervisor,
        other => {
            return Err(refused(format!(
                "client certificate role {other:?} is not {AUDITOR_OU} or {SUPERVISOR_OU} (exactly one OU)"
            )));
        }
    };
    if role == Role::Auditor && state.policy.current().agency(&identity.agency).is_none() {
        return Err(refused(format!(
            "auditor certificate of `{}`, which is not an agency of the policy in force",
            identity.agency
        )));
    }
    let common_name = x509_parser::parse_x509_certificate(der)
        .ok()
        .and_then(|(_, c)| {
            c.subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok().map(str::to_string))
        })
        .unwrap_or_else(|| "(no common name)".into());
    Ok(Viewer {
        organization: identity.agency,
        role,
        common_name,
        serial: hex::encode(identity.serial),
        fingerprint: identity.fingerprint,
    })
}

/// The CSRF token of a viewer: HMAC of the certificate fingerprint under a
/// key made at start. A page of another site can neither read nor compute it.
pub fn csrf_token(state: &ConsoleState, viewer: &Viewer) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&state.csrf_key) else {
        unreachable!("HMAC accepts keys of any length")
    };
    mac.update(b"samverkan/v1/console-csrf\n");
    mac.update(viewer.fingerprint.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Checks a POSTed CSRF token.
pub fn check_csrf(state: &ConsoleState, viewer: &Viewer, token: &str) -> Result<(), ConsoleError> {
    let expected = csrf_token(state, viewer);
    if bool::from(expected.as_bytes().ct_eq(token.as_bytes())) {
        Ok(())
    } else {
        Err(ConsoleError::Forbidden(
            "the form's security token (CSRF) is missing or wrong: reload the page and send the form again".into(),
        ))
    }
}

/// Refuses requests without an auditor's or the supervisor's certificate,
/// and cross-site POSTs; hands the [`Viewer`] to the handlers.
pub async fn authenticate(
    State(state): State<Arc<ConsoleState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let certificate = request
        .extensions()
        .get::<PeerCertificate>()
        .and_then(|p| p.0.clone());
    let Some(der) = certificate else {
        return ConsoleError::Forbidden(format!(
            "no client certificate: the console opens only with an auditor certificate of the federation CA (OU={AUDITOR_OU}, or the supervisor's OU={SUPERVISOR_OU}); in development, certs-dev/<agency>/auditor.p12"
        ))
        .into_response();
    };
    let viewer = match viewer_of(&der, &state) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    if request.method() == Method::POST {
        // Browsers say where a request comes from; refuse other sites
        // outright (the token is checked by each form's handler as well).
        let cross_site = request
            .headers()
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == "cross-site" || v == "same-site");
        let foreign_origin = request
            .headers()
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .zip(
                request
                    .headers()
                    .get(header::HOST)
                    .and_then(|v| v.to_str().ok()),
            )
            .is_some_and(|(origin, host)| origin != format!("https://{host}"));
        if cross_site || foreign_origin {
            return ConsoleError::Forbidden(
                "a form of another site cannot be sent to the console".into(),
            )
            .into_response();
        }
    }
    request.extensions_mut().insert(viewer);
    next.run(request).await
}
