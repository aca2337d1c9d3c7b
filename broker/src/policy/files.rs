//! The policy files as written: serde structures with source spans, so that
//! every later check can point at the file and line of a mistake.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AgenciesFile {
    #[serde(default)]
    pub agency: Vec<Spanned<RawAgency>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgency {
    pub id: Spanned<String>,
    pub name: String,
    pub org_number: Option<Spanned<String>>,
    #[serde(default)]
    pub attributes: BTreeMap<Spanned<String>, Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LegalBasesFile {
    #[serde(default)]
    pub legal_basis: Vec<Spanned<RawLegalBasis>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLegalBasis {
    pub id: Spanned<String>,
    pub reference: String,
    pub title: String,
    pub summary: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LimitsFile {
    pub default: RawLimit,
    #[serde(default)]
    pub agency: BTreeMap<Spanned<String>, Spanned<RawLimit>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimit {
    pub publish_per_second: u32,
    pub publish_burst: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RulesFile {
    #[serde(default)]
    pub rule: Vec<Spanned<RawRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    pub id: Spanned<String>,
    pub description: String,
    pub publishers: Spanned<Vec<Spanned<String>>>,
    pub recipients: Spanned<Vec<Spanned<String>>>,
    pub topics: Spanned<Vec<Spanned<String>>>,
    pub alert_types: Spanned<Vec<Spanned<String>>>,
    pub legal_basis: Spanned<String>,
    pub purpose: Spanned<String>,
    pub fields: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub only_when_addressed: bool,
    #[serde(default)]
    pub when: Vec<Spanned<RawCondition>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCondition {
    pub field: Spanned<String>,
    pub equals_recipient: Option<Spanned<String>>,
    pub equals: Option<String>,
    pub one_of: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RetentionFile {
    pub default: RawRetention,
    #[serde(default)]
    pub alert_type: BTreeMap<Spanned<String>, RawRetention>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetention {
    pub content_days: u32,
}
