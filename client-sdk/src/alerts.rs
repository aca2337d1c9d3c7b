//! Alerts as an application builds them, before they are signed.
//!
//! An [`Alert`] is an alert type, its top-level fields and, optionally, the
//! agencies it is explicitly addressed to. [`Alert::new`] takes any fields (the
//! broker checks them against the alert type's JSON Schema); the typed
//! builders in this module produce the six alert types of the policy set in
//! `policies/alert-types/` with exactly the field names and value shapes of
//! their schemas, so that a mistake shows up at compile time or as an
//! [`AlertError`] before anything is signed or sent, not as a rejected
//! receipt.
//!
//! Identifiers are typed ([`Personnummer`], [`Organisationsnummer`],
//! [`Kommunkod`]) and written in their canonical form; dates are [`Date`]s
//! written as `YYYY-MM-DD`. Error messages name the field and the rule, never
//! the value: values may be personal data and errors end up in logs.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};
use serde_json::{Map, Value};
use thiserror::Error;

use crate::envelope::{EnvelopeHeader, VERSION};
use crate::identifiers::{Kommunkod, Organisationsnummer, Personnummer};
use crate::names;

/// Why a typed alert could not be built. Messages name the field and the
/// rule it breaks, never the value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum AlertError {
    /// Year, month and day do not form a calendar date (or the text is not `YYYY-MM-DD`).
    #[error("invalid date: {reason}")]
    InvalidDate {
        /// What is wrong.
        reason: &'static str,
    },
    /// A period ends before it starts.
    #[error("a period must not end before it starts")]
    InvertedPeriod,
    /// A field breaks its schema rule.
    #[error("field `{field}`: {reason}")]
    Field {
        /// The field name, as in the schema.
        field: &'static str,
        /// The rule that is broken.
        reason: String,
    },
}

fn field_error(field: &'static str, reason: impl Into<String>) -> AlertError {
    AlertError::Field {
        field,
        reason: reason.into(),
    }
}

/// An alert before signing: its type, its top-level fields and optionally
/// the agencies it is explicitly addressed to.
///
/// `to` may only narrow who receives the alert; the broker's policy still
/// decides. It is sorted and freed of repeats when the alert is signed (see
/// [`Alert::recipients`]).
#[derive(Clone, PartialEq)]
pub struct Alert {
    /// The alert type, naming the schema the fields follow (`welfare.incorrect_payment`).
    pub alert_type: String,
    /// The top-level fields, name → JSON value.
    pub fields: Map<String, Value>,
    /// Explicit recipients (agency ids), if any.
    pub to: Option<Vec<String>>,
}

impl fmt::Debug for Alert {
    // Field values may be personal data: print only their names.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Alert")
            .field("alert_type", &self.alert_type)
            .field("fields", &self.fields.keys().collect::<Vec<_>>())
            .field("to", &self.to)
            .finish()
    }
}

impl Alert {
    /// An alert of any type with the given fields, not explicitly addressed.
    ///
    /// This is the generic path for alert types without a typed builder; the
    /// broker validates the fields against the type's schema.
    pub fn new(alert_type: impl Into<String>, fields: Map<String, Value>) -> Self {
        Self {
            alert_type: alert_type.into(),
            fields,
            to: None,
        }
    }

    /// Addresses the alert explicitly to these agencies (replacing any earlier
    /// list). Rules marked `only_when_addressed` apply only to agencies named here.
    pub fn addressed_to<I, S>(mut self, recipients: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.to = Some(recipients.into_iter().map(Into::into).collect());
        self
    }

    /// The explicit recipients as they are signed: sorted and without repeats.
    pub fn recipients(&self) -> Option<Vec<String>> {
        self.to.as_ref().map(|to| {
            to.iter()
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        })
    }

    /// The envelope header for this alert, published by `publisher` on the
    /// logical `topic` with key `key_id`. The header is not validated here;
    /// [`Envelope::sign`](crate::envelope::Envelope::sign) does that.
    pub fn header(
        &self,
        topic: &str,
        publisher: &str,
        key_id: &str,
        alert_id: &str,
        issued_at_ms: i64,
    ) -> EnvelopeHeader {
        EnvelopeHeader {
            version: VERSION,
            alert_id: alert_id.to_string(),
            publisher: publisher.to_string(),
            key_id: key_id.to_string(),
            alert_type: self.alert_type.clone(),
            topic: topic.to_string(),
            issued_at_ms,
            to: self.recipients(),
        }
    }
}

/// A calendar date, written as `YYYY-MM-DD` (JSON Schema `format: date`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date(::time::Date);

impl Date {
    /// The date `year-month-day`; fails unless it exists in the calendar
    /// (years 1 to 9999, so that it always has four digits).
    pub fn new(year: i32, month: u8, day: u8) -> Result<Self, AlertError> {
        if !(1..=9999).contains(&year) {
            return Err(AlertError::InvalidDate {
                reason: "the year must be between 1 and 9999",
            });
        }
        let month = ::time::Month::try_from(month).map_err(|_| AlertError::InvalidDate {
            reason: "the month must be between 1 and 12",
        })?;
        ::time::Date::from_calendar_date(year, month, day)
            .map(Self)
            .map_err(|_| AlertError::InvalidDate {
                reason: "the day does not exist in that month",
            })
    }

    /// Parses `YYYY-MM-DD` (exactly that form).
    pub fn parse(s: &str) -> Result<Self, AlertError> {
        let shape = AlertError::InvalidDate {
            reason: "a date must be written YYYY-MM-DD",
        };
        let b = s.as_bytes();
        if b.len() != 10
            || b[4] != b'-'
            || b[7] != b'-'
            || !b
                .iter()
                .enumerate()
                .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
        {
            return Err(shape);
        }
        let year = s[0..4].parse().map_err(|_| shape.clone())?;
        let month = s[5..7].parse().map_err(|_| shape.clone())?;
        let day = s[8..10].parse().map_err(|_| shape)?;
        Self::new(year, month, day)
    }

    /// The year.
    pub fn year(&self) -> i32 {
        self.0.year()
    }

    /// The month, 1 to 12.
    pub fn month(&self) -> u8 {
        u8::from(self.0.month())
    }

    /// The day of the month.
    pub fn day(&self) -> u8 {
        self.0.day()
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02}",
            self.year(),
            self.month(),
            self.day()
        )
    }
}

impl FromStr for Date {
    type Err = AlertError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for Date {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A period of days, both ends included (`{"from": …, "to": …}` in the schemas).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Period {
    /// First day.
    pub from: Date,
    /// Last day.
    pub to: Date,
}

impl Period {
    /// The period from `from` to `to`; fails if it ends before it starts.
    pub fn new(from: Date, to: Date) -> Result<Self, AlertError> {
        if to < from {
            return Err(AlertError::InvertedPeriod);
        }
        Ok(Self { from, to })
    }
}

/// A police region, as used by A-krim (`region` in the schemas).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)] // The variants are the region names.
pub enum Region {
    Nord,
    Mitt,
    Bergslagen,
    Stockholm,
    Ost,
    Vast,
    Syd,
}

/// Indications of worker exploitation (`akrim.exploitation_signal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExploitationIndicator {
    /// Employer keeps the workers' passports.
    WithheldPassports,
    /// Workers live at the workplace.
    HousingAtWorkplace,
    /// Workers are held by debts to the employer or recruiter.
    DebtBondage,
    /// No salary is paid.
    NoSalaryPaid,
    /// Workers may not move freely.
    RestrictedMovement,
    /// Signs of violence.
    SignsOfViolence,
}

/// How urgent an exploitation signal is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Urgency {
    /// Handle in the normal course of work.
    Routine,
    /// Handle soon.
    Urgent,
    /// People are in immediate danger.
    ImmediateDanger,
}

/// Indicators that a company should not receive a public contract or grant
/// (`welfare.company_flag`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CompanyIndicator {
    /// F-skatt (tax registration for businesses) revoked.
    FTaxRevoked,
    /// Debts registered at Kronofogden.
    DebtsAtKronofogden,
    /// No registered employees.
    NoRegisteredEmployees,
    /// Unpaid employer contributions.
    UnpaidEmployerContributions,
    /// The board changed recently.
    RecentlyChangedBoard,
    /// The pattern of a shell company.
    ShellCompanyPattern,
}

/// What a company flag is about (`context` in `welfare.company_flag`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CompanyFlagContext {
    /// A public procurement.
    Procurement,
    /// A grant to an association.
    AssociationGrant,
    /// Something else.
    Other,
}

/// Findings of an inspection (`findings` in `akrim.inspection_result`); every
/// count is optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Findings {
    /// Workers without a work permit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers_without_work_permit: Option<u32>,
    /// Workers not declared to Skatteverket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undeclared_workers: Option<u32>,
    /// Whether tax discrepancies were found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tax_discrepancies: Option<bool>,
    /// Work-safety violations found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub safety_violations: Option<u32>,
}

/// Collects fields and checks the schema rules that types cannot express
/// (lengths, ranges, non-empty lists).
struct Fields(Map<String, Value>);

impl Fields {
    fn new() -> Self {
        Self(Map::new())
    }

    fn put(&mut self, name: &'static str, value: impl Serialize) -> Result<(), AlertError> {
        let value = serde_json::to_value(value).map_err(|e| field_error(name, e.to_string()))?;
        self.0.insert(name.to_string(), value);
        Ok(())
    }

    /// A string of `min..=max` characters (JSON Schema counts code points).
    fn text(
        &mut self,
        name: &'static str,
        value: &str,
        min: usize,
        max: usize,
    ) -> Result<(), AlertError> {
        check_text(name, value, min, max)?;
        self.put(name, value)
    }

    fn opt_text(
        &mut self,
        name: &'static str,
        value: Option<&str>,
        max: usize,
    ) -> Result<(), AlertError> {
        match value {
            Some(v) => self.text(name, v, 0, max),
            None => Ok(()),
        }
    }

    fn agency(&mut self, name: &'static str, value: &str) -> Result<(), AlertError> {
        check_agency(name, value)?;
        self.put(name, value)
    }

    fn opt(&mut self, name: &'static str, value: Option<impl Serialize>) -> Result<(), AlertError> {
        match value {
            Some(v) => self.put(name, v),
            None => Ok(()),
        }
    }

    fn non_empty_set<T: Serialize>(
        &mut self,
        name: &'static str,
        set: &BTreeSet<T>,
    ) -> Result<(), AlertError> {
        if set.is_empty() {
            return Err(field_error(name, "must contain at least one item"));
        }
        self.put(name, set)
    }

    fn alert(self, alert_type: &str) -> Alert {
        Alert::new(alert_type, self.0)
    }
}

fn check_text(name: &'static str, value: &str, min: usize, max: usize) -> Result<(), AlertError> {
    let len = value.chars().count();
    if len < min || len > max {
        return Err(field_error(
            name,
            format!("must be {min} to {max} characters long, got {len}"),
        ));
    }
    Ok(())
}

fn check_agency(name: &'static str, value: &str) -> Result<(), AlertError> {
    names::validate_agency_id(value).map_err(|_| {
        field_error(
            name,
            "must be an agency id (lowercase ASCII letters and digits, starting with a letter, at most 32)",
        )
    })
}

/// `welfare.incorrect_payment`: suspicion that a benefit was paid or decided
/// incorrectly (felaktig utbetalning) to a person.
#[derive(Clone)]
pub struct IncorrectPayment {
    subject_personnummer: Personnummer,
    subject_kommunkod: Kommunkod,
    benefit: String,
    paying_agency: String,
    period: Period,
    suspected_amount_sek: Option<u64>,
    grounds: Option<String>,
    case_reference: Option<String>,
}

impl IncorrectPayment {
    /// The alert type.
    pub const ALERT_TYPE: &'static str = "welfare.incorrect_payment";
    /// Largest suspected amount the schema allows, in kronor.
    pub const MAX_AMOUNT_SEK: u64 = 1_000_000_000;

    /// The required fields: the person, the municipality where the person is
    /// registered, the benefit (e.g. `assistansersattning`), the agency id of
    /// the authority that paid or decided it, and the period concerned.
    pub fn new(
        subject_personnummer: Personnummer,
        subject_kommunkod: Kommunkod,
        benefit: impl Into<String>,
        paying_agency: impl Into<String>,
        period: Period,
    ) -> Self {
        Self {
            subject_personnummer,
            subject_kommunkod,
            benefit: benefit.into(),
            paying_agency: paying_agency.into(),
            period,
            suspected_amount_sek: None,
            grounds: None,
            case_reference: None,
        }
    }

    /// The suspected incorrect amount in whole kronor.
    pub fn suspected_amount_sek(mut self, amount: u64) -> Self {
        self.suspected_amount_sek = Some(amount);
        self
    }

    /// Why the payment is believed to be incorrect (at most 2000 characters).
    pub fn grounds(mut self, grounds: impl Into<String>) -> Self {
        self.grounds = Some(grounds.into());
        self
    }

    /// The publisher's case or diary number (at most 64 characters).
    pub fn case_reference(mut self, reference: impl Into<String>) -> Self {
        self.case_reference = Some(reference.into());
        self
    }

    /// Checks the schema rules and produces the alert.
    pub fn build(self) -> Result<Alert, AlertError> {
        let mut f = Fields::new();
        f.put(
            "subject_personnummer",
            self.subject_personnummer.canonical(),
        )?;
        f.put("subject_kommunkod", self.subject_kommunkod.as_str())?;
        f.text("benefit", &self.benefit, 1, 100)?;
        f.agency("paying_agency", &self.paying_agency)?;
        if let Some(amount) = self.suspected_amount_sek
            && amount > Self::MAX_AMOUNT_SEK
        {
            return Err(field_error(
                "suspected_amount_sek",
                format!("must be at most {}", Self::MAX_AMOUNT_SEK),
            ));
        }
        f.opt("suspected_amount_sek", self.suspected_amount_sek)?;
        f.put("period", self.period)?;
        f.opt_text("grounds", self.grounds.as_deref(), 2000)?;
        f.opt_text("case_reference", self.case_reference.as_deref(), 64)?;
        Ok(f.alert(Self::ALERT_TYPE))
    }
}

/// `welfare.assistance_fraud`: suspicion that a personal assistance provider
/// bills more hours than were verified.
#[derive(Clone)]
pub struct AssistanceFraud {
    provider_orgnr: Organisationsnummer,
    provider_name: String,
    kommunkod: Kommunkod,
    hours_billed: f64,
    hours_verified: f64,
    period: Period,
    description: Option<String>,
    case_reference: Option<String>,
}

impl AssistanceFraud {
    /// The alert type.
    pub const ALERT_TYPE: &'static str = "welfare.assistance_fraud";
    /// Largest number of hours the schema allows.
    pub const MAX_HOURS: f64 = 1_000_000.0;

    /// The required fields: the provider, the municipality where assistance
    /// is provided, the hours billed and verified, and the period concerned.
    pub fn new(
        provider_orgnr: Organisationsnummer,
        provider_name: impl Into<String>,
        kommunkod: Kommunkod,
        hours_billed: f64,
        hours_verified: f64,
        period: Period,
    ) -> Self {
        Self {
            provider_orgnr,
            provider_name: provider_name.into(),
            kommunkod,
            hours_billed,
            hours_verified,
            period,
            description: None,
            case_reference: None,
        }
    }

    /// Free-text description (at most 2000 characters).
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// The publisher's case or diary number (at most 64 characters).
    pub fn case_reference(mut self, reference: impl Into<String>) -> Self {
        self.case_reference = Some(reference.into());
        self
    }

    fn hours(f: &mut Fields, name: &'static str, hours: f64) -> Result<(), AlertError> {
        if !hours.is_finite() || !(0.0..=Self::MAX_HOURS).contains(&hours) {
            return Err(field_error(
                name,
                format!("must be a number from 0 to {}", Self::MAX_HOURS),
            ));
        }
        f.put(name, hours)
    }

    /// Checks the schema rules and produces the alert.
    pub fn build(self) -> Result<Alert, AlertError> {
        let mut f = Fields::new();
        f.put("provider_orgnr", self.provider_orgnr.canonical())?;
        f.text("provider_name", &self.provider_name, 1, 200)?;
        f.put("kommunkod", self.kommunkod.as_str())?;
        Self::hours(&mut f, "hours_billed", self.hours_billed)?;
        Self::hours(&mut f, "hours_verified", self.hours_verified)?;
        f.put("period", self.period)?;
        f.opt_text("description", self.description.as_deref(), 2000)?;
        f.opt_text("case_reference", self.case_reference.as_deref(), 64)?;
        Ok(f.alert(Self::ALERT_TYPE))
    }
}

/// `welfare.company_flag`: indicators that a company should not receive a
/// public contract or grant.
#[derive(Clone)]
pub struct CompanyFlag {
    orgnr: Organisationsnummer,
    kommunkod: Kommunkod,
    indicators: BTreeSet<CompanyIndicator>,
    context: CompanyFlagContext,
    company_name: Option<String>,
    case_reference: Option<String>,
}

impl CompanyFlag {
    /// The alert type.
    pub const ALERT_TYPE: &'static str = "welfare.company_flag";

    /// The required fields: the company, the municipality, at least one
    /// indicator (repeats are merged) and the context.
    pub fn new(
        orgnr: Organisationsnummer,
        kommunkod: Kommunkod,
        indicators: impl IntoIterator<Item = CompanyIndicator>,
        context: CompanyFlagContext,
    ) -> Self {
        Self {
            orgnr,
            kommunkod,
            indicators: indicators.into_iter().collect(),
            context,
            company_name: None,
            case_reference: None,
        }
    }

    /// The company's name (at most 200 characters).
    pub fn company_name(mut self, name: impl Into<String>) -> Self {
        self.company_name = Some(name.into());
        self
    }

    /// The publisher's case or diary number (at most 64 characters).
    pub fn case_reference(mut self, reference: impl Into<String>) -> Self {
        self.case_reference = Some(reference.into());
        self
    }

    /// Checks the schema rules and produces the alert.
    pub fn build(self) -> Result<Alert, AlertError> {
        let mut f = Fields::new();
        f.put("orgnr", self.orgnr.canonical())?;
        f.opt_text("company_name", self.company_name.as_deref(), 200)?;
        f.put("kommunkod", self.kommunkod.as_str())?;
        f.non_empty_set("indicators", &self.indicators)?;
        f.put("context", self.context)?;
        f.opt_text("case_reference", self.case_reference.as_deref(), 64)?;
        Ok(f.alert(Self::ALERT_TYPE))
    }
}

/// `akrim.exploitation_signal`: indications that workers are exploited or
/// trafficked. Very restricted recipients.
#[derive(Clone)]
pub struct ExploitationSignal {
    region: Region,
    indicators: BTreeSet<ExploitationIndicator>,
    description: String,
    workplace_orgnr: Option<Organisationsnummer>,
    kommunkod: Option<Kommunkod>,
    urgency: Option<Urgency>,
}

impl ExploitationSignal {
    /// The alert type.
    pub const ALERT_TYPE: &'static str = "akrim.exploitation_signal";

    /// The required fields: the region, at least one indicator (repeats are
    /// merged) and a description (1 to 2000 characters).
    pub fn new(
        region: Region,
        indicators: impl IntoIterator<Item = ExploitationIndicator>,
        description: impl Into<String>,
    ) -> Self {
        Self {
            region,
            indicators: indicators.into_iter().collect(),
            description: description.into(),
            workplace_orgnr: None,
            kommunkod: None,
            urgency: None,
        }
    }

    /// The workplace's organisationsnummer.
    pub fn workplace_orgnr(mut self, orgnr: Organisationsnummer) -> Self {
        self.workplace_orgnr = Some(orgnr);
        self
    }

    /// The municipality of the workplace.
    pub fn kommunkod(mut self, kommunkod: Kommunkod) -> Self {
        self.kommunkod = Some(kommunkod);
        self
    }

    /// How urgent the signal is.
    pub fn urgency(mut self, urgency: Urgency) -> Self {
        self.urgency = Some(urgency);
        self
    }

    /// Checks the schema rules and produces the alert.
    pub fn build(self) -> Result<Alert, AlertError> {
        let mut f = Fields::new();
        f.opt(
            "workplace_orgnr",
            self.workplace_orgnr
                .as_ref()
                .map(Organisationsnummer::canonical),
        )?;
        f.opt("kommunkod", self.kommunkod.as_ref().map(Kommunkod::as_str))?;
        f.put("region", self.region)?;
        f.non_empty_set("indicators", &self.indicators)?;
        f.text("description", &self.description, 1, 2000)?;
        f.opt("urgency", self.urgency)?;
        Ok(f.alert(Self::ALERT_TYPE))
    }
}

/// `akrim.inspection_planned`: a joint workplace inspection (A-krim) being planned.
#[derive(Clone)]
pub struct InspectionPlanned {
    workplace_orgnr: Organisationsnummer,
    address: String,
    kommunkod: Kommunkod,
    region: Region,
    planned_date: Date,
    lead_agency: String,
    participating_agencies: BTreeSet<String>,
    industry: Option<String>,
}

impl InspectionPlanned {
    /// The alert type.
    pub const ALERT_TYPE: &'static str = "akrim.inspection_planned";

    /// The required fields: the workplace, its address (1 to 300 characters),
    /// municipality and region, the planned date, the leading agency and at
    /// least one participating agency (agency ids; repeats are merged and the
    /// list is sorted).
    pub fn new<I, S>(
        workplace_orgnr: Organisationsnummer,
        address: impl Into<String>,
        kommunkod: Kommunkod,
        region: Region,
        planned_date: Date,
        lead_agency: impl Into<String>,
        participating_agencies: I,
    ) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            workplace_orgnr,
            address: address.into(),
            kommunkod,
            region,
            planned_date,
            lead_agency: lead_agency.into(),
            participating_agencies: participating_agencies.into_iter().map(Into::into).collect(),
            industry: None,
        }
    }

    /// The industry of the workplace (at most 100 characters).
    pub fn industry(mut self, industry: impl Into<String>) -> Self {
        self.industry = Some(industry.into());
        self
    }

    /// Checks the schema rules and produces the alert.
    pub fn build(self) -> Result<Alert, AlertError> {
        let mut f = Fields::new();
        f.put("workplace_orgnr", self.workplace_orgnr.canonical())?;
        f.text("address", &self.address, 1, 300)?;
        f.put("kommunkod", self.kommunkod.as_str())?;
        f.put("region", self.region)?;
        f.put("planned_date", self.planned_date)?;
        f.agency("lead_agency", &self.lead_agency)?;
        for agency in &self.participating_agencies {
            check_agency("participating_agencies", agency)?;
        }
        f.non_empty_set("participating_agencies", &self.participating_agencies)?;
        f.opt_text("industry", self.industry.as_deref(), 100)?;
        Ok(f.alert(Self::ALERT_TYPE))
    }
}

/// `akrim.inspection_result`: findings of a joint workplace inspection (A-krim).
#[derive(Clone)]
pub struct InspectionResult {
    orgnr: Organisationsnummer,
    region: Region,
    inspection_date: Date,
    findings: Findings,
    kommunkod: Option<Kommunkod>,
    follow_up_actions: Vec<String>,
    case_reference: Option<String>,
}

impl InspectionResult {
    /// The alert type.
    pub const ALERT_TYPE: &'static str = "akrim.inspection_result";
    /// Most follow-up actions the schema allows.
    pub const MAX_FOLLOW_UP_ACTIONS: usize = 20;

    /// The required fields: the inspected company, the region, the date of
    /// the inspection and its findings.
    pub fn new(
        orgnr: Organisationsnummer,
        region: Region,
        inspection_date: Date,
        findings: Findings,
    ) -> Self {
        Self {
            orgnr,
            region,
            inspection_date,
            findings,
            kommunkod: None,
            follow_up_actions: Vec::new(),
            case_reference: None,
        }
    }

    /// The municipality of the workplace.
    pub fn kommunkod(mut self, kommunkod: Kommunkod) -> Self {
        self.kommunkod = Some(kommunkod);
        self
    }

    /// Adds a follow-up action (at most 300 characters, at most 20 actions).
    pub fn follow_up_action(mut self, action: impl Into<String>) -> Self {
        self.follow_up_actions.push(action.into());
        self
    }

    /// The publisher's case or diary number (at most 64 characters).
    pub fn case_reference(mut self, reference: impl Into<String>) -> Self {
        self.case_reference = Some(reference.into());
        self
    }

    /// Checks the schema rules and produces the alert.
    pub fn build(self) -> Result<Alert, AlertError> {
        let mut f = Fields::new();
        f.put("orgnr", self.orgnr.canonical())?;
        f.opt("kommunkod", self.kommunkod.as_ref().map(Kommunkod::as_str))?;
        f.put("region", self.region)?;
        f.put("inspection_date", self.inspection_date)?;
        f.put("findings", self.findings)?;
        if !self.follow_up_actions.is_empty() {
            if self.follow_up_actions.len() > Self::MAX_FOLLOW_UP_ACTIONS {
                return Err(field_error(
                    "follow_up_actions",
                    format!("at most {} items", Self::MAX_FOLLOW_UP_ACTIONS),
                ));
            }
            for action in &self.follow_up_actions {
                check_text("follow_up_actions", action, 0, 300)?;
            }
            f.put("follow_up_actions", &self.follow_up_actions)?;
        }
        f.opt_text("case_reference", self.case_reference.as_deref(), 64)?;
        Ok(f.alert(Self::ALERT_TYPE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pnr() -> Personnummer {
        Personnummer::parse_with_reference_year("19121212-1212", 2026).unwrap()
    }

    fn orgnr() -> Organisationsnummer {
        Organisationsnummer::parse("5566778899").unwrap()
    }

    fn kommun(s: &str) -> Kommunkod {
        Kommunkod::parse(s).unwrap()
    }

    fn date(y: i32, m: u8, d: u8) -> Date {
        Date::new(y, m, d).unwrap()
    }

    fn period() -> Period {
        Period::new(date(2026, 1, 1), date(2026, 6, 30)).unwrap()
    }

    fn object(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn incorrect_payment() {
        let alert = IncorrectPayment::new(
            pnr(),
            kommun("0580"),
            "assistansersattning",
            "forsakringskassan",
            period(),
        )
        .suspected_amount_sek(125_000)
        .grounds("Hours billed exceed the decision.")
        .case_reference("FK-2026-0001")
        .build()
        .unwrap();
        assert_eq!(alert.alert_type, "welfare.incorrect_payment");
        assert_eq!(alert.to, None);
        assert_eq!(
            alert.fields,
            object(json!({
                "subject_personnummer": "19121212-1212",
                "subject_kommunkod": "0580",
                "benefit": "assistansersattning",
                "paying_agency": "forsakringskassan",
                "suspected_amount_sek": 125000,
                "period": {"from": "2026-01-01", "to": "2026-06-30"},
                "grounds": "Hours billed exceed the decision.",
                "case_reference": "FK-2026-0001"
            }))
        );

        let minimal =
            IncorrectPayment::new(pnr(), kommun("0581"), "sjukpenning", "linkoping", period())
                .build()
                .unwrap();
        assert_eq!(
            minimal.fields,
            object(json!({
                "subject_personnummer": "19121212-1212",
                "subject_kommunkod": "0581",
                "benefit": "sjukpenning",
                "paying_agency": "linkoping",
                "period": {"from": "2026-01-01", "to": "2026-06-30"}
            }))
        );
    }

    #[test]
    fn incorrect_payment_rules() {
        let base =
            || IncorrectPayment::new(pnr(), kommun("0580"), "x", "forsakringskassan", period());
        assert!(matches!(
            base().suspected_amount_sek(1_000_000_001).build(),
            Err(AlertError::Field {
                field: "suspected_amount_sek",
                ..
            })
        ));
        assert!(base().suspected_amount_sek(1_000_000_000).build().is_ok());
        assert!(matches!(
            IncorrectPayment::new(pnr(), kommun("0580"), "", "forsakringskassan", period()).build(),
            Err(AlertError::Field {
                field: "benefit",
                ..
            })
        ));
        assert!(matches!(
            IncorrectPayment::new(pnr(), kommun("0580"), "x", "Försäkringskassan", period())
                .build(),
            Err(AlertError::Field {
                field: "paying_agency",
                ..
            })
        ));
        assert!(matches!(
            base().grounds("å".repeat(2001)).build(),
            Err(AlertError::Field {
                field: "grounds",
                ..
            })
        ));
        // Characters, not bytes, are counted.
        assert!(base().grounds("å".repeat(2000)).build().is_ok());
        assert!(matches!(
            base().case_reference("x".repeat(65)).build(),
            Err(AlertError::Field {
                field: "case_reference",
                ..
            })
        ));
        // Errors never repeat the value.
        let err = base().grounds("hemlig".repeat(400)).build().unwrap_err();
        assert!(!err.to_string().contains("hemlig"));
    }

    #[test]
    fn assistance_fraud() {
        let alert = AssistanceFraud::new(
            orgnr(),
            "Assistans i Öst AB",
            kommun("0580"),
            1240.5,
            860.0,
            period(),
        )
        .description("Billed hours on days the client was in hospital.")
        .case_reference("LKP-2026-17")
        .build()
        .unwrap();
        assert_eq!(alert.alert_type, "welfare.assistance_fraud");
        assert_eq!(
            alert.fields,
            object(json!({
                "provider_orgnr": "556677-8899",
                "provider_name": "Assistans i Öst AB",
                "kommunkod": "0580",
                "hours_billed": 1240.5,
                "hours_verified": 860.0,
                "period": {"from": "2026-01-01", "to": "2026-06-30"},
                "description": "Billed hours on days the client was in hospital.",
                "case_reference": "LKP-2026-17"
            }))
        );
        for bad in [-1.0, 1_000_000.5, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                AssistanceFraud::new(orgnr(), "A", kommun("0580"), bad, 0.0, period()).build(),
                Err(AlertError::Field {
                    field: "hours_billed",
                    ..
                })
            ));
        }
        assert!(matches!(
            AssistanceFraud::new(orgnr(), "", kommun("0580"), 1.0, 0.0, period()).build(),
            Err(AlertError::Field {
                field: "provider_name",
                ..
            })
        ));
    }

    #[test]
    fn company_flag() {
        let alert = CompanyFlag::new(
            orgnr(),
            kommun("0581"),
            [
                CompanyIndicator::ShellCompanyPattern,
                CompanyIndicator::FTaxRevoked,
                CompanyIndicator::FTaxRevoked,
            ],
            CompanyFlagContext::AssociationGrant,
        )
        .company_name("Exempelbolaget AB")
        .case_reference("NKPG-44")
        .build()
        .unwrap();
        assert_eq!(alert.alert_type, "welfare.company_flag");
        assert_eq!(
            alert.fields,
            object(json!({
                "orgnr": "556677-8899",
                "company_name": "Exempelbolaget AB",
                "kommunkod": "0581",
                "indicators": ["f_tax_revoked", "shell_company_pattern"],
                "context": "association_grant",
                "case_reference": "NKPG-44"
            }))
        );
        assert!(matches!(
            CompanyFlag::new(orgnr(), kommun("0581"), [], CompanyFlagContext::Other).build(),
            Err(AlertError::Field {
                field: "indicators",
                ..
            })
        ));
    }

    #[test]
    fn exploitation_signal() {
        let alert = ExploitationSignal::new(
            Region::Ost,
            [
                ExploitationIndicator::WithheldPassports,
                ExploitationIndicator::HousingAtWorkplace,
            ],
            "Workers sleep in the storage room.",
        )
        .workplace_orgnr(orgnr())
        .kommunkod(kommun("0580"))
        .urgency(Urgency::ImmediateDanger)
        .build()
        .unwrap();
        assert_eq!(alert.alert_type, "akrim.exploitation_signal");
        assert_eq!(
            alert.fields,
            object(json!({
                "workplace_orgnr": "556677-8899",
                "kommunkod": "0580",
                "region": "ost",
                "indicators": ["withheld_passports", "housing_at_workplace"],
                "description": "Workers sleep in the storage room.",
                "urgency": "immediate_danger"
            }))
        );
        let minimal =
            ExploitationSignal::new(Region::Syd, [ExploitationIndicator::DebtBondage], "x")
                .build()
                .unwrap();
        assert_eq!(
            minimal.fields,
            object(json!({"region": "syd", "indicators": ["debt_bondage"], "description": "x"}))
        );
        assert!(matches!(
            ExploitationSignal::new(Region::Syd, [ExploitationIndicator::DebtBondage], "").build(),
            Err(AlertError::Field {
                field: "description",
                ..
            })
        ));
    }

    #[test]
    fn inspection_planned() {
        let alert = InspectionPlanned::new(
            orgnr(),
            "Industrigatan 1, Linköping",
            kommun("0580"),
            Region::Ost,
            date(2026, 12, 3),
            "polisen",
            ["skatteverket", "polisen", "skatteverket"],
        )
        .industry("construction")
        .build()
        .unwrap();
        assert_eq!(alert.alert_type, "akrim.inspection_planned");
        assert_eq!(
            alert.fields,
            object(json!({
                "workplace_orgnr": "556677-8899",
                "address": "Industrigatan 1, Linköping",
                "kommunkod": "0580",
                "region": "ost",
                "planned_date": "2026-12-03",
                "lead_agency": "polisen",
                "participating_agencies": ["polisen", "skatteverket"],
                "industry": "construction"
            }))
        );
        let none: [&str; 0] = [];
        assert!(matches!(
            InspectionPlanned::new(
                orgnr(),
                "a",
                kommun("0580"),
                Region::Ost,
                date(2026, 1, 1),
                "polisen",
                none
            )
            .build(),
            Err(AlertError::Field {
                field: "participating_agencies",
                ..
            })
        ));
        assert!(matches!(
            InspectionPlanned::new(
                orgnr(),
                "a",
                kommun("0580"),
                Region::Ost,
                date(2026, 1, 1),
                "polisen",
                ["Polisen"]
            )
            .build(),
            Err(AlertError::Field {
                field: "participating_agencies",
                ..
            })
        ));
        assert!(matches!(
            InspectionPlanned::new(
                orgnr(),
                "a",
                kommun("0580"),
                Region::Ost,
                date(2026, 1, 1),
                "",
                ["polisen"]
            )
            .build(),
            Err(AlertError::Field {
                field: "lead_agency",
                ..
            })
        ));
    }

    #[test]
    fn inspection_result() {
        let findings = Findings {
            workers_without_work_permit: Some(3),
            undeclared_workers: Some(0),
            tax_discrepancies: Some(true),
            safety_violations: None,
        };
        let alert = InspectionResult::new(orgnr(), Region::Ost, date(2026, 12, 3), findings)
            .kommunkod(kommun("0580"))
            .follow_up_action("Audit payroll 2026")
            .follow_up_action("Revisit in March")
            .case_reference("AK-2026-9")
            .build()
            .unwrap();
        assert_eq!(alert.alert_type, "akrim.inspection_result");
        assert_eq!(
            alert.fields,
            object(json!({
                "orgnr": "556677-8899",
                "kommunkod": "0580",
                "region": "ost",
                "inspection_date": "2026-12-03",
                "findings": {
                    "workers_without_work_permit": 3,
                    "undeclared_workers": 0,
                    "tax_discrepancies": true
                },
                "follow_up_actions": ["Audit payroll 2026", "Revisit in March"],
                "case_reference": "AK-2026-9"
            }))
        );
        let minimal = InspectionResult::new(
            orgnr(),
            Region::Nord,
            date(2026, 2, 28),
            Findings::default(),
        )
        .build()
        .unwrap();
        assert_eq!(
            minimal.fields,
            object(json!({
                "orgnr": "556677-8899",
                "region": "nord",
                "inspection_date": "2026-02-28",
                "findings": {}
            }))
        );
        let mut too_many = InspectionResult::new(
            orgnr(),
            Region::Nord,
            date(2026, 2, 28),
            Findings::default(),
        );
        for i in 0..21 {
            too_many = too_many.follow_up_action(format!("action {i}"));
        }
        assert!(matches!(
            too_many.build(),
            Err(AlertError::Field {
                field: "follow_up_actions",
                ..
            })
        ));
    }

    #[test]
    fn dates_and_periods() {
        assert_eq!(date(2024, 2, 29).to_string(), "2024-02-29");
        assert_eq!(date(987, 1, 5).to_string(), "0987-01-05");
        assert!(Date::new(2026, 2, 29).is_err());
        assert!(Date::new(2026, 13, 1).is_err());
        assert!(Date::new(2026, 0, 1).is_err());
        assert!(Date::new(10_000, 1, 1).is_err());
        assert_eq!(Date::parse("2026-06-30").unwrap(), date(2026, 6, 30));
        for bad in [
            "2026-6-30",
            "2026/06/30",
            "20260630",
            "2026-06-31",
            "+026-06-30",
            "２０２６-06-30",
        ] {
            assert!(Date::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Period::new(date(2026, 2, 1), date(2026, 1, 1)),
            Err(AlertError::InvertedPeriod)
        );
        assert!(Period::new(date(2026, 1, 1), date(2026, 1, 1)).is_ok());
    }

    #[test]
    fn generic_alerts_and_recipients() {
        let mut fields = Map::new();
        fields.insert("x".into(), json!(1));
        let alert = Alert::new("custom.kind", fields.clone()).addressed_to([
            "skatteverket",
            "linkoping",
            "skatteverket",
        ]);
        assert_eq!(
            alert.recipients(),
            Some(vec!["linkoping".to_string(), "skatteverket".to_string()])
        );
        let header = alert.header("a/b", "polisen", "polisen-dev-1", "id-1", 7);
        assert_eq!(header.to, alert.recipients());
        assert_eq!(header.alert_type, "custom.kind");
        assert_eq!(header.topic, "a/b");
        assert!(header.validate().is_ok());
        // Debug shows field names only.
        let mut secret = Map::new();
        secret.insert("subject_personnummer".into(), json!("19121212-1212"));
        let debug = format!("{:?}", Alert::new("a.b", secret));
        assert!(debug.contains("subject_personnummer"));
        assert!(!debug.contains("1212-1212"));
    }
}
