//! A ledger client that verifies every block and message it is given: the builder's
//! header signature, the chain link to the previous header, the block's Merkle root (or
//! the message's inclusion proof in it), and the block id's inclusion in a ledger
//! checkpoint signed with the ledger key. The builder's key and the ledger key are pinned
//! on first contact, like the directory's log key.

use std::path::{Path, PathBuf};

use blockpost_core::block::{
    VerifiedBlock, VerifiedHeader, verify_block, verify_header, verify_leaf_inclusion,
};
use blockpost_core::transaction::{Place, TxMessage, check_closing_placed, deadline_of};
use blockpost_core::{VerifiedCheckpoint, ed25519_key, verify_checkpoint};
use blockpost_proto::v1::ledger_client::LedgerClient;
use blockpost_proto::v1::{
    Envelope, EnvelopeContent, GetBlockRequest, GetHeadersRequest, GetLedgerInfoRequest,
    GetMessageRequest, GetTransactionRequest, LedgerInfo, LedgerProofsRequest, LedgerRecord,
    MessageResponse, TransactionClosing, TransactionState, TransactionStatus, get_block_request,
    ledger_record,
};
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;

use crate::{Client, Error, Result};

/// What the client pins of one ledger.
#[derive(Serialize, Deserialize, PartialEq, Eq)]
struct Pinned {
    origin: String,
    verifier_key: String,
    builder_key: String,
    /// A rule of the ledger (transaction deadlines depend on it); absent in pins written
    /// before it was pinned, and then pinned on the next contact.
    #[serde(default)]
    transaction_timeout_ms: Option<u64>,
    /// A rule of the ledger too (blocks name firehose ranges by partition); absent in pins
    /// written before partitions, and then pinned on the next contact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    firehose_partitions: Option<u32>,
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

/// A transaction, verified: every message in its block and the ledger, each of them of
/// this transaction, and its closing record (if closed) in its block and checked against
/// the messages it closes.
#[derive(Clone, Debug)]
pub struct LedgerTransaction {
    /// Its state as the ledger says (checked against the messages and the closing).
    pub state: TransactionState,
    /// Its messages, in ledger order.
    pub messages: Vec<LedgerMessage>,
    /// The closing record, and its place in the ledger, once closed.
    pub closing: Option<(TransactionClosing, LedgerMessage)>,
}

/// Headers and proofs against one ledger checkpoint ([`Ledger::proofs`]).
#[derive(Clone, Debug)]
pub struct LedgerProofs {
    /// The checkpoint.
    pub checkpoint: VerifiedCheckpoint,
    /// The headers asked for, verified and proved in it.
    pub headers: Vec<VerifiedHeader>,
    /// Their inclusion proofs.
    pub inclusion: Vec<Vec<Vec<u8>>>,
    /// The consistency proofs asked for.
    pub consistency: Vec<Vec<Vec<u8>>>,
}

/// A verifying ledger client.
pub struct Ledger {
    grpc: LedgerClient<Channel>,
    info: LedgerInfo,
    builder_key: VerifyingKey,
    /// Headers verified so far, by height (chain links are checked against them).
    headers: std::collections::HashMap<u64, VerifiedHeader>,
    /// The witnesses whose cosignatures ledger checkpoints require (the directory
    /// client's).
    witnesses: blockpost_core::WitnessPolicy,
}

/// Calls the node until it answers with something other than "not witnessed yet", for up
/// to [`crate::WITNESS_WAIT`] (once, when no witness is required).
async fn until_witnessed<T, F, Fut>(required: bool, mut call: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
{
    let deadline = tokio::time::Instant::now() + crate::WITNESS_WAIT;
    loop {
        match call().await {
            Err(s)
                if required
                    && blockpost_proto::status::reason(&s).as_deref() == Some("NOT_WITNESSED")
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(s)
                if required
                    && blockpost_proto::status::reason(&s).as_deref() == Some("NOT_WITNESSED") =>
            {
                return Err(Error::NotWitnessed {
                    log: "ledger",
                    source: Box::new(s),
                });
            }
            r => return Ok(r?.into_inner()),
        }
    }
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
            transaction_timeout_ms: Some(info.transaction_timeout_ms),
            firehose_partitions: Some(info.firehose_partitions.max(1)),
        };
        let file = pin_file(state_dir, directory.endpoint());
        // Pins of earlier versions lack the rules added since: filled from what the ledger
        // presents now, and written back.
        let complete = |pinned: &mut Pinned, now: &Pinned| {
            let missing =
                pinned.transaction_timeout_ms.is_none() || pinned.firehose_partitions.is_none();
            pinned.transaction_timeout_ms =
                pinned.transaction_timeout_ms.or(now.transaction_timeout_ms);
            pinned.firehose_partitions = pinned.firehose_partitions.or(now.firehose_partitions);
            missing
        };
        blockpost_files::pin_json(&file, &presented, complete).map_err(|e| match e {
            blockpost_files::PinError::Changed {
                path,
                presented,
                pinned,
            } => Error::Refused(format!(
                "the ledger at {} now presents {presented}, but {} pinned {pinned}: refusing to continue",
                directory.endpoint(),
                path.display()
            )),
            other => Error::State {
                path: file.display().to_string(),
                why: other.to_string(),
            },
        })?;
        Ok(Self {
            grpc,
            info,
            builder_key,
            headers: std::collections::HashMap::new(),
            witnesses: directory.witness_policy().clone(),
        })
    }

    /// The ledger's identity as pinned.
    pub fn info(&self) -> &LedgerInfo {
        &self.info
    }

    fn checkpoint(&self, note: &[u8]) -> Result<VerifiedCheckpoint> {
        let cp =
            verify_checkpoint(note, &self.info.verifier_key).map_err(Error::CheckpointSignature)?;
        if self.witnesses.is_required() {
            self.witnesses
                .check(note)
                .map_err(|source| Error::NotWitnessed {
                    log: "ledger",
                    source: source.into(),
                })?;
        }
        Ok(cp)
    }

    /// Block headers and proofs against one ledger checkpoint: the newest witnessed one
    /// when there is one that covers `heights` (else, unless witnesses are required, the
    /// newest). Headers are verified and their ids proved in the checkpoint; consistency
    /// proofs (from each of `consistency_from`) are returned for the caller to check
    /// against roots it holds.
    pub async fn proofs(
        &mut self,
        heights: &[u64],
        consistency_from: &[u64],
    ) -> Result<LedgerProofs> {
        let ask = |witnessed| LedgerProofsRequest {
            heights: heights.to_vec(),
            consistency_from: consistency_from.to_vec(),
            witnessed,
        };
        let required = self.witnesses.is_required();
        let grpc = self.grpc.clone();
        let witnessed = until_witnessed(required, || {
            let mut g = grpc.clone();
            let req = ask(true);
            async move { g.get_ledger_proofs(req).await }
        })
        .await;
        let r = match witnessed {
            Ok(r) => r,
            // No witnessed checkpoint covers them (or none at all): the newest does for a
            // client that requires no witness.
            Err(Error::Status(s)) if !required && s.code() == tonic::Code::FailedPrecondition => {
                self.grpc.get_ledger_proofs(ask(false)).await?.into_inner()
            }
            Err(e) => return Err(e),
        };
        let checkpoint = self.checkpoint(&r.ledger_checkpoint)?;
        if r.headers.len() != heights.len()
            || r.inclusion.len() != heights.len()
            || r.consistency.len() != consistency_from.len()
        {
            return Err(Error::UnexpectedAnswer(
                "the ledger's proofs do not match what was asked".into(),
            ));
        }
        let mut headers = Vec::with_capacity(heights.len());
        for ((&height, signed), path) in heights.iter().zip(&r.headers).zip(&r.inclusion) {
            let h = verify_header(signed, &self.builder_key)
                .map_err(|source| Error::BadBlock { height, source })?;
            if h.header.height != height {
                return Err(Error::UnexpectedAnswer(format!(
                    "asked for block {height}, got the header of block {}",
                    h.header.height
                )));
            }
            checkpoint
                .verify_inclusion(height, &h.id, &path.hashes)
                .map_err(|source| Error::BadProof {
                    index: height,
                    source,
                })?;
            headers.push(h);
        }
        Ok(LedgerProofs {
            checkpoint,
            headers,
            inclusion: r.inclusion.into_iter().map(|p| p.hashes).collect(),
            consistency: r.consistency.into_iter().map(|p| p.hashes).collect(),
        })
    }

    /// The anchors the node's builder made, as it holds them (unverified: an evidence
    /// bundle's check verifies them).
    pub async fn anchors(&mut self) -> Result<Vec<blockpost_proto::v1::Anchor>> {
        Ok(self
            .grpc
            .get_anchors(blockpost_proto::v1::GetAnchorsRequest {})
            .await?
            .into_inner()
            .anchors)
    }

    /// The header of block `height`, verified (signature, fields), without the ledger.
    async fn header_at(&mut self, height: u64) -> Result<VerifiedHeader> {
        if let Some(h) = self.headers.get(&height) {
            return Ok(h.clone());
        }
        let r = self
            .grpc
            .get_headers(GetHeadersRequest {
                from_height: height,
                count: 1,
            })
            .await?
            .into_inner();
        let signed = r
            .headers
            .into_iter()
            .next()
            .ok_or_else(|| Error::UnexpectedAnswer(format!("no header for block {height}")))?;
        let v = verify_header(&signed, &self.builder_key)
            .map_err(|source| Error::BadBlock { height, source })?;
        if v.header.height != height {
            return Err(Error::UnexpectedAnswer(format!(
                "asked for header {height}, got header {}",
                v.header.height
            )));
        }
        self.headers.insert(height, v.clone());
        Ok(v)
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
            .map_err(|source| Error::BadBlock { height, source })?;
        self.headers.insert(height, header.clone());
        Ok(())
    }

    /// A block by height (`None`: the newest), verified whole: header signature, leaf
    /// count, every leaf's kind, Merkle root, chain link, and ledger inclusion.
    pub async fn block(&mut self, height: Option<u64>) -> Result<LedgerBlock> {
        let at = match height {
            Some(h) => get_block_request::At::Height(h),
            None => get_block_request::At::Latest(true),
        };
        let witnessed = self.witnesses.is_required();
        let grpc = self.grpc.clone();
        let r = until_witnessed(witnessed, || {
            let mut g = grpc.clone();
            let at = at.clone();
            async move {
                g.get_block(GetBlockRequest {
                    at: Some(at),
                    witnessed,
                })
                .await
            }
        })
        .await?;
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
        let witnessed = self.witnesses.is_required();
        let grpc = self.grpc.clone();
        let r = until_witnessed(witnessed, || {
            let mut g = grpc.clone();
            async move {
                g.get_message(GetMessageRequest {
                    message_id: id.to_vec(),
                    witnessed,
                })
                .await
            }
        })
        .await?;
        let m = self.verify_leaf(r).await?;
        if m.message_id != id {
            return Err(Error::UnexpectedAnswer(
                "the envelope in the answer is not the message asked for".into(),
            ));
        }
        Ok(m)
    }

    /// Verifies an auditor's search hit like a node's answer for that message: the
    /// signed header with the pinned builder key, the envelope's inclusion in its root, the
    /// block id in a ledger checkpoint signed with the pinned ledger key, and the chain
    /// link. The hit's names are the auditor's say and are not checked here.
    pub async fn verify_hit(
        &mut self,
        hit: &blockpost_proto::v1::SearchHit,
    ) -> Result<LedgerMessage> {
        let header = blockpost_core::decode_canonical::<blockpost_proto::v1::SignedBlockHeader>(
            &hit.header,
            "signed block header",
        )
        .map_err(|source| Error::BadBlock {
            height: hit.height,
            source,
        })?;
        let m = self
            .verify_leaf(MessageResponse {
                envelope: hit.envelope.clone(),
                height: hit.height,
                leaf_index: hit.leaf_index,
                inclusion_proof: hit.inclusion_proof.clone(),
                header: Some(header),
                ledger_checkpoint: hit.ledger_checkpoint.clone(),
                ledger_proof: hit.ledger_proof.clone(),
            })
            .await?;
        if m.message_id.as_slice() != hit.message_id.as_slice() {
            return Err(Error::UnexpectedAnswer(
                "the search hit's envelope is not the message it names".into(),
            ));
        }
        Ok(m)
    }

    /// Checks one leaf answer: the header's signature, the leaf's inclusion in its root,
    /// the block id in the signed ledger, and the chain link. `envelope` is decoded when the
    /// leaf is one (left default for a record).
    async fn verify_leaf(&mut self, r: MessageResponse) -> Result<LedgerMessage> {
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
        let envelope = match blockpost_core::block::classify_leaf(&r.envelope) {
            Ok(blockpost_core::block::Leaf::Message(e)) => e,
            _ => Envelope::default(),
        };
        Ok(LedgerMessage {
            message_id: blockpost_core::block::block_id(&r.envelope),
            envelope_bytes: r.envelope,
            envelope,
            leaf_index: r.leaf_index,
            inclusion_proof: r.inclusion_proof,
            header,
            checkpoint: cp,
            ledger_proof: r.ledger_proof,
        })
    }

    /// A transaction by id, verified: every message (all pages) in its block and the
    /// ledger and of this transaction; the state's parties, `finish`es and deadline as its
    /// messages and the ledger's timeout give them; the closing record, if any, in its
    /// block and checked with [`check_closing_placed`].
    pub async fn transaction(&mut self, id: &str) -> Result<LedgerTransaction> {
        let mut state: Option<TransactionState> = None;
        let mut messages: Vec<LedgerMessage> = Vec::new();
        let mut tx_messages: Vec<TxMessage> = Vec::new();
        let mut closing = None;
        loop {
            let offset = u32::try_from(messages.len()).map_err(|_| {
                Error::UnexpectedAnswer("more than 2^32 messages in a transaction".into())
            })?;
            let witnessed = self.witnesses.is_required();
            let grpc = self.grpc.clone();
            let r = until_witnessed(witnessed, || {
                let mut g = grpc.clone();
                async move {
                    g.get_transaction(GetTransactionRequest {
                        transaction_id: id.to_owned(),
                        offset,
                        limit: 0,
                        witnessed,
                    })
                    .await
                }
            })
            .await?;
            let page = r.messages.len();
            for m in r.messages {
                let m = self.verify_leaf(m).await?;
                let c: EnvelopeContent =
                    blockpost_core::decode_canonical(&m.envelope.content, "envelope content")
                        .map_err(|e| {
                            Error::UnexpectedAnswer(format!("a message does not decode: {e}"))
                        })?;
                if c.transaction_id != id {
                    return Err(Error::UnexpectedAnswer(format!(
                        "message {} is of transaction {:?}, not {id:?}",
                        hex::encode(m.message_id),
                        c.transaction_id
                    )));
                }
                tx_messages.push(TxMessage::new(m.message_id, &c));
                messages.push(m);
            }
            if state.is_none()
                && let Some(c) = r.closing
            {
                closing = Some(self.verify_leaf(c).await?);
            }
            let s = r
                .state
                .ok_or_else(|| Error::UnexpectedAnswer("no transaction state".into()))?;
            let total = s.message_count as usize;
            state.get_or_insert(s);
            if messages.len() >= total || page == 0 {
                break;
            }
        }
        let state = state.ok_or_else(|| Error::UnexpectedAnswer("no transaction state".into()))?;
        let bad = |why: String| Error::UnexpectedAnswer(format!("transaction {id}: {why}"));
        if state.transaction_id != id {
            return Err(bad(format!(
                "the answer is about {:?}",
                state.transaction_id
            )));
        }
        if messages.len() != state.message_count as usize {
            return Err(bad(format!(
                "{} messages, the state says {}",
                messages.len(),
                state.message_count
            )));
        }
        // In ledger order: the first message (and with it the deadline) is not the server's
        // choice, and no message comes twice.
        for w in messages.windows(2) {
            let at = |m: &LedgerMessage| (m.header.header.height, m.leaf_index);
            if at(&w[0]) >= at(&w[1]) {
                return Err(bad("its messages are not in ledger order".into()));
            }
        }
        let (first, first_msg) = messages
            .first()
            .zip(tx_messages.first())
            .ok_or_else(|| bad("no message".into()))?;
        let deadline = deadline_of(
            first_msg,
            first.header.header.time_ms,
            self.info.transaction_timeout_ms,
        );
        if state.deadline_ms != deadline || state.opened_height != first.header.header.height {
            return Err(bad(format!(
                "the state says opened in block {} with deadline {}; its first message says {} and {deadline}",
                state.opened_height, state.deadline_ms, first.header.header.height
            )));
        }
        let closing = match closing {
            None => {
                if state.status() != TransactionStatus::Open {
                    return Err(bad("closed, but no closing record came with it".into()));
                }
                None
            }
            Some(leaf) => {
                let record: LedgerRecord =
                    blockpost_core::decode_canonical(&leaf.envelope_bytes, "ledger record")
                        .map_err(|e| bad(format!("the closing leaf does not decode: {e}")))?;
                let Some(ledger_record::Record::Closing(c)) = record.record else {
                    return Err(bad("the closing leaf is not a closing record".into()));
                };
                if c.status != state.status
                    || state.closing_height != Some(leaf.header.header.height)
                    || u64::from(state.closing_leaf_index) != leaf.leaf_index
                {
                    return Err(bad(
                        "the closing record is not this transaction's state, or not where it says"
                            .into(),
                    ));
                }
                let place = |m: &LedgerMessage| Place {
                    height: m.header.header.height,
                    leaf_index: m.leaf_index,
                    time_ms: m.header.header.time_ms,
                };
                let placed: Vec<(TxMessage, Place)> = tx_messages
                    .iter()
                    .cloned()
                    .zip(messages.iter().map(place))
                    .collect();
                check_closing_placed(id, &c, place(&leaf), &placed, state.deadline_ms)
                    .map_err(|why| bad(format!("its closing record: {why}")))?;
                if c.finished_by != state.finished_by {
                    return Err(bad("finished_by differs from the closing record".into()));
                }
                Some((c, leaf))
            }
        };
        let included = closing.as_ref().map_or(
            tx_messages
                .len()
                .min(blockpost_core::transaction::MAX_TRANSACTION_MESSAGES),
            |(c, _)| c.message_ids.len(),
        );
        if closing.is_none() {
            // Open: who finished is what its messages say, and they must not finish it.
            let mut t = blockpost_core::transaction::Book::new(u64::MAX / 4, []);
            let mut finished = false;
            for m in &tx_messages[..included] {
                finished |=
                    t.message(m, 0, 0, |_| false) == blockpost_core::transaction::Step::Finished;
            }
            let by: Vec<String> = t
                .get(id)
                .map(|o| o.finished.iter().cloned().collect())
                .unwrap_or_default();
            if finished || by != state.finished_by {
                return Err(bad(
                    "the state says open, but its messages say otherwise (finished, or who sent finish)"
                        .into(),
                ));
            }
        }
        let mut parties = std::collections::BTreeSet::new();
        for m in &tx_messages[..included] {
            parties.insert(m.sender.clone());
            parties.extend(m.recipients.iter().cloned());
        }
        if state.parties != parties.into_iter().collect::<Vec<_>>() {
            return Err(bad(
                "its parties are not the senders and recipients of its messages".into(),
            ));
        }
        Ok(LedgerTransaction {
            state,
            messages,
            closing,
        })
    }
}

fn pin_file(state_dir: &Path, endpoint: &str) -> PathBuf {
    state_dir.join("ledgers").join(format!(
        "{}.json",
        crate::directory::state_file_name(endpoint)
    ))
}
