//! The decision: for one alert, which recipients get which fields under which
//! rule, and who is denied and why. Default deny.
//!
//! For each candidate recipient the rules are tried in order; the first rule
//! that covers the publisher, alert type, topic and recipient and whose
//! conditions all hold produces the share. Candidates are the agencies named
//! in the alert's `to` when present, otherwise every recipient of a rule that
//! covers the alert (rules marked `only_when_addressed` only count when the
//! recipient is named in `to`).

use std::collections::BTreeSet;
use std::fmt;

use samverkan_sdk::codes::DenialCode;
use serde::Serialize;
use serde_json::{Map, Value};

use super::{Condition, PolicySet, Rule};

/// What is decided about.
#[derive(Debug, Clone, Copy)]
pub struct DecisionInput<'a> {
    /// The (authenticated) publishing agency.
    pub publisher: &'a str,
    /// The logical topic.
    pub topic: &'a str,
    /// The alert type.
    pub alert_type: &'a str,
    /// The alert's fields (already validated against the alert type's schema).
    pub fields: &'a Map<String, Value>,
    /// The publisher's explicit recipients, if any.
    pub to: Option<&'a [String]>,
}

/// One permitted disclosure to one recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Share {
    /// The receiving agency.
    pub recipient: String,
    /// The rule that allows it.
    pub rule_id: String,
    /// The rule's legal basis.
    pub legal_basis: String,
    /// The rule's purpose.
    pub purpose: String,
    /// The fields that go: the rule's fields that the alert has, sorted.
    pub fields: Vec<String>,
}

/// Why a recipient (or the whole alert) gets nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "code", rename_all = "snake_case")]
#[non_exhaustive]
pub enum DenialReason {
    /// No rule lets anyone other than the publisher receive this alert type
    /// on this topic from this publisher (`to` absent).
    NoRuleForAlert,
    /// The publisher named a recipient that no rule lets receive this alert.
    NoRuleForRecipient,
    /// Rules cover the recipient but a condition of each does not hold.
    ConditionNotMet {
        /// For each rule tried, the first condition that failed, in words
        /// (never the field's value): `rule <id>: <condition>`.
        conditions: Vec<String>,
    },
    /// The publisher named an agency that is not in the policy.
    UnknownRecipient,
    /// The publisher named itself.
    SelfAddressed,
    /// A rule allows the recipient, but the alert has none of the fields it permits.
    NoPermittedFields,
}

impl DenialReason {
    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        self.denial_code().as_str()
    }

    /// The code, as an enum.
    pub fn denial_code(&self) -> DenialCode {
        match self {
            DenialReason::NoRuleForAlert => DenialCode::NoRuleForAlert,
            DenialReason::NoRuleForRecipient => DenialCode::NoRuleForRecipient,
            DenialReason::ConditionNotMet { .. } => DenialCode::ConditionNotMet,
            DenialReason::UnknownRecipient => DenialCode::UnknownRecipient,
            DenialReason::SelfAddressed => DenialCode::SelfAddressed,
            DenialReason::NoPermittedFields => DenialCode::NoPermittedFields,
        }
    }
}

impl fmt::Display for DenialReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenialReason::NoRuleForAlert => {
                f.write_str(
                    "no rule lets any agency other than the publisher receive this alert type on this topic from this publisher",
                )
            }
            DenialReason::NoRuleForRecipient => {
                f.write_str("no rule lets this recipient receive this alert from this publisher")
            }
            DenialReason::ConditionNotMet { conditions } => {
                write!(f, "condition not met: {}", conditions.join("; "))
            }
            DenialReason::UnknownRecipient => {
                f.write_str("the recipient is not an agency of the policy")
            }
            DenialReason::SelfAddressed => f.write_str("an agency cannot share with itself"),
            DenialReason::NoPermittedFields => {
                f.write_str("the alert has none of the fields the rule permits")
            }
        }
    }
}

/// A recipient (or, with `recipient: None`, the whole alert) that gets nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Denial {
    /// The agency denied, or `None` when nobody could receive the alert.
    pub recipient: Option<String>,
    /// The rule whose condition failed, when there was one.
    pub rule_id: Option<String>,
    /// Why.
    pub reason: DenialReason,
}

/// The outcome for one alert.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Who receives what, ordered by recipient.
    pub shares: Vec<Share>,
    /// Who receives nothing and why, ordered by recipient.
    pub denials: Vec<Denial>,
}

impl Condition {
    fn holds(&self, fields: &Map<String, Value>, recipient: &super::Agency) -> bool {
        let value = |field: &str| fields.get(field).and_then(Value::as_str);
        match self {
            Condition::EqualsRecipient { field, attribute } => {
                matches!((value(field), recipient.attribute(attribute)), (Some(v), Some(a)) if v == a)
            }
            Condition::Equals { field, value: want } => value(field) == Some(want.as_str()),
            Condition::OneOf { field, values } => {
                value(field).is_some_and(|v| values.iter().any(|w| w == v))
            }
        }
    }
}

impl PolicySet {
    /// Decides who receives which fields of an alert.
    pub fn decide(&self, input: &DecisionInput<'_>) -> Decision {
        let covering: Vec<&Rule> = self
            .rules()
            .iter()
            .filter(|r| r.covers(input.publisher, input.alert_type, input.topic))
            .collect();
        let addressed: Option<BTreeSet<&str>> =
            input.to.map(|to| to.iter().map(String::as_str).collect());
        let candidates: BTreeSet<&str> = match &addressed {
            Some(to) => to.clone(),
            None => covering
                .iter()
                .filter(|r| !r.only_when_addressed)
                .flat_map(|r| r.recipients.iter().map(String::as_str))
                // An agency never receives its own alert. A rule that lists
                // the publisher among its recipients (a group sharing among
                // its members) shares with the others; the publisher gets
                // neither a share nor a denial, like the agencies no rule
                // considers. Only naming itself in `to` is a denial.
                .filter(|r| *r != input.publisher)
                .collect(),
        };

        let mut decision = Decision::default();
        if candidates.is_empty() {
            decision.denials.push(Denial {
                recipient: None,
                rule_id: None,
                reason: DenialReason::NoRuleForAlert,
            });
            return decision;
        }
        for candidate in candidates {
            let deny = |rule_id: Option<String>, reason| Denial {
                recipient: Some(candidate.to_string()),
                rule_id,
                reason,
            };
            if candidate == input.publisher {
                decision
                    .denials
                    .push(deny(None, DenialReason::SelfAddressed));
                continue;
            }
            let Some(agency) = self.agency(candidate) else {
                decision
                    .denials
                    .push(deny(None, DenialReason::UnknownRecipient));
                continue;
            };
            let mut failed: Vec<(&Rule, &Condition)> = Vec::new();
            let mut share = None;
            for rule in covering.iter().filter(|r| {
                r.recipients.contains(candidate) && (addressed.is_some() || !r.only_when_addressed)
            }) {
                match rule
                    .conditions
                    .iter()
                    .find(|c| !c.holds(input.fields, agency))
                {
                    Some(condition) => failed.push((rule, condition)),
                    None => {
                        share = Some(rule);
                        break;
                    }
                }
            }
            match (share, failed.first()) {
                (Some(rule), _) => {
                    let mut fields: Vec<String> = rule
                        .fields
                        .iter()
                        .filter(|f| input.fields.contains_key(*f))
                        .cloned()
                        .collect();
                    fields.sort();
                    if fields.is_empty() {
                        decision
                            .denials
                            .push(deny(Some(rule.id.clone()), DenialReason::NoPermittedFields));
                        continue;
                    }
                    decision.shares.push(Share {
                        recipient: candidate.to_string(),
                        rule_id: rule.id.clone(),
                        legal_basis: rule.legal_basis.clone(),
                        purpose: rule.purpose.clone(),
                        fields,
                    });
                }
                (None, Some((first, _))) => decision.denials.push(deny(
                    Some(first.id.clone()),
                    DenialReason::ConditionNotMet {
                        conditions: failed
                            .iter()
                            .map(|(rule, condition)| format!("rule {}: {condition}", rule.id))
                            .collect(),
                    },
                )),
                (None, None) => decision
                    .denials
                    .push(deny(None, DenialReason::NoRuleForRecipient)),
            }
        }
        decision
    }
}
