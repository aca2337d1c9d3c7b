//! The console's queries on a generated log (the `samverkan-bench console`
//! generator, small), against SQLite and PostgreSQL: every search, page,
//! subject lookup, overview count and export equals what a direct reading of
//! the whole log gives, and `audit verify` accepts the generated log. Only
//! correctness: the timings are the benchmark's (docs/PERFORMANCE.md).

use std::collections::BTreeMap;
use std::path::Path;

use samverkan_broker::audit::verify::verify_log;
use samverkan_broker::audit::{AuditEntry, EntryKind};
use samverkan_broker::console::export;
use samverkan_broker::pki::DevPkiLayout;
use samverkan_broker::store::Store;
use samverkan_broker::store::console::{ConsoleFilter, Cursor, DAY_MS, Scope, day_of};
use samverkan_e2e::fill::{self, FillOptions};
use samverkan_e2e::{Backend, TestDatabase};
use samverkan_sdk::keys::KeyRegistry;

const ENTRIES: u64 = 4000;
const PAGE: u32 = 50;

fn visible(scope: &Scope, e: &AuditEntry) -> bool {
    match scope {
        Scope::All => true,
        Scope::Agency(a) => {
            e.publisher.as_deref() == Some(a.as_str()) || e.recipient.as_deref() == Some(a.as_str())
        }
    }
}

fn matches(f: &ConsoleFilter, e: &AuditEntry) -> bool {
    let eq = |want: &Option<String>, have: &Option<String>| want.is_none() || want == have;
    eq(&f.publisher, &e.publisher)
        && eq(&f.recipient, &e.recipient)
        && f.kind.as_deref().is_none_or(|k| k == e.kind.as_str())
        && eq(&f.legal_basis, &e.legal_basis)
        && eq(&f.rule_id, &e.rule_id)
        && eq(&f.alert_type, &e.alert_type)
        && eq(&f.topic, &e.topic)
        && eq(&f.alert_id, &e.alert_id)
        && f.from_ms.is_none_or(|t| e.at_ms >= t)
        && f.to_ms.is_none_or(|t| e.at_ms < t)
        && f.index.is_none_or(|i| e.index == i)
}

/// The page a search must return, from the whole log read directly.
fn expected_page(log: &[AuditEntry], scope: &Scope, f: &ConsoleFilter, cursor: Cursor) -> Vec<u64> {
    let mut hits: Vec<u64> = log
        .iter()
        .filter(|e| visible(scope, e) && matches(f, e))
        .map(|e| e.index)
        .filter(|&i| match cursor {
            Cursor::Newest => true,
            Cursor::Before(b) => i < b,
            Cursor::After(a) => i > a,
        })
        .collect();
    hits.sort_unstable_by(|a, b| b.cmp(a));
    match cursor {
        // The page just newer than the cursor, shown newest first.
        Cursor::After(_) => {
            let skip = hits.len().saturating_sub(PAGE as usize);
            hits.split_off(skip)
        }
        _ => {
            hits.truncate(PAGE as usize);
            hits
        }
    }
}

fn text(v: &str) -> Option<String> {
    Some(v.to_string())
}

async fn queries_match_a_direct_reading(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::new(backend, dir.path()).await;
    let store = Store::open(&db.url).await.unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let pki = DevPkiLayout::new(repo.join("certs-dev"));
    let report = fill::fill(
        &store,
        &repo.join("policies"),
        &pki,
        "samverkan-dev/audit",
        &FillOptions {
            days: 60,
            ..FillOptions::year(ENTRIES)
        },
    )
    .await
    .unwrap();
    assert!(report.entries >= ENTRIES, "{report:?}");
    for kind in ["share", "denial", "ack", "rejection", "policy_loaded"] {
        assert!(
            report.by_kind.get(kind).copied().unwrap_or(0) > 0,
            "no {kind} in {:?}",
            report.by_kind
        );
    }
    let log = store.audit_range(0, report.entries).await.unwrap();
    assert_eq!(log.len() as u64, report.entries);

    // The generated log is one the broker could have written.
    let keys = KeyRegistry::load(&pki.dir.join("broker-keys.toml")).unwrap();
    let verified = verify_log(&store, &keys, &[], |_, _| {}).await;
    assert!(verified.is_ok(), "audit verify: {verified:?}");

    let (from, to) = report.period;
    let mid = from + (to - from) / 2;
    let sample = log
        .iter()
        .rev()
        .find(|e| e.kind == EntryKind::Share && e.index < report.entries / 2)
        .unwrap()
        .clone();
    let filters: Vec<ConsoleFilter> = vec![
        ConsoleFilter::default(),
        ConsoleFilter {
            publisher: text("forsakringskassan"),
            ..Default::default()
        },
        ConsoleFilter {
            recipient: text("norrkoping"),
            ..Default::default()
        },
        ConsoleFilter {
            kind: text("denial"),
            ..Default::default()
        },
        ConsoleFilter {
            kind: text("rejection"),
            ..Default::default()
        },
        ConsoleFilter {
            kind: text("policy_loaded"),
            ..Default::default()
        },
        ConsoleFilter {
            legal_basis: text("osl-10-24"),
            ..Default::default()
        },
        ConsoleFilter {
            rule_id: text("incorrect-payment-to-home-municipality"),
            ..Default::default()
        },
        ConsoleFilter {
            rule_id: text("no-such-rule"),
            ..Default::default()
        },
        ConsoleFilter {
            alert_type: text("akrim.inspection_planned"),
            ..Default::default()
        },
        ConsoleFilter {
            topic: text("akrim/vast/inspection"),
            ..Default::default()
        },
        ConsoleFilter {
            alert_id: sample.alert_id.clone(),
            ..Default::default()
        },
        ConsoleFilter {
            index: Some(sample.index),
            ..Default::default()
        },
        ConsoleFilter {
            from_ms: Some(mid),
            to_ms: Some(mid + DAY_MS),
            ..Default::default()
        },
        ConsoleFilter {
            kind: text("share"),
            publisher: text("forsakringskassan"),
            recipient: text("linkoping"),
            ..Default::default()
        },
        ConsoleFilter {
            kind: text("denial"),
            publisher: text("polisen"),
            from_ms: Some(to - 30 * DAY_MS),
            to_ms: Some(to),
            ..Default::default()
        },
        ConsoleFilter {
            kind: text("share"),
            legal_basis: text("uppgiftsskyldighet-akrim"),
            recipient: text("akrimost"),
            from_ms: Some(mid),
            to_ms: Some(mid + 7 * DAY_MS),
            ..Default::default()
        },
    ];
    let scopes = [
        Scope::All,
        Scope::Agency("linkoping".into()),
        Scope::Agency("polisen".into()),
    ];
    let middle = report.entries / 2;
    let mut non_empty = 0;
    for scope in &scopes {
        for f in &filters {
            for cursor in [
                Cursor::Newest,
                Cursor::Before(middle),
                Cursor::After(middle),
            ] {
                let got: Vec<u64> = store
                    .console_search(scope, f, cursor, PAGE)
                    .await
                    .unwrap()
                    .iter()
                    .map(|e| e.index)
                    .collect();
                let want = expected_page(&log, scope, f, cursor);
                assert_eq!(got, want, "{scope:?} {f:?} {cursor:?}");
                non_empty += usize::from(!got.is_empty());
            }
            // An export is every matching entry, newest first.
            let exported = export::collect(&store, scope, f).await.unwrap();
            let all = log
                .iter()
                .filter(|e| visible(scope, e) && matches(f, e))
                .count();
            assert_eq!(exported.len(), all, "export {scope:?} {f:?}");
            assert!(exported.windows(2).all(|w| w[0].index > w[1].index));
        }

        // Subjects: a frequent person and the sample's.
        let subjects =
            samverkan_broker::audit::subject::SubjectHasher::load(&pki.subject_key()).unwrap();
        let frequent = subjects.hash_identifier(&fill::personnummer(0)).unwrap();
        for hash in [frequent, sample.subject_hashes[0].clone()] {
            let got: Vec<u64> = store
                .console_subject(scope, &hash, 500)
                .await
                .unwrap()
                .iter()
                .map(|e| e.index)
                .collect();
            let mut want: Vec<u64> = log
                .iter()
                .filter(|e| visible(scope, e) && e.subject_hashes.contains(&hash))
                .map(|e| e.index)
                .collect();
            want.reverse();
            want.truncate(500);
            assert_eq!(got, want, "subject {scope:?}");
        }

        // The overview: whole days from the day counts and partial days at
        // both ends from the entries add up to a direct count.
        for (a, b) in [
            (from, to),
            (from + DAY_MS / 3, to - DAY_MS / 5),
            (mid, mid + 3 * DAY_MS / 2),
            (mid, mid + DAY_MS / 2),
        ] {
            let mut want: BTreeMap<(String, String, Option<String>, Option<String>), i64> =
                BTreeMap::new();
            let mut want_days: BTreeMap<(i64, String), i64> = BTreeMap::new();
            for e in log
                .iter()
                .filter(|e| visible(scope, e) && e.at_ms >= a && e.at_ms < b)
            {
                *want_days
                    .entry((
                        day_of(e.at_ms) * DAY_MS - 3_600_000,
                        e.kind.as_str().to_string(),
                    ))
                    .or_default() += 1;
                if matches!(e.kind, EntryKind::Share | EntryKind::Denial) {
                    *want
                        .entry((
                            e.kind.as_str().to_string(),
                            e.publisher.clone().unwrap_or_default(),
                            e.recipient.clone(),
                            e.legal_basis.clone(),
                        ))
                        .or_default() += 1;
                }
            }
            let got: BTreeMap<_, _> = store
                .console_flows(scope, a, b)
                .await
                .unwrap()
                .into_iter()
                .map(|f| ((f.kind, f.publisher, f.recipient, f.legal_basis), f.count))
                .collect();
            assert_eq!(got, want, "flows {scope:?} [{a}, {b})");
            let got_days: BTreeMap<_, _> = store
                .console_kind_counts(scope, a, b)
                .await
                .unwrap()
                .into_iter()
                .map(|(day, kind, n)| ((day, kind), n))
                .collect();
            assert_eq!(got_days, want_days, "kinds per day {scope:?} [{a}, {b})");
        }
    }
    assert!(non_empty > 50, "too few searches found anything");

    // The day counts are checked against the log like every other table.
    let pool = sqlx::AnyPool::connect(&db.url).await.unwrap();
    sqlx::query("UPDATE audit_day_counts SET n = n + 1 WHERE kind = 'denial'")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let failure = verify_log(&store, &keys, &[], |_, _| {}).await.unwrap_err();
    assert!(failure.to_string().contains("day counts"), "{failure}");
    store.close().await;
}

#[tokio::test]
async fn console_queries_match_a_direct_reading_sqlite() {
    queries_match_a_direct_reading(Backend::Sqlite).await;
}

#[tokio::test]
async fn console_queries_match_a_direct_reading_postgres() {
    queries_match_a_direct_reading(Backend::Postgres).await;
}
