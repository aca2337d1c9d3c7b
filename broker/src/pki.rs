//! The development PKI: a federation CA, one TLS client certificate per
//! agency (O = agency id), a server certificate for the broker, and ed25519
//! signing keys for every agency and for the broker.
//!
//! **Everything made here is for development and tests only.** The private
//! keys are written in the clear, the CA key sits next to the certificates,
//! and every certificate says "DEVELOPMENT" in its common name. Production
//! agencies get their certificates from the federation's real CA and keep
//! their signing keys in their own key stores.
//!
//! rcgen builds the certificates (no `openssl` command line), with ring as
//! the only crypto provider of the process.

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use samverkan_sdk::keys::{self, AgencyKey, KeyRegistry};
use thiserror::Error;
use time::{Duration, OffsetDateTime};

/// Common name of the development federation CA.
pub const DEV_CA_NAME: &str = "Samverkan DEVELOPMENT federation CA - not for production";
pub use samverkan_sdk::messages::BROKER_KEY_OWNER;

/// Why the PKI could not be made or read.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Certificate(#[from] rcgen::Error),
    /// A key could not be made or encoded.
    #[error(transparent)]
    Key(#[from] keys::KeyFileError),
    /// The policy's agencies could not be read.
    #[error("{0}")]
    Policy(String),
    /// The operating system's random source failed.
    #[error("random source failed: {0}")]
    Random(String),
}

fn write(path: &Path, contents: &str, private: bool) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io)?;
    }
    fs::write(path, contents).map_err(io)?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    #[cfg(not(unix))]
    let _ = private;
    Ok(())
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A random 128-bit positive serial number (RFC 5280 4.1.2.2).
fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| PkiError::Random(e.to_string()))?;
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // no leading zero byte to strip
    Ok(SerialNumber::from_slice(&bytes))
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
}

/// The parameters that identify a CA: its name and what its key may sign.
fn ca_params(common_name: &str) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// A certificate authority that can issue certificates (the development
/// federation CA).
pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    cert_pem: String,
}

impl Ca {
    /// A new self-signed CA named `common_name`, valid for `days`.
    pub fn generate(common_name: &str, days: i64) -> Result<Self, PkiError> {
        let mut params = ca_params(common_name)?;
        params.serial_number = Some(random_serial()?);
        validity(&mut params, days);
        let key = KeyPair::generate()?;
        let cert_pem = params.self_signed(&key)?.pem();
        Ok(Self {
            params,
            key,
            cert_pem,
        })
    }

    /// Loads a CA made by [`Ca::generate`] from its certificate and key files.
    /// The issuer name is rebuilt from `common_name`, which must be the one
    /// the CA was generated with.
    pub fn load(cert: &Path, key: &Path, common_name: &str) -> Result<Self, PkiError> {
        let cert_pem = read(cert)?;
        let key = KeyPair::from_pem(&read(key)?)?;
        let params = ca_params(common_name)?;
        Ok(Self {
            params,
            key,
            cert_pem,
        })
    }

    /// The CA certificate in PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key in PEM (PKCS#8).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }

    /// A certificate revocation list signed by this CA, revoking `revoked`
    /// (serial numbers, big-endian, with the time of revocation).
    pub fn crl(
        &self,
        revoked: &[(Vec<u8>, OffsetDateTime)],
        number: u64,
    ) -> Result<String, PkiError> {
        let now = OffsetDateTime::now_utc();
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - Duration::minutes(1),
            next_update: now + Duration::days(30),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|(serial, at)| rcgen::RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial),
                    revocation_time: *at,
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer())?.pem()?)
    }

    /// Issues a TLS client certificate whose subject has the given O= values
    /// (normally exactly one: the agency id; at most two, the second only to
    /// test that such certificates are refused) and common name.
    pub fn issue_client(
        &self,
        organizations: &[&str],
        common_name: &str,
        days: i64,
    ) -> Result<IssuedCert, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        // DistinguishedName keeps one value per type, so a second O= is
        // written under a custom type with the same OID (2.5.4.10).
        let types = [
            DnType::OrganizationName,
            DnType::CustomDnType(vec![2, 5, 4, 10]),
        ];
        for (ty, o) in types.into_iter().zip(organizations) {
            dn.push(ty, *o);
        }
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        self.issue(params, days)
    }

    /// Issues a role certificate for the auditor console: O = `organization`,
    /// OU = the role mark ([`crate::identity::AUDITOR_OU`] or
    /// [`crate::identity::SUPERVISOR_OU`]), TLS client authentication only.
    pub fn issue_role(
        &self,
        organization: &str,
        unit: &str,
        common_name: &str,
        days: i64,
    ) -> Result<IssuedCert, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, organization);
        dn.push(DnType::OrganizationalUnitName, unit);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        self.issue(params, days)
    }

    /// Issues a TLS server certificate for the given DNS names and IP addresses.
    pub fn issue_server(
        &self,
        common_name: &str,
        dns_names: &[&str],
        ips: &[IpAddr],
        days: i64,
    ) -> Result<IssuedCert, PkiError> {
        let mut params =
            CertificateParams::new(dns_names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        self.issue(params, days)
    }

    fn issue(&self, mut params: CertificateParams, days: i64) -> Result<IssuedCert, PkiError> {
        params.serial_number = Some(random_serial()?);
        validity(&mut params, days);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer())?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A certificate and its private key, in PEM.
#[derive(Clone)]
pub struct IssuedCert {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
}

impl IssuedCert {
    /// Writes `<stem>.pem` and `<stem>.key` into `dir`.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(), PkiError> {
        write(&dir.join(format!("{stem}.pem")), &self.cert_pem, false)?;
        write(&dir.join(format!("{stem}.key")), &self.key_pem, true)
    }
}

/// Where the files of a development PKI are.
#[derive(Debug, Clone)]
pub struct DevPkiLayout {
    /// The directory (normally `certs-dev/`).
    pub dir: PathBuf,
}

impl DevPkiLayout {
    /// The layout under `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    /// Federation CA certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    /// Federation CA key.
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    /// Broker TLS server certificate.
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("broker.pem")
    }
    /// Broker TLS server key.
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("broker.key")
    }
    /// Broker ed25519 signing key (PKCS#8 PEM).
    pub fn broker_signing_key(&self) -> PathBuf {
        self.dir.join("broker-signing.key")
    }
    /// The id of the broker's signing key in `broker-keys.toml`, next to the
    /// key, so a tool holding the key file knows which id to sign under.
    pub fn broker_signing_key_id(&self) -> PathBuf {
        self.dir.join("broker-signing.key-id")
    }
    /// The secret key of subject hashes in the audit log.
    pub fn subject_key(&self) -> PathBuf {
        self.dir.join("subject-hash.key")
    }
    /// The certificate revocation list the broker checks.
    pub fn crl(&self) -> PathBuf {
        self.dir.join("crl.pem")
    }
    /// The revoked serial numbers (hex, one per line, with the revocation time).
    pub fn revoked_list(&self) -> PathBuf {
        self.dir.join("revoked.txt")
    }
    /// Registry of the broker's public signing keys, for SDK clients.
    pub fn broker_keys(&self) -> PathBuf {
        self.dir.join("broker-keys.toml")
    }
    /// Directory of one agency's files.
    pub fn agency_dir(&self, agency: &str) -> PathBuf {
        self.dir.join(agency)
    }
    /// An agency's TLS client certificate.
    pub fn client_cert(&self, agency: &str) -> PathBuf {
        self.agency_dir(agency).join("client.pem")
    }
    /// An agency's TLS client key.
    pub fn client_key(&self, agency: &str) -> PathBuf {
        self.agency_dir(agency).join("client.key")
    }
    /// An agency auditor's console certificate (O = agency, OU = auditor mark).
    pub fn auditor_cert(&self, agency: &str) -> PathBuf {
        self.agency_dir(agency).join("auditor.pem")
    }
    /// An agency auditor's console key.
    pub fn auditor_key(&self, agency: &str) -> PathBuf {
        self.agency_dir(agency).join("auditor.key")
    }
    /// The federation supervisor's console certificate (sees every entry).
    pub fn supervisor_cert(&self) -> PathBuf {
        self.dir.join("supervisor").join("supervisor.pem")
    }
    /// The federation supervisor's console key.
    pub fn supervisor_key(&self) -> PathBuf {
        self.dir.join("supervisor").join("supervisor.key")
    }
    /// An agency's ed25519 signing key (PKCS#8 PEM).
    pub fn signing_key(&self, agency: &str) -> PathBuf {
        self.agency_dir(agency).join("signing.key")
    }
    /// An agency's ed25519 public key (SPKI PEM).
    pub fn signing_public_key(&self, agency: &str) -> PathBuf {
        self.agency_dir(agency).join("signing.pub")
    }
    /// The id of an agency's signing key in `keys.toml`, next to the key.
    pub fn signing_key_id_file(&self, agency: &str) -> PathBuf {
        self.agency_dir(agency).join("signing.key-id")
    }
    /// The key id of an agency's development signing key.
    pub fn signing_key_id(agency: &str) -> String {
        format!("{agency}-dev-1")
    }
    /// The key id of the broker's development signing key.
    pub fn broker_key_id() -> String {
        "broker-dev-1".to_string()
    }
    /// Whether the PKI looks complete for the given agencies.
    pub fn is_complete(&self, agencies: &[String]) -> bool {
        [
            self.ca_cert(),
            self.server_cert(),
            self.server_key(),
            self.broker_signing_key(),
            self.broker_keys(),
            self.subject_key(),
        ]
        .iter()
        .chain(
            agencies
                .iter()
                .flat_map(|a| [self.client_cert(a), self.client_key(a), self.signing_key(a)])
                .collect::<Vec<_>>()
                .iter(),
        )
        .all(|p| p.exists())
    }
}

const README: &str = "\
# certs-dev: DEVELOPMENT PKI - NOT FOR PRODUCTION

Everything in this directory was generated by `samverkan pki dev` for local
development and tests. The private keys are public (they are in version
control); anyone can impersonate any agency or the broker with them.
Never trust this CA, these certificates or these signing keys outside a
development machine.

| file | what |
|---|---|
| `ca.pem`, `ca.key` | the development federation CA |
| `broker.pem`, `broker.key` | the broker's TLS server certificate (localhost, 127.0.0.1) |
| `broker-signing.key` | the broker's ed25519 signing key (receipts, share stamps, checkpoints), PKCS#8 v1 PEM |
| `broker-signing.key-id` | its key id in `broker-keys.toml` (one line) |
| `broker-keys.toml` | the broker's public signing keys, for SDK clients and for verifying audit checkpoints |
| `subject-hash.key` | the secret key of the keyed hashes of persons and companies in the audit log: 64 hex digits after `#` comment lines (`docs/PROTOCOL.md` section 13.8.6) |
| `crl.pem`, `revoked.txt` | the certificate revocation list and its source (`samverkan pki revoke`) |
| `<agency>/client.pem`, `<agency>/client.key` | the agency's TLS client certificate (O = agency id) |
| `<agency>/auditor.pem`, `<agency>/auditor.key` | the agency auditor's certificate for the auditor console (O = agency id, OU = `samverkan-auditor`); refused by MQTT |
| `supervisor/supervisor.pem`, `supervisor/supervisor.key` | the federation supervisor's console certificate (O = `tillsyn`, OU = `samverkan-supervisor`): sees every entry |
| `<agency>/auditor.p12`, `supervisor/supervisor.p12` | the same certificates and keys with the CA, for importing into a browser (password `samverkan`); made with `openssl pkcs12 -export -in auditor.pem -inkey auditor.key -certfile ../ca.pem -out auditor.p12 -passout pass:samverkan` |
| `<agency>/signing.key-id` | the key id of the agency's signing key in `keys.toml` (one line) |
| `<agency>/signing.key`, `<agency>/signing.pub` | the agency's ed25519 signing key; the public half is also in the policy set's `keys.toml` |
| `keys.toml` | only in a PKI made with `--out` elsewhere and no `--policies`: the agencies' public signing keys, for the policy set that is to use this PKI |

Regenerate with `samverkan pki dev --force` (this also rewrites
`policies/keys.toml`, which changes the policy version).
";

/// What [`generate_dev`] made.
#[derive(Debug, Clone)]
pub struct DevPkiReport {
    /// The directory written.
    pub dir: PathBuf,
    /// The agencies that got certificates and keys.
    pub agencies: Vec<String>,
    /// The key registry file rewritten in the policy set.
    pub keys_file: PathBuf,
}

/// Generates a complete development PKI in `out` for the agencies listed in
/// `policy_dir/agencies.toml`, and rewrites `policy_dir/keys.toml` with the
/// agencies' new public signing keys.
pub fn generate_dev(out: &Path, policy_dir: &Path) -> Result<DevPkiReport, PkiError> {
    generate_dev_with_keys_file(out, policy_dir, &policy_dir.join("keys.toml"))
}

/// Like [`generate_dev`], but writes the agencies' public signing keys to
/// `keys_file` and only reads `policy_dir`: a PKI made for another place
/// must not change the keys of a policy set that belongs to another PKI.
pub fn generate_dev_with_keys_file(
    out: &Path,
    policy_dir: &Path,
    keys_file: &Path,
) -> Result<DevPkiReport, PkiError> {
    let agencies =
        crate::policy::agency_ids(policy_dir).map_err(|e| PkiError::Policy(e.to_string()))?;
    let layout = DevPkiLayout::new(out);
    const DAYS: i64 = 3650;

    let ca = Ca::generate(DEV_CA_NAME, DAYS)?;
    write(&layout.ca_cert(), ca.cert_pem(), false)?;
    write(&layout.ca_key(), &ca.key_pem(), true)?;
    write(&layout.crl(), &ca.crl(&[], 1)?, false)?;
    write(
        &layout.revoked_list(),
        "# Revoked certificate serials (hex) and revocation times; see `samverkan pki revoke`.\n",
        false,
    )?;
    write(&out.join("README.md"), README, false)?;

    let server = ca.issue_server(
        "samverkan broker (DEVELOPMENT certificate, not for production)",
        &["localhost"],
        &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
        DAYS,
    )?;
    server.write(out, "broker")?;

    let now = samverkan_sdk::time::now_ms();
    let broker_key = keys::generate_signing_key()?;
    write(
        &layout.broker_signing_key(),
        &keys::signing_key_pem(&broker_key)?,
        true,
    )?;
    write(
        &layout.broker_signing_key_id(),
        &format!("{}\n", DevPkiLayout::broker_key_id()),
        false,
    )?;
    let mut broker_registry = KeyRegistry::new();
    broker_registry.insert(AgencyKey {
        owner: BROKER_KEY_OWNER.into(),
        key_id: DevPkiLayout::broker_key_id(),
        public_key: broker_key.verifying_key(),
        not_before_ms: Some(now - 3_600_000),
        not_after_ms: None,
        revoked_at_ms: None,
        revocation_reason: None,
    });
    write(
        &layout.broker_keys(),
        &broker_registry.to_toml(
            "The broker's public signing keys (receipts, share stamps, audit checkpoints).\nDEVELOPMENT keys generated by `samverkan pki dev`: not for production.",
        ),
        false,
    )?;

    crate::audit::subject::SubjectHasher::generate_file(&layout.subject_key()).map_err(
        |source| PkiError::Io {
            path: layout.subject_key(),
            source,
        },
    )?;

    issue_console_certs(&layout, &ca, &agencies, true)?;
    let mut registry = KeyRegistry::new();
    for agency in &agencies {
        let dir = layout.agency_dir(agency);
        let cert = ca.issue_client(
            &[agency],
            &format!("{agency} (DEVELOPMENT certificate, not for production)"),
            DAYS,
        )?;
        cert.write(&dir, "client")?;
        let signing = keys::generate_signing_key()?;
        write(
            &layout.signing_key(agency),
            &keys::signing_key_pem(&signing)?,
            true,
        )?;
        write(
            &layout.signing_public_key(agency),
            &keys::public_key_pem(&signing.verifying_key())?,
            false,
        )?;
        write(
            &layout.signing_key_id_file(agency),
            &format!("{}\n", DevPkiLayout::signing_key_id(agency)),
            false,
        )?;
        registry.insert(AgencyKey {
            owner: agency.clone(),
            key_id: DevPkiLayout::signing_key_id(agency),
            public_key: signing.verifying_key(),
            not_before_ms: Some(now - 3_600_000),
            not_after_ms: None,
            revoked_at_ms: None,
            revocation_reason: None,
        });
    }
    write(
        keys_file,
        &registry.to_toml(&format!(
            "Agency signing keys (ed25519). Alerts are verified against these.\n\
             An agency may have several keys (rotation); set revoked_at to cut one off.\n\
             These are DEVELOPMENT keys generated by `samverkan pki dev` (private halves in {}/):\n\
             replace them with the agencies' real public keys for production.",
            out.display()
        )),
        false,
    )?;
    Ok(DevPkiReport {
        dir: out.to_path_buf(),
        agencies,
        keys_file: keys_file.to_path_buf(),
    })
}

/// The organization (O=) of the development supervisor certificate: the
/// supervising body, not an agency of the policy.
pub const DEV_SUPERVISOR_ORG: &str = "tillsyn";
const DAYS_DEV: i64 = 3650;

/// Issues the console certificates that are missing: one auditor per
/// agency and the federation supervisor. With `replace`, existing ones are
/// issued anew (a new CA) and browser bundles (`.p12`) of the old ones are
/// removed.
fn issue_console_certs(
    layout: &DevPkiLayout,
    ca: &Ca,
    agencies: &[String],
    replace: bool,
) -> Result<usize, PkiError> {
    let mut issued = 0;
    if replace {
        let stale = agencies
            .iter()
            .map(|a| layout.agency_dir(a).join("auditor.p12"))
            .chain([layout.dir.join("supervisor").join("supervisor.p12")]);
        for p12 in stale.filter(|p| p.exists()) {
            fs::remove_file(&p12).map_err(|source| PkiError::Io { path: p12, source })?;
        }
    }
    for agency in agencies {
        if !replace && layout.auditor_cert(agency).exists() {
            continue;
        }
        let cert = ca.issue_role(
            agency,
            crate::identity::AUDITOR_OU,
            &format!("{agency} auditor (DEVELOPMENT certificate, not for production)"),
            DAYS_DEV,
        )?;
        cert.write(&layout.agency_dir(agency), "auditor")?;
        issued += 1;
    }
    if replace || !layout.supervisor_cert().exists() {
        let cert = ca.issue_role(
            DEV_SUPERVISOR_ORG,
            crate::identity::SUPERVISOR_OU,
            "federation supervisor (DEVELOPMENT certificate, not for production)",
            DAYS_DEV,
        )?;
        cert.write(&layout.dir.join("supervisor"), "supervisor")?;
        issued += 1;
    }
    Ok(issued)
}

/// Adds the console certificates missing from an existing development PKI,
/// signed by its CA; every other key and certificate stays as it is.
/// Returns how many were issued.
pub fn add_console_certs(dir: &Path, agencies: &[String]) -> Result<usize, PkiError> {
    let layout = DevPkiLayout::new(dir);
    let missing = agencies.iter().any(|a| !layout.auditor_cert(a).exists())
        || !layout.supervisor_cert().exists();
    if !missing {
        return Ok(0);
    }
    let ca = Ca::load(&layout.ca_cert(), &layout.ca_key(), DEV_CA_NAME)?;
    issue_console_certs(&layout, &ca, agencies, false)
}

/// Revokes a certificate of the development PKI: adds its serial to
/// `revoked.txt` and rewrites `crl.pem`, which a running broker picks up
/// within its CRL check interval. Returns the revoked serial (hex).
pub fn revoke_dev(dir: &Path, certificate: &Path) -> Result<String, PkiError> {
    let layout = DevPkiLayout::new(dir);
    let ca = Ca::load(&layout.ca_cert(), &layout.ca_key(), DEV_CA_NAME)?;
    let pem = read(certificate)?;
    let der = rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| {
            PkiError::Policy(format!(
                "{} holds no PEM certificate",
                certificate.display()
            ))
        })?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| PkiError::Policy(format!("{}: {e}", certificate.display())))?;
    let serial = hex::encode(cert.raw_serial());
    let list_path = layout.revoked_list();
    let mut list = std::fs::read_to_string(&list_path).unwrap_or_default();
    let mut revoked: Vec<(Vec<u8>, OffsetDateTime)> = Vec::new();
    for line in list.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let mut parts = line.split_whitespace();
        if let (Some(s), Some(t)) = (parts.next(), parts.next())
            && let (Ok(bytes), Ok(at)) = (hex::decode(s), t.parse::<i64>())
            && let Ok(at) = OffsetDateTime::from_unix_timestamp(at)
        {
            revoked.push((bytes, at));
        }
    }
    if !revoked.iter().any(|(s, _)| hex::encode(s) == serial) {
        let now = OffsetDateTime::now_utc();
        list.push_str(&format!("{serial} {}\n", now.unix_timestamp()));
        revoked.push((cert.raw_serial().to_vec(), now));
        write(&list_path, &list, false)?;
    }
    let number = revoked.len() as u64 + 1;
    write(&layout.crl(), &ca.crl(&revoked, number)?, false)?;
    Ok(serial)
}
