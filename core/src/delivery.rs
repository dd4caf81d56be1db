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
        let tx: bitcoin::Transaction =
            bitcoin::consensus::deserialize(raw).map_err(|e| bad(e.to_string()))?;
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
    let named: HashSet<&str> = sealed
        .ciphertexts
        .iter()
        .map(|c| c.recipient.as_str())
        .collect();
    let mut want = recipients.clone();
    want.insert(DELIVERY_RECIPIENT);
    if named.len() != sealed.ciphertexts.len() || named != want {
        return Err(DeliveryError::Ciphertexts);
    }
    for c in &sealed.ciphertexts {
        if c.encapsulated_key.len() != 32 {
            return Err(DeliveryError::EncapsulatedKey);
        }
        if c.ciphertext.len() > MAX_LEDGER_TX_LEN + 16 {
            return Err(DeliveryError::TooLarge);
        }
    }
    Ok(())
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
