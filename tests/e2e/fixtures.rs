//! Example alerts (fictitious data only) and waiting helpers.

use std::time::Duration;

use samverkan_sdk::alerts::{Date, Findings, IncorrectPayment, InspectionResult, Period, Region};
use samverkan_sdk::client::{ReceivedShare, Subscription};
use samverkan_sdk::identifiers::{Kommunkod, Organisationsnummer, Personnummer};
use samverkan_sdk::{Alert, DeliveryError};

/// Tolvan Tolvansson, the well-known fictitious test personnummer.
pub const TEST_PNR: &str = "19121212-1212";
/// A fictitious organisationsnummer with a valid check digit.
pub const TEST_ORGNR: &str = "556677-8899";

/// Försäkringskassan's alert about an incorrect payment to a resident of `kommunkod`.
pub fn incorrect_payment(kommunkod: &str) -> Alert {
    IncorrectPayment::new(
        Personnummer::parse(TEST_PNR).unwrap(),
        Kommunkod::parse(kommunkod).unwrap(),
        "sjukpenning",
        "forsakringskassan",
        Period::new(
            Date::new(2026, 1, 1).unwrap(),
            Date::new(2026, 3, 31).unwrap(),
        )
        .unwrap(),
    )
    .suspected_amount_sek(48_000)
    .grounds("Income from employment during the sick leave.")
    .case_reference("FK-2026-0001")
    .build()
    .unwrap()
}

/// The findings of an inspection in Region Öst.
pub fn inspection_result() -> Alert {
    let findings = Findings {
        workers_without_work_permit: Some(3),
        undeclared_workers: Some(2),
        tax_discrepancies: Some(true),
        safety_violations: None,
    };
    InspectionResult::new(
        Organisationsnummer::parse(TEST_ORGNR).unwrap(),
        Region::Ost,
        Date::new(2026, 11, 20).unwrap(),
        findings,
    )
    .follow_up_action("Skatteverket audits payroll")
    .build()
    .unwrap()
}

/// The next share, or a refused delivery, within `limit`.
pub async fn next_item(
    sub: &mut Subscription,
    limit: Duration,
) -> Option<Result<ReceivedShare, DeliveryError>> {
    tokio::time::timeout(limit, sub.next()).await.ok().flatten()
}

/// The next share within 10 s; panics on a refused delivery or none.
pub async fn next_share(sub: &mut Subscription) -> ReceivedShare {
    match next_item(sub, Duration::from_secs(10)).await {
        Some(Ok(share)) => share,
        Some(Err(e)) => panic!("delivery refused: {e}"),
        None => panic!("no share within 10 s"),
    }
}

/// Asserts that nothing arrives within `limit`.
pub async fn assert_nothing(sub: &mut Subscription, limit: Duration) {
    if let Some(item) = next_item(sub, limit).await {
        panic!(
            "expected nothing, got {:?}",
            item.map(|s| s.share_id().to_string())
        );
    }
}
