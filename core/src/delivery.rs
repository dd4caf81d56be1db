//! Signed transactions for external ledgers, carried by settlement instructions and
//! delivered by the node only once the Blockpost transaction is finished.
//!
//! An instruction's [`LedgerDelivery`] says which ledger and the transaction's identifier
//! there (its commitment); the raw transaction is sealed with HPKE, as bodies are, to each
//! recipient and to the node's delivery key ([`DELIVERY_RECIPIENT`]). Until delivery the
//! firehose, the blocks and every index hold only the ledger's name and the commitment:
//! nobody without a key can broadcast the transaction or act on it first.
//!
//! Each ledger is a [`TargetLedger`]: it reads a raw transaction and computes its
//! commitment. Bitcoin's (feature `bitcoin`) parses with the `bitcoin` crate and commits
//! with the txid.

use std::collections::HashSet;

use blockpost_proto::v1::LedgerDelivery;
use x25519_dalek::StaticSecret;

use crate::envelope::{SealTo, open_body, prefixed, seal_body};
use crate::{Error, Result};

pub use crate::anchor::bitcoin_merkle_path;

/// The recipient name of the node's delivery key in a sealed delivery.
pub const DELIVERY_RECIPIENT: &str = "node:delivery";

/// Largest raw ledger transaction carried (Bitcoin's standardness limit is 100 kvB).
pub const MAX_LEDGER_TX_LEN: usize = 400_000;

/// Ledgers this version knows.
pub const LEDGERS: &[&str] = &["bitcoin"];

/// Why a delivery is not a valid one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// Only a settlement instruction carries a ledger transaction.
    #[error("only a settlement instruction carries a ledger transaction")]
    NotAnInstruction,
    /// A ledger this version does not know.
    #[error("unknown ledger {0:?} (known: bitcoin)")]
    UnknownLedger(String),
    /// The commitment is not 32 bytes.
    #[error("the commitment is {0} bytes, not 32")]
    Commitment(usize),
    /// The sealed transaction is not addressed to exactly the recipients and the node.
    #[error("the sealed transaction is not addressed to exactly the recipients and node:delivery")]
    Ciphertexts,
    /// An HPKE encapsulated key of the wrong length.
    #[error("an encapsulated key is not 32 bytes")]
    EncapsulatedKey,
    /// A sealed transaction over the size limit.
    #[error("the sealed transaction is over {MAX_LEDGER_TX_LEN} bytes")]
    TooLarge,
    /// The raw transaction does not parse, or is not signed.
    #[error("not a valid {ledger} transaction: {why}")]
    Transaction {
        /// The ledger.
        ledger: &'static str,
        /// What is wrong.
        why: String,
    },
    /// The opened transaction is not the one the commitment names.
    #[error("the sealed transaction's id is {found}, not the commitment {committed}")]
    Mismatch {
        /// The commitment, as the ledger shows it.
        committed: String,
        /// The opened transaction's id.
        found: String,
    },
}

/// A ledger Blockpost can deliver to.
pub trait TargetLedger: Send + Sync {
    /// Its name in [`LedgerDelivery::ledger`].
    fn name(&self) -> &'static str;
    /// Reads a raw signed transaction and returns its commitment (its id there).
    fn commitment(&self, raw: &[u8]) -> std::result::Result<[u8; 32], DeliveryError>;
    /// A commitment as the ledger shows it (Bitcoin: the txid in display order, hex).
    fn show(&self, commitment: &[u8; 32]) -> String;
}

/// Bitcoin: a consensus-encoded transaction (with or without witnesses), each input
/// signed (a script signature or a witness); its commitment is the txid.
#[cfg(feature = "bitcoin")]
pub struct Bitcoin;

#[cfg(feature = "bitcoin")]
impl TargetLedger for Bitcoin {
    fn name(&self) -> &'static str {
        "bitcoin"
    }

    fn commitment(&self, raw: &[u8]) -> std::result::Result<[u8; 32], DeliveryError> {
        use bitcoin::hashes::Hash as _;
        let bad = |why: String| DeliveryError::Transaction {
            ledger: "bitcoin",
            why,
        };
        let tx: bitcoin::Transaction = bitcoin::consensus::deserialize(raw).map_err(|e| {
            bad(format!(
                "its {} bytes do not decode as a consensus-encoded transaction ({e})",
                raw.len()
            ))
        })?;
        if tx.input.is_empty() || tx.output.is_empty() {
            return Err(bad("it has no inputs or no outputs".into()));
        }
        if let Some(i) = tx
            .input
            .iter()
            .position(|i| i.script_sig.is_empty() && i.witness.is_empty())
        {
            return Err(bad(format!("input {i} is not signed")));
        }
        Ok(tx.compute_txid().to_byte_array())
    }

    fn show(&self, commitment: &[u8; 32]) -> String {
        use bitcoin::hashes::Hash as _;
        bitcoin::Txid::from_byte_array(*commitment).to_string()
    }
}

/// The ledger called `name`, if this build can read its transactions.
pub fn ledger(name: &str) -> Option<&'static dyn TargetLedger> {
    match name {
        #[cfg(feature = "bitcoin")]
        "bitcoin" => Some(&Bitcoin),
        _ => None,
    }
}

/// A commitment as `ledger` shows it, or hex when this build does not know the ledger.
pub fn show_commitment(ledger_name: &str, commitment: &[u8]) -> String {
    match (ledger(ledger_name), <[u8; 32]>::try_from(commitment)) {
        (Some(l), Ok(c)) => l.show(&c),
        _ => hex::encode(commitment),
    }
}

/// The associated data a sealed delivery is bound to.
pub fn delivery_aad(
    sender: &str,
    transaction_id: &str,
    ledger: &str,
    commitment: &[u8],
) -> Vec<u8> {
    prefixed(
        b"blockpost/v1 delivery\n",
        &[
            sender.as_bytes(),
            b"\n",
            transaction_id.as_bytes(),
            b"\n",
            ledger.as_bytes(),
            b"\n",
            commitment,
        ],
    )
}

/// Reads `raw` as a `ledger` transaction and seals it to `to` and the node's delivery key.
pub fn seal_delivery(
    ledger: &dyn TargetLedger,
    raw: &[u8],
    to: &[SealTo<'_>],
    node_key: [u8; 32],
    sender: &str,
    transaction_id: &str,
) -> Result<LedgerDelivery> {
    if raw.len() > MAX_LEDGER_TX_LEN {
        return Err(Error::from(crate::EnvelopeError::Delivery(
            DeliveryError::TooLarge,
        )));
    }
    let commitment = ledger
        .commitment(raw)
        .map_err(|e| Error::from(crate::EnvelopeError::Delivery(e)))?;
    let mut all: Vec<SealTo<'_>> = to
        .iter()
        .map(|s| SealTo {
            address: s.address,
            key_index: s.key_index,
            key: s.key,
        })
        .collect();
    all.push(SealTo {
        address: DELIVERY_RECIPIENT,
        key_index: 0,
        key: node_key,
    });
    let aad = delivery_aad(sender, transaction_id, ledger.name(), &commitment);
    Ok(LedgerDelivery {
        ledger: ledger.name().to_owned(),
        commitment: commitment.to_vec(),
        sealed: Some(seal_body(&all, raw, &aad)?),
    })
}

/// Opens a sealed delivery as `me` (a recipient, or [`DELIVERY_RECIPIENT`]) and checks
/// that the transaction is the one its commitment names.
pub fn open_delivery(
    d: &LedgerDelivery,
    me: &str,
    secret: &StaticSecret,
    sender: &str,
    transaction_id: &str,
) -> Result<Vec<u8>> {
    let sealed = d
        .sealed
        .as_ref()
        .ok_or(Error::from(crate::EnvelopeError::Delivery(
            DeliveryError::Ciphertexts,
        )))?;
    let aad = delivery_aad(sender, transaction_id, &d.ledger, &d.commitment);
    let raw = open_body(sealed, me, secret, &aad)?;
    let l = ledger(&d.ledger).ok_or_else(|| {
        Error::from(crate::EnvelopeError::Delivery(
            DeliveryError::UnknownLedger(d.ledger.clone()),
        ))
    })?;
    let found = l
        .commitment(&raw)
        .map_err(|e| Error::from(crate::EnvelopeError::Delivery(e)))?;
    if found.as_slice() != d.commitment.as_slice() {
        return Err(Error::from(crate::EnvelopeError::Delivery(
            DeliveryError::Mismatch {
                committed: show_commitment(&d.ledger, &d.commitment),
                found: l.show(&found),
            },
        )));
    }
    Ok(raw)
}

/// The envelope rules for a delivery: known ledger, a 32-byte commitment, sealed to
/// exactly the recipients and the node, within the size limit.
pub(crate) fn check_shape(
    d: &LedgerDelivery,
    recipients: &HashSet<&str>,
) -> std::result::Result<(), DeliveryError> {
    if !LEDGERS.contains(&d.ledger.as_str()) {
        return Err(DeliveryError::UnknownLedger(d.ledger.clone()));
    }
    if d.commitment.len() != 32 {
        return Err(DeliveryError::Commitment(d.commitment.len()));
    }
    let sealed = d.sealed.as_ref().ok_or(DeliveryError::Ciphertexts)?;
    let mut want = recipients.clone();
    want.insert(DELIVERY_RECIPIENT);
    crate::rules::check_sealed(sealed, &want, MAX_LEDGER_TX_LEN).map_err(|p| match p {
        crate::rules::Sealed::Addressing => DeliveryError::Ciphertexts,
        crate::rules::Sealed::TooLarge { .. } => DeliveryError::TooLarge,
        crate::rules::Sealed::EncapsulatedKey { .. } => DeliveryError::EncapsulatedKey,
    })?;
    Ok(())
}

#[cfg(test)]
mod rule_tests {
    use blockpost_proto::v1::{
        DeliveryRecord, DeliveryStage, EnvelopeContent, LedgerDelivery, TransactionClosing,
        TransactionStatus,
    };

    use super::*;

    /// A regtest-difficulty header over `root` (nBits 0x207fffff), its nonce found.
    fn header(root: [u8; 32]) -> Vec<u8> {
        for nonce in 0u32.. {
            let mut h = Vec::with_capacity(80);
            h.extend_from_slice(&2u32.to_le_bytes());
            h.extend_from_slice(&[0; 32]);
            h.extend_from_slice(&root);
            h.extend_from_slice(&1_796_000_000u32.to_le_bytes());
            h.extend_from_slice(&0x207f_ffffu32.to_le_bytes());
            h.extend_from_slice(&nonce.to_le_bytes());
            if meets_target(&crate::anchor::sha256d(&h), [0xff, 0xff, 0x7f, 0x20]) {
                return h;
            }
        }
        unreachable!()
    }

    fn root_of(txids: &[[u8; 32]]) -> [u8; 32] {
        let mut level = txids.to_vec();
        while level.len() > 1 {
            level = level
                .chunks(2)
                .map(|c| crate::anchor::sha256d(&[c[0], *c.get(1).unwrap_or(&c[0])].concat()))
                .collect();
        }
        level[0]
    }

    #[test]
    fn inclusion_in_a_bitcoin_block_verifies_and_a_bent_one_does_not() {
        let txids: Vec<[u8; 32]> = (0..5u8).map(|i| [i; 32]).collect();
        let h = header(root_of(&txids));
        for (i, t) in txids.iter().enumerate() {
            let path: Vec<Vec<u8>> = bitcoin_merkle_path(&txids, i)
                .unwrap()
                .iter()
                .map(|p| p.to_vec())
                .collect();
            verify_bitcoin_inclusion(&h, t, i as u64, &path).unwrap();
            assert!(verify_bitcoin_inclusion(&h, t, (i as u64) ^ 1, &path).is_err() || i == 4);
            let mut bent = path.clone();
            bent[0][0] ^= 1;
            assert!(verify_bitcoin_inclusion(&h, t, i as u64, &bent).is_err());
        }
        assert!(verify_bitcoin_inclusion(&h[..79], &txids[0], 0, &[]).is_err());
        // A header whose hash misses its own target (mainnet difficulty, no work done).
        let mut hard = h.clone();
        hard[72..76].copy_from_slice(&0x1703_a30cu32.to_le_bytes());
        let path: Vec<Vec<u8>> = bitcoin_merkle_path(&txids, 0)
            .unwrap()
            .iter()
            .map(|p| p.to_vec())
            .collect();
        assert!(verify_bitcoin_inclusion(&hard, &txids[0], 0, &path).is_err());
    }

    fn record(stage: DeliveryStage, commitment: &[u8; 32]) -> DeliveryRecord {
        DeliveryRecord {
            transaction_id: "dvp".into(),
            message_id: vec![1; 32],
            ledger: "bitcoin".into(),
            commitment: commitment.to_vec(),
            stage: stage as i32,
            ..Default::default()
        }
    }

    #[test]
    fn deliveries_follow_finish_once_in_order_and_confirm_with_a_proof() {
        let txid = [7u8; 32];
        let content = EnvelopeContent {
            transaction_id: "dvp".into(),
            delivery: Some(LedgerDelivery {
                ledger: "bitcoin".into(),
                commitment: txid.to_vec(),
                sealed: None,
            }),
            ..Default::default()
        };
        let mut rules = DeliveryRules::default();
        // Unknown until the instruction is seen.
        assert!(matches!(
            rules.record(&record(DeliveryStage::Intent, &txid)),
            Err(DeliveryFinding::UnknownInstruction(_))
        ));
        rules.message([1; 32], &content);
        // Not before the transaction is finished; never for a timed-out one.
        assert!(matches!(
            rules.record(&record(DeliveryStage::Intent, &txid)),
            Err(DeliveryFinding::NotFinished(_))
        ));
        rules.closed(&TransactionClosing {
            transaction_id: "dvp".into(),
            status: TransactionStatus::TimedOut as i32,
            ..Default::default()
        });
        assert!(rules.record(&record(DeliveryStage::Intent, &txid)).is_err());
        rules.closed(&TransactionClosing {
            transaction_id: "dvp".into(),
            status: TransactionStatus::Finished as i32,
            ..Default::default()
        });
        // Another transaction than committed to.
        assert!(matches!(
            rules.record(&record(DeliveryStage::Intent, &[8; 32])),
            Err(DeliveryFinding::CommitmentMismatch(_))
        ));
        // Delivered needs an intent; confirmed needs delivered.
        assert!(
            rules
                .record(&record(DeliveryStage::Delivered, &txid))
                .is_err()
        );
        assert!(
            rules
                .record(&record(DeliveryStage::Confirmed, &txid))
                .is_err()
        );
        rules.record(&record(DeliveryStage::Intent, &txid)).unwrap();
        assert!(rules.record(&record(DeliveryStage::Intent, &txid)).is_err());
        rules
            .record(&record(DeliveryStage::Delivered, &txid))
            .unwrap();
        // Delivered at most once.
        assert!(
            rules
                .record(&record(DeliveryStage::Delivered, &txid))
                .is_err()
        );
        assert!(
            rules
                .record(&record(DeliveryStage::Refused, &txid))
                .is_err()
        );
        // A confirmation whose proof does not lead to the header is refused; one that does
        // is taken, once.
        let txids = [[3u8; 32], txid, [5u8; 32]];
        let h = header(root_of(&txids));
        let mut c = record(DeliveryStage::Confirmed, &txid);
        c.block_header = h;
        c.tx_index = 1;
        c.merkle_path = bitcoin_merkle_path(&txids, 1)
            .unwrap()
            .iter()
            .map(|p| p.to_vec())
            .collect();
        let mut bad = c.clone();
        bad.tx_index = 0;
        assert!(matches!(
            rules.record(&bad),
            Err(DeliveryFinding::BadConfirmation { .. })
        ));
        rules.record(&c).unwrap();
        assert!(rules.record(&c).is_err());
    }
}

#[cfg(all(test, feature = "bitcoin"))]
mod tests {
    use super::*;
    use crate::Identity;

    /// A one-input, one-output transaction with a (meaningless) script signature.
    pub(crate) fn signed_tx() -> Vec<u8> {
        use bitcoin::{
            Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness,
            absolute::LockTime, transaction::Version,
        };
        let tx = Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: vec![TxIn {
                previous_output: OutPoint::null(),
                script_sig: ScriptBuf::from_bytes(vec![0x51]),
                sequence: Sequence::MAX,
                witness: Witness::new(),
            }],
            output: vec![TxOut {
                value: Amount::from_sat(1_000),
                script_pubkey: ScriptBuf::new_op_return([7u8; 20]),
            }],
        };
        bitcoin::consensus::serialize(&tx)
    }

    #[test]
    fn sealed_to_recipients_and_node_opened_by_each_and_checked() {
        let (bob, node) = (Identity::generate(), Identity::generate());
        let raw = signed_tx();
        let to = [SealTo {
            address: "bank-b",
            key_index: 4,
            key: bob.encryption_public(),
        }];
        let d = seal_delivery(
            &Bitcoin,
            &raw,
            &to,
            node.encryption_public(),
            "bank-a",
            "dvp",
        )
        .unwrap();
        assert_eq!(d.ledger, "bitcoin");
        let mut recipients = HashSet::new();
        recipients.insert("bank-b");
        check_shape(&d, &recipients).unwrap();
        for (me, who) in [("bank-b", &bob), (DELIVERY_RECIPIENT, &node)] {
            let opened = open_delivery(&d, me, &who.encryption, "bank-a", "dvp").unwrap();
            assert_eq!(opened, raw);
        }
        // Bound to its sender and transaction.
        assert!(open_delivery(&d, "bank-b", &bob.encryption, "bank-a", "other").is_err());
        // A commitment that is not the sealed transaction's.
        let mut wrong = d.clone();
        wrong.commitment[0] ^= 1;
        assert!(open_delivery(&wrong, "bank-b", &bob.encryption, "bank-a", "dvp").is_err());
        // The shape rules.
        let mut other = d.clone();
        other.ledger = "ethereum".into();
        assert_eq!(
            check_shape(&other, &recipients),
            Err(DeliveryError::UnknownLedger("ethereum".into()))
        );
        recipients.insert("bank-c");
        assert_eq!(
            check_shape(&d, &recipients),
            Err(DeliveryError::Ciphertexts)
        );
        // An unsigned input, and bytes that are no transaction.
        let mut tx: bitcoin::Transaction = bitcoin::consensus::deserialize(&raw).unwrap();
        tx.input[0].script_sig = bitcoin::ScriptBuf::new();
        let unsigned = bitcoin::consensus::serialize(&tx);
        assert!(Bitcoin.commitment(&unsigned).is_err());
        assert!(Bitcoin.commitment(b"not a transaction").is_err());
        // The txid shown as Bitcoin shows it.
        assert_eq!(
            Bitcoin.show(&Bitcoin.commitment(&raw).unwrap()),
            bitcoin::consensus::deserialize::<bitcoin::Transaction>(&raw)
                .unwrap()
                .compute_txid()
                .to_string()
        );
    }
}

/// Checks that `txid` (internal byte order) at `index` with `path` leads to the Merkle
/// root of the 80-byte Bitcoin block `header`. Returns the block's hash (internal order).
pub fn verify_bitcoin_inclusion(
    header: &[u8],
    txid: &[u8; 32],
    index: u64,
    path: &[Vec<u8>],
) -> std::result::Result<[u8; 32], String> {
    if header.len() != 80 {
        return Err(format!("a block header is 80 bytes, not {}", header.len()));
    }
    if path.len() > 32 || (path.len() < 64 && index >> path.len() != 0) {
        return Err(format!(
            "index {index} does not fit a path of {} levels",
            path.len()
        ));
    }
    let mut node = *txid;
    let mut i = index;
    for sibling in path {
        let s: [u8; 32] = sibling
            .as_slice()
            .try_into()
            .map_err(|_| "a path node is not 32 bytes".to_owned())?;
        node = if i.is_multiple_of(2) {
            crate::anchor::sha256d(&[node, s].concat())
        } else {
            crate::anchor::sha256d(&[s, node].concat())
        };
        i /= 2;
    }
    if node.as_slice() != &header[36..68] {
        return Err("the path does not lead to the header's Merkle root".into());
    }
    let hash = crate::anchor::sha256d(header);
    if !meets_target(&hash, [header[72], header[73], header[74], header[75]]) {
        return Err("the header's hash is above the target its nBits states".into());
    }
    Ok(hash)
}

/// Whether a block hash (internal byte order: little-endian number) is at most the target
/// of its compact `nBits` (little-endian in the header): mantissa × 256^(exponent − 3).
fn meets_target(hash: &[u8; 32], bits: [u8; 4]) -> bool {
    let compact = u32::from_le_bytes(bits);
    let exponent = (compact >> 24) as usize;
    let mantissa = compact & 0x007f_ffff;
    if compact & 0x0080_0000 != 0 || mantissa == 0 || !(3..=32).contains(&exponent) {
        return false;
    }
    // The target as 32 big-endian bytes.
    let mut target = [0u8; 32];
    let m = mantissa.to_be_bytes(); // [0, b1, b2, b3]
    for (k, byte) in m[1..].iter().enumerate() {
        // Byte k of the mantissa sits at big-endian position 32 - exponent + k.
        let at = 32 - exponent + k;
        if at < 32 {
            target[at] = *byte;
        }
    }
    let mut be = *hash;
    be.reverse();
    be <= target
}

/// A delivery stage's name: `intent`, `delivered`, `refused`, `confirmed`.
pub fn stage_name(stage: i32) -> &'static str {
    use blockpost_proto::v1::DeliveryStage as S;
    match S::try_from(stage) {
        Ok(S::Intent) => "intent",
        Ok(S::Delivered) => "delivered",
        Ok(S::Refused) => "refused",
        Ok(S::Confirmed) => "confirmed",
        _ => "unspecified",
    }
}

/// What an auditor finds wrong with delivery records.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryFinding {
    /// A record for a message that carries no delivery (or was never seen).
    #[error("a delivery record for message {0}, which carries no ledger transaction")]
    UnknownInstruction(String),
    /// A record for a transaction that is not closed as finished.
    #[error("a delivery for transaction {0}, which is not finished")]
    NotFinished(String),
    /// The record's ledger, commitment or transaction is not its instruction's.
    #[error(
        "the delivery record of message {0} is not for the transaction its instruction committed to"
    )]
    CommitmentMismatch(String),
    /// A stage out of order, or repeated (delivered twice, confirmed before delivery).
    #[error("message {message}: {why}")]
    Order {
        /// The instruction.
        message: String,
        /// What is out of order.
        why: &'static str,
    },
    /// A confirmation whose proof does not verify.
    #[error("message {message}: the confirmation does not verify: {why}")]
    BadConfirmation {
        /// The instruction.
        message: String,
        /// Why.
        why: String,
    },
}

/// The delivery rules an auditor checks, without I/O, fed in ledger order:
/// - deliveries only for transactions closed as finished (none for a timed-out one);
/// - each record names an instruction that carried a delivery, with its ledger and
///   commitment;
/// - per instruction: INTENT before DELIVERED, at most one DELIVERED or REFUSED outcome,
///   CONFIRMED only after DELIVERED and once, with a Merkle proof that verifies against the
///   header given.
#[derive(Debug, Default)]
pub struct DeliveryRules {
    /// Instructions with a delivery: message id → (transaction, ledger, commitment).
    carried: std::collections::HashMap<[u8; 32], (String, String, Vec<u8>)>,
    /// Transactions closed as finished.
    finished: HashSet<String>,
    /// Stages recorded per instruction.
    stages: std::collections::HashMap<[u8; 32], Vec<i32>>,
}

impl DeliveryRules {
    /// A message in a block: remembered if it carries a delivery.
    pub fn message(&mut self, id: [u8; 32], content: &blockpost_proto::v1::EnvelopeContent) {
        if let Some(d) = &content.delivery {
            self.carried.insert(
                id,
                (
                    content.transaction_id.clone(),
                    d.ledger.clone(),
                    d.commitment.clone(),
                ),
            );
        }
    }

    /// A closing record in a block.
    pub fn closed(&mut self, c: &blockpost_proto::v1::TransactionClosing) {
        if c.status == blockpost_proto::v1::TransactionStatus::Finished as i32 {
            self.finished.insert(c.transaction_id.clone());
        }
    }

    /// A delivery record in a block: what is wrong with it, if anything.
    pub fn record(
        &mut self,
        r: &blockpost_proto::v1::DeliveryRecord,
    ) -> std::result::Result<(), DeliveryFinding> {
        use blockpost_proto::v1::DeliveryStage as S;
        let id: [u8; 32] = r.message_id.as_slice().try_into().unwrap_or([0; 32]);
        let shown = hex::encode(&r.message_id);
        let Some((tx, ledger, commitment)) = self.carried.get(&id) else {
            return Err(DeliveryFinding::UnknownInstruction(shown));
        };
        if *tx != r.transaction_id || *ledger != r.ledger || *commitment != r.commitment {
            return Err(DeliveryFinding::CommitmentMismatch(shown));
        }
        if !self.finished.contains(tx) {
            return Err(DeliveryFinding::NotFinished(tx.clone()));
        }
        let stage = S::try_from(r.stage).unwrap_or(S::Unspecified);
        let seen = self.stages.entry(id).or_default();
        let has = |s: S| seen.contains(&(s as i32));
        let order = |why| {
            Err(DeliveryFinding::Order {
                message: shown.clone(),
                why,
            })
        };
        match stage {
            S::Unspecified => return order("a record without a stage"),
            S::Intent if has(S::Intent) => return order("a second intent"),
            S::Intent => {}
            S::Delivered | S::Refused if has(S::Delivered) || has(S::Refused) => {
                return order("a second outcome: delivered at most once");
            }
            S::Delivered if !has(S::Intent) => return order("delivered without an intent first"),
            S::Delivered | S::Refused => {}
            S::Confirmed if !has(S::Delivered) => return order("confirmed before delivered"),
            S::Confirmed if has(S::Confirmed) => return order("confirmed twice"),
            S::Confirmed => {
                let txid: [u8; 32] = r.commitment.as_slice().try_into().unwrap_or([0; 32]);
                verify_bitcoin_inclusion(&r.block_header, &txid, r.tx_index, &r.merkle_path)
                    .map_err(|why| DeliveryFinding::BadConfirmation {
                        message: shown.clone(),
                        why,
                    })?;
            }
        }
        seen.push(r.stage);
        Ok(())
    }
}
