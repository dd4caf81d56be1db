//! Block maps (`core::blockmap`): what the builder pays to make a block's tree level by
//! level, beside `rs_merkle` making the same root (the peer, same run); and what a look-up
//! pays to check a leaf's path against the root, beside hashing the whole block as
//! look-ups did before maps. `cargo bench -p blockpost-core --bench blockmap`.
#![allow(clippy::unwrap_used, missing_docs)]

use blockpost_core::block::{BlockTree, merkle_root};
use blockpost_core::blockmap::{MapLayout, TreeLevels, block_map_with, root_from_path};
use blockpost_core::leaf_hash;
use blockpost_proto::v1::{Block, SignedBlockHeader};
use criterion::{BenchmarkId, Criterion, black_box, criterion_group, criterion_main};
use prost::Message as _;

/// A block of `n` leaves of 393 bytes (an envelope's size in `bench blocks`).
fn block(n: usize) -> (Vec<u8>, Vec<[u8; 32]>) {
    let leaves: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let mut l = vec![0u8; 393];
            l[..8].copy_from_slice(&(i as u64).to_be_bytes());
            l
        })
        .collect();
    let hashes = leaves.iter().map(|l| leaf_hash(l)).collect();
    let bytes = Block {
        header: Some(SignedBlockHeader {
            header: vec![1; 120],
            signature: vec![2; 64],
        }),
        leaves,
    }
    .encode_to_vec();
    (bytes, hashes)
}

fn make(c: &mut Criterion) {
    let mut g = c.benchmark_group("block tree");
    for n in [1_000usize, 10_000] {
        let (bytes, hashes) = block(n);
        g.bench_with_input(
            BenchmarkId::new("rs_merkle root (peer)", n),
            &hashes,
            |b, h| b.iter(|| merkle_root(black_box(h))),
        );
        g.bench_with_input(BenchmarkId::new("levels and root", n), &hashes, |b, h| {
            b.iter(|| TreeLevels::new(black_box(h.clone())).root())
        });
        let levels = TreeLevels::new(hashes.clone());
        g.bench_with_input(
            BenchmarkId::new("map from levels", n),
            &bytes,
            |b, bytes| b.iter(|| block_map_with(black_box(bytes), &levels).unwrap()),
        );
    }
    g.finish();
}

fn look_up(c: &mut Criterion) {
    let mut g = c.benchmark_group("leaf look-up");
    let n = 10_000usize;
    let (bytes, hashes) = block(n);
    let levels = TreeLevels::new(hashes.clone());
    let map = block_map_with(&bytes, &levels).unwrap();
    let layout = MapLayout::parse(&map).unwrap();
    let root = levels.root();
    let at = |pos: u64| -> [u8; 32] { map[pos as usize..pos as usize + 32].try_into().unwrap() };
    let i = 7_777u32;
    g.bench_function("path through the map, checked (10,000 leaves)", |b| {
        b.iter(|| {
            let path: Vec<[u8; 32]> = layout.path_at(black_box(i)).into_iter().map(at).collect();
            let leaf = at(layout.leaf_hash_at(i));
            assert_eq!(root_from_path(n as u32, i, leaf, &path), Some(root));
        })
    });
    g.sample_size(10);
    g.bench_function(
        "whole block hashed for its path, before maps (10,000 leaves)",
        |b| {
            b.iter(|| {
                let decoded = Block::decode(black_box(bytes.as_slice())).unwrap();
                let h: Vec<[u8; 32]> = decoded.leaves.iter().map(|l| leaf_hash(l)).collect();
                BlockTree::new(&h).proof(i as usize).unwrap()
            })
        },
    );
    g.finish();
}

criterion_group!(benches, make, look_up);
criterion_main!(benches);
