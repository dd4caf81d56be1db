//! The `blockpost.v1.Ledger` gRPC service: a thin adapter over [`Builder`].

use blockpost_core::block::BlockTree;
use blockpost_proto::v1::ledger_server::{self, LedgerServer};
use blockpost_proto::v1::{
    Block, BlockResponse, GetBlockRequest, GetLedgerInfoRequest, GetMessageRequest, LedgerInfo,
    MessageResponse, get_block_request,
};
use prost::Message as _;
use tonic::{Request, Response, Status};

use crate::Builder;

impl Builder {
    /// The tonic service for this builder's ledger.
    pub fn into_service(self) -> LedgerServer<Self> {
        LedgerServer::new(self).max_decoding_message_size(4096)
    }

    fn read_block(&self, height: u64) -> Result<Block, Status> {
        let bytes = self
            .store()
            .block(height)
            .map_err(|e| Status::internal(format!("reading block {height}: {e}")))?;
        Block::decode(bytes.as_slice())
            .map_err(|e| Status::data_loss(format!("stored block {height} does not decode: {e}")))
    }
}

#[tonic::async_trait]
impl ledger_server::Ledger for Builder {
    async fn get_ledger_info(
        &self,
        _: Request<GetLedgerInfoRequest>,
    ) -> Result<Response<LedgerInfo>, Status> {
        Ok(Response::new(LedgerInfo {
            origin: self.origin().to_owned(),
            verifier_key: self.ledger_verifier_key(),
            builder_key: self.public_key().to_bytes().to_vec(),
        }))
    }

    async fn get_block(
        &self,
        r: Request<GetBlockRequest>,
    ) -> Result<Response<BlockResponse>, Status> {
        let head = self.head();
        let height = match r.into_inner().at {
            Some(get_block_request::At::Height(h)) => h,
            Some(get_block_request::At::Latest(true)) => head
                .size
                .checked_sub(1)
                .ok_or_else(|| Status::not_found("the ledger holds no block yet"))?,
            _ => {
                return Err(Status::invalid_argument("give a height, or latest = true"));
            }
        };
        if height >= head.size {
            return Err(Status::not_found(format!(
                "no block at height {height}: the ledger holds {} blocks",
                head.size
            )));
        }
        let block = self.read_block(height)?;
        let proof = self
            .store()
            .prove_inclusion(height, head.size)
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(BlockResponse {
            block: Some(block),
            ledger_checkpoint: head.checkpoint,
            ledger_proof: proof.iter().map(|h| h.to_vec()).collect(),
        }))
    }

    async fn get_message(
        &self,
        r: Request<GetMessageRequest>,
    ) -> Result<Response<MessageResponse>, Status> {
        let id: [u8; 32] = r.into_inner().message_id.try_into().map_err(|v: Vec<u8>| {
            Status::invalid_argument(format!(
                "a message id is 32 bytes (SHA-256 of the envelope), not {}",
                v.len()
            ))
        })?;
        let head = self.head();
        let (height, leaf) = self
            .locate(&id)
            .filter(|(h, _)| *h < head.size)
            .ok_or_else(|| Status::not_found(format!("message {} is in no block", hex_id(&id))))?;
        let block = self.read_block(height)?;
        let hashes: Vec<[u8; 32]> = block
            .leaves
            .iter()
            .map(|l| blockpost_core::leaf_hash(l))
            .collect();
        let proof = BlockTree::new(&hashes)
            .proof(leaf as usize)
            .ok_or_else(|| Status::data_loss(format!("block {height} has no leaf {leaf}")))?;
        let ledger_proof = self
            .store()
            .prove_inclusion(height, head.size)
            .map_err(|e| Status::internal(e.to_string()))?;
        let envelope = block
            .leaves
            .get(leaf as usize)
            .cloned()
            .ok_or_else(|| Status::data_loss(format!("block {height} has no leaf {leaf}")))?;
        Ok(Response::new(MessageResponse {
            envelope,
            height,
            leaf_index: u64::from(leaf),
            inclusion_proof: proof.iter().map(|h| h.to_vec()).collect(),
            header: block.header,
            ledger_checkpoint: head.checkpoint,
            ledger_proof: ledger_proof.iter().map(|h| h.to_vec()).collect(),
        }))
    }
}

fn hex_id(id: &[u8; 32]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}
