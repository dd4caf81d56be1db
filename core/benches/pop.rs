//! Proofs of possession (`authorize_request` on a registration, as the directory checks
//! each one: strict ed25519), beside what batch verification of the same signatures would
//! cost, and beside the check batching would need to agree with the strict rule: that each
//! signature's `R` has no torsion component (batch verification, cofactorless or not,
//! cannot tell a torsioned `R` from a good one with certainty; `verify_strict` and Go's
//! `ed25519.Verify` refuse it). Issue 20; ARCHITECTURE, "Batching".
//! `cargo bench -p blockpost-core --bench pop`.
#![allow(clippy::unwrap_used, missing_docs)]

use blockpost_core::{Identity, Operation, authorize_request};
use blockpost_proto::v1::{EntryKind, RegisterBody, SignedRequest};
use criterion::{BenchmarkId, Criterion, Throughput, black_box, criterion_group, criterion_main};
use ed25519_dalek::{Signature, VerifyingKey};
use prost::Message as _;

fn requests(n: usize) -> Vec<(SignedRequest, VerifyingKey)> {
    (0..n)
        .map(|i| {
            let id = Identity::generate();
            let body = RegisterBody {
                lei: Default::default(),
                address: format!("p{i}@bench.example"),
                real_name: format!("Participant {i}"),
                signing_key: id.signing_public().to_vec(),
                encryption_key: id.encryption_public().to_vec(),
                evidence_chain: vec![],
                timestamp_ms: 1_796_000_000_000,
            }
            .encode_to_vec();
            let req = SignedRequest {
                signature: Operation::Register.sign(&id.signing, &body),
                body,
                second_signature: vec![],
            };
            (req, id.signing.verifying_key())
        })
        .collect()
}

fn pop(c: &mut Criterion) {
    let mut g = c.benchmark_group("proof of possession");
    for n in [64usize, 256] {
        let reqs = requests(n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(
            BenchmarkId::new("authorize_request, one by one (the directory)", n),
            &reqs,
            |b, reqs| {
                b.iter(|| {
                    for (r, _) in reqs {
                        authorize_request(EntryKind::Register, black_box(r), None).unwrap();
                    }
                })
            },
        );
        let messages: Vec<Vec<u8>> = reqs
            .iter()
            .map(|(r, _)| Operation::Register.message(&r.body))
            .collect();
        let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        let sigs: Vec<Signature> = reqs
            .iter()
            .map(|(r, _)| Signature::from_slice(&r.signature).unwrap())
            .collect();
        let keys: Vec<VerifyingKey> = reqs.iter().map(|(_, k)| *k).collect();
        g.bench_with_input(
            BenchmarkId::new("signatures alone, verify_strict each", n),
            &(),
            |b, ()| {
                b.iter(|| {
                    for ((m, s), k) in refs.iter().zip(&sigs).zip(&keys) {
                        k.verify_strict(black_box(m), s).unwrap();
                    }
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("signatures alone, one batch (verify_batch)", n),
            &(),
            |b, ()| b.iter(|| ed25519_dalek::verify_batch(black_box(&refs), &sigs, &keys).unwrap()),
        );
        // What a batch would need beside it to refuse what the strict rule refuses: each
        // R torsion-free ([l]R = 0), one scalar multiplication a signature.
        let rs: Vec<VerifyingKey> = sigs
            .iter()
            .map(|s| VerifyingKey::from_bytes(&s.r_bytes()[..].try_into().unwrap()).unwrap())
            .collect();
        g.bench_with_input(
            BenchmarkId::new("R torsion-free check, each", n),
            &(),
            |b, ()| {
                b.iter(|| {
                    for r in &rs {
                        assert!(black_box(r).to_edwards().is_torsion_free());
                    }
                })
            },
        );
        // The same with variable-time arithmetic (R is public): [l-1]R + R.
        let points: Vec<curve25519_dalek::EdwardsPoint> =
            rs.iter().map(VerifyingKey::to_edwards).collect();
        let minus_one = -curve25519_dalek::Scalar::ONE;
        g.bench_with_input(
            BenchmarkId::new("R torsion-free check, variable time, each", n),
            &(),
            |b, ()| {
                b.iter(|| {
                    for p in &points {
                        let l_times =
                            curve25519_dalek::EdwardsPoint::vartime_double_scalar_mul_basepoint(
                                &minus_one,
                                black_box(p),
                                &curve25519_dalek::Scalar::ZERO,
                            ) + p;
                        assert!(curve25519_dalek::traits::IsIdentity::is_identity(&l_times));
                    }
                })
            },
        );
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = pop
}
criterion_main!(benches);
