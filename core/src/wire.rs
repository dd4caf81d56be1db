//! The NATS wire contract, in one place: stream names, subjects, headers and
//! de-duplication ids. Publishers, readers and tests all use these, so that none can drift.
//!
//! | stream (default name) | subjects | message | headers |
//! |---|---|---|---|
//! | `BLOCKPOST_DIRECTORY` | [`ENTRY_SUBJECT`] | a `LogEntry` | [`LEAF_INDEX_HEADER`], `Nats-Msg-Id` = [`entry_msg_id`] |
//! | | [`CHECKPOINT_SUBJECT`] | a signed checkpoint note | [`TREE_SIZE_HEADER`], `Nats-Msg-Id` = [`checkpoint_msg_id`] |
//! | `BLOCKPOST_FIREHOSE` | [`FIREHOSE_SUBJECT`] | an `Envelope` | [`MESSAGE_ID_HEADER`], `Nats-Msg-Id` = [`nonce_msg_id`] |
//! | `BLOCKPOST_INBOX` | [`inbox_subject`] | an `Envelope` | [`MESSAGE_ID_HEADER`], [`FIREHOSE_SEQ_HEADER`], `Nats-Msg-Id` = [`inbox_msg_id`] |

use crate::Address;

/// Default name of the directory's stream.
pub const DIRECTORY_STREAM: &str = "BLOCKPOST_DIRECTORY";
/// Default name of the firehose stream.
pub const FIREHOSE_STREAM: &str = "BLOCKPOST_FIREHOSE";
/// Default name of the inbox stream.
pub const INBOX_STREAM: &str = "BLOCKPOST_INBOX";

/// Subjects of the directory stream.
pub const DIRECTORY_SUBJECTS: &str = "blockpost.directory.>";
/// Subject of directory log entries.
pub const ENTRY_SUBJECT: &str = "blockpost.directory.entry";
/// Subject of directory checkpoints.
pub const CHECKPOINT_SUBJECT: &str = "blockpost.directory.checkpoint";
/// Subject of the firehose: every accepted envelope, once.
pub const FIREHOSE_SUBJECT: &str = "blockpost.firehose";
/// Subjects of the inbox stream.
pub const INBOX_SUBJECTS: &str = "blockpost.inbox.*";

/// JetStream's de-duplication header.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";
/// Leaf index of a directory entry message.
pub const LEAF_INDEX_HEADER: &str = "Blockpost-Leaf-Index";
/// Tree size of a checkpoint message.
pub const TREE_SIZE_HEADER: &str = "Blockpost-Tree-Size";
/// Hex message id (SHA-256 of the encoded envelope).
pub const MESSAGE_ID_HEADER: &str = "Blockpost-Message-Id";
/// Firehose sequence of an inbox copy.
pub const FIREHOSE_SEQ_HEADER: &str = "Blockpost-Firehose-Seq";

/// The subject of `address`'s inbox; an [`Address`] is always one subject token.
pub fn inbox_subject(address: &Address) -> String {
    format!("blockpost.inbox.{address}")
}

/// De-duplication id of directory entry `index`.
pub fn entry_msg_id(index: u64) -> String {
    format!("entry-{index}")
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

/// The names of the node's streams (configurable, defaults above).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamNames {
    /// The directory's stream.
    pub directory: String,
    /// The firehose.
    pub firehose: String,
    /// The inboxes.
    pub inbox: String,
}

impl Default for StreamNames {
    fn default() -> Self {
        Self {
            directory: DIRECTORY_STREAM.into(),
            firehose: FIREHOSE_STREAM.into(),
            inbox: INBOX_STREAM.into(),
        }
    }
}
