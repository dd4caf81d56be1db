//! Evidence bundles (issue 23): reading a bundle (ZIP) and checking it whole, offline, for
//! a finished four-message settlement with a receipt (`fixtures/settle-1.bpe`, exported
//! from a node), beside one strict ed25519 signature check in the same run (every
//! envelope costs one).
//! `cargo bench -p blockpost-client --bench bundle`.
#![allow(clippy::unwrap_used, missing_docs)]

use blockpost_client::bundle::from_zip;
use blockpost_core::bundle::{Trust, verify};
use criterion::{Criterion, black_box, criterion_group, criterion_main};
use ed25519_dalek::{Signer as _, SigningKey};

const BUNDLE: &[u8] = include_bytes!("fixtures/settle-1.bpe");

fn bundle_bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("bundle");
    g.bench_function("read the ZIP (30 members, 16 KB)", |b| {
        b.iter(|| from_zip(black_box(BUNDLE)).unwrap())
    });
    let members = from_zip(BUNDLE).unwrap();
    let trust = Trust::default();
    g.bench_function("verify the settlement bundle whole", |b| {
        b.iter(|| verify(black_box(&members), &trust).unwrap())
    });
    let key = SigningKey::from_bytes(&[7; 32]);
    let msg = [1u8; 200];
    let sig = key.sign(&msg);
    let vk = key.verifying_key();
    g.bench_function("peer: one strict ed25519 verify", |b| {
        b.iter(|| vk.verify_strict(black_box(&msg), &sig).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bundle_bench);
criterion_main!(benches);
