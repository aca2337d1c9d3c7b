//! Ed25519 batch verification that accepts exactly what the strict single
//! check ([`crate::envelope::verify_signature`], `verify_strict`) accepts.
//!
//! ed25519-dalek's `verify_batch` checks one random linear combination of
//! the *cofactorless* equations `[S]B − R − [k]A = 0`. It does not apply the
//! strict check's other rules, and a random combination only proves that
//! each difference is zero up to a point of small order: a signer holding
//! its key can put a small-order component into `R` (or into a key `A` of
//! mixed order) so that its signature fails the strict check yet passes a
//! batch with probability 1/2 or more. So a signature joins a batch only if
//!
//! * `S` is canonical (`S < L`);
//! * `R` is the canonical encoding of a point (its `y` below `p`);
//! * `R` and `A` are of large order (the strict check's own rule) and have
//!   no small-order component at all (`[L]R = [L]A = 0`).
//!
//! Then every difference lies in the prime-order group, where a random
//! combination that vanishes means each difference is zero, except with
//! probability about 2⁻¹²⁸; and with `R` canonical, `[S]B − [k]A = R` is
//! exactly the strict check's "the encoding of `[S]B − [k]A` equals `R`".
//! Any other signature is checked alone, strictly. A batch that fails is
//! checked signature by signature, which finds the bad ones. See
//! `docs/DECISIONS.md` ("Batch verification keeps strict semantics").

use std::collections::HashMap;

use curve25519_dalek::edwards::CompressedEdwardsY;
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::{Signature, VerifyingKey};

use crate::envelope::verify_signature;

/// Below this many signatures a batch does not pay.
const MIN_BATCH: usize = 4;

/// One signature to check: key, message, signature bytes.
pub type Item<'a> = (&'a VerifyingKey, &'a [u8], &'a [u8]);

/// Whether each signature verifies strictly: the same answers as
/// [`verify_signature`] on each, found with one batch check when all are good.
pub fn verify_strict_batch(items: &[Item<'_>]) -> Vec<bool> {
    if items.len() < MIN_BATCH {
        return items.iter().map(single).collect();
    }
    let mut ok = vec![false; items.len()];
    let mut keys: HashMap<[u8; 32], bool> = HashMap::new();
    let mut batch: Vec<(usize, Signature)> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let (key, _, signature) = *item;
        let key_fits = *keys
            .entry(key.to_bytes())
            .or_insert_with(|| prime_order(&key.to_edwards()));
        match batchable(signature).filter(|_| key_fits) {
            Some(signature) => batch.push((i, signature)),
            None => ok[i] = single(item),
        }
    }
    let messages: Vec<&[u8]> = batch.iter().map(|(i, _)| items[*i].1).collect();
    let signatures: Vec<Signature> = batch.iter().map(|(_, s)| *s).collect();
    let verifying: Vec<VerifyingKey> = batch.iter().map(|(i, _)| *items[*i].0).collect();
    if ed25519_dalek::verify_batch(&messages, &signatures, &verifying).is_ok() {
        for (i, _) in &batch {
            ok[*i] = true;
        }
    } else {
        for (i, _) in &batch {
            ok[*i] = single(&items[*i]);
        }
    }
    ok
}

fn single((key, message, signature): &Item<'_>) -> bool {
    verify_signature(key, message, signature).is_ok()
}

/// The signature, if a batch check of it is equivalent to the strict check.
fn batchable(signature: &[u8]) -> Option<Signature> {
    let bytes: [u8; 64] = signature.try_into().ok()?;
    let mut r = [0u8; 32];
    r.copy_from_slice(&bytes[..32]);
    let mut s = [0u8; 32];
    s.copy_from_slice(&bytes[32..]);
    Option::<Scalar>::from(Scalar::from_canonical_bytes(s))?;
    if !canonical_y(&r) {
        return None;
    }
    let point = CompressedEdwardsY(r).decompress()?;
    prime_order(&point).then(|| Signature::from_bytes(&bytes))
}

/// In the prime-order subgroup and not the identity: neither small order
/// nor with a small-order component.
fn prime_order(point: &curve25519_dalek::EdwardsPoint) -> bool {
    !point.is_small_order() && point.is_torsion_free()
}

/// Whether the 255-bit `y` of an encoded point is below `p = 2²⁵⁵ − 19`
/// (the sign bit, bit 255, is not part of it). The encodings of points
/// with `x = 0` and the sign bit set are also non-canonical, but those
/// points have small order and are refused anyway.
fn canonical_y(encoded: &[u8; 32]) -> bool {
    let mut y = *encoded;
    y[31] &= 0x7f;
    // p = 0x7fff…ffed, little-endian: y < p unless every byte from 1 to 30
    // is 0xff, byte 31 is 0x7f and byte 0 is at least 0xed.
    !(y[31] == 0x7f && y[1..31].iter().all(|b| *b == 0xff) && y[0] >= 0xed)
}

#[cfg(test)]
mod tests {
    use curve25519_dalek::constants::EIGHT_TORSION;
    use ed25519_dalek::{Signer, SigningKey};
    use sha2::{Digest as _, Sha512};

    use super::*;

    fn keys(n: u8) -> Vec<SigningKey> {
        (1..=n).map(|i| SigningKey::from_bytes(&[i; 32])).collect()
    }

    fn check(items: &[(VerifyingKey, Vec<u8>, Vec<u8>)]) -> Vec<bool> {
        let refs: Vec<Item<'_>> = items
            .iter()
            .map(|(k, m, s)| (k, m.as_slice(), s.as_slice()))
            .collect();
        let batched = verify_strict_batch(&refs);
        let strict: Vec<bool> = refs.iter().map(single).collect();
        assert_eq!(batched, strict, "the batch must answer as the strict check");
        batched
    }

    fn good(keys: &[SigningKey]) -> Vec<(VerifyingKey, Vec<u8>, Vec<u8>)> {
        keys.iter()
            .enumerate()
            .map(|(i, k)| {
                let m = format!("message {i}").into_bytes();
                (k.verifying_key(), m.clone(), k.sign(&m).to_bytes().to_vec())
            })
            .collect()
    }

    #[test]
    fn a_good_batch_passes_and_one_forgery_is_found() {
        let keys = keys(9);
        let mut items = good(&keys);
        assert!(check(&items).iter().all(|ok| *ok));
        items[4].2[10] ^= 1;
        let ok = check(&items);
        assert_eq!(ok.iter().filter(|ok| !**ok).count(), 1);
        assert!(!ok[4]);
        // Another message under a good signature.
        let mut items = good(&keys);
        items[2].1.push(b'!');
        assert_eq!(check(&items).iter().position(|ok| !ok), Some(2));
    }

    /// A signature by `key` on `message` whose `R` carries the small-order
    /// component `torsion`, made as a dishonest key holder would: it fails
    /// the strict check, and a plain batch accepts it whenever its random
    /// coefficient kills the component.
    fn mixed_order_r(key: &SigningKey, message: &[u8], torsion: usize) -> Vec<u8> {
        let a = key.to_scalar();
        let r = Scalar::from_bytes_mod_order([42u8; 32]);
        let big_r = curve25519_dalek::EdwardsPoint::mul_base(&r) + EIGHT_TORSION[torsion];
        let r_bytes = big_r.compress().to_bytes();
        let mut h = Sha512::new();
        h.update(r_bytes);
        h.update(key.verifying_key().as_bytes());
        h.update(message);
        let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
        let s = r + k * a;
        let mut sig = r_bytes.to_vec();
        sig.extend_from_slice(s.as_bytes());
        sig
    }

    #[test]
    fn small_order_components_in_r_are_refused_as_strictly_as_alone() {
        let keys = keys(8);
        // Order 2 (index 4): a plain batch passes it about every other time.
        let mut plain_passed = 0;
        for torsion in [1, 2, 4] {
            for seed in 0..8u8 {
                let mut items = good(&keys);
                let m = vec![seed; 10];
                items[seed as usize % 8] = (
                    keys[0].verifying_key(),
                    m.clone(),
                    mixed_order_r(&keys[0], &m, torsion),
                );
                let ok = check(&items);
                assert!(!ok[seed as usize % 8]);
                assert_eq!(ok.iter().filter(|ok| **ok).count(), 7);
                let messages: Vec<&[u8]> = items.iter().map(|i| i.1.as_slice()).collect();
                let signatures: Vec<Signature> = items
                    .iter()
                    .map(|i| Signature::from_slice(&i.2).unwrap())
                    .collect();
                let verifying: Vec<VerifyingKey> = items.iter().map(|i| i.0).collect();
                if ed25519_dalek::verify_batch(&messages, &signatures, &verifying).is_ok() {
                    plain_passed += 1;
                }
            }
        }
        // The case is real: dalek's batch equation alone accepted some.
        assert!(plain_passed > 0);
    }

    #[test]
    fn envelopes_verified_together_get_the_answers_they_get_alone() {
        use crate::envelope::{Envelope, EnvelopeHeader};
        use crate::keys::{AgencyKey, KeyRegistry};
        let key = SigningKey::from_bytes(&[5; 32]);
        let mut registry = KeyRegistry::new();
        registry.insert(AgencyKey {
            owner: "polisen".into(),
            key_id: "k1".into(),
            public_key: key.verifying_key(),
            not_before_ms: None,
            not_after_ms: None,
            revoked_at_ms: None,
            revocation_reason: None,
        });
        let mut fields = serde_json::Map::new();
        fields.insert("orgnr".into(), serde_json::json!("556036-0793"));
        let mut envelopes: Vec<Envelope> = (0..10)
            .map(|i| {
                let header = EnvelopeHeader {
                    version: crate::envelope::VERSION,
                    alert_id: format!("a{i}"),
                    publisher: "polisen".into(),
                    key_id: "k1".into(),
                    alert_type: "akrim.inspection_result".into(),
                    topic: "akrim/ost/inspection".into(),
                    issued_at_ms: 1_800_000_000_000,
                    to: None,
                };
                Envelope::sign(header, &fields, &key).unwrap()
            })
            .collect();
        envelopes[3].signature.0[9] ^= 4;
        envelopes[6].header.key_id = "unknown".into();
        let first = envelopes[8].disclosures[0].clone();
        envelopes[8].disclosures.push(first);
        let refs: Vec<&Envelope> = envelopes.iter().collect();
        let together = Envelope::verify_all(&refs, &registry, true);
        let codes =
            |r: &Result<_, crate::envelope::EnvelopeError>| r.as_ref().err().map(|e| e.code());
        for (e, t) in envelopes.iter().zip(&together) {
            assert_eq!(codes(t), codes(&e.verify(&registry)));
        }
        let refused: Vec<_> = together.iter().filter_map(codes).collect();
        assert_eq!(refused, ["bad_signature", "unknown_key", "duplicate_field"]);
    }

    #[test]
    fn a_weak_key_or_small_order_r_is_refused() {
        let keys = keys(6);
        let mut items = good(&keys);
        // The identity as key and as R, S = 0: [0]B − R − [k]A = 0 holds,
        // and only the strict rules refuse it.
        let identity = CompressedEdwardsY::from_slice(&{
            let mut b = [0u8; 32];
            b[0] = 1;
            b
        })
        .unwrap()
        .to_bytes();
        let weak = VerifyingKey::from_bytes(&identity).unwrap();
        let mut sig = identity.to_vec();
        sig.extend_from_slice(&[0u8; 32]);
        items[1] = (weak, b"anything".to_vec(), sig.clone());
        // A good key with a small-order R and S = 0 is refused too.
        items[3] = (keys[3].verifying_key(), b"x".to_vec(), sig);
        let ok = check(&items);
        assert_eq!(ok, [true, false, true, false, true, true]);
    }

    #[test]
    fn non_canonical_encodings_are_refused() {
        let keys = keys(5);
        let mut items = good(&keys);
        // S + L: the same scalar, not canonical.
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut carry = 0u16;
        for (b, l) in items[0].2[32..].iter_mut().zip(L) {
            let sum = u16::from(*b) + u16::from(l) + carry;
            *b = sum as u8;
            carry = sum >> 8;
        }
        let ok = check(&items);
        assert!(!ok[0]);
        let mut p = [0xffu8; 32];
        p[0] = 0xed;
        p[31] = 0x7f;
        assert!(!canonical_y(&p));
        p[0] = 0xec;
        assert!(canonical_y(&p));
    }
}
