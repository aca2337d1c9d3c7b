//! Alert types: one JSON Schema per type in `alert-types/<type>.schema.json`.
//!
//! JSON Schema lets legal staff and agencies add or tighten alert types
//! without recompiling the broker. Three formats are Samverkan's own and
//! carry the check rules of [`samverkan_sdk::identifiers`]: `personnummer`,
//! `organisationsnummer` and `kommunkod`. Error messages never repeat the
//! offending value, since it may be a personnummer.

use std::collections::BTreeMap;
use std::path::Path;

use jsonschema::Validator;
use jsonschema::error::ValidationErrorKind;
use samverkan_sdk::identifiers::{Kommunkod, Organisationsnummer, Personnummer};
use samverkan_sdk::names;
use samverkan_sdk::source::SourceError;
use serde_json::Value;

/// The custom keyword that marks a field as identifying the person or
/// company an alert is about (used for the subject index of the audit log).
pub const SUBJECT_KEYWORD: &str = "x-samverkan-subject";

/// What kind of identifier a subject field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SubjectKind {
    /// A personnummer or samordningsnummer.
    Personnummer,
    /// An organisationsnummer.
    Organisationsnummer,
}

/// A compiled alert type.
#[derive(Debug)]
pub struct AlertType {
    /// The type name, e.g. `welfare.incorrect_payment`.
    pub name: String,
    /// The schema's `description`, if any.
    pub description: String,
    /// Top-level field names and whether each is required.
    pub fields: BTreeMap<String, bool>,
    /// Fields that identify the subject of an alert.
    pub subject_fields: Vec<(String, SubjectKind)>,
    validator: Validator,
}

fn format_reason(format: &str, value: &Value) -> Option<String> {
    let s = value.as_str()?;
    let err = match format {
        "personnummer" => Personnummer::parse(s).err()?.to_string(),
        "organisationsnummer" => Organisationsnummer::parse(s).err()?.to_string(),
        "kommunkod" => Kommunkod::parse(s).err()?.to_string(),
        _ => return None,
    };
    Some(err)
}

impl AlertType {
    /// Checks an alert's fields against the schema. On failure returns one
    /// message per problem (at most ten), none of which contains a field value.
    pub fn validate(&self, fields: &Value) -> Result<(), Vec<String>> {
        let messages: Vec<String> = self
            .validator
            .iter_errors(fields)
            .take(10)
            .map(|e| {
                let path = e.instance_path().to_string();
                let place = if path.is_empty() {
                    "alert".to_string()
                } else {
                    format!("field {path}")
                };
                let detail = match e.kind() {
                    ValidationErrorKind::Format { format } => format_reason(format, e.instance())
                        .unwrap_or_else(|| format!("is not a valid {format}")),
                    _ => e.masked_with("the value").to_string(),
                };
                format!("{place}: {detail}")
            })
            .collect();
        if messages.is_empty() {
            Ok(())
        } else {
            Err(messages)
        }
    }
}

/// The line where `"name"` first appears after `"properties"`, for errors.
fn line_of_property(text: &str, name: &str) -> usize {
    let start = text.find("\"properties\"").unwrap_or(0);
    let needle = format!("\"{name}\"");
    let offset = text[start..].find(&needle).map(|i| i + start).unwrap_or(0);
    samverkan_sdk::source::line_and_column(text, offset).0
}

fn error_at_line(file: &Path, line: usize, message: String) -> SourceError {
    SourceError {
        file: file.to_path_buf(),
        line,
        column: 0,
        message,
    }
}

/// Compiles `alert-types/<name>.schema.json`.
pub(super) fn compile(name: &str, file: &Path, text: &str) -> Result<AlertType, Vec<SourceError>> {
    let mut errors = Vec::new();
    if let Err(e) = names::validate_alert_type(name) {
        errors.push(SourceError::file(
            file,
            format!("file name must be `<alert type>.schema.json`: {e}"),
        ));
    }
    let schema: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            errors.push(SourceError {
                file: file.to_path_buf(),
                line: e.line(),
                column: e.column(),
                message: format!("not valid JSON: {e}"),
            });
            return Err(errors);
        }
    };
    if schema.get("type") != Some(&Value::String("object".into())) {
        errors.push(SourceError::file(
            file,
            "the schema must have \"type\": \"object\"",
        ));
    }
    if schema.get("additionalProperties") != Some(&Value::Bool(false)) {
        errors.push(SourceError::file(
            file,
            "the schema must have \"additionalProperties\": false, so that fields the policy does not know are refused",
        ));
    }
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut fields = BTreeMap::new();
    let mut subject_fields = Vec::new();
    match schema.get("properties").and_then(Value::as_object) {
        None => errors.push(SourceError::file(
            file,
            "the schema must list the alert's fields under \"properties\"",
        )),
        Some(props) => {
            for (field, spec) in props {
                let line = line_of_property(text, field);
                if let Err(e) = names::validate_field_name(field) {
                    errors.push(error_at_line(file, line, e.to_string()));
                }
                fields.insert(field.clone(), required.contains(&field.as_str()));
                if let Some(kind) = spec.get(SUBJECT_KEYWORD) {
                    let format = spec.get("format").and_then(Value::as_str);
                    match (kind.as_str(), format) {
                        (Some("personnummer"), Some("personnummer")) => {
                            subject_fields.push((field.clone(), SubjectKind::Personnummer))
                        }
                        (Some("organisationsnummer"), Some("organisationsnummer")) => {
                            subject_fields.push((field.clone(), SubjectKind::Organisationsnummer))
                        }
                        _ => errors.push(error_at_line(
                            file,
                            line,
                            format!(
                                "field `{field}`: {SUBJECT_KEYWORD} must be \"personnummer\" or \"organisationsnummer\" and match the field's \"format\""
                            ),
                        )),
                    }
                }
            }
            for r in &required {
                if !props.contains_key(*r) {
                    errors.push(SourceError::file(
                        file,
                        format!("required field `{r}` is not among the properties"),
                    ));
                }
            }
        }
    }
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .should_ignore_unknown_formats(false)
        .with_format("personnummer", |s: &str| Personnummer::parse(s).is_ok())
        .with_format("organisationsnummer", |s: &str| {
            Organisationsnummer::parse(s).is_ok()
        })
        .with_format("kommunkod", |s: &str| Kommunkod::parse(s).is_ok())
        .build(&schema);
    let validator = match validator {
        Ok(v) => v,
        Err(e) => {
            errors.push(SourceError::file(file, format!("invalid JSON Schema: {e}")));
            return Err(errors);
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(AlertType {
        name: name.to_string(),
        description: schema
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        fields,
        subject_fields,
        validator,
    })
}
