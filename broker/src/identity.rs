//! Who is on the other end of a TLS connection: the agency named by the
//! client certificate.
//!
//! The rule is strict on purpose: exactly one O= attribute, written only with
//! lowercase ASCII letters and digits, naming an agency of the policy. A
//! certificate without O=, with two O= values, or with a look-alike
//! character (a Cyrillic "о" passes rumqttd's own `is_alphanumeric` check) is
//! refused, so no certificate can be read as two different agencies.
//!
//! A certificate whose subject has an organizational unit (OU=) is a role
//! certificate — an agency's auditor (`OU=samverkan-auditor`) or the
//! federation's supervisor (`OU=samverkan-supervisor`) — and opens only the
//! auditor console ([`crate::console::auth`]), never an MQTT session. The
//! reverse holds too: the console refuses certificates without the mark.

use samverkan_sdk::names;
use sha2::{Digest as _, Sha256};
use thiserror::Error;
use x509_parser::oid_registry::{OID_X509_ORGANIZATION_NAME, OID_X509_ORGANIZATIONAL_UNIT};

/// The OU= value that marks an agency auditor's certificate.
pub const AUDITOR_OU: &str = "samverkan-auditor";
/// The OU= value that marks the federation supervisor's certificate.
pub const SUPERVISOR_OU: &str = "samverkan-supervisor";

/// Why a client certificate names no agency.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// No certificate was presented.
    #[error("no client certificate")]
    NoCertificate,
    /// The certificate could not be parsed.
    #[error("client certificate cannot be parsed")]
    Unparseable,
    /// The subject has no O=.
    #[error("client certificate has no organization (O=) in its subject")]
    NoOrganization,
    /// The subject has more than one O=.
    #[error("client certificate has {0} organization (O=) values; exactly one is required")]
    SeveralOrganizations(usize),
    /// The O= is not a string type.
    #[error("client certificate organization (O=) is not a text string")]
    NotText,
    /// The O= is not a valid agency id.
    #[error("client certificate organization (O=) is not a valid agency id: {0}")]
    InvalidAgencyId(String),
    /// The certificate carries a role (OU=): it is not an agency's MQTT client certificate.
    #[error(
        "client certificate has an organizational unit (OU={0}): role certificates (auditors, supervisor) open the auditor console, not MQTT"
    )]
    RoleCertificate(String),
}

/// The identity read from a verified client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The agency id (the certificate's single O=).
    pub agency: String,
    /// The certificate's serial number, big-endian bytes (for revocation).
    pub serial: Vec<u8>,
    /// Hex SHA-256 of the certificate (for logs).
    pub fingerprint: String,
}

/// Reads the agency from an agency's MQTT client certificate (DER), which
/// the TLS layer has already verified against the federation CA. Role
/// certificates (any OU=) are refused.
pub fn peer_identity(der: &[u8]) -> Result<PeerIdentity, IdentityError> {
    let (identity, units) = subject_identity(der)?;
    if let Some(unit) = units.into_iter().next() {
        return Err(IdentityError::RoleCertificate(unit));
    }
    Ok(identity)
}

/// The organization (checked as in [`peer_identity`]) and every
/// organizational unit (OU=, as text) of a certificate's subject.
pub fn subject_identity(der: &[u8]) -> Result<(PeerIdentity, Vec<String>), IdentityError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|_| IdentityError::Unparseable)?;
    let units = cert
        .subject()
        .iter_attributes()
        .filter(|a| a.attr_type() == &OID_X509_ORGANIZATIONAL_UNIT)
        .map(|a| a.as_str().map(str::to_string))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| IdentityError::NotText)?;
    let organizations: Vec<_> = cert
        .subject()
        .iter_attributes()
        .filter(|a| a.attr_type() == &OID_X509_ORGANIZATION_NAME)
        .collect();
    let agency = match organizations.as_slice() {
        [] => return Err(IdentityError::NoOrganization),
        [one] => one.as_str().map_err(|_| IdentityError::NotText)?,
        many => return Err(IdentityError::SeveralOrganizations(many.len())),
    };
    names::validate_agency_id(agency).map_err(|e| IdentityError::InvalidAgencyId(e.to_string()))?;
    Ok((
        PeerIdentity {
            agency: agency.to_string(),
            serial: cert.raw_serial().to_vec(),
            fingerprint: hex::encode(Sha256::digest(der)),
        },
        units,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::Ca;
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    fn der_of(ca: &Ca, orgs: &[&str]) -> Vec<u8> {
        let cert = ca.issue_client(orgs, "test", 1).unwrap();
        CertificateDer::from_pem_slice(cert.cert_pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[test]
    fn exactly_one_ascii_organization() {
        let ca = Ca::generate("test CA", 1).unwrap();
        let id = peer_identity(&der_of(&ca, &["linkoping"])).unwrap();
        assert_eq!(id.agency, "linkoping");
        assert!(!id.serial.is_empty());
        assert_eq!(
            peer_identity(&der_of(&ca, &[])),
            Err(IdentityError::NoOrganization)
        );
        assert_eq!(
            peer_identity(&der_of(&ca, &["linkoping", "polisen"])),
            Err(IdentityError::SeveralOrganizations(2))
        );
        assert!(matches!(
            peer_identity(&der_of(&ca, &["p\u{43e}lisen"])),
            Err(IdentityError::InvalidAgencyId(_))
        ));
        assert!(matches!(
            peer_identity(&der_of(&ca, &["Polisen"])),
            Err(IdentityError::InvalidAgencyId(_))
        ));
        assert_eq!(
            peer_identity(b"not a certificate"),
            Err(IdentityError::Unparseable)
        );
    }

    #[test]
    fn auditor_certificates_do_not_open_mqtt() {
        let ca = Ca::generate("test CA", 1).unwrap();
        let auditor = ca
            .issue_role("linkoping", AUDITOR_OU, "auditor", 1)
            .unwrap();
        let der = CertificateDer::from_pem_slice(auditor.cert_pem.as_bytes())
            .unwrap()
            .to_vec();
        assert_eq!(
            peer_identity(&der),
            Err(IdentityError::RoleCertificate(AUDITOR_OU.into()))
        );
        let (id, units) = subject_identity(&der).unwrap();
        assert_eq!(id.agency, "linkoping");
        assert_eq!(units, vec![AUDITOR_OU.to_string()]);
    }
}
