//! A ledger client that verifies every block and message it is given: the builder's
//! header signature, the chain link to the previous header, the block's Merkle root (or
//! the message's inclusion proof in it), and the block id's inclusion in a ledger
//! checkpoint signed with the ledger key. The builder's key and the ledger key are pinned
//! on first contact, like the directory's log key.

use std::path::{Path, PathBuf};

use blockpost_core::block::{
    VerifiedBlock, VerifiedHeader, verify_block, verify_header, verify_leaf_inclusion,
};
use blockpost_core::{VerifiedCheckpoint, ed25519_key, verify_checkpoint};
use blockpost_proto::v1::ledger_client::LedgerClient;
use blockpost_proto::v1::{
    Envelope, GetBlockRequest, GetLedgerInfoRequest, GetMessageRequest, LedgerInfo,
    get_block_request,
};
use ed25519_dalek::VerifyingKey;
use prost::Message as _;
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;

use crate::{Client, Error, Result};

/// What the client pins of one ledger.
#[derive(Serialize, Deserialize, PartialEq, Eq)]
struct Pinned {
    origin: String,
    verifier_key: String,
    builder_key: String,
}

/// A block, verified, with the ledger checkpoint that includes it.
#[derive(Clone, Debug)]
pub struct LedgerBlock {
    /// The block: header, leaves, what each leaf is.
    pub block: VerifiedBlock,
    /// The ledger checkpoint its id was proved in.
    pub checkpoint: VerifiedCheckpoint,
    /// The inclusion proof of its id in that checkpoint.
    pub ledger_proof: Vec<Vec<u8>>,
}

/// A message, verified in its block and the block in the ledger.
#[derive(Clone, Debug)]
pub struct LedgerMessage {
    /// SHA-256 of the envelope.
    pub message_id: [u8; 32],
    /// The envelope bytes: the leaf.
    pub envelope_bytes: Vec<u8>,
    /// The decoded envelope.
    pub envelope: Envelope,
    /// Leaf index in the block.
    pub leaf_index: u64,
    /// Inclusion proof of the leaf in the block's root.
    pub inclusion_proof: Vec<Vec<u8>>,
    /// The block's verified header.
    pub header: VerifiedHeader,
    /// The ledger checkpoint.
    pub checkpoint: VerifiedCheckpoint,
    /// The inclusion proof of the block id in it.
    pub ledger_proof: Vec<Vec<u8>>,
}

/// A verifying ledger client.
pub struct Ledger {
    grpc: LedgerClient<Channel>,
    info: LedgerInfo,
    builder_key: VerifyingKey,
}

impl Ledger {
    /// The ledger of the node `directory` is connected to; pins its keys on first contact
    /// in `state_dir`.
    pub async fn connect(directory: &Client, state_dir: &Path) -> Result<Self> {
        let mut grpc = LedgerClient::new(directory.channel()).max_decoding_message_size(128 << 20);
        let info = grpc
            .get_ledger_info(GetLedgerInfoRequest {})
            .await?
            .into_inner();
        let builder_key = ed25519_key(&info.builder_key).map_err(|e| {
            Error::UnexpectedAnswer(format!("the builder's key is not an ed25519 key: {e}"))
        })?;
        let presented = Pinned {
            origin: info.origin.clone(),
            verifier_key: info.verifier_key.clone(),
            builder_key: hex::encode(&info.builder_key),
        };
        let file = pin_file(state_dir, directory.endpoint());
        let state = |why: String| Error::State {
            path: file.display().to_string(),
            why,
        };
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                let pinned: Pinned = serde_json::from_str(&text)
                    .map_err(|e| state(format!("damaged ({e}); delete it to trust anew")))?;
                if pinned != presented {
                    return Err(Error::Refused(format!(
                        "the ledger at {} now presents origin {:?}, builder key {} and ledger key {:?}, \
                         but {} pinned {:?}, {} and {:?}: refusing to continue",
                        directory.endpoint(),
                        presented.origin,
                        presented.builder_key,
                        presented.verifier_key,
                        file.display(),
                        pinned.origin,
                        pinned.builder_key,
                        pinned.verifier_key
                    )));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(d) = file.parent() {
                    std::fs::create_dir_all(d).map_err(|e| state(e.to_string()))?;
                }
                let json =
                    serde_json::to_vec_pretty(&presented).map_err(|e| state(e.to_string()))?;
                std::fs::write(&file, json).map_err(|e| state(e.to_string()))?;
            }
            Err(e) => return Err(state(e.to_string())),
        }
        Ok(Self {
            grpc,
            info,
            builder_key,
        })
    }

    /// The ledger's identity as pinned.
    pub fn info(&self) -> &LedgerInfo {
        &self.info
    }

    fn checkpoint(&self, note: &[u8]) -> Result<VerifiedCheckpoint> {
        verify_checkpoint(note, &self.info.verifier_key).map_err(Error::CheckpointSignature)
    }

    /// The header of block `height`, verified (signature, fields), without the ledger.
    async fn header_at(&mut self, height: u64) -> Result<VerifiedHeader> {
        let r = self
            .grpc
            .get_block(GetBlockRequest {
                at: Some(get_block_request::At::Height(height)),
            })
            .await?
            .into_inner();
        let signed = r
            .block
            .and_then(|b| b.header)
            .ok_or_else(|| Error::UnexpectedAnswer(format!("block {height} without a header")))?;
        verify_header(&signed, &self.builder_key)
            .map_err(|source| Error::BadBlock { height, source })
    }

    /// Checks that `header` follows the header before it on the node.
    async fn check_link(&mut self, header: &VerifiedHeader) -> Result<()> {
        let height = header.header.height;
        if height == 0 {
            return Ok(());
        }
        let prev = self.header_at(height - 1).await?;
        header
            .check_follows(&prev)
            .map_err(|source| Error::BadBlock { height, source })
    }

    /// A block by height (`None`: the newest), verified whole: header signature, leaf
    /// count, every leaf's kind, Merkle root, chain link, and ledger inclusion.
    pub async fn block(&mut self, height: Option<u64>) -> Result<LedgerBlock> {
        let at = match height {
            Some(h) => get_block_request::At::Height(h),
            None => get_block_request::At::Latest(true),
        };
        let r = self
            .grpc
            .get_block(GetBlockRequest { at: Some(at) })
            .await?
            .into_inner();
        let block = r
            .block
            .ok_or_else(|| Error::UnexpectedAnswer("no block in the answer".into()))?;
        let asked = height;
        let v = verify_block(&block, &self.builder_key).map_err(|source| Error::BadBlock {
            height: asked.unwrap_or_default(),
            source,
        })?;
        let height = v.header.header.height;
        if asked.is_some_and(|a| a != height) {
            return Err(Error::UnexpectedAnswer(format!(
                "asked for block {}, got block {height}",
                asked.unwrap_or_default()
            )));
        }
        let cp = self.checkpoint(&r.ledger_checkpoint)?;
        cp.verify_inclusion(height, &v.header.id, &r.ledger_proof)
            .map_err(|source| Error::BadProof {
                index: height,
                source,
            })?;
        self.check_link(&v.header).await?;
        Ok(LedgerBlock {
            block: v,
            checkpoint: cp,
            ledger_proof: r.ledger_proof,
        })
    }

    /// A message by id, verified: it is the leaf its proof says in a block whose header
    /// the builder signed, that header follows the one before it, and its id is in the
    /// signed ledger.
    pub async fn message(&mut self, id: [u8; 32]) -> Result<LedgerMessage> {
        let r = self
            .grpc
            .get_message(GetMessageRequest {
                message_id: id.to_vec(),
            })
            .await?
            .into_inner();
        let signed = r
            .header
            .ok_or_else(|| Error::UnexpectedAnswer("no header in the answer".into()))?;
        let header =
            verify_header(&signed, &self.builder_key).map_err(|source| Error::BadBlock {
                height: r.height,
                source,
            })?;
        if header.header.height != r.height {
            return Err(Error::UnexpectedAnswer(format!(
                "asked about block {}, got the header of block {}",
                r.height, header.header.height
            )));
        }
        if blockpost_core::block::block_id(&r.envelope) != id {
            return Err(Error::UnexpectedAnswer(
                "the envelope in the answer is not the message asked for".into(),
            ));
        }
        verify_leaf_inclusion(
            &header.header.merkle_root,
            header.header.leaf_count,
            r.leaf_index,
            &r.envelope,
            &r.inclusion_proof,
        )
        .map_err(|source| Error::BadProof {
            index: r.leaf_index,
            source,
        })?;
        let cp = self.checkpoint(&r.ledger_checkpoint)?;
        cp.verify_inclusion(r.height, &header.id, &r.ledger_proof)
            .map_err(|source| Error::BadProof {
                index: r.height,
                source,
            })?;
        self.check_link(&header).await?;
        let envelope = Envelope::decode(r.envelope.as_slice())
            .map_err(|e| Error::UnexpectedAnswer(format!("the leaf is not an envelope: {e}")))?;
        Ok(LedgerMessage {
            message_id: id,
            envelope_bytes: r.envelope,
            envelope,
            leaf_index: r.leaf_index,
            inclusion_proof: r.inclusion_proof,
            header,
            checkpoint: cp,
            ledger_proof: r.ledger_proof,
        })
    }
}

fn pin_file(state_dir: &Path, endpoint: &str) -> PathBuf {
    state_dir.join("ledgers").join(format!(
        "{}.json",
        crate::directory::state_file_name(endpoint)
    ))
}
