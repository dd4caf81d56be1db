//! The NATS wire contract, in one place: stream names, subjects, headers and
//! de-duplication ids. Publishers, readers and tests all use these, so that none can drift.
//!
//! Every name is in the namespace of one directory log ([`Namespace`], from its origin), so
//! several nodes with their own logs can share one NATS server without a word crossing over.
//! With `T` the namespace token:
//!
//! | stream | subjects | message | headers |
//! |---|---|---|---|
//! | `BLOCKPOST_T_DIRECTORY` | `blockpost.T.directory.entry` | a `LogEntry` | [`LEAF_INDEX_HEADER`], [`TREE_SIZE_HEADER`] and [`PROOF_HEADER`] (its inclusion proof in a checkpoint published before it), `Nats-Msg-Id` = [`entry_msg_id`] |
//! | | `blockpost.T.directory.checkpoint` | a signed checkpoint note | [`TREE_SIZE_HEADER`], `Nats-Msg-Id` = [`checkpoint_msg_id`] |
//! | `BLOCKPOST_T_FIREHOSE` | `blockpost.T.firehose` | an `Envelope` | [`MESSAGE_ID_HEADER`], `Nats-Msg-Id` = [`nonce_msg_id`] |
//! | `BLOCKPOST_T_INBOX` | `blockpost.T.inbox.<address>` | an `Envelope` | [`MESSAGE_ID_HEADER`], [`FIREHOSE_SEQ_HEADER`], `Nats-Msg-Id` = [`inbox_msg_id`] |
//!
//! Each stream's description is [`Namespace::description`]: a node refuses to use a stream
//! whose description names another log.

use sha2::Digest as _;

use crate::Address;

/// The names of one directory log's streams and subjects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    origin: String,
    token: String,
}

impl Namespace {
    /// The namespace of the log with this origin: its token is the first 12 hex digits of
    /// SHA-256(origin), one NATS subject token that any origin maps to.
    pub fn for_origin(origin: &str) -> Self {
        let h = sha2::Sha256::digest(origin.as_bytes());
        Self {
            origin: origin.to_owned(),
            token: hex::encode(&h[..6]),
        }
    }

    /// The log's origin.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The token in every subject and stream name.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// What every stream of this log says it holds.
    pub fn description(&self) -> String {
        format!("blockpost log {}", self.origin)
    }

    fn stream(&self, what: &str) -> String {
        format!("BLOCKPOST_{}_{what}", self.token.to_ascii_uppercase())
    }

    /// The directory's stream.
    pub fn directory_stream(&self) -> String {
        self.stream("DIRECTORY")
    }

    /// The firehose stream.
    pub fn firehose_stream(&self) -> String {
        self.stream("FIREHOSE")
    }

    /// The inbox stream.
    pub fn inbox_stream(&self) -> String {
        self.stream("INBOX")
    }

    /// Subjects of the directory stream.
    pub fn directory_subjects(&self) -> String {
        format!("blockpost.{}.directory.>", self.token)
    }

    /// Subject of directory log entries.
    pub fn entry_subject(&self) -> String {
        format!("blockpost.{}.directory.entry", self.token)
    }

    /// Subject of directory checkpoints.
    pub fn checkpoint_subject(&self) -> String {
        format!("blockpost.{}.directory.checkpoint", self.token)
    }

    /// Subject of the firehose: every accepted envelope, once.
    pub fn firehose_subject(&self) -> String {
        format!("blockpost.{}.firehose", self.token)
    }

    /// The stream of blocks the builder cut.
    pub fn blocks_stream(&self) -> String {
        self.stream("BLOCKS")
    }

    /// `blockpost.T.blocks`: every block (a `Block`), in height order.
    pub fn blocks_subject(&self) -> String {
        format!("blockpost.{}.blocks", self.token)
    }

    /// Subjects of the inbox stream.
    pub fn inbox_subjects(&self) -> String {
        format!("blockpost.{}.inbox.*", self.token)
    }

    /// The subject of `address`'s inbox; an [`Address`] is always one subject token.
    pub fn inbox_subject(&self, address: &Address) -> String {
        format!("blockpost.{}.inbox.{address}", self.token)
    }
}

/// JetStream's de-duplication header.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";
/// Leaf index of a directory entry message.
pub const LEAF_INDEX_HEADER: &str = "Blockpost-Leaf-Index";
/// Tree size of a checkpoint message, and of the checkpoint an entry's proof is for.
pub const TREE_SIZE_HEADER: &str = "Blockpost-Tree-Size";
/// An entry's inclusion proof in the tree of [`TREE_SIZE_HEADER`] leaves:
/// [`encode_proof`].
pub const PROOF_HEADER: &str = "Blockpost-Inclusion-Proof";
/// Hex message id (SHA-256 of the encoded envelope).
pub const MESSAGE_ID_HEADER: &str = "Blockpost-Message-Id";
/// Firehose sequence of an inbox copy.
pub const FIREHOSE_SEQ_HEADER: &str = "Blockpost-Firehose-Seq";

/// An inclusion proof as a header value: the hashes in order, concatenated, base64.
pub fn encode_proof(hashes: &[[u8; 32]]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(hashes.concat())
}

/// The hashes of a proof header; `None` when it is not whole 32-byte hashes in base64.
pub fn decode_proof(value: &str) -> Option<Vec<[u8; 32]>> {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(value)
        .ok()?;
    if raw.len() % 32 != 0 || raw.len() > 64 * 32 {
        return None;
    }
    raw.chunks(32).map(|c| c.try_into().ok()).collect()
}

/// De-duplication id of directory entry `index`.
pub fn entry_msg_id(index: u64) -> String {
    format!("entry-{index}")
}

/// De-duplication id of the block at `height`.
pub fn block_msg_id(height: u64) -> String {
    format!("block-{height}")
}

/// De-duplication id of the checkpoint of `size` entries.
pub fn checkpoint_msg_id(size: u64) -> String {
    format!("checkpoint-{size}")
}

/// De-duplication id of a firehose message: a sender's nonce is accepted once.
pub fn nonce_msg_id(sender: &Address, nonce: u64) -> String {
    format!("nonce:{sender}:{nonce}")
}

/// De-duplication id of one recipient's inbox copy.
pub fn inbox_msg_id(message_id_hex: &str, recipient: &Address) -> String {
    format!("{message_id_hex}:{recipient}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_separate_logs() {
        let a = Namespace::for_origin("bank.example/log");
        let b = Namespace::for_origin("other.example/log");
        assert_ne!(a.token(), b.token());
        assert_eq!(a, Namespace::for_origin("bank.example/log"));
        assert_eq!(a.token().len(), 12);
        assert!(
            a.entry_subject()
                .starts_with(&format!("blockpost.{}.", a.token()))
        );
        assert!(a.directory_stream().starts_with("BLOCKPOST_"));
        assert!(a.directory_stream().ends_with("_DIRECTORY"));
        assert!(
            !a.directory_stream()
                .chars()
                .any(|c| c == '.' || c == '*' || c == '>')
        );
        let alice = Address::parse("alice").unwrap();
        assert_ne!(a.inbox_subject(&alice), b.inbox_subject(&alice));
    }
}
