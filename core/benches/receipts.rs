//! Receipts (`core::receipt`): signing a window's receipts one by one (as the gateway did
//! before batches) beside one signature over their Merkle root; verifying them one by one
//! beside [`verify_receipts`], which checks each batch's signature once.
//! `cargo bench -p blockpost-core --bench receipts`.
#![allow(clippy::unwrap_used, missing_docs)]

use blockpost_core::{sign_receipt, sign_receipts, verify_receipt, verify_receipts};
use blockpost_proto::v1::ReceiptBody;
use criterion::{BenchmarkId, Criterion, Throughput, black_box, criterion_group, criterion_main};
use ed25519_dalek::SigningKey;

fn bodies(key: &SigningKey, n: usize) -> Vec<ReceiptBody> {
    (0..n as u64)
        .map(|i| ReceiptBody {
            message_id: [i.to_be_bytes(); 4].concat(),
            accepted_at_ms: 1_796_000_000_000 + i as i64,
            firehose_sequence: 1_000_000 + i,
            block_deadline_ms: 1_796_000_010_000 + i as i64,
            gateway_key: key.verifying_key().to_bytes().to_vec(),
            firehose_partition: 3,
        })
        .collect()
}

fn sign(c: &mut Criterion) {
    let key = SigningKey::from_bytes(&[7; 32]);
    let mut g = c.benchmark_group("receipt signing");
    for n in [16usize, 256] {
        let b = bodies(&key, n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(
            BenchmarkId::new("one signature each (before)", n),
            &b,
            |bn, b| bn.iter(|| b.iter().map(|x| sign_receipt(&key, x)).collect::<Vec<_>>()),
        );
        g.bench_with_input(
            BenchmarkId::new("one signature per batch", n),
            &b,
            |bn, b| bn.iter(|| sign_receipts(&key, black_box(b)).unwrap()),
        );
    }
    g.finish();
}

fn verify(c: &mut Criterion) {
    let key = SigningKey::from_bytes(&[7; 32]);
    let vk = key.verifying_key();
    let mut g = c.benchmark_group("receipt verification");
    for n in [16usize, 256] {
        let b = bodies(&key, n);
        let single: Vec<_> = b.iter().map(|x| sign_receipt(&key, x)).collect();
        let batched = sign_receipts(&key, &b).unwrap();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(
            BenchmarkId::new("single receipts, each", n),
            &single,
            |bn, rs| {
                bn.iter(|| {
                    for r in rs {
                        black_box(verify_receipt(&vk, r).unwrap());
                    }
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("batched receipts, each alone", n),
            &batched,
            |bn, rs| {
                bn.iter(|| {
                    for r in rs {
                        black_box(verify_receipt(&vk, r).unwrap());
                    }
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("batched receipts, verify_receipts", n),
            &batched,
            |bn, rs| bn.iter(|| verify_receipts(&vk, black_box(rs)).len()),
        );
    }
    g.finish();
}

criterion_group!(benches, sign, verify);
criterion_main!(benches);
