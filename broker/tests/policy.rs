//! The policy engine against the shipped policy set and against broken copies of it.

mod common;

use common::{copy_dir, shipped_policies};
use std::path::{Path, PathBuf};

use samverkan_broker::policy::{DecisionInput, DenialReason, PolicySet};
use serde_json::{Map, Value, json};

fn shipped() -> PathBuf {
    shipped_policies()
}

fn load() -> PolicySet {
    PolicySet::load(&shipped()).unwrap_or_else(|e| panic!("shipped policy refused:\n{e}"))
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

/// A copy of the shipped set in a temporary directory, to break on purpose.
fn copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&shipped(), dir.path());
    dir
}

fn edit(dir: &Path, file: &str, from: &str, to: &str) {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{file} does not contain {from:?}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

fn errors_of(dir: &Path) -> Vec<String> {
    PolicySet::load(dir)
        .expect_err("the broken set was accepted")
        .errors
        .iter()
        .map(|e| e.to_string())
        .collect()
}

fn line_of(dir: &Path, file: &str, needle: &str) -> usize {
    let text = std::fs::read_to_string(dir.join(file)).unwrap();
    let offset = text.find(needle).unwrap();
    text[..offset].matches('\n').count() + 1
}

fn incorrect_payment(kommunkod: &str) -> Map<String, Value> {
    obj(json!({
        "subject_personnummer": "19121212-1212",
        "subject_kommunkod": kommunkod,
        "benefit": "sjukpenning",
        "paying_agency": "forsakringskassan",
        "suspected_amount_sek": 48000,
        "period": {"from": "2026-01-01", "to": "2026-03-31"},
        "grounds": "Income from employment during the sick leave.",
    }))
}

fn inspection_result() -> Map<String, Value> {
    obj(json!({
        "orgnr": "556677-8899",
        "region": "ost",
        "inspection_date": "2026-11-20",
        "findings": {"workers_without_work_permit": 3, "tax_discrepancies": true},
    }))
}

#[test]
fn shipped_policy_is_valid_and_versioned() {
    let set = load();
    assert_eq!(set.agencies().len(), 7);
    assert_eq!(set.alert_types().len(), 6);
    assert_eq!(set.legal_bases().len(), 5);
    assert!(set.version().starts_with("sha256:"));
    assert_eq!(set.version().len(), 7 + 64);
    assert_eq!(
        set.version(),
        load().version(),
        "the version is a pure content hash"
    );
    assert_eq!(set.keys().len(), 7, "one development key per agency");
}

#[test]
fn version_changes_with_any_file() {
    let dir = copy();
    let before = PolicySet::load(dir.path()).unwrap().version().to_string();
    edit(
        dir.path(),
        "legal-bases.toml",
        "Duty to notify",
        "Duty to notify ",
    );
    let after = PolicySet::load(dir.path()).unwrap().version().to_string();
    assert_ne!(before, after);
}

#[test]
fn akrim_inspection_result_is_denied_to_a_municipality() {
    let set = load();
    let fields = inspection_result();
    let to = vec![
        "akrimost".to_string(),
        "linkoping".into(),
        "skatteverket".into(),
    ];
    let d = set.decide(&DecisionInput {
        publisher: "polisen",
        topic: "akrim/ost/inspection",
        alert_type: "akrim.inspection_result",
        fields: &fields,
        to: Some(&to),
    });
    let recipients: Vec<&str> = d.shares.iter().map(|s| s.recipient.as_str()).collect();
    assert_eq!(recipients, ["akrimost", "skatteverket"]);
    assert!(
        d.shares
            .iter()
            .all(|s| s.legal_basis == "uppgiftsskyldighet-akrim")
    );
    assert_eq!(d.denials.len(), 1);
    assert_eq!(d.denials[0].recipient.as_deref(), Some("linkoping"));
    assert_eq!(d.denials[0].reason, DenialReason::NoRuleForRecipient);

    // Without `to`, no municipality is even a candidate.
    let d = set.decide(&DecisionInput {
        publisher: "polisen",
        topic: "akrim/ost/inspection",
        alert_type: "akrim.inspection_result",
        fields: &fields,
        to: None,
    });
    assert!(
        d.shares
            .iter()
            .all(|s| s.recipient != "linkoping" && s.recipient != "norrkoping")
    );
    assert_eq!(d.shares.len(), 3); // akrimost, forsakringskassan, skatteverket
}

#[test]
fn regional_centre_only_follows_its_region() {
    let set = load();
    let mut fields = inspection_result();
    fields.insert("region".into(), "syd".into());
    let d = set.decide(&DecisionInput {
        publisher: "polisen",
        topic: "akrim/syd/inspection",
        alert_type: "akrim.inspection_result",
        fields: &fields,
        to: None,
    });
    assert!(d.shares.iter().all(|s| s.recipient != "akrimost"));
}

#[test]
fn municipality_gets_personal_alerts_only_about_its_own_residents() {
    let set = load();
    for (kommunkod, resident_of, other) in [
        ("0580", "linkoping", "norrkoping"),
        ("0581", "norrkoping", "linkoping"),
    ] {
        let fields = incorrect_payment(kommunkod);
        let d = set.decide(&DecisionInput {
            publisher: "forsakringskassan",
            topic: "welfare/incorrect-payment/ost",
            alert_type: "welfare.incorrect_payment",
            fields: &fields,
            to: None,
        });
        assert_eq!(d.shares.len(), 1, "{d:?}");
        let share = &d.shares[0];
        assert_eq!(share.recipient, resident_of);
        assert_eq!(share.rule_id, "incorrect-payment-to-home-municipality");
        assert_eq!(share.legal_basis, "uppgiftsskyldighet-valfard");
        // Permitted fields that the alert has; `grounds` and `paying_agency` are withheld.
        assert_eq!(
            share.fields,
            [
                "benefit",
                "period",
                "subject_kommunkod",
                "subject_personnummer",
                "suspected_amount_sek"
            ]
        );
        let denial = d
            .denials
            .iter()
            .find(|x| x.recipient.as_deref() == Some(other))
            .unwrap();
        let DenialReason::ConditionNotMet { conditions } = &denial.reason else {
            panic!("{denial:?}");
        };
        assert!(conditions.iter().any(|c| c.contains("subject_kommunkod")));
        // The reason never contains the values compared.
        assert!(!denial.reason.to_string().contains(kommunkod));
        // Addressing the other municipality explicitly does not help.
        let to = vec![other.to_string()];
        let d = set.decide(&DecisionInput {
            publisher: "forsakringskassan",
            topic: "welfare/incorrect-payment/ost",
            alert_type: "welfare.incorrect_payment",
            fields: &fields,
            to: Some(&to),
        });
        assert!(d.shares.is_empty());
    }
}

#[test]
fn exploitation_signal_reaches_only_police_and_akrim_centre() {
    let set = load();
    let fields = obj(json!({
        "workplace_orgnr": "556677-8899",
        "region": "ost",
        "indicators": ["withheld_passports", "housing_at_workplace"],
        "description": "Workers sleep at the site; passports kept by the foreman.",
        "urgency": "urgent",
    }));
    let everyone: Vec<String> = set.agencies().keys().cloned().collect();
    for publisher in set.agencies().keys() {
        for to in [None, Some(&everyone[..])] {
            let d = set.decide(&DecisionInput {
                publisher,
                topic: "akrim/ost/exploitation",
                alert_type: "akrim.exploitation_signal",
                fields: &fields,
                to,
            });
            for share in &d.shares {
                assert!(
                    share.recipient == "polisen" || share.recipient == "akrimost",
                    "{publisher} shared an exploitation signal with {}",
                    share.recipient
                );
            }
        }
    }
    // Skatteverket's signal reaches both.
    let d = set.decide(&DecisionInput {
        publisher: "skatteverket",
        topic: "akrim/ost/exploitation",
        alert_type: "akrim.exploitation_signal",
        fields: &fields,
        to: None,
    });
    let recipients: Vec<&str> = d.shares.iter().map(|s| s.recipient.as_str()).collect();
    assert_eq!(recipients, ["akrimost", "polisen"]);
}

#[test]
fn crime_reports_go_only_when_addressed() {
    let set = load();
    let fields = incorrect_payment("0580");
    let input = |to| DecisionInput {
        publisher: "forsakringskassan",
        topic: "welfare/incorrect-payment/ost",
        alert_type: "welfare.incorrect_payment",
        fields: &fields,
        to,
    };
    assert!(
        set.decide(&input(None))
            .shares
            .iter()
            .all(|s| s.recipient != "polisen")
    );
    let to = vec!["polisen".to_string()];
    let d = set.decide(&input(Some(&to)));
    assert_eq!(d.shares.len(), 1);
    assert_eq!(d.shares[0].legal_basis, "osl-10-24");
}

#[test]
fn default_deny_and_odd_recipients() {
    let set = load();
    let fields = incorrect_payment("0580");
    let to = vec!["forsakringskassan".to_string(), "nobody".into()];
    let d = set.decide(&DecisionInput {
        publisher: "forsakringskassan",
        topic: "welfare/incorrect-payment/ost",
        alert_type: "welfare.incorrect_payment",
        fields: &fields,
        to: Some(&to),
    });
    assert!(d.shares.is_empty());
    let reasons: Vec<&str> = d.denials.iter().map(|d| d.reason.code()).collect();
    assert_eq!(reasons, ["self_addressed", "unknown_recipient"]);

    // A topic no rule covers: nobody.
    let d = set.decide(&DecisionInput {
        publisher: "forsakringskassan",
        topic: "akrim/ost/inspection",
        alert_type: "welfare.incorrect_payment",
        fields: &fields,
        to: None,
    });
    assert!(d.shares.is_empty());
    assert_eq!(d.denials[0].recipient, None);
    assert_eq!(d.denials[0].reason, DenialReason::NoRuleForAlert);
}

#[test]
fn schema_errors_are_specific_and_never_echo_values() {
    let set = load();
    let schema = set.alert_type("welfare.incorrect_payment").unwrap();
    assert!(
        schema
            .validate(&Value::Object(incorrect_payment("0580")))
            .is_ok()
    );

    let mut bad = incorrect_payment("0580");
    bad.insert("subject_personnummer".into(), "19121212-1213".into());
    let errs = schema.validate(&Value::Object(bad)).unwrap_err();
    assert_eq!(errs.len(), 1);
    assert!(errs[0].contains("/subject_personnummer"), "{errs:?}");
    assert!(errs[0].contains("check digit"), "{errs:?}");
    assert!(!errs[0].contains("1213"), "{errs:?}");

    let mut bad = incorrect_payment("0200");
    bad.insert("shoe_size".into(), 44.into());
    bad.remove("benefit");
    let errs = schema.validate(&Value::Object(bad)).unwrap_err();
    let all = errs.join("\n");
    assert!(all.contains("county"), "{all}");
    assert!(all.contains("shoe_size"), "{all}");
    assert!(all.contains("benefit"), "{all}");

    assert_eq!(
        set.alert_type("welfare.company_flag")
            .unwrap()
            .subject_fields
            .len(),
        1
    );
}

#[test]
fn unknown_legal_basis_is_refused_with_file_and_line() {
    let dir = copy();
    edit(
        dir.path(),
        "rules/akrim.toml",
        "legal_basis = \"osl-10-24\"",
        "legal_basis = \"osl-99-99\"",
    );
    let line = line_of(dir.path(), "rules/akrim.toml", "osl-99-99");
    let errs = errors_of(dir.path());
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains(&format!("rules/akrim.toml:{line}:")),
        "{errs:?}"
    );
    assert!(
        errs[0].contains("unknown legal basis `osl-99-99`"),
        "{errs:?}"
    );
}

#[test]
fn every_kind_of_mistake_names_file_and_line() {
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "rules/welfare.toml",
            "recipients = [\"polisen\"]",
            "recipients = [\"polisen\", \"sapo\"]",
            "unknown agency `sapo`",
        ),
        (
            "rules/welfare.toml",
            "\"grounds\", \"case_reference\"]\n\n[[rule.when]]",
            "\"grounds\", \"case_reference\", \"shoe_size\"]\n\n[[rule.when]]",
            "field `shoe_size` is not a field of alert type `welfare.incorrect_payment`",
        ),
        (
            "rules/akrim.toml",
            "topics = [\"akrim/ost/#\"]",
            "topics = [\"akrim/#/ost\"]",
            "malformed topic filter",
        ),
        (
            "rules/akrim.toml",
            "id = \"akrim-inspection-results\"",
            "id = \"akrim-inspection-planning\"",
            "rule id `akrim-inspection-planning` is already used at rules/akrim.toml:",
        ),
        (
            "rules/akrim.toml",
            "alert_types = [\"akrim.inspection_result\"]",
            "alert_types = [\"akrim.inspection_results\"]",
            "unknown alert type `akrim.inspection_results`",
        ),
        (
            "rules/akrim.toml",
            "equals_recipient = \"region\"",
            "equals_recipient = \"county\"",
            "has no attribute `county`",
        ),
        (
            "rules/akrim.toml",
            "purpose = \"Follow up a joint",
            "porpose = \"Follow up a joint",
            "unknown field `porpose`",
        ),
        (
            "agencies.toml",
            "org_number = \"202100-5448\"",
            "org_number = \"202100-5449\"",
            "check digit",
        ),
        (
            "limits.toml",
            "publish_burst = 4000",
            "publish_burst = 0",
            "at least 1",
        ),
        (
            "keys.toml",
            "owner = \"polisen\"",
            "owner = \"sakerhetspolisen\"",
            "not an agency",
        ),
    ];
    for (file, from, to, expected) in cases {
        let dir = copy();
        edit(dir.path(), file, from, to);
        let errs = errors_of(dir.path());
        let hit = errs.iter().find(|e| e.contains(expected));
        let hit = hit.unwrap_or_else(|| panic!("no error containing {expected:?} in {errs:?}"));
        let prefix = format!("{}:", dir.path().join(file).display());
        assert!(
            hit.starts_with(&prefix),
            "{hit} does not start with {prefix}"
        );
        let line: usize = hit[prefix.len()..]
            .split(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(line > 0, "{hit} has no line");
    }
}

#[test]
fn broken_schema_is_refused() {
    let dir = copy();
    edit(
        dir.path(),
        "alert-types/welfare.company_flag.schema.json",
        "\"additionalProperties\": false,",
        "",
    );
    let errs = errors_of(dir.path());
    assert!(
        errs.iter().any(|e| e.contains("additionalProperties")),
        "{errs:?}"
    );

    let dir = copy();
    edit(
        dir.path(),
        "alert-types/welfare.company_flag.schema.json",
        "\"format\": \"kommunkod\"",
        "\"format\": \"kommunkood\"",
    );
    let errs = errors_of(dir.path());
    assert!(errs.iter().any(|e| e.contains("kommunkood")), "{errs:?}");

    let dir = copy();
    edit(
        dir.path(),
        "alert-types/welfare.company_flag.schema.json",
        "{",
        "[",
    );
    let errs = errors_of(dir.path());
    assert!(
        errs[0].contains("welfare.company_flag.schema.json:"),
        "{errs:?}"
    );
    assert!(errs[0].contains("not valid JSON"), "{errs:?}");
}

#[test]
fn the_publisher_is_neither_shared_nor_denied_unless_it_addresses_itself() {
    // A rule that lists the publisher among its recipients shares with the
    // others; the publisher gets no share and no denial.
    let set = load();
    let fields = inspection_result();
    let d = set.decide(&DecisionInput {
        publisher: "polisen",
        topic: "akrim/ost/inspection",
        alert_type: "akrim.inspection_result",
        fields: &fields,
        to: None,
    });
    let shared: Vec<&str> = d.shares.iter().map(|s| s.recipient.as_str()).collect();
    assert!(shared.contains(&"skatteverket"), "{shared:?}");
    assert!(!shared.contains(&"polisen"), "{shared:?}");
    assert!(
        d.denials
            .iter()
            .all(|d| d.recipient.as_deref() != Some("polisen")),
        "{:?}",
        d.denials
    );

    // When the publisher is the only recipient the covering rules list,
    // nobody else can receive the alert: `no_rule_for_alert`, which says so.
    let dir = copy();
    edit(
        dir.path(),
        "rules/welfare.toml",
        "publishers = [\"skatteverket\", \"kronofogden\", \"linkoping\", \"norrkoping\"]\nrecipients = [\"linkoping\", \"norrkoping\"]",
        "publishers = [\"skatteverket\", \"kronofogden\", \"linkoping\", \"norrkoping\"]\nrecipients = [\"linkoping\"]",
    );
    let set = PolicySet::load(dir.path()).unwrap();
    let d = set.decide(&DecisionInput {
        publisher: "linkoping",
        topic: "welfare/company/ost",
        alert_type: "welfare.company_flag",
        fields: &Map::new(),
        to: None,
    });
    assert!(d.shares.is_empty());
    assert_eq!(d.denials.len(), 1, "{:?}", d.denials);
    assert_eq!(d.denials[0].recipient, None);
    assert_eq!(d.denials[0].reason, DenialReason::NoRuleForAlert);
    let message = d.denials[0].reason.to_string();
    assert!(message.contains("other than the publisher"), "{message}");

    // Addressed to itself, the publisher is denied `self_addressed`.
    let to = vec!["linkoping".to_string()];
    let d = set.decide(&DecisionInput {
        publisher: "linkoping",
        topic: "welfare/company/ost",
        alert_type: "welfare.company_flag",
        fields: &Map::new(),
        to: Some(&to),
    });
    assert_eq!(d.denials.len(), 1);
    assert_eq!(d.denials[0].reason, DenialReason::SelfAddressed);
}

#[test]
fn witnesses_toml_is_checked_with_file_and_line_and_is_part_of_the_version() {
    use ed25519_dalek::SigningKey;
    use samverkan_sdk::audit::cosignature::WitnessKey;
    let shipped_set = load();
    assert!(!shipped_set.witnesses().requires_cosignatures());
    let key = |seed: u8| {
        WitnessKey {
            name: "samverkan/polisen/witness".into(),
            public_key: SigningKey::from_bytes(&[seed; 32]).verifying_key(),
        }
        .vkey()
    };
    // A valid quorum of one witness: loaded, and a new version.
    let dir = copy();
    std::fs::write(
        dir.path().join("witnesses.toml"),
        format!(
            "quorum = \"polisen\"\n\n[[witness]]\nagency = \"polisen\"\nkey = \"{}\"\n",
            key(1)
        ),
    )
    .unwrap();
    let set = PolicySet::load(dir.path()).unwrap();
    assert!(set.witnesses().requires_cosignatures());
    assert_eq!(set.witnesses().witnesses().len(), 1);
    assert_ne!(set.version(), shipped_set.version());
    // An unknown agency and an unknown quorum: each named with its line.
    std::fs::write(
        dir.path().join("witnesses.toml"),
        format!(
            "quorum = \"everyone\"\n\n[[witness]]\nagency = \"nobody\"\nkey = \"{}\"\n",
            key(1)
        ),
    )
    .unwrap();
    let errors = errors_of(dir.path());
    let file = dir.path().join("witnesses.toml").display().to_string();
    assert!(
        errors.iter().any(
            |e| e.starts_with(&format!("{file}:4:")) && e.contains("`nobody` is not an agency")
        ),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with(&format!("{file}:1:")) && e.contains("quorum `everyone`")),
        "{errors:?}"
    );
    // The file is required: without it the set is refused.
    std::fs::remove_file(dir.path().join("witnesses.toml")).unwrap();
    assert!(
        errors_of(dir.path())
            .iter()
            .any(|e| e.contains("witnesses.toml") && e.contains("cannot read"))
    );
}
