//! `witnesses.toml`: which agencies witness the audit log, their witness
//! keys, and the quorum of cosignatures a checkpoint needs before anyone
//! relies on it. The vocabulary is C2SP `tlog-policy`'s (witnesses, groups
//! with a k-of-n threshold, one quorum), written as TOML like the rest of the
//! policy set:
//!
//! ```toml
//! quorum = "agencies"            # a witness, a group, or "none"
//!
//! [[witness]]
//! agency = "polisen"             # the agency that runs it (and its name here)
//! key = "samverkan/polisen/witness+1a2b3c4d+BA…"   # its cosignature/v1 verifier key
//!
//! [[group]]
//! name = "agencies"
//! threshold = 3                  # or "any", "all"
//! members = ["polisen", "skatteverket", "kronofogden", "forsakringskassan"]
//! ```
//!
//! A group may name only witnesses and groups defined before it, so the
//! quorum is a tree and is evaluated without recursion limits to worry about.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::cosignature::WitnessKey;
use crate::source::SourceError;

/// The name of the file in a policy set.
pub const WITNESSES_FILE: &str = "witnesses.toml";

/// One witness of the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Witness {
    /// The agency that runs it; also its name in the policy.
    pub agency: String,
    /// Its cosignature key.
    pub key: WitnessKey,
}

/// A node of the quorum: a witness or a k-of-n group.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Witness(String),
    Group { k: usize, members: Vec<Node> },
}

/// The witnesses and the quorum of a policy version.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WitnessPolicy {
    witnesses: BTreeMap<String, Witness>,
    /// `None`: `quorum = "none"`, no cosignature needed.
    quorum: Option<Node>,
    quorum_text: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    quorum: Spanned<String>,
    #[serde(default)]
    witness: Vec<RawWitness>,
    #[serde(default)]
    group: Vec<RawGroup>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWitness {
    agency: Spanned<String>,
    key: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawThreshold {
    Count(i64),
    Word(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: Spanned<String>,
    threshold: Spanned<RawThreshold>,
    members: Vec<Spanned<String>>,
}

impl WitnessPolicy {
    /// No witnesses, no quorum (policy versions without `witnesses.toml`).
    pub fn none() -> Self {
        Self {
            quorum_text: "none".into(),
            ..Self::default()
        }
    }

    /// Parses and checks `text` (of `path`). With `agencies`, every witness
    /// must be one of them. Every mistake is reported with its line.
    pub fn from_toml(
        text: &str,
        path: &Path,
        agencies: Option<&BTreeSet<String>>,
    ) -> Result<Self, Vec<SourceError>> {
        let raw: RawFile =
            toml::from_str(text).map_err(|e| vec![SourceError::from_toml(path, text, &e)])?;
        let mut errors = Vec::new();
        let mut err =
            |offset: usize, msg: String| errors.push(SourceError::at(path, text, offset, msg));
        let mut witnesses = BTreeMap::new();
        let mut keys: BTreeMap<[u8; 32], String> = BTreeMap::new();
        for w in raw.witness {
            let agency = w.agency.get_ref().clone();
            if let Err(e) = crate::names::validate_agency_id(&agency) {
                err(w.agency.span().start, e.to_string());
            }
            if agencies.is_some_and(|a| !a.contains(&agency)) {
                err(
                    w.agency.span().start,
                    format!("`{agency}` is not an agency in agencies.toml"),
                );
            }
            if witnesses.contains_key(&agency) {
                err(
                    w.agency.span().start,
                    format!("`{agency}` has two witnesses; list one key per agency"),
                );
            }
            match WitnessKey::from_vkey(w.key.get_ref()) {
                Ok(key) => {
                    if let Some(other) = keys.insert(key.public_key.to_bytes(), agency.clone()) {
                        err(
                            w.key.span().start,
                            format!("the same key is already the witness key of `{other}`"),
                        );
                    }
                    witnesses.insert(agency.clone(), Witness { agency, key });
                }
                Err(e) => err(w.key.span().start, format!("witness key: {e}")),
            }
        }
        let mut nodes: BTreeMap<String, Node> = witnesses
            .keys()
            .map(|name| (name.clone(), Node::Witness(name.clone())))
            .collect();
        for g in raw.group {
            let name = g.name.get_ref().clone();
            if name == "none" || nodes.contains_key(&name) {
                err(
                    g.name.span().start,
                    format!("`{name}` is already the name of a witness or group (or `none`)"),
                );
                continue;
            }
            let mut members = Vec::new();
            let mut seen = BTreeSet::new();
            for m in &g.members {
                match nodes.get(m.get_ref()) {
                    Some(node) if seen.insert(m.get_ref().clone()) => members.push(node.clone()),
                    Some(_) => err(m.span().start, format!("`{}` is listed twice", m.get_ref())),
                    None => err(
                        m.span().start,
                        format!(
                            "`{}` is not a witness or a group defined above this one",
                            m.get_ref()
                        ),
                    ),
                }
            }
            let n = g.members.len();
            let k = match g.threshold.get_ref() {
                RawThreshold::Word(w) if w == "any" => Some(1),
                RawThreshold::Word(w) if w == "all" => Some(n),
                RawThreshold::Count(k) => usize::try_from(*k).ok().filter(|k| (1..=n).contains(k)),
                RawThreshold::Word(_) => None,
            };
            let Some(k) = k.filter(|_| n > 0) else {
                err(
                    g.threshold.span().start,
                    format!(
                        "threshold must be \"any\", \"all\" or a number from 1 to the {n} member(s)"
                    ),
                );
                continue;
            };
            nodes.insert(name, Node::Group { k, members });
        }
        let quorum_text = raw.quorum.get_ref().clone();
        let quorum = if quorum_text == "none" {
            None
        } else {
            match nodes.get(&quorum_text) {
                Some(node) => Some(node.clone()),
                None => {
                    err(
                        raw.quorum.span().start,
                        format!(
                            "the quorum `{quorum_text}` is not a witness or group defined in this file (or `none`)"
                        ),
                    );
                    None
                }
            }
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self {
            witnesses,
            quorum,
            quorum_text,
        })
    }

    /// The policy's witnesses, by agency.
    pub fn witnesses(&self) -> &BTreeMap<String, Witness> {
        &self.witnesses
    }

    /// The witness whose key has `name`.
    pub fn by_key_name(&self, name: &str) -> Option<&Witness> {
        self.witnesses.values().find(|w| w.key.name == name)
    }

    /// Every witness key.
    pub fn keys(&self) -> Vec<WitnessKey> {
        self.witnesses.values().map(|w| w.key.clone()).collect()
    }

    /// Whether checkpoints need cosignatures at all.
    pub fn requires_cosignatures(&self) -> bool {
        self.quorum.is_some()
    }

    /// The quorum as written (`none`, a witness or a group name).
    pub fn quorum_name(&self) -> &str {
        &self.quorum_text
    }

    /// Whether the witnesses (agency ids) that cosigned meet the quorum.
    pub fn quorum_met(&self, cosigned: &BTreeSet<String>) -> bool {
        fn met(node: &Node, cosigned: &BTreeSet<String>) -> bool {
            match node {
                Node::Witness(name) => cosigned.contains(name),
                Node::Group { k, members } => {
                    members.iter().filter(|m| met(m, cosigned)).count() >= *k
                }
            }
        }
        self.quorum.as_ref().is_none_or(|q| met(q, cosigned))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn vkey(agency: &str, seed: u8) -> String {
        WitnessKey {
            name: format!("samverkan/{agency}/witness"),
            public_key: SigningKey::from_bytes(&[seed; 32]).verifying_key(),
        }
        .vkey()
    }

    fn parse(text: &str) -> Result<WitnessPolicy, Vec<SourceError>> {
        let agencies: BTreeSet<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        WitnessPolicy::from_toml(text, Path::new("witnesses.toml"), Some(&agencies))
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn quorums_of_groups() {
        let text = format!(
            "quorum = \"top\"\n[[witness]]\nagency = \"a\"\nkey = \"{}\"\n[[witness]]\nagency = \"b\"\nkey = \"{}\"\n[[witness]]\nagency = \"c\"\nkey = \"{}\"\n[[group]]\nname = \"ab\"\nthreshold = \"any\"\nmembers = [\"a\", \"b\"]\n[[group]]\nname = \"top\"\nthreshold = \"all\"\nmembers = [\"ab\", \"c\"]\n",
            vkey("a", 1),
            vkey("b", 2),
            vkey("c", 3)
        );
        let policy = parse(&text).unwrap();
        assert!(policy.requires_cosignatures());
        assert!(policy.quorum_met(&set(&["a", "c"])));
        assert!(policy.quorum_met(&set(&["b", "c"])));
        assert!(!policy.quorum_met(&set(&["a", "b"])));
        assert!(!policy.quorum_met(&set(&[])));
        assert_eq!(
            policy.by_key_name("samverkan/b/witness").unwrap().agency,
            "b"
        );
        let none = parse("quorum = \"none\"\n").unwrap();
        assert!(!none.requires_cosignatures());
        assert!(none.quorum_met(&set(&[])));
    }

    #[test]
    fn mistakes_name_their_line() {
        let cases = [
            ("quorum = \"x\"\n".to_string(), 1, "not a witness or group"),
            (
                format!("quorum = \"none\"\n[[witness]]\nagency = \"zz\"\nkey = \"{}\"\n", vkey("zz", 1)),
                3,
                "not an agency",
            ),
            (
                format!("quorum = \"none\"\n[[witness]]\nagency = \"a\"\nkey = \"{}\"\n[[witness]]\nagency = \"b\"\nkey = \"{}\"\n", vkey("a", 1), vkey("a", 1)),
                7,
                "same key",
            ),
            (
                format!("quorum = \"g\"\n[[witness]]\nagency = \"a\"\nkey = \"{}\"\n[[group]]\nname = \"g\"\nthreshold = 2\nmembers = [\"a\"]\n", vkey("a", 1)),
                7,
                "threshold",
            ),
            (
                "quorum = \"g\"\n[[group]]\nname = \"g\"\nthreshold = \"any\"\nmembers = [\"later\"]\n".to_string(),
                5,
                "defined above",
            ),
            (
                "quorum = \"none\"\n[[witness]]\nagency = \"a\"\nkey = \"a+00000000+AQ==\"\n".to_string(),
                4,
                "witness key",
            ),
        ];
        for (text, line, message) in cases {
            let errors = parse(&text).unwrap_err();
            assert!(
                errors
                    .iter()
                    .any(|e| e.line == line && e.message.contains(message)),
                "{text}: {errors:?}"
            );
        }
    }
}
