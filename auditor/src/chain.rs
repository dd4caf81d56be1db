//! The chain of blocks, checked block by block with the code the builder runs
//! ([`blockpost_core::block`], [`blockpost_core::transaction`]): the builder's signature,
//! the Merkle root over the leaves, the link to the previous header, the transaction
//! closings replayed, and no message in two blocks. No I/O.

use std::collections::{HashMap, HashSet};

use blockpost_core::ReplayTree;
use blockpost_core::block::{VerifiedHeader, verify_block, verify_header};
use blockpost_core::transaction::{Book, Entry, replay_block};
use blockpost_proto::v1::Block;
use ed25519_dalek::VerifyingKey;
use prost::Message as _;

use crate::alert::{Alert, AlertKind};
use crate::checkpoints::{Kinds, SignedRoots};

/// What a verified block holds, for the promise checks.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockSeen {
    /// Its height.
    pub height: u64,
    /// Its time (ms since the Unix epoch).
    pub time_ms: i64,
    /// The ids of its messages.
    pub messages: Vec<[u8; 32]>,
    /// The firehose sequences it took: partition, first and last, per partition it took
    /// from.
    pub ranges: Vec<(u32, u64, u64)>,
    /// The directory checkpoint it names: size and root.
    pub directory: (u64, [u8; 32]),
    /// Its messages: leaf index, message id, content.
    pub contents: Vec<(u64, [u8; 32], blockpost_proto::v1::EnvelopeContent)>,
}

/// The chain as verified so far.
pub struct Chain {
    key: VerifyingKey,
    /// Verified block ids, by height.
    ids: Vec<[u8; 32]>,
    tip: Option<VerifiedHeader>,
    book: Book,
    closed: HashSet<String>,
    /// Where each message is: its height.
    placed: HashMap<[u8; 32], u64>,
    /// The ledger: the tree of block ids, and its signed checkpoints.
    ledger: ReplayTree,
    checkpoints: SignedRoots,
    /// The delivery rules, fed every block in order.
    deliveries: blockpost_core::delivery::DeliveryRules,
}

fn short(id: &[u8]) -> String {
    hex::encode(id.get(..8).unwrap_or(id))
}

impl Chain {
    /// An empty chain of the builder with `key`, whose transactions time out after
    /// `timeout_ms`, under ledger checkpoints that `ledger_key` signs (signed-note form).
    pub fn new(key: VerifyingKey, timeout_ms: u64, ledger_key: String) -> Self {
        Self {
            ledger: ReplayTree::new(),
            checkpoints: SignedRoots::new(
                "ledger",
                ledger_key,
                Kinds {
                    invalid: AlertKind::LedgerInvalid,
                    fork: AlertKind::LedgerFork,
                    inconsistent: AlertKind::LedgerInconsistent,
                },
            ),
            key,
            ids: Vec::new(),
            tip: None,
            book: Book::new(timeout_ms, []),
            closed: HashSet::new(),
            placed: HashMap::new(),
            deliveries: Default::default(),
        }
    }

    /// Blocks verified.
    pub fn len(&self) -> u64 {
        self.ids.len() as u64
    }

    /// The largest size of a ledger checkpoint verified against the chain's block ids.
    pub fn ledger_verified(&self) -> u64 {
        self.checkpoints.verified()
    }

    /// Whether no block was verified yet.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The signed ledger checkpoints seen and verified.
    pub fn checkpoints(&self) -> &blockpost_core::follow::SignedRoots {
        self.checkpoints.roots()
    }

    /// A ledger checkpoint (a note the node handed out): checked against the chain of
    /// block ids verified, now or once the chain gets to its size.
    pub fn ledger_checkpoint(&mut self, note: &[u8], now_ms: i64) -> Vec<Alert> {
        self.checkpoints.note(note, &self.ledger, now_ms)
    }

    /// The height of the verified block holding message `id`.
    pub fn placed(&self, id: &[u8; 32]) -> Option<u64> {
        self.placed.get(id).copied()
    }

    /// The time of the newest verified block.
    pub fn time_ms(&self) -> Option<i64> {
        self.tip.as_ref().map(|t| t.header.time_ms)
    }

    /// Open transactions (after the verified blocks) whose deadline is at or before
    /// `time_ms`: their id and deadline.
    pub fn overdue(&self, time_ms: i64) -> Vec<(String, i64)> {
        self.book
            .overdue(time_ms)
            .into_iter()
            .map(|t| (t.id.clone(), t.deadline_ms))
            .collect()
    }

    /// Checks the next block read from the blocks stream (its encoded bytes). Returns the
    /// problems found, and what the block holds if it extended the chain.
    pub fn block(&mut self, bytes: &[u8], now_ms: i64) -> (Vec<Alert>, Option<BlockSeen>) {
        let evidence = |extra: serde_json::Value| {
            let mut e = serde_json::json!({ "block": hex::encode(bytes) });
            if let (Some(m), serde_json::Value::Object(x)) = (e.as_object_mut(), extra) {
                m.extend(x);
            }
            e
        };
        // A block whose height cannot be trusted is named by the hash of its bytes.
        let by_bytes = || {
            format!(
                "block bytes {}",
                short(&blockpost_core::block::block_id(bytes))
            )
        };
        let block = match Block::decode(bytes) {
            Ok(b) => b,
            Err(e) => {
                let subject = by_bytes();
                return (
                    vec![Alert::new(
                        AlertKind::BlockInvalid,
                        subject,
                        now_ms,
                        format!("a message on the blocks stream is not a block: {e}"),
                        evidence(serde_json::json!({})),
                    )],
                    None,
                );
            }
        };
        let v = match verify_block(&block, &self.key) {
            Ok(v) => v,
            Err(e) => {
                // The height it claims, for the alert: only a header that verifies names it.
                let claimed = block
                    .header
                    .as_ref()
                    .and_then(|h| verify_header(h, &self.key).ok())
                    .map(|h| h.header.height);
                let subject = claimed.map_or_else(by_bytes, |h| format!("block {h}"));
                return (
                    vec![Alert::new(
                        AlertKind::BlockInvalid,
                        subject,
                        now_ms,
                        format!("the block does not verify: {e}"),
                        evidence(serde_json::json!({ "height": claimed })),
                    )],
                    None,
                );
            }
        };
        let h = v.header.header.height;
        let id = v.header.id;
        let next = self.len();
        if h < next {
            let known = self.ids[h as usize];
            if known == id {
                return (Vec::new(), None); // the same block again
            }
            return (
                vec![Alert::new(
                    AlertKind::Fork,
                    format!("block {h}"),
                    now_ms,
                    format!(
                        "two different blocks signed by the builder at height {h}: {} and {}",
                        hex::encode(known),
                        hex::encode(id)
                    ),
                    evidence(serde_json::json!({
                        "height": h,
                        "verified_id": hex::encode(known),
                        "other_id": hex::encode(id),
                    })),
                )],
                None,
            );
        }
        if h > next {
            return (
                vec![Alert::new(
                    AlertKind::ChainBroken,
                    format!("block {next} missing"),
                    now_ms,
                    format!("block {h} came, but block {next} never did"),
                    evidence(serde_json::json!({ "height": h, "missing": next })),
                )],
                None,
            );
        }
        if let Some(prev) = &self.tip
            && let Err(e) = v.header.check_follows(prev)
        {
            return (
                vec![Alert::new(
                    AlertKind::ChainBroken,
                    format!("block {h}"),
                    now_ms,
                    format!("block {h} does not follow block {}: {e}", h - 1),
                    evidence(serde_json::json!({
                        "height": h,
                        "previous_id": hex::encode(prev.id),
                    })),
                )],
                None,
            );
        }
        let mut alerts = Vec::new();
        let closed = &self.closed;
        let entries =
            match replay_block(&mut self.book, h, v.header.header.time_ms, &v.leaves, |t| {
                closed.contains(t)
            }) {
                Ok(e) => e,
                Err(e) => {
                    alerts.push(Alert::new(
                        AlertKind::ClosingWrong,
                        format!("block {h}"),
                        now_ms,
                        format!("the transaction closings of block {h} are not the rules': {e}"),
                        evidence(serde_json::json!({ "height": h })),
                    ));
                    Vec::new()
                }
            };
        let mut messages = Vec::new();
        for e in &entries {
            match e {
                Entry::Message(m, _) => {
                    if let Some(first) = self.placed.get(&m.id) {
                        alerts.push(Alert::new(
                            AlertKind::DuplicateMessage,
                            format!("message {}", hex::encode(m.id)),
                            now_ms,
                            format!(
                                "message {} is in block {first} and again in block {h}",
                                hex::encode(m.id)
                            ),
                            serde_json::json!({
                                "message_id": hex::encode(m.id),
                                "heights": [first, h],
                            }),
                        ));
                    } else {
                        self.placed.insert(m.id, h);
                    }
                    messages.push(m.id);
                }
                Entry::Closing(t, _) => {
                    self.closed.insert(t.id.clone());
                }
                Entry::Anchor | Entry::Delivery | Entry::Other => {}
            }
        }
        let ranges = v
            .header
            .header
            .partitions
            .iter()
            .map(|p| (p.partition, p.first_seq, p.last_seq))
            .collect();
        let mut directory_root = [0; 32];
        if let Ok(r) = <[u8; 32]>::try_from(v.header.header.directory_root.as_slice()) {
            directory_root = r;
        }
        // The delivery rules, leaf by leaf in ledger order (a delivery record refers to
        // instructions and closings of earlier blocks).
        for kind in &v.kinds {
            use blockpost_core::block::Leaf;
            use blockpost_proto::v1::ledger_record::Record;
            match kind {
                Leaf::Message(env) => {
                    if let Ok(c) =
                        blockpost_proto::v1::EnvelopeContent::decode(env.content.as_slice())
                    {
                        self.deliveries.message(blockpost_core::message_id(env), &c);
                    }
                }
                Leaf::Record(r) => match &r.record {
                    Some(Record::Closing(c)) => self.deliveries.closed(c),
                    Some(Record::Delivery(d)) => {
                        if let Err(f) = self.deliveries.record(d) {
                            alerts.push(Alert::new(
                                AlertKind::DeliveryWrong,
                                format!(
                                    "delivery {} {}",
                                    hex::encode(&d.message_id),
                                    blockpost_core::delivery::stage_name(d.stage)
                                ),
                                now_ms,
                                format!("block {h}: {f}"),
                                serde_json::json!({
                                    "height": h,
                                    "record": hex::encode(r.encode_to_vec()),
                                }),
                            ));
                        }
                    }
                    _ => {}
                },
            }
        }
        let mut contents = Vec::new();
        for (i, (leaf, kind)) in v.leaves.iter().zip(&v.kinds).enumerate() {
            if let blockpost_core::block::Leaf::Message(env) = kind
                && let Ok(c) = blockpost_proto::v1::EnvelopeContent::decode(env.content.as_slice())
            {
                contents.push((i as u64, blockpost_core::message_id_of_encoded(leaf), c));
            }
        }
        let seen = BlockSeen {
            contents,
            height: h,
            time_ms: v.header.header.time_ms,
            messages,
            ranges,
            directory: (v.header.header.directory_size, directory_root),
        };
        self.ids.push(id);
        self.tip = Some(v.header);
        if self.ledger.append(&id).is_ok() {
            alerts.extend(self.checkpoints.grown(&self.ledger, now_ms));
        }
        (alerts, Some(seen))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use blockpost_core::block::{builder_key_id, merkle_root, sign_header};
    use blockpost_core::sign_envelope;
    use blockpost_proto::v1::{BlockHeader, EnvelopeContent, MessageKind, PartitionRange};
    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::alert::AlertKind;

    /// A signed envelope of transaction `tx-N` (a test fixture).
    pub(crate) fn envelope(n: u8) -> Vec<u8> {
        let c = EnvelopeContent {
            sender: "bank-a".into(),
            recipients: vec!["bank-b".into()],
            transaction_id: format!("tx-{n}"),
            kind: MessageKind::Message as i32,
            content_type: "text/plain".into(),
            nonce: u64::from(n),
            body: Some(blockpost_proto::v1::envelope_content::Body::Plaintext(
                vec![n; 8],
            )),
            ..Default::default()
        };
        let k = SigningKey::from_bytes(&[1; 32]);
        sign_envelope(&k, c.encode_to_vec()).encode_to_vec()
    }

    /// Block `height` holding envelopes `ns`, naming partition 0's sequences
    /// `height * 10 + 1` to `height * 10 + 9` (a test fixture).
    pub(crate) fn block(
        key: &SigningKey,
        height: u64,
        prev: Option<[u8; 32]>,
        ns: &[u8],
    ) -> (Vec<u8>, [u8; 32]) {
        let leaves: Vec<Vec<u8>> = ns.iter().map(|n| envelope(*n)).collect();
        let hashes: Vec<[u8; 32]> = leaves
            .iter()
            .map(|l| blockpost_core::leaf_hash(l))
            .collect();
        let header = BlockHeader {
            height,
            previous_hash: prev.map_or_else(Vec::new, |p| p.to_vec()),
            merkle_root: merkle_root(&hashes).to_vec(),
            leaf_count: leaves.len() as u64,
            partitions: vec![PartitionRange {
                partition: 0,
                first_seq: height * 10 + 1,
                last_seq: height * 10 + 9,
            }],
            directory_size: 0,
            directory_root: blockpost_core::block::empty_root().to_vec(),
            time_ms: 1_000 + i64::try_from(height).unwrap(),
            builder_key_id: builder_key_id(&key.verifying_key()).to_vec(),
        };
        let signed = sign_header(key, &header);
        let id = blockpost_core::block::block_id(&signed.header);
        let b = Block {
            header: Some(signed),
            leaves,
        };
        (b.encode_to_vec(), id)
    }

    fn kinds(a: &[Alert]) -> Vec<AlertKind> {
        a.iter().map(|a| a.kind).collect()
    }

    #[test]
    fn a_good_chain_verifies_and_each_fault_has_its_alert() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let ledger =
            blockpost_core::CheckpointSigner::new("test/ledger", SigningKey::from_bytes(&[6; 32]))
                .unwrap();
        let mut chain = Chain::new(key.verifying_key(), 3_600_000, ledger.verifier_key());
        let (b0, id0) = block(&key, 0, None, &[1, 2]);
        let (b1, id1) = block(&key, 1, Some(id0), &[3]);
        let (a, seen) = chain.block(&b0, 5);
        assert!(a.is_empty(), "{a:?}");
        assert_eq!(seen.unwrap().messages.len(), 2);
        let (a, _) = chain.block(&b1, 5);
        assert!(a.is_empty(), "{a:?}");
        assert_eq!(chain.len(), 2);
        // The same block again (a redelivery) is fine.
        assert_eq!(chain.block(&b1, 5), (Vec::new(), None));

        // One byte of one leaf changed.
        let (b2, id2) = block(&key, 2, Some(id1), &[4]);
        let mut tampered = b2.clone();
        let at = tampered.len() - 3;
        tampered[at] ^= 1;
        let (a, seen) = chain.block(&tampered, 5);
        assert_eq!(kinds(&a), vec![AlertKind::BlockInvalid]);
        assert_eq!(a[0].subject, "block 2");
        assert!(seen.is_none());
        // Signed by another key.
        let other = SigningKey::from_bytes(&[8; 32]);
        assert_eq!(
            kinds(&chain.block(&block(&other, 2, Some(id1), &[4]).0, 5).0),
            vec![AlertKind::BlockInvalid]
        );
        // Another block at height 1, signed by the builder.
        let (fork, _) = block(&key, 1, Some(id0), &[5]);
        assert_eq!(kinds(&chain.block(&fork, 5).0), vec![AlertKind::Fork]);
        // A block that skips a height, and one that links to the wrong block.
        assert_eq!(
            kinds(&chain.block(&block(&key, 3, Some(id2), &[6]).0, 5).0),
            vec![AlertKind::ChainBroken]
        );
        assert_eq!(
            kinds(&chain.block(&block(&key, 2, Some(id0), &[6]).0, 5).0),
            vec![AlertKind::ChainBroken]
        );
        assert_eq!(chain.len(), 2, "no bad block extends the chain");
        // Ledger checkpoints: the root of the block ids verified, or an alert.
        let mut ids = ReplayTree::new();
        for id in [id0, id1] {
            ids.append(&id).unwrap();
        }
        let good = ledger.sign(2, ids.root(2).unwrap()).unwrap();
        assert!(chain.ledger_checkpoint(&good, 5).is_empty());
        assert_eq!(
            kinds(&chain.ledger_checkpoint(&ledger.sign(2, [1; 32]).unwrap(), 5)),
            vec![AlertKind::LedgerFork]
        );
        assert_eq!(
            kinds(&chain.ledger_checkpoint(&ledger.sign(1, [1; 32]).unwrap(), 5)),
            vec![AlertKind::LedgerInconsistent]
        );
        let stranger =
            blockpost_core::CheckpointSigner::new("test/ledger", SigningKey::from_bytes(&[7; 32]))
                .unwrap();
        assert_eq!(
            kinds(&chain.ledger_checkpoint(&stranger.sign(2, ids.root(2).unwrap()).unwrap(), 5)),
            vec![AlertKind::LedgerInvalid]
        );
        // Ahead of the chain: checked when the block comes (block 2, below).
        assert!(
            chain
                .ledger_checkpoint(&ledger.sign(3, [1; 32]).unwrap(), 5)
                .is_empty()
        );
        // A message already in block 0; and the ledger checkpoint of size 3 waiting for it.
        let (dup, _) = block(&key, 2, Some(id1), &[7, 1]);
        let (a, seen) = chain.block(&dup, 5);
        assert_eq!(
            kinds(&a),
            vec![AlertKind::DuplicateMessage, AlertKind::LedgerInconsistent]
        );
        assert_eq!(seen.unwrap().height, 2);
        // Not a block at all.
        assert_eq!(
            kinds(&chain.block(b"junk", 5).0),
            vec![AlertKind::BlockInvalid]
        );
    }
}
