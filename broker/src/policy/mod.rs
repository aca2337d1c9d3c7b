//! The policy set: which agency may receive which fields of which alerts,
//! for what purpose and under which legal basis.
//!
//! A policy set is a directory of plain files that legal staff can read and
//! review in version control (layout in `policies/README.md`):
//!
//! ```text
//! agencies.toml        agencies and their attributes
//! keys.toml            agencies' ed25519 signing keys (validity, revocation)
//! legal-bases.toml     the legal bases rules may rest on
//! limits.toml          publish limits per agency
//! retention.toml       how long alert content (personal data) is kept
//! alert-types/*.schema.json   one JSON Schema per alert type
//! rules/*.toml         the sharing rules
//! witnesses.toml       the agencies' witness keys and the cosignature quorum
//! ```
//!
//! The set is validated as a whole when it is loaded; any mistake refuses the
//! whole set with the file and line of every problem. Its version is the
//! SHA-256 of all its files, so every decision can name the exact text it
//! followed. [`PolicySet::decide`] is pure: same set, same alert, same answer.

mod decide;
mod files;
pub mod schema;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use samverkan_sdk::audit::witnesses::{WITNESSES_FILE, WitnessPolicy};
use samverkan_sdk::identifiers::Organisationsnummer;
use samverkan_sdk::keys::KeyRegistry;
use samverkan_sdk::names;
use samverkan_sdk::source::SourceError;
use toml::Spanned;

pub use decide::{Decision, DecisionInput, Denial, DenialReason, Share};
pub use schema::{AlertType, SubjectKind};

/// Everything wrong with a policy set, each with file and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// The problems, in file order.
    pub errors: Vec<SourceError>,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.errors {
            writeln!(f, "{e}")?;
        }
        write!(
            f,
            "the policy set was refused: {} problem{}",
            self.errors.len(),
            if self.errors.len() == 1 { "" } else { "s" }
        )
    }
}

impl std::error::Error for PolicyError {}

/// An agency of the federation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agency {
    /// The agency id (tenant, certificate O=).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its organisationsnummer, if it has one.
    pub org_number: Option<String>,
    /// Facts rule conditions can refer to (`kommunkod`, `region`, ...).
    pub attributes: BTreeMap<String, String>,
}

impl Agency {
    /// An attribute's value; `id` is built in.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        if name == "id" {
            Some(&self.id)
        } else {
            self.attributes.get(name).map(String::as_str)
        }
    }
}

/// A legal basis for sharing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegalBasis {
    /// Its id, recorded in every audit entry.
    pub id: String,
    /// The statute reference.
    pub reference: String,
    /// A short title.
    pub title: String,
    /// What it allows, in a few sentences.
    pub summary: String,
}

/// A condition on an alert's field that a rule requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// The field's value equals an attribute of the recipient.
    EqualsRecipient {
        /// The alert field.
        field: String,
        /// The recipient's attribute (`id` or one from `agencies.toml`).
        attribute: String,
    },
    /// The field's value equals a fixed text.
    Equals {
        /// The alert field.
        field: String,
        /// The required value.
        value: String,
    },
    /// The field's value is one of a list.
    OneOf {
        /// The alert field.
        field: String,
        /// The allowed values.
        values: Vec<String>,
    },
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Condition::EqualsRecipient { field, attribute } => {
                write!(f, "`{field}` must equal the recipient's `{attribute}`")
            }
            Condition::Equals { field, value } => write!(f, "`{field}` must equal {value:?}"),
            Condition::OneOf { field, values } => {
                write!(f, "`{field}` must be one of {values:?}")
            }
        }
    }
}

/// A sharing rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Unique id, recorded in every audit entry.
    pub id: String,
    /// What the rule is for.
    pub description: String,
    /// Agencies whose alerts the rule covers.
    pub publishers: BTreeSet<String>,
    /// Agencies that may receive under the rule.
    pub recipients: BTreeSet<String>,
    /// Logical topic filters (MQTT wildcards).
    pub topics: Vec<String>,
    /// Alert types the rule covers.
    pub alert_types: BTreeSet<String>,
    /// The legal basis id.
    pub legal_basis: String,
    /// The purpose of the disclosure.
    pub purpose: String,
    /// The only fields that may be disclosed under this rule.
    pub fields: Vec<String>,
    /// Applies only to recipients the publisher names in `to`.
    pub only_when_addressed: bool,
    /// All must hold.
    pub conditions: Vec<Condition>,
    /// Where the rule is written: `rules/<file>.toml:<line>`.
    pub origin: String,
}

impl Rule {
    /// Whether the rule covers this publisher, alert type and topic (any recipient).
    pub fn covers(&self, publisher: &str, alert_type: &str, topic: &str) -> bool {
        self.publishers.contains(publisher)
            && self.alert_types.contains(alert_type)
            && self.topics.iter().any(|f| names::topic_matches(f, topic))
    }
}

/// A publish limit: a steady rate and a burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Alerts per second, sustained.
    pub per_second: NonZeroU32,
    /// Alerts that may arrive at once.
    pub burst: NonZeroU32,
}

pub use samverkan_sdk::audit::evidence::PolicyFile;

/// A validated, compiled policy set. Shared read-only; a reload builds a new one.
#[derive(Debug)]
pub struct PolicySet {
    version: String,
    dir: PathBuf,
    agencies: BTreeMap<String, Agency>,
    keys: KeyRegistry,
    legal_bases: BTreeMap<String, LegalBasis>,
    alert_types: BTreeMap<String, AlertType>,
    rules: Vec<Rule>,
    default_limit: Limit,
    limits: BTreeMap<String, Limit>,
    default_retention_days: u32,
    retention_days: BTreeMap<String, u32>,
    witnesses: WitnessPolicy,
    files: Vec<PolicyFile>,
}

impl PolicySet {
    /// The content hash of all files: `sha256:<64 hex digits>`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The first 12 hex digits of the version, for people.
    pub fn short_version(&self) -> &str {
        let hex = self.version.trim_start_matches("sha256:");
        &hex[..hex.len().min(12)]
    }

    /// The directory the set was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// All agencies by id.
    pub fn agencies(&self) -> &BTreeMap<String, Agency> {
        &self.agencies
    }

    /// One agency.
    pub fn agency(&self, id: &str) -> Option<&Agency> {
        self.agencies.get(id)
    }

    /// The agencies' signing keys.
    pub fn keys(&self) -> &KeyRegistry {
        &self.keys
    }

    /// All legal bases by id.
    pub fn legal_bases(&self) -> &BTreeMap<String, LegalBasis> {
        &self.legal_bases
    }

    /// All alert types by name.
    pub fn alert_types(&self) -> &BTreeMap<String, AlertType> {
        &self.alert_types
    }

    /// One alert type.
    pub fn alert_type(&self, name: &str) -> Option<&AlertType> {
        self.alert_types.get(name)
    }

    /// The rules in evaluation order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The publish limit of an agency.
    pub fn limit_for(&self, agency: &str) -> Limit {
        self.limits
            .get(agency)
            .copied()
            .unwrap_or(self.default_limit)
    }

    /// How many days the content of alerts of `alert_type` is kept.
    pub fn retention_days(&self, alert_type: &str) -> u32 {
        self.retention_days
            .get(alert_type)
            .copied()
            .unwrap_or(self.default_retention_days)
    }

    /// The witnesses of the audit log and the quorum of cosignatures.
    pub fn witnesses(&self) -> &WitnessPolicy {
        &self.witnesses
    }

    /// The verbatim files, in version-hash order.
    pub fn files(&self) -> &[PolicyFile] {
        &self.files
    }

    /// Loads and validates the policy set in `dir`.
    pub fn load(dir: &Path) -> Result<PolicySet, PolicyError> {
        Loader::new(dir).load()
    }
}

/// The policy in force, shared by the gateway and the router and replaced
/// whole on reload (readers keep the version they started with).
#[derive(Debug)]
pub struct PolicyHandle {
    current: std::sync::RwLock<std::sync::Arc<PolicySet>>,
}

impl PolicyHandle {
    /// A handle holding `set`.
    pub fn new(set: PolicySet) -> Self {
        Self {
            current: std::sync::RwLock::new(std::sync::Arc::new(set)),
        }
    }

    /// The policy in force now.
    pub fn current(&self) -> std::sync::Arc<PolicySet> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts `set` in force; returns the previous one.
    pub fn replace(&self, set: PolicySet) -> std::sync::Arc<PolicySet> {
        let mut guard = self.current.write().unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut *guard, std::sync::Arc::new(set))
    }
}

/// The agency ids of `dir/agencies.toml` alone (for making a development PKI
/// before the rest of the set, such as `keys.toml`, exists).
pub fn agency_ids(dir: &Path) -> Result<Vec<String>, PolicyError> {
    let mut loader = Loader::new(dir);
    let agencies = loader.load_agencies();
    if loader.errors.is_empty() {
        Ok(agencies.into_keys().collect())
    } else {
        Err(PolicyError {
            errors: loader.errors,
        })
    }
}

/// The version of a set of files (see [`samverkan_sdk::audit::evidence::policy_version`]).
pub fn version_of(files: &[PolicyFile]) -> String {
    samverkan_sdk::audit::evidence::policy_version(files)
}

struct Loader {
    dir: PathBuf,
    errors: Vec<SourceError>,
    files: Vec<PolicyFile>,
}

fn rule_id_ok(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Loader {
    fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            errors: Vec::new(),
            files: Vec::new(),
        }
    }

    /// Reads a file of the set, remembering its text for the version hash.
    fn read(&mut self, rel: &str) -> Option<(PathBuf, String)> {
        let path = self.dir.join(rel);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                self.files.push(PolicyFile {
                    path: rel.to_string(),
                    text: text.clone(),
                });
                Some((path, text))
            }
            Err(e) => {
                self.errors
                    .push(SourceError::file(&path, format!("cannot read: {e}")));
                None
            }
        }
    }

    /// Files in a subdirectory with a given suffix, sorted by name.
    fn list(&mut self, sub: &str, suffix: &str) -> Vec<String> {
        let path = self.dir.join(sub);
        let entries = match std::fs::read_dir(&path) {
            Ok(e) => e,
            Err(e) => {
                self.errors.push(SourceError::file(
                    &path,
                    format!("cannot read directory: {e}"),
                ));
                return Vec::new();
            }
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(suffix))
            .collect();
        names.sort();
        names
    }

    fn parse<T: serde::de::DeserializeOwned>(&mut self, rel: &str) -> Option<(PathBuf, String, T)> {
        let (path, text) = self.read(rel)?;
        match toml::from_str::<T>(&text) {
            Ok(v) => Some((path, text, v)),
            Err(e) => {
                self.errors.push(SourceError::from_toml(&path, &text, &e));
                None
            }
        }
    }

    fn err(&mut self, file: &Path, text: &str, offset: usize, msg: impl Into<String>) {
        self.errors.push(SourceError::at(file, text, offset, msg));
    }

    fn load(mut self) -> Result<PolicySet, PolicyError> {
        let agencies = self.load_agencies();
        let keys = self.load_keys(&agencies);
        let legal_bases = self.load_legal_bases();
        let (default_limit, limits) = self.load_limits(&agencies);
        let alert_types = self.load_alert_types();
        let rules = self.load_rules(&agencies, &legal_bases, &alert_types);
        let (default_retention_days, retention_days) = self.load_retention(&alert_types);
        let witnesses = self.load_witnesses(&agencies);
        if !self.errors.is_empty() {
            return Err(PolicyError {
                errors: self.errors,
            });
        }
        Ok(PolicySet {
            version: version_of(&self.files),
            dir: self.dir,
            agencies,
            keys,
            legal_bases,
            alert_types,
            rules,
            default_limit,
            limits,
            default_retention_days,
            retention_days,
            witnesses,
            files: self.files,
        })
    }

    fn load_witnesses(&mut self, agencies: &BTreeMap<String, Agency>) -> WitnessPolicy {
        let Some((path, text)) = self.read(WITNESSES_FILE) else {
            return WitnessPolicy::none();
        };
        let ids: BTreeSet<String> = agencies.keys().cloned().collect();
        match WitnessPolicy::from_toml(&text, &path, Some(&ids)) {
            Ok(w) => w,
            Err(errors) => {
                self.errors.extend(errors);
                WitnessPolicy::none()
            }
        }
    }

    fn load_retention(
        &mut self,
        alert_types: &BTreeMap<String, AlertType>,
    ) -> (u32, BTreeMap<String, u32>) {
        let mut days = BTreeMap::new();
        let Some((path, text, file)) = self.parse::<files::RetentionFile>("retention.toml") else {
            return (0, days);
        };
        for (alert_type, raw) in file.alert_type {
            if !alert_types.contains_key(alert_type.get_ref()) {
                self.err(
                    &path,
                    &text,
                    alert_type.span().start,
                    format!(
                        "`{}` is not an alert type of the policy",
                        alert_type.get_ref()
                    ),
                );
            }
            days.insert(alert_type.into_inner(), raw.content_days);
        }
        (file.default.content_days, days)
    }

    fn load_agencies(&mut self) -> BTreeMap<String, Agency> {
        let mut agencies = BTreeMap::new();
        let Some((path, text, file)) = self.parse::<files::AgenciesFile>("agencies.toml") else {
            return agencies;
        };
        if file.agency.is_empty() {
            self.errors
                .push(SourceError::file(&path, "no [[agency]] is defined"));
        }
        for raw in file.agency {
            let raw = raw.into_inner();
            let id = raw.id.get_ref().clone();
            if let Err(e) = names::validate_agency_id(&id) {
                self.err(&path, &text, raw.id.span().start, e.to_string());
            }
            if id == samverkan_sdk::messages::BROKER_KEY_OWNER {
                self.err(
                    &path,
                    &text,
                    raw.id.span().start,
                    "the agency id `broker` is reserved for the broker's own keys",
                );
            }
            if agencies.contains_key(&id) {
                self.err(
                    &path,
                    &text,
                    raw.id.span().start,
                    format!("agency `{id}` is defined twice"),
                );
            }
            if let Some(org) = &raw.org_number
                && let Err(e) = Organisationsnummer::parse(org.get_ref())
            {
                self.err(&path, &text, org.span().start, e.to_string());
            }
            let mut attributes = BTreeMap::new();
            for (k, v) in raw.attributes {
                if k.get_ref() == "id" {
                    self.err(
                        &path,
                        &text,
                        k.span().start,
                        "the attribute `id` is built in and cannot be set",
                    );
                }
                attributes.insert(k.into_inner(), v.into_inner());
            }
            agencies.insert(
                id.clone(),
                Agency {
                    id,
                    name: raw.name,
                    org_number: raw.org_number.map(Spanned::into_inner),
                    attributes,
                },
            );
        }
        agencies
    }

    fn load_keys(&mut self, agencies: &BTreeMap<String, Agency>) -> KeyRegistry {
        let Some((path, text)) = self.read("keys.toml") else {
            return KeyRegistry::new();
        };
        match KeyRegistry::from_toml(&text, &path) {
            Ok(keys) => {
                for key in keys.iter() {
                    if !agencies.contains_key(&key.owner) {
                        let offset = text
                            .find(&format!("\"{}\"", key.key_id))
                            .unwrap_or_default();
                        self.err(
                            &path,
                            &text,
                            offset,
                            format!(
                                "key `{}` belongs to `{}`, which is not an agency in agencies.toml",
                                key.key_id, key.owner
                            ),
                        );
                    }
                }
                keys
            }
            Err(errors) => {
                self.errors.extend(errors);
                KeyRegistry::new()
            }
        }
    }

    fn load_legal_bases(&mut self) -> BTreeMap<String, LegalBasis> {
        let mut bases = BTreeMap::new();
        let Some((path, text, file)) = self.parse::<files::LegalBasesFile>("legal-bases.toml")
        else {
            return bases;
        };
        for raw in file.legal_basis {
            let raw = raw.into_inner();
            let id = raw.id.get_ref().clone();
            if !rule_id_ok(&id) {
                self.err(
                    &path,
                    &text,
                    raw.id.span().start,
                    format!("legal basis id `{id}` may only contain lowercase ASCII letters, digits and `-`, starting with a letter"),
                );
            }
            if bases.contains_key(&id) {
                self.err(
                    &path,
                    &text,
                    raw.id.span().start,
                    format!("legal basis `{id}` is defined twice"),
                );
            }
            bases.insert(
                id.clone(),
                LegalBasis {
                    id,
                    reference: raw.reference,
                    title: raw.title,
                    summary: raw.summary.trim().to_string(),
                },
            );
        }
        bases
    }

    fn load_limits(
        &mut self,
        agencies: &BTreeMap<String, Agency>,
    ) -> (Limit, BTreeMap<String, Limit>) {
        let fallback = Limit {
            per_second: NonZeroU32::MIN,
            burst: NonZeroU32::MIN,
        };
        let Some((path, text, file)) = self.parse::<files::LimitsFile>("limits.toml") else {
            return (fallback, BTreeMap::new());
        };
        let check = |raw: files::RawLimit, offset: usize, errors: &mut Vec<SourceError>| match (
            NonZeroU32::new(raw.publish_per_second),
            NonZeroU32::new(raw.publish_burst),
        ) {
            (Some(per_second), Some(burst)) => Some(Limit { per_second, burst }),
            _ => {
                errors.push(SourceError::at(
                    &path,
                    &text,
                    offset,
                    "publish_per_second and publish_burst must be at least 1",
                ));
                None
            }
        };
        let mut errors = Vec::new();
        let default = check(file.default, 0, &mut errors).unwrap_or(fallback);
        let mut limits = BTreeMap::new();
        for (agency, raw) in file.agency {
            if !agencies.contains_key(agency.get_ref()) {
                errors.push(SourceError::at(
                    &path,
                    &text,
                    agency.span().start,
                    format!("`{}` is not an agency in agencies.toml", agency.get_ref()),
                ));
            }
            let offset = raw.span().start;
            if let Some(limit) = check(raw.into_inner(), offset, &mut errors) {
                limits.insert(agency.into_inner(), limit);
            }
        }
        self.errors.extend(errors);
        (default, limits)
    }

    fn load_alert_types(&mut self) -> BTreeMap<String, AlertType> {
        let mut types = BTreeMap::new();
        for name in self.list("alert-types", ".json") {
            let rel = format!("alert-types/{name}");
            let Some(type_name) = name.strip_suffix(".schema.json") else {
                self.errors.push(SourceError::file(
                    &self.dir.join(&rel),
                    "alert type files must be named `<alert type>.schema.json`",
                ));
                continue;
            };
            let type_name = type_name.to_string();
            let Some((path, text)) = self.read(&rel) else {
                continue;
            };
            match schema::compile(&type_name, &path, &text) {
                Ok(t) => {
                    types.insert(type_name, t);
                }
                Err(errors) => self.errors.extend(errors),
            }
        }
        if types.is_empty() && self.errors.is_empty() {
            self.errors.push(SourceError::file(
                &self.dir.join("alert-types"),
                "no alert types (`<type>.schema.json`) are defined",
            ));
        }
        types
    }

    fn load_rules(
        &mut self,
        agencies: &BTreeMap<String, Agency>,
        legal_bases: &BTreeMap<String, LegalBasis>,
        alert_types: &BTreeMap<String, AlertType>,
    ) -> Vec<Rule> {
        let mut rules = Vec::new();
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        for name in self.list("rules", ".toml") {
            let rel = format!("rules/{name}");
            let Some((path, text, file)) = self.parse::<files::RulesFile>(&rel) else {
                continue;
            };
            for raw in file.rule {
                let rule_line = samverkan_sdk::source::line_and_column(&text, raw.span().start).0;
                let raw = raw.into_inner();
                let mut check = RuleCheck {
                    path: &path,
                    text: &text,
                    errors: Vec::new(),
                    id: raw.id.get_ref().clone(),
                };
                let rule = check.rule(raw, agencies, legal_bases, alert_types, rule_line, &rel);
                if let Some(first) = seen.get(&rule.id) {
                    let line = rule_line;
                    check.errors.push(SourceError {
                        file: path.clone(),
                        line,
                        column: 0,
                        message: format!("rule id `{}` is already used at {first}", rule.id),
                    });
                } else {
                    seen.insert(rule.id.clone(), rule.origin.clone());
                }
                self.errors.extend(check.errors);
                rules.push(rule);
            }
        }
        rules
    }
}

/// Checks one rule against the rest of the set.
struct RuleCheck<'a> {
    path: &'a Path,
    text: &'a str,
    errors: Vec<SourceError>,
    id: String,
}

impl RuleCheck<'_> {
    fn err(&mut self, offset: usize, msg: impl fmt::Display) {
        let message = format!("rule `{}`: {msg}", self.id);
        self.errors
            .push(SourceError::at(self.path, self.text, offset, message));
    }

    fn agencies(
        &mut self,
        what: &str,
        list: Spanned<Vec<Spanned<String>>>,
        agencies: &BTreeMap<String, Agency>,
    ) -> BTreeSet<String> {
        if list.get_ref().is_empty() {
            self.err(
                list.span().start,
                format!("`{what}` must name at least one agency"),
            );
        }
        let mut out = BTreeSet::new();
        for a in list.into_inner() {
            if !agencies.contains_key(a.get_ref()) {
                let known: Vec<&str> = agencies.keys().map(String::as_str).collect();
                self.err(
                    a.span().start,
                    format!(
                        "unknown agency `{}` in `{what}` (agencies: {})",
                        a.get_ref(),
                        known.join(", ")
                    ),
                );
            }
            out.insert(a.into_inner());
        }
        out
    }

    fn rule(
        &mut self,
        raw: files::RawRule,
        agencies: &BTreeMap<String, Agency>,
        legal_bases: &BTreeMap<String, LegalBasis>,
        alert_types: &BTreeMap<String, AlertType>,
        line: usize,
        rel: &str,
    ) -> Rule {
        if !rule_id_ok(raw.id.get_ref()) {
            self.err(
                raw.id.span().start,
                "a rule id may only contain lowercase ASCII letters, digits and `-`, starting with a letter (at most 64)",
            );
        }
        let publishers = self.agencies("publishers", raw.publishers, agencies);
        let recipients = self.agencies("recipients", raw.recipients, agencies);

        if raw.topics.get_ref().is_empty() {
            self.err(
                raw.topics.span().start,
                "`topics` must list at least one topic filter",
            );
        }
        let mut topics = Vec::new();
        for t in raw.topics.into_inner() {
            if let Err(e) = names::validate_topic_filter(t.get_ref()) {
                self.err(t.span().start, format!("malformed topic filter: {e}"));
            }
            topics.push(t.into_inner());
        }

        if raw.alert_types.get_ref().is_empty() {
            self.err(
                raw.alert_types.span().start,
                "`alert_types` must list at least one alert type",
            );
        }
        let mut types = BTreeSet::new();
        for t in raw.alert_types.into_inner() {
            if !alert_types.contains_key(t.get_ref()) {
                let known: Vec<&str> = alert_types.keys().map(String::as_str).collect();
                self.err(
                    t.span().start,
                    format!(
                        "unknown alert type `{}` (alert types: {})",
                        t.get_ref(),
                        known.join(", ")
                    ),
                );
            }
            types.insert(t.into_inner());
        }
        let schemas: Vec<&AlertType> = types.iter().filter_map(|t| alert_types.get(t)).collect();

        if !legal_bases.contains_key(raw.legal_basis.get_ref()) {
            let known: Vec<&str> = legal_bases.keys().map(String::as_str).collect();
            self.err(
                raw.legal_basis.span().start,
                format!(
                    "unknown legal basis `{}` (legal bases: {})",
                    raw.legal_basis.get_ref(),
                    known.join(", ")
                ),
            );
        }
        if raw.purpose.get_ref().trim().is_empty() {
            self.err(raw.purpose.span().start, "`purpose` must not be empty");
        }

        if raw.fields.get_ref().is_empty() {
            self.err(
                raw.fields.span().start,
                "`fields` must list at least one field",
            );
        }
        let mut fields = Vec::new();
        for f in raw.fields.into_inner() {
            for schema in &schemas {
                if !schema.fields.contains_key(f.get_ref()) {
                    self.err(
                        f.span().start,
                        format!(
                            "field `{}` is not a field of alert type `{}` (its fields: {})",
                            f.get_ref(),
                            schema.name,
                            schema.fields.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    );
                }
            }
            if fields.contains(f.get_ref()) {
                self.err(
                    f.span().start,
                    format!("field `{}` is listed twice", f.get_ref()),
                );
            }
            fields.push(f.into_inner());
        }

        let mut conditions = Vec::new();
        for c in raw.when {
            let offset = c.span().start;
            let c = c.into_inner();
            let field = c.field.get_ref().clone();
            for schema in &schemas {
                if !schema.fields.contains_key(&field) {
                    self.err(
                        c.field.span().start,
                        format!(
                            "condition on `{field}`, which is not a field of alert type `{}`",
                            schema.name
                        ),
                    );
                }
            }
            match (c.equals_recipient, c.equals, c.one_of) {
                (Some(attribute), None, None) => {
                    for r in &recipients {
                        let has = agencies
                            .get(r)
                            .is_none_or(|a| a.attribute(attribute.get_ref()).is_some());
                        if !has {
                            self.err(
                                attribute.span().start,
                                format!(
                                    "recipient `{r}` has no attribute `{}` in agencies.toml",
                                    attribute.get_ref()
                                ),
                            );
                        }
                    }
                    conditions.push(Condition::EqualsRecipient {
                        field,
                        attribute: attribute.into_inner(),
                    });
                }
                (None, Some(value), None) => conditions.push(Condition::Equals { field, value }),
                (None, None, Some(values)) => {
                    if values.is_empty() {
                        self.err(offset, "`one_of` must list at least one value");
                    }
                    conditions.push(Condition::OneOf { field, values });
                }
                _ => self.err(
                    offset,
                    "a condition needs exactly one of `equals_recipient`, `equals` or `one_of`",
                ),
            }
        }

        Rule {
            id: raw.id.into_inner(),
            description: raw.description,
            publishers,
            recipients,
            topics,
            alert_types: types,
            legal_basis: raw.legal_basis.into_inner(),
            purpose: raw.purpose.into_inner(),
            fields,
            only_when_addressed: raw.only_when_addressed,
            conditions,
            origin: format!("{rel}:{line}"),
        }
    }
}
