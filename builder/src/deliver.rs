//! Delivery: for each transaction the ledger closed as finished, the ledger transactions
//! its settlement instructions carry are opened with the node's delivery key and handed
//! to the operator's `broadcast_command`; each step is a [`DeliveryRecord`] in a block.
//!
//! Exactly once, by the ledger itself: the INTENT record is in a stored block before the
//! transaction is broadcast. Everything this role knows it reads back from the blocks
//! (instructions, closings, delivery records), so a builder that restarts, or a standby
//! that takes over, finds an intent without an outcome and sends the same bytes again, and
//! never broadcasts an instruction with no intent on the record. A second send of the same
//! Bitcoin transaction moves nothing twice (nodes know it by txid); when a re-send fails,
//! `block_command` is asked whether the transaction is confirmed already before the
//! failure is recorded. A transaction that timed out delivers nothing, and its
//! instructions are never opened.
//!
//! Records wait in [`Deliveries::queue`] until the next cut takes them (a crash loses only
//! records that the next scan makes again).

use std::collections::{HashMap, HashSet};

use blockpost_core::block::{Leaf, classify_leaf};
use blockpost_core::delivery::{self, DELIVERY_RECIPIENT};
use blockpost_proto::v1::{
    Block, DeliveryRecord, DeliveryStage, EnvelopeContent, LedgerDelivery, LedgerRecord,
    TransactionStatus, ledger_record,
};
use prost::Message as _;

use crate::config::BitcoinConfig;
use crate::{Error, Result};

/// What the role has read from the blocks, and the records waiting for a block.
#[derive(Default)]
pub struct Deliveries {
    /// The next height to read.
    next: u64,
    /// Instructions that carry a delivery: id → (sender, transaction, delivery).
    carried: HashMap<[u8; 32], (String, String, LedgerDelivery)>,
    /// Transactions closed as finished (and whose instructions may be delivered).
    finished: HashSet<String>,
    /// Stages on the record per instruction.
    recorded: HashMap<[u8; 32], Vec<DeliveryStage>>,
    /// Records made and not yet handed to a cut, by (instruction, stage).
    queued: HashMap<([u8; 32], i32), Vec<u8>>,
    /// Records handed to a cut and not yet seen in a block: the ledger's length when they
    /// were taken (a cut that failed leaves them unseen past it: they are made again).
    taken: HashMap<([u8; 32], i32), u64>,
}

impl Deliveries {
    /// Reads the blocks from where it stopped up to `len` (exclusive) with `read`.
    pub fn read_blocks(&mut self, len: u64, read: impl Fn(u64) -> Result<Vec<u8>>) -> Result<()> {
        while self.next < len {
            let bytes = read(self.next)?;
            let block = Block::decode(bytes.as_slice())
                .map_err(|e| Error::Corrupted(format!("block {}: {e}", self.next)))?;
            for leaf in &block.leaves {
                match classify_leaf(leaf) {
                    Ok(Leaf::Message(env)) => {
                        let Ok(c) = EnvelopeContent::decode(env.content.as_slice()) else {
                            continue;
                        };
                        if let Some(d) = c.delivery {
                            self.carried.insert(
                                blockpost_core::message_id(&env),
                                (c.sender, c.transaction_id, d),
                            );
                        }
                    }
                    Ok(Leaf::Record(LedgerRecord {
                        record: Some(ledger_record::Record::Closing(c)),
                    })) if c.status == TransactionStatus::Finished as i32 => {
                        self.finished.insert(c.transaction_id);
                    }
                    Ok(Leaf::Record(LedgerRecord {
                        record: Some(ledger_record::Record::Delivery(d)),
                    })) => {
                        if let Ok(id) = <[u8; 32]>::try_from(d.message_id.as_slice()) {
                            self.queued.remove(&(id, d.stage));
                            self.taken.remove(&(id, d.stage));
                            self.recorded
                                .entry(id)
                                .or_default()
                                .push(DeliveryStage::try_from(d.stage).unwrap_or_default());
                        }
                    }
                    _ => {}
                }
            }
            self.next += 1;
        }
        // Taken by a cut at length `at`, and not in the blocks up to `at + 1`: that cut
        // failed.
        let next = self.next;
        self.taken.retain(|_, at| *at + 1 >= next);
        Ok(())
    }

    /// Hands the waiting records to a cut at ledger length `len`.
    pub fn take(&mut self, len: u64) -> Vec<Vec<u8>> {
        let mut out = Vec::with_capacity(self.queued.len());
        for (k, v) in self.queued.drain() {
            self.taken.insert(k, len);
            out.push(v);
        }
        out
    }

    /// Whether records wait for a block.
    pub fn waiting(&self) -> bool {
        !self.queued.is_empty()
    }

    fn has(&self, id: &[u8; 32], s: DeliveryStage) -> bool {
        let k = (*id, s as i32);
        self.recorded.get(id).is_some_and(|v| v.contains(&s))
            || self.queued.contains_key(&k)
            || self.taken.contains_key(&k)
    }

    fn queue_record(&mut self, id: [u8; 32], r: DeliveryRecord) {
        let stage = r.stage;
        let bytes = LedgerRecord {
            record: Some(ledger_record::Record::Delivery(r)),
        }
        .encode_to_vec();
        self.queued.insert((id, stage), bytes);
    }

    /// One round: for every instruction of a finished transaction, the next step. Returns
    /// how many records it queued.
    pub fn step(
        &mut self,
        key: &x25519_dalek::StaticSecret,
        commands: &BitcoinConfig,
        now_ms: i64,
    ) -> usize {
        let before = self.queued.len();
        let due: Vec<([u8; 32], String, String, LedgerDelivery)> = self
            .carried
            .iter()
            .filter(|(_, (_, tx, _))| self.finished.contains(tx))
            .map(|(id, (s, tx, d))| (*id, s.clone(), tx.clone(), d.clone()))
            .collect();
        for (id, sender, tx, d) in due {
            let record = |stage: DeliveryStage| DeliveryRecord {
                transaction_id: tx.clone(),
                message_id: id.to_vec(),
                ledger: d.ledger.clone(),
                commitment: d.commitment.clone(),
                stage: stage as i32,
                time_ms: now_ms,
                ..Default::default()
            };
            let outcome =
                self.has(&id, DeliveryStage::Delivered) || self.has(&id, DeliveryStage::Refused);
            let intent_recorded = self
                .recorded
                .get(&id)
                .is_some_and(|v| v.contains(&DeliveryStage::Intent));
            if !self.has(&id, DeliveryStage::Intent) && !outcome {
                // First step: open it (the delivery key's only use), then an intent; a sealed
                // transaction that is not the committed one is refused without a send.
                match delivery::open_delivery(&d, DELIVERY_RECIPIENT, key, &sender, &tx) {
                    Ok(_) => self.queue_record(id, record(DeliveryStage::Intent)),
                    Err(e) => {
                        let mut r = record(DeliveryStage::Refused);
                        r.reason = format!("the delivery key cannot deliver it: {e}");
                        self.queue_record(id, r);
                    }
                }
                continue;
            }
            if intent_recorded && !outcome {
                // The intent is in a stored block: send.
                let shown = delivery::show_commitment(&d.ledger, &d.commitment);
                let sent = delivery::open_delivery(&d, DELIVERY_RECIPIENT, key, &sender, &tx)
                    .map_err(|e| e.to_string())
                    .and_then(|raw| {
                        crate::anchor::bitcoin::broadcast(commands, &hex::encode(raw))
                            .map_err(|e| e.to_string())
                    });
                match sent {
                    Ok(()) => self.queue_record(id, record(DeliveryStage::Delivered)),
                    // Sent before a crash, perhaps, and confirmed since: delivered.
                    Err(_)
                        if matches!(
                            crate::anchor::bitcoin::confirming_block(commands, &shown),
                            Ok(Some(_))
                        ) =>
                    {
                        self.queue_record(id, record(DeliveryStage::Delivered));
                    }
                    Err(why) => {
                        let mut r = record(DeliveryStage::Refused);
                        r.reason = why;
                        self.queue_record(id, r);
                    }
                }
                continue;
            }
            let delivered = self
                .recorded
                .get(&id)
                .is_some_and(|v| v.contains(&DeliveryStage::Delivered));
            if delivered && !self.has(&id, DeliveryStage::Confirmed) {
                let shown = delivery::show_commitment(&d.ledger, &d.commitment);
                if let Ok(Some(block)) = crate::anchor::bitcoin::confirming_block(commands, &shown)
                    && let Ok((height, txids, index, _)) =
                        crate::anchor::bitcoin::locate(&block, &shown)
                    && let Some(path) = delivery::bitcoin_merkle_path(&txids, index)
                {
                    let mut r = record(DeliveryStage::Confirmed);
                    r.ledger_height = height;
                    r.block_header = bitcoin::consensus::serialize(&block.header);
                    r.tx_index = index as u64;
                    r.merkle_path = path.iter().map(|p| p.to_vec()).collect();
                    self.queue_record(id, r);
                }
            }
        }
        self.queued.len() - before
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use blockpost_core::{Identity, SealTo};
    use blockpost_proto::v1::{Envelope, TransactionClosing};

    use super::*;

    fn signed_tx() -> Vec<u8> {
        use bitcoin::{
            Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness,
            absolute::LockTime, transaction::Version,
        };
        bitcoin::consensus::serialize(&Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: vec![TxIn {
                previous_output: OutPoint::null(),
                script_sig: ScriptBuf::from_bytes(vec![0x51]),
                sequence: Sequence::MAX,
                witness: Witness::new(),
            }],
            output: vec![TxOut {
                value: Amount::from_sat(5),
                script_pubkey: ScriptBuf::new_op_return([1u8; 8]),
            }],
        })
    }

    fn block(leaves: Vec<Vec<u8>>) -> Vec<u8> {
        Block {
            leaves,
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn record(id: [u8; 32], stage: DeliveryStage, commitment: &[u8]) -> Vec<u8> {
        LedgerRecord {
            record: Some(ledger_record::Record::Delivery(DeliveryRecord {
                transaction_id: "dvp".into(),
                message_id: id.to_vec(),
                ledger: "bitcoin".into(),
                commitment: commitment.to_vec(),
                stage: stage as i32,
                ..Default::default()
            })),
        }
        .encode_to_vec()
    }

    fn script(dir: &std::path::Path, name: &str, body: &str) -> String {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::process::Command::new("chmod")
            .args(["+x", p.to_str().unwrap()])
            .status()
            .unwrap();
        p.to_str().unwrap().to_owned()
    }

    /// What a builder restarted (or a standby taking over) does, given only the blocks:
    /// no intent on the record → an intent and no send; an intent without an outcome →
    /// the same bytes sent again and delivered recorded; an outcome → nothing.
    #[test]
    fn restarts_send_only_after_an_intent_and_again_only_without_an_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let sent = dir.path().join("sent.txt");
        let ok = script(
            dir.path(),
            "ok.sh",
            &format!("printf '%s\\n' \"$1\" >> {}", sent.display()),
        );
        let fail = script(
            dir.path(),
            "fail.sh",
            "echo 'txn-mempool-conflict' >&2; exit 1",
        );
        let none = script(dir.path(), "none.sh", "exit 0");
        let commands = |b: &str| BitcoinConfig {
            broadcast_command: vec![b.to_owned()],
            block_command: vec![none.clone()],
            ..BitcoinConfig::default()
        };
        let (node, bob) = (Identity::generate(), Identity::generate());
        let raw = signed_tx();
        let d = delivery::seal_delivery(
            &delivery::Bitcoin,
            &raw,
            &[SealTo {
                address: "bank-b",
                key_index: 2,
                key: bob.encryption_public(),
            }],
            node.encryption_public(),
            "bank-a",
            "dvp",
        )
        .unwrap();
        let commitment = d.commitment.clone();
        let env = Envelope {
            content: EnvelopeContent {
                sender: "bank-a".into(),
                recipients: vec!["bank-b".into()],
                transaction_id: "dvp".into(),
                delivery: Some(d),
                ..Default::default()
            }
            .encode_to_vec(),
            signature: vec![7; 64],
        };
        let id = blockpost_core::message_id(&env);
        let closing = LedgerRecord {
            record: Some(ledger_record::Record::Closing(TransactionClosing {
                transaction_id: "dvp".into(),
                status: TransactionStatus::Finished as i32,
                ..Default::default()
            })),
        }
        .encode_to_vec();
        let chain = [
            block(vec![env.encode_to_vec(), closing]),
            block(vec![record(id, DeliveryStage::Intent, &commitment)]),
            block(vec![record(id, DeliveryStage::Delivered, &commitment)]),
        ];
        let read = |h: u64| Ok(chain[h as usize].clone());
        let sends = || {
            std::fs::read_to_string(&sent)
                .unwrap_or_default()
                .lines()
                .count()
        };
        let stages = |q: Vec<Vec<u8>>| -> Vec<i32> {
            q.iter()
                .filter_map(|r| match LedgerRecord::decode(r.as_slice()).ok()?.record {
                    Some(ledger_record::Record::Delivery(d)) => Some(d.stage),
                    _ => None,
                })
                .collect()
        };
        // Finished, nothing recorded: an intent, no send.
        let mut a = Deliveries::default();
        a.read_blocks(1, read).unwrap();
        assert_eq!(a.step(&node.encryption, &commands(&ok), 1), 1);
        assert_eq!(sends(), 0);
        assert_eq!(stages(a.take(1)), [DeliveryStage::Intent as i32]);
        // Taken by a cut: not made again while that cut may still store it.
        a.read_blocks(1, read).unwrap();
        assert_eq!(a.step(&node.encryption, &commands(&ok), 1), 0);
        // Restarted with the intent on the record: sent, the same bytes, delivered queued.
        let mut b = Deliveries::default();
        b.read_blocks(2, read).unwrap();
        assert_eq!(b.step(&node.encryption, &commands(&ok), 2), 1);
        assert_eq!(
            std::fs::read_to_string(&sent).unwrap(),
            format!("{}\n", hex::encode(&raw))
        );
        assert_eq!(stages(b.take(2)), [DeliveryStage::Delivered as i32]);
        // ... and not again while that record waits for its block.
        assert_eq!(b.step(&node.encryption, &commands(&ok), 2), 0);
        assert_eq!(sends(), 1);
        // With the outcome on the record: nothing (the block command says unconfirmed).
        let mut c = Deliveries::default();
        c.read_blocks(3, read).unwrap();
        assert_eq!(c.step(&node.encryption, &commands(&ok), 3), 0);
        assert_eq!(sends(), 1);
        // A send the ledger refuses (and that is not confirmed): refused, with its words.
        let mut e = Deliveries::default();
        e.read_blocks(2, read).unwrap();
        e.step(&node.encryption, &commands(&fail), 2);
        let q = e.take(2);
        let Some(ledger_record::Record::Delivery(r)) =
            LedgerRecord::decode(q[0].as_slice()).unwrap().record
        else {
            panic!("not a delivery record");
        };
        assert_eq!(r.stage, DeliveryStage::Refused as i32);
        assert!(r.reason.contains("txn-mempool-conflict"), "{}", r.reason);
        // A key that is not the node's: refused without a send.
        let mut f = Deliveries::default();
        f.read_blocks(1, read).unwrap();
        f.step(&bob.encryption, &commands(&ok), 1);
        assert_eq!(stages(f.take(1)), [DeliveryStage::Refused as i32]);
        assert_eq!(sends(), 1);
    }
}
