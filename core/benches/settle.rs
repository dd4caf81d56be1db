//! Reading trades and settlement instructions (`core::settle`), as the gateway does for
//! every plaintext one, beside the strict signature check every envelope already costs
//! (the gateway's admission rule) in the same run. Issue 21.
//! `cargo bench -p blockpost-core --bench settle`.
#![allow(clippy::unwrap_used, missing_docs)]

use blockpost_core::settle::{self, Expect, Participant};
use criterion::{Criterion, black_box, criterion_group, criterion_main};
use ed25519_dalek::{Signer as _, SigningKey};

const TRADE: &str = include_str!("../../examples/settlement/trade.fix");
const DELIVER: &str = include_str!("../../examples/settlement/instruction-deliver.xml");

fn settle_bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("settle");
    g.bench_function("fix trade: parse and check", |b| {
        b.iter(|| settle::parse(Expect::Trade, black_box(TRADE.as_bytes())).unwrap())
    });
    g.bench_function("sese.023 instruction: parse and check", |b| {
        b.iter(|| settle::parse(Expect::Instruction, black_box(DELIVER.as_bytes())).unwrap())
    });
    let t = settle::parse(Expect::Trade, TRADE.as_bytes()).unwrap();
    let who = |address, real_name, lei| Participant {
        address,
        real_name,
        lei: Some(lei),
    };
    let x = who("exchange", "Example Exchange Inc", "5493000EXCHANGE00016");
    let rs = [
        who("bank-a", "Bank A AG", "5299000BANKA0AG00068"),
        who("bank-b", "Bank B Ltd", "5493000BANKB0LTD0083"),
    ];
    g.bench_function("trade parties", |b| {
        b.iter(|| settle::check_parties(black_box(&t), x, &rs).unwrap())
    });
    // The peer: one strict ed25519 verification of a message of the trade's size.
    let key = SigningKey::from_bytes(&[7; 32]);
    let sig = key.sign(TRADE.as_bytes());
    let vk = key.verifying_key();
    g.bench_function("peer: strict ed25519 verify of the same bytes", |b| {
        b.iter(|| vk.verify_strict(black_box(TRADE.as_bytes()), &sig).unwrap())
    });
    g.finish();
}

criterion_group!(benches, settle_bench);
criterion_main!(benches);
