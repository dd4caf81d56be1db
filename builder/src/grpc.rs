//! The `blockpost.v1.Ledger` gRPC service: a thin adapter over [`Builder`].

use std::collections::HashMap;

use blockpost_core::MAX_TEXT_LEN;
use blockpost_core::block::BlockTree;
use blockpost_core::blockmap::root_from_path;
use blockpost_proto::v1::ledger_server::{self, LedgerServer};
use blockpost_proto::v1::{
    Anchor, AuditPath, Block, BlockHeader, BlockResponse, GetAnchorsRequest, GetAnchorsResponse,
    GetBlockRequest, GetHeadersRequest, GetLedgerInfoRequest, GetMessageRequest,
    GetTransactionRequest, HeadersResponse, LedgerInfo, LedgerProofsRequest, LedgerProofsResponse,
    MessageResponse, SignedBlockHeader, SubscribeBlocksRequest, TransactionResponse,
    get_block_request,
};
use blockpost_storage::Head;
use prost::Message as _;
use tonic::{Request, Response, Status};

use crate::{Builder, LedgerError};

/// Most messages in one `GetTransaction` answer, and most headers in one `GetHeaders`.
pub const MAX_PAGE: u32 = 1000;

/// Most blocks a `SubscribeBlocks` stream has in flight to a slow reader.
const SUBSCRIBE_BUFFER: usize = 16;

impl Builder {
    /// The tonic service for this builder's ledger.
    pub fn into_service(self) -> LedgerServer<Self> {
        LedgerServer::new(self)
            .max_decoding_message_size(4096)
            .max_encoding_message_size(usize::MAX)
    }

    fn read_block(&self, height: u64) -> Result<Block, LedgerError> {
        let bytes = self.store().block(height).map_err(crate::Error::from)?;
        Block::decode(bytes.as_slice()).map_err(|e| {
            LedgerError::Damaged(format!("stored block {height} does not decode: {e}"))
        })
    }

    /// A block and the Merkle tree over its leaves.
    fn read_tree(&self, height: u64) -> Result<(Block, BlockTree), LedgerError> {
        let block = self.read_block(height)?;
        let hashes: Vec<[u8; 32]> = block
            .leaves
            .iter()
            .map(|l| blockpost_core::leaf_hash(l))
            .collect();
        let tree = BlockTree::new(&hashes);
        Ok((block, tree))
    }

    /// Block `height`'s signed header: from the index, or from the block.
    fn signed_header(&self, height: u64) -> Result<SignedBlockHeader, LedgerError> {
        match self.index().header(height).map_err(LedgerError::Builder)? {
            Some(bytes) => SignedBlockHeader::decode(bytes.as_slice()).map_err(|e| {
                LedgerError::Damaged(format!("indexed header {height} does not decode: {e}"))
            }),
            None => Ok(self.read_block(height)?.header.unwrap_or_default()),
        }
    }

    fn block_response(&self, height: u64, head: &Head) -> Result<BlockResponse, LedgerError> {
        let block = self.read_block(height)?;
        let proof = self
            .store()
            .prove_inclusion(height, head.size)
            .map_err(crate::Error::from)?;
        Ok(BlockResponse {
            block: Some(block),
            ledger_checkpoint: head.checkpoint.clone(),
            ledger_proof: proof.iter().map(|h| h.to_vec()).collect(),
        })
    }

    /// Leaf `leaf` of block `height`, read through the block's map: only the leaf and its
    /// audit path, checked against the signed header's root (from the index) before it is
    /// served. `None` if the block has no map yet, or if what the map gives does not lead
    /// to the header's root (the caller then reads the block whole; a warning says so).
    fn mapped_leaf_response(
        &self,
        height: u64,
        leaf: u32,
        head: &Head,
    ) -> Result<Option<MessageResponse>, LedgerError> {
        let Some(m) = self
            .maps()
            .leaf(self.store(), height, leaf)
            .map_err(LedgerError::Builder)?
        else {
            return Ok(None);
        };
        let Some(signed) = self.index().header(height).map_err(LedgerError::Builder)? else {
            return Ok(None);
        };
        let signed = SignedBlockHeader::decode(signed.as_slice()).map_err(|e| {
            LedgerError::Damaged(format!("indexed header {height} does not decode: {e}"))
        })?;
        let header = BlockHeader::decode(signed.header.as_slice()).map_err(|e| {
            LedgerError::Damaged(format!("indexed header {height} does not decode: {e}"))
        })?;
        let hash = blockpost_core::leaf_hash(&m.bytes);
        let proved = hash == m.hash
            && header.leaf_count == u64::from(m.leaves)
            && root_from_path(m.leaves, leaf, hash, &m.path)
                .is_some_and(|root| root.as_slice() == header.merkle_root.as_slice());
        if !proved {
            tracing::warn!(
                height,
                leaf,
                "the block's map does not lead to its signed root: reading the block whole"
            );
            return Ok(None);
        }
        let ledger_proof = self
            .store()
            .prove_inclusion(height, head.size)
            .map_err(crate::Error::from)?;
        Ok(Some(MessageResponse {
            envelope: m.bytes,
            height,
            leaf_index: u64::from(leaf),
            inclusion_proof: m.path.iter().map(|h| h.to_vec()).collect(),
            header: Some(signed),
            ledger_checkpoint: head.checkpoint.clone(),
            ledger_proof: ledger_proof.iter().map(|h| h.to_vec()).collect(),
        }))
    }

    /// Leaf `leaf` of block `height` with its proofs: through the block's map, or from the
    /// whole block (read once per call into `blocks`) when that fails.
    fn leaf_of(
        &self,
        blocks: &mut HashMap<u64, (Block, BlockTree)>,
        height: u64,
        leaf: u32,
        head: &Head,
    ) -> Result<MessageResponse, LedgerError> {
        match self.mapped_leaf_response(height, leaf, head) {
            Ok(Some(r)) => return Ok(r),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(height, leaf, error = %e, "cannot read the leaf through the block's map: reading the block whole");
            }
        }
        let block = match blocks.entry(height) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(self.read_tree(height)?),
        };
        self.leaf_response(block, height, leaf, head)
    }

    /// Leaf `leaf` of `block` (at `height`, with its Merkle `tree`) with its inclusion
    /// proof, its header and the ledger proof of the block against `head`.
    fn leaf_response(
        &self,
        (block, tree): &(Block, BlockTree),
        height: u64,
        leaf: u32,
        head: &Head,
    ) -> Result<MessageResponse, LedgerError> {
        let missing = || LedgerError::Damaged(format!("block {height} has no leaf {leaf}"));
        let proof = tree.proof(leaf as usize).ok_or_else(missing)?;
        let ledger_proof = self
            .store()
            .prove_inclusion(height, head.size)
            .map_err(crate::Error::from)?;
        let envelope = block
            .leaves
            .get(leaf as usize)
            .cloned()
            .ok_or_else(missing)?;
        Ok(MessageResponse {
            envelope,
            height,
            leaf_index: u64::from(leaf),
            inclusion_proof: proof.iter().map(|h| h.to_vec()).collect(),
            header: block.header.clone(),
            ledger_checkpoint: head.checkpoint.clone(),
            ledger_proof: ledger_proof.iter().map(|h| h.to_vec()).collect(),
        })
    }
}

fn not_witnessed(height: u64, head: &Head) -> LedgerError {
    LedgerError::NotWitnessed {
        height,
        witnessed: head.size,
    }
}

fn message_id(bytes: Vec<u8>, what: &'static str) -> Result<[u8; 32], LedgerError> {
    bytes
        .try_into()
        .map_err(|v: Vec<u8>| LedgerError::BadId { what, len: v.len() })
}

#[tonic::async_trait]
impl ledger_server::Ledger for Builder {
    async fn get_ledger_info(
        &self,
        _: Request<GetLedgerInfoRequest>,
    ) -> Result<Response<LedgerInfo>, Status> {
        Ok(Response::new(LedgerInfo {
            delivery_key: self
                .delivery_public_key()
                .map(|k| k.to_vec())
                .unwrap_or_default(),
            origin: self.origin().to_owned(),
            verifier_key: self.ledger_verifier_key(),
            builder_key: self.public_key().to_bytes().to_vec(),
            transaction_timeout_ms: self.transaction_timeout_ms(),
            firehose_partitions: self.firehose_partitions(),
        }))
    }

    async fn get_block(
        &self,
        r: Request<GetBlockRequest>,
    ) -> Result<Response<BlockResponse>, Status> {
        let r = r.into_inner();
        let head = self.head_for(r.witnessed)?;
        let height = match r.at {
            Some(get_block_request::At::Height(h)) => h,
            Some(get_block_request::At::Latest(true)) => {
                head.size.checked_sub(1).ok_or(LedgerError::Empty)?
            }
            Some(get_block_request::At::Id(id)) => {
                let id = message_id(id, "a block id")?;
                self.index()
                    .height_of(&id)
                    .map_err(LedgerError::Builder)?
                    .ok_or_else(|| LedgerError::UnknownBlockId(hex::encode(id)))?
            }
            _ => {
                return Err(LedgerError::NoSelector.into());
            }
        };
        if height >= head.size {
            if r.witnessed && height < self.head().size {
                return Err(not_witnessed(height, &head).into());
            }
            return Err(LedgerError::NoBlock {
                height,
                size: head.size,
            }
            .into());
        }
        Ok(Response::new(self.block_response(height, &head)?))
    }

    async fn get_message(
        &self,
        r: Request<GetMessageRequest>,
    ) -> Result<Response<MessageResponse>, Status> {
        let r = r.into_inner();
        let id = message_id(r.message_id, "a message id")?;
        let head = self.head_for(r.witnessed)?;
        let newest = self.head().size;
        let (height, leaf) = self
            .locate(&id)
            .map_err(LedgerError::Builder)?
            .filter(|(h, _)| *h < newest)
            .ok_or_else(|| LedgerError::MessageNotInBlock(hex::encode(id)))?;
        if height >= head.size {
            return Err(not_witnessed(height, &head).into());
        }
        Ok(Response::new(self.leaf_of(
            &mut HashMap::new(),
            height,
            leaf,
            &head,
        )?))
    }

    async fn get_transaction(
        &self,
        r: Request<GetTransactionRequest>,
    ) -> Result<Response<TransactionResponse>, Status> {
        let r = r.into_inner();
        if r.transaction_id.is_empty() || r.transaction_id.len() > MAX_TEXT_LEN {
            return Err(LedgerError::BadTransactionId {
                len: r.transaction_id.len(),
                max: MAX_TEXT_LEN,
            }
            .into());
        }
        let limit = match r.limit {
            0 => MAX_PAGE,
            n if n > MAX_PAGE => {
                return Err(LedgerError::PageTooLarge {
                    what: "limit",
                    asked: n,
                    max: MAX_PAGE,
                }
                .into());
            }
            n => n,
        };
        // The index first: a block is stored before it is indexed, so the head read after
        // it covers every block the index names.
        let state = self
            .index()
            .transaction(&r.transaction_id)
            .map_err(LedgerError::Builder)?
            .ok_or_else(|| LedgerError::UnknownTransaction(r.transaction_id.clone()))?;
        let ids = self
            .index()
            .transaction_messages(&r.transaction_id, r.offset, limit)
            .map_err(LedgerError::Builder)?;
        let head = self.head_for(r.witnessed)?;
        let mut blocks: HashMap<u64, (Block, BlockTree)> = HashMap::new();
        let mut messages = Vec::with_capacity(ids.len());
        for id in ids {
            let (height, leaf) =
                self.locate(&id)
                    .map_err(LedgerError::Builder)?
                    .ok_or_else(|| {
                        LedgerError::Damaged(format!("message {} is not indexed", hex::encode(id)))
                    })?;
            if r.witnessed && height >= head.size {
                return Err(not_witnessed(height, &head).into());
            }
            messages.push(self.leaf_of(&mut blocks, height, leaf, &head)?);
        }
        let closing = match state.closing_height {
            Some(h) if r.witnessed && h >= head.size => {
                return Err(not_witnessed(h, &head).into());
            }
            Some(h) if h < head.size => {
                Some(self.leaf_of(&mut blocks, h, state.closing_leaf_index, &head)?)
            }
            _ => None,
        };
        Ok(Response::new(TransactionResponse {
            state: Some(state),
            messages,
            closing,
        }))
    }

    async fn get_headers(
        &self,
        r: Request<GetHeadersRequest>,
    ) -> Result<Response<HeadersResponse>, Status> {
        let r = r.into_inner();
        let count = match r.count {
            0 => MAX_PAGE,
            n if n > MAX_PAGE => {
                return Err(LedgerError::PageTooLarge {
                    what: "count",
                    asked: n,
                    max: MAX_PAGE,
                }
                .into());
            }
            n => n,
        };
        let head = self.head();
        if r.from_height >= head.size {
            return Err(LedgerError::NoBlock {
                height: r.from_height,
                size: head.size,
            }
            .into());
        }
        let end = head
            .size
            .min(r.from_height.saturating_add(u64::from(count)));
        let mut headers = Vec::new();
        for h in r.from_height..end {
            headers.push(self.signed_header(h)?);
        }
        Ok(Response::new(HeadersResponse {
            headers,
            ledger_checkpoint: head.checkpoint,
        }))
    }

    async fn get_ledger_proofs(
        &self,
        r: Request<LedgerProofsRequest>,
    ) -> Result<Response<LedgerProofsResponse>, Status> {
        let r = r.into_inner();
        for (what, n) in [
            ("heights", r.heights.len()),
            ("consistency_from", r.consistency_from.len()),
        ] {
            if n > MAX_PAGE as usize {
                return Err(LedgerError::PageTooLarge {
                    what,
                    asked: u32::try_from(n).unwrap_or(u32::MAX),
                    max: MAX_PAGE,
                }
                .into());
            }
        }
        let head = self.head_for(r.witnessed)?;
        let newest = self.head().size;
        let path = |hashes: Vec<[u8; 32]>| AuditPath {
            hashes: hashes.iter().map(|h| h.to_vec()).collect(),
        };
        let mut headers = Vec::with_capacity(r.heights.len());
        let mut inclusion = Vec::with_capacity(r.heights.len());
        for &h in &r.heights {
            if h >= head.size {
                if r.witnessed && h < newest {
                    return Err(not_witnessed(h, &head).into());
                }
                return Err(LedgerError::NoBlock {
                    height: h,
                    size: head.size,
                }
                .into());
            }
            headers.push(self.signed_header(h)?);
            inclusion.push(path(
                self.store()
                    .prove_inclusion(h, head.size)
                    .map_err(|e| LedgerError::Builder(e.into()))?,
            ));
        }
        let mut consistency = Vec::with_capacity(r.consistency_from.len());
        for &from in &r.consistency_from {
            if from == 0 || from > head.size {
                return Err(LedgerError::BadRange(format!(
                    "a consistency proof from ledger size {from} to {}: the size must be 1 to {}",
                    head.size, head.size
                ))
                .into());
            }
            consistency.push(path(
                self.store()
                    .prove_consistency(from, head.size)
                    .map_err(|e| LedgerError::Builder(e.into()))?,
            ));
        }
        Ok(Response::new(LedgerProofsResponse {
            ledger_checkpoint: head.checkpoint,
            headers,
            inclusion,
            consistency,
        }))
    }

    async fn get_anchors(
        &self,
        _: Request<GetAnchorsRequest>,
    ) -> Result<Response<GetAnchorsResponse>, Status> {
        let anchors = self.anchors();
        let mut out = Vec::new();
        for line in anchors.lines() {
            let (ots, bitcoin_header) = anchors.files(line.n).map_err(LedgerError::Builder)?;
            out.push(Anchor {
                ledger_size: line.ledger_size,
                ledger_root: hex::decode(&line.ledger_root).unwrap_or_default(),
                sink: line.sink,
                reference: line.reference,
                time_ms: line.time_ms,
                ots,
                bitcoin_header,
            });
        }
        Ok(Response::new(GetAnchorsResponse { anchors: out }))
    }

    type SubscribeBlocksStream =
        tokio_stream::wrappers::ReceiverStream<Result<BlockResponse, Status>>;

    async fn subscribe_blocks(
        &self,
        r: Request<SubscribeBlocksRequest>,
    ) -> Result<Response<Self::SubscribeBlocksStream>, Status> {
        let mut next = r.into_inner().from_height;
        let (tx, rx) = tokio::sync::mpsc::channel(SUBSCRIBE_BUFFER);
        let mut heights = self.subscribe_heights();
        let builder = self.clone();
        tokio::spawn(async move {
            loop {
                let head = builder.head();
                while next < head.size {
                    let item = builder.block_response(next, &head).map_err(Status::from);
                    let failed = item.is_err();
                    if tx.send(item).await.is_err() || failed {
                        return;
                    }
                    next += 1;
                }
                tokio::select! {
                    changed = heights.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }
}
