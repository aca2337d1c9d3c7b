//! The witness's rules against a real state file and real signatures.

use ed25519_dalek::SigningKey;

use super::*;
use crate::audit::checkpoint::sign_checkpoint;
use crate::audit::cosignature::{join_note, verify_cosignatures};
use crate::audit::proof::{NodeHash, node_hash};
use crate::keys::AgencyKey;
use crate::messages::BROKER_KEY_OWNER;

const ORIGIN: &str = "samverkan-test/audit";

fn broker_key() -> SigningKey {
    SigningKey::from_bytes(&[5; 32])
}

fn registry(key: &SigningKey) -> KeyRegistry {
    let mut reg = KeyRegistry::new();
    reg.insert(AgencyKey {
        owner: BROKER_KEY_OWNER.into(),
        key_id: "broker-1".into(),
        public_key: key.verifying_key(),
        not_before_ms: None,
        not_after_ms: None,
        revoked_at_ms: None,
        revocation_reason: None,
    });
    reg
}

fn leaf(i: u8) -> NodeHash {
    [i; 32]
}

/// Roots of the trees of the leaves 1, 2, 3 (RFC 6962).
fn root(size: u64) -> NodeHash {
    match size {
        1 => leaf(1),
        2 => node_hash(&leaf(1), &leaf(2)),
        3 => node_hash(&node_hash(&leaf(1), &leaf(2)), &leaf(3)),
        _ => unreachable!(),
    }
}

fn note(size: u64, root: &NodeHash, time_ms: i64) -> String {
    sign_checkpoint(ORIGIN, size, root, time_ms, None, &broker_key()).unwrap()
}

fn request(old: u64, proof: Vec<NodeHash>, checkpoint: String) -> Vec<u8> {
    AddCheckpoint {
        old_size: old,
        proof,
        checkpoint,
    }
    .to_bytes()
}

async fn witness() -> (Witness, std::path::PathBuf) {
    let path = std::env::temp_dir().join(format!("witness-{}.db", uuid::Uuid::new_v4().simple()));
    let state = WitnessState::create(&path, "samverkan/test/witness", ORIGIN)
        .await
        .unwrap();
    (
        Witness::new(state, registry(&broker_key())).await.unwrap(),
        path,
    )
}

#[tokio::test]
async fn cosigns_only_what_extends_its_state() {
    let (w, path) = witness().await;
    let first = note(1, &root(1), 1_000);
    let Answer::Cosigned(line) = w
        .add_checkpoint(&request(0, vec![], first.clone()))
        .await
        .unwrap()
    else {
        panic!("the first checkpoint is cosigned");
    };
    let text = first.split_once("\n\n").unwrap().0.to_string() + "\n";
    let found = verify_cosignatures(&join_note(&text, &[line]), &[w.public_key()]).unwrap();
    assert_eq!(found.len(), 1);
    assert!(found[0].timestamp > 1_600_000_000);

    // The wrong old size: the witness names its own.
    let third = note(3, &root(3), 3_000);
    assert_eq!(
        w.add_checkpoint(&request(0, vec![], third.clone()))
            .await
            .unwrap(),
        Answer::Conflict(1)
    );
    // A wrong proof is refused and kept; the right one is cosigned.
    let refused = w
        .add_checkpoint(&request(1, vec![leaf(9), leaf(3)], third.clone()))
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);
    assert!(matches!(
        w.add_checkpoint(&request(1, vec![leaf(2), leaf(3)], third.clone()))
            .await
            .unwrap(),
        Answer::Cosigned(_)
    ));
    assert_eq!(w.state().latest().await.unwrap().unwrap().size, 3);

    // Another root for size 3: a split view, refused and kept.
    let other = note(3, &[7; 32], 3_500);
    assert_eq!(
        w.add_checkpoint(&request(3, vec![], other.clone()))
            .await
            .unwrap()
            .status(),
        422
    );
    // A smaller tree signed later: a rollback, refused and kept.
    let rolled = note(2, &[8; 32], 9_000);
    assert_eq!(
        w.add_checkpoint(&request(3, vec![], rolled.clone()))
            .await
            .unwrap()
            .status(),
        422
    );
    let conflicts = w.state().conflicts().await.unwrap();
    let kinds: Vec<&str> = conflicts.iter().map(|c| c.kind.as_str()).collect();
    assert_eq!(kinds, ["inconsistent", "split_view", "rollback"]);
    assert_eq!(conflicts[1].held, third);
    assert_eq!(conflicts[1].offered, other);
    assert_eq!(conflicts[2].offered, rolled);
    // The state did not move.
    assert_eq!(w.state().latest().await.unwrap().unwrap().root, root(3));

    // Not the broker's key: 403; another log: 404; junk: 400.
    let forged = sign_checkpoint(
        ORIGIN,
        4,
        &[1; 32],
        4_000,
        None,
        &SigningKey::from_bytes(&[6; 32]),
    )
    .unwrap();
    assert_eq!(
        w.add_checkpoint(&request(3, vec![], forged))
            .await
            .unwrap()
            .status(),
        403
    );
    let elsewhere = sign_checkpoint("other/log", 4, &[1; 32], 4_000, None, &broker_key()).unwrap();
    assert_eq!(
        w.add_checkpoint(&request(3, vec![], elsewhere))
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(w.add_checkpoint(b"old 3\n").await.unwrap().status(), 400);
    assert_eq!(
        w.add_checkpoint(&request(4, vec![], note(3, &root(3), 3_000)))
            .await
            .unwrap()
            .status(),
        400
    );
    w.state().close().await;
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn published_checkpoints_are_cross_checked() {
    let (w, path) = witness().await;
    let two = note(2, &root(2), 2_000);
    assert!(matches!(
        w.add_checkpoint(&request(0, vec![], two)).await.unwrap(),
        Answer::Cosigned(_)
    ));
    // Consistent, then: the same size with another root, published to all.
    assert_eq!(
        w.observe(&note(2, &root(2), 2_000)).await.unwrap(),
        Observation::Consistent
    );
    assert_eq!(
        w.observe(&note(3, &root(3), 3_000)).await.unwrap(),
        Observation::Consistent
    );
    assert!(matches!(
        w.observe(&note(2, &[4; 32], 2_500)).await.unwrap(),
        Observation::Conflict(c) if c.kind == "split_view"
    ));
    // Asked later to cosign a size-3 tree that differs from one seen published.
    let other3 = note(3, &[5; 32], 3_100);
    assert_eq!(
        w.add_checkpoint(&request(2, vec![leaf(3)], other3))
            .await
            .unwrap()
            .status(),
        422
    );
    assert_eq!(w.state().conflicts().await.unwrap().len(), 2);
    // A note not signed by the broker is not evidence of anything.
    let forged = sign_checkpoint(
        ORIGIN,
        2,
        &[4; 32],
        2_600,
        None,
        &SigningKey::from_bytes(&[6; 32]),
    )
    .unwrap();
    assert!(w.observe(&forged).await.is_err());
    w.state().close().await;
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn a_lost_state_is_never_recreated_silently() {
    let path = std::env::temp_dir().join(format!("witness-{}.db", uuid::Uuid::new_v4().simple()));
    assert!(matches!(
        WitnessState::open(&path).await,
        Err(StateError::Missing(_))
    ));
    let state = WitnessState::create(&path, "samverkan/test/witness", ORIGIN)
        .await
        .unwrap();
    let key = state.identity().await.unwrap().key.verifying_key();
    state.close().await;
    assert!(matches!(
        WitnessState::create(&path, "samverkan/test/witness", ORIGIN).await,
        Err(StateError::Exists(_))
    ));
    let reopened = WitnessState::open(&path).await.unwrap();
    assert_eq!(reopened.identity().await.unwrap().key.verifying_key(), key);
    // Two users of one state cannot both advance from the same size.
    let second = WitnessState::open(&path).await.unwrap();
    let held = |size, root: u8| Held {
        size,
        root: [root; 32],
        time_ms: 1,
        note: String::new(),
    };
    assert!(reopened.advance(0, &held(5, 1)).await.unwrap());
    assert!(!second.advance(0, &held(3, 2)).await.unwrap());
    assert_eq!(second.latest().await.unwrap().unwrap().size, 5);
    second.close().await;
    reopened.close().await;
    std::fs::remove_file(&path).unwrap();
    let new = WitnessState::create(&path, "samverkan/test/witness", ORIGIN)
        .await
        .unwrap();
    assert_ne!(
        new.identity().await.unwrap().key.verifying_key(),
        key,
        "a new state has a new key"
    );
    new.close().await;
    let _ = std::fs::remove_file(path);
}
