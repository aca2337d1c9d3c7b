//! The rustls client configuration for mutual TLS with the broker: TLS 1.3
//! only, the federation CA as the only trust anchor, the agency's client
//! certificate for authentication, and the ring crypto provider passed
//! explicitly (the process has exactly one provider; nothing is installed
//! globally).

use std::error::Error as StdError;
use std::io;
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::config::AgencyConfig;
use super::error::ClientError;

fn credentials(what: &str, reason: impl ToString) -> ClientError {
    ClientError::Credentials {
        what: what.to_string(),
        reason: reason.to_string(),
    }
}

/// Builds the TLS configuration from the PEM material in `config`.
pub(crate) fn client_config(config: &AgencyConfig) -> Result<Arc<ClientConfig>, ClientError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&config.ca_pem) {
        let cert = cert.map_err(|e| credentials("CA certificate", e))?;
        roots
            .add(cert)
            .map_err(|e| credentials("CA certificate", e))?;
    }
    if roots.is_empty() {
        return Err(credentials("CA certificate", "no certificate in the PEM"));
    }
    let chain = CertificateDer::pem_slice_iter(&config.client_cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| credentials("client certificate", e))?;
    if chain.is_empty() {
        return Err(credentials(
            "client certificate",
            "no certificate in the PEM",
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&config.client_key_pem)
        .map_err(|e| credentials("client key", e))?;
    let tls =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| credentials("TLS configuration", e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| credentials("client certificate and key", e))?;
    Ok(Arc::new(tls))
}

/// The rustls error somewhere in `err`'s chain of causes, if any: TLS
/// failures reach us wrapped in rumqttc's and std's error types (an alert
/// from the broker refusing our certificate arrives as an I/O error on the
/// first read after the handshake).
pub(crate) fn find_tls_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut current: Option<&'a (dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = e
            .downcast_ref::<io::Error>()
            .and_then(io::Error::get_ref)
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(inner);
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_rustls_errors_inside_io_errors() {
        let tls = rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired);
        let io = io::Error::new(io::ErrorKind::InvalidData, tls.clone());
        assert_eq!(find_tls_error(&io), Some(&tls));
        let wrapped = rumqttc::ConnectionError::Io(io);
        assert_eq!(find_tls_error(&wrapped), Some(&tls));
        let plain = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(find_tls_error(&plain), None);
    }
}
