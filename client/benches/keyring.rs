//! Keyrings (issue 22): opening a body sealed to an old generation through a keyring of
//! twelve (three years of quarterly rotations), beside opening it with the one key file
//! that holds that generation, in the same run; opening the keyring file (scrypt) beside
//! opening a PKCS#8 key file; splitting and recovering a 3-of-5 backup.
//! `cargo bench -p blockpost-client --bench keyring`.
#![allow(clippy::unwrap_used, missing_docs)]

use blockpost_client::keyring::BoundKeys;
use blockpost_client::{Keyring, backup, open_sealed};
use blockpost_core::{Identity, SealTo, body_aad, seal_body};
use blockpost_proto::v1::EnvelopeContent;
use criterion::{Criterion, black_box, criterion_group, criterion_main};

fn keyring_bench(c: &mut Criterion) {
    let gens: Vec<Identity> = (0..12).map(|_| Identity::generate()).collect();
    let mut ring = Keyring::new(gens[0].clone(), 0);
    ring.set_address("alice").unwrap();
    for g in &gens[1..] {
        ring.push(g.clone(), 0);
    }
    let history: Vec<BoundKeys> = gens
        .iter()
        .enumerate()
        .map(|(i, g)| BoundKeys {
            leaf_index: 10 * i as u64,
            revoke: false,
            signing_key: g.signing_public(),
            encryption_key: g.encryption_public(),
        })
        .collect();
    ring.label(&history);
    let content = EnvelopeContent {
        sender: "bob".into(),
        transaction_id: "t1".into(),
        ..Default::default()
    };
    // Sealed to the first generation, the one a keyring looks up last.
    let body = seal_body(
        &[SealTo {
            address: "alice",
            key_index: 0,
            key: gens[0].encryption_public(),
        }],
        &[7u8; 512],
        &body_aad("bob", "t1"),
    )
    .unwrap();
    let file_keys = ("alice", &gens[0]);
    let mut g = c.benchmark_group("keyring");
    g.bench_function("open a 512 B body: keyring of 12, first generation", |b| {
        b.iter(|| open_sealed(black_box(&body), &content, &ring).unwrap())
    });
    g.bench_function("peer: open it with that generation's key file keys", |b| {
        b.iter(|| open_sealed(black_box(&body), &content, &file_keys).unwrap())
    });
    g.finish();

    let mut g = c.benchmark_group("keyring files");
    g.sample_size(10);
    let file = ring.to_file(b"pw").unwrap();
    g.bench_function("open a keyring of 12 (scrypt 2^15)", |b| {
        b.iter(|| Keyring::from_file(black_box(&file), b"pw").unwrap())
    });
    let pem = gens[0].to_encrypted_pem(b"pw").unwrap();
    g.bench_function("peer: open one PKCS#8 key file (2 x scrypt 2^14)", |b| {
        b.iter(|| Identity::from_encrypted_pem(black_box(&pem), b"pw").unwrap())
    });
    let shares = backup::split(&ring, 5, 3).unwrap();
    let named: Vec<(String, String)> = shares[..3]
        .iter()
        .enumerate()
        .map(|(i, s)| (i.to_string(), s.to_string()))
        .collect();
    g.bench_function("backup: split into 5 shares, 3 to recover", |b| {
        b.iter(|| backup::split(black_box(&ring), 5, 3).unwrap())
    });
    g.bench_function("backup: recover from 3 shares", |b| {
        b.iter(|| backup::recover(black_box(&named), None).unwrap())
    });
    g.finish();
}

criterion_group!(benches, keyring_bench);
criterion_main!(benches);
