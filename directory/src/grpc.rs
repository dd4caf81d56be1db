//! The `blockpost.v1.Directory` gRPC service: a thin adapter over [`Directory`].

use blockpost_proto::v1::directory_server::{self, DirectoryServer};
use blockpost_proto::v1::{
    CheckpointResponse, ConsistencyProofRequest, EntryResponse, GetCheckpointRequest,
    GetEntriesRequest, GetEntriesResponse, GetInfoRequest, GetInfoResponse, InclusionProofRequest,
    LookupRequest, LookupResponse, ProofResponse, SignedRequest,
};
use tonic::{Request, Response, Status};

use crate::service::{Directory, MAX_BODY_LEN};

/// Largest gRPC message the directory decodes.
pub const MAX_MESSAGE_LEN: usize = MAX_BODY_LEN + 64 * 1024;

impl Directory {
    /// The tonic service for this directory.
    pub fn into_service(self) -> DirectoryServer<Self> {
        DirectoryServer::new(self).max_decoding_message_size(MAX_MESSAGE_LEN)
    }
}

#[tonic::async_trait]
impl directory_server::Directory for Directory {
    async fn get_info(
        &self,
        _: Request<GetInfoRequest>,
    ) -> Result<Response<GetInfoResponse>, Status> {
        Ok(Response::new(self.info()))
    }

    async fn register(&self, r: Request<SignedRequest>) -> Result<Response<EntryResponse>, Status> {
        // The TCP peer (through TLS too): the key of the per-peer registration limit.
        let peer = r.remote_addr().map(|a| a.ip());
        let proof = Directory::register_from(self, r.into_inner(), peer).await?;
        Ok(Response::new(EntryResponse { proof: Some(proof) }))
    }

    async fn rotate(&self, r: Request<SignedRequest>) -> Result<Response<EntryResponse>, Status> {
        let proof = Directory::rotate(self, r.into_inner()).await?;
        Ok(Response::new(EntryResponse { proof: Some(proof) }))
    }

    async fn revoke(&self, r: Request<SignedRequest>) -> Result<Response<EntryResponse>, Status> {
        let proof = Directory::revoke(self, r.into_inner()).await?;
        Ok(Response::new(EntryResponse { proof: Some(proof) }))
    }

    async fn lookup(&self, r: Request<LookupRequest>) -> Result<Response<LookupResponse>, Status> {
        Ok(Response::new(Directory::lookup(
            self,
            &r.into_inner().address,
        )?))
    }

    async fn get_checkpoint(
        &self,
        _: Request<GetCheckpointRequest>,
    ) -> Result<Response<CheckpointResponse>, Status> {
        Ok(Response::new(CheckpointResponse {
            checkpoint: self.checkpoint(),
            witnessed_checkpoint: self
                .witnessed()
                .get()
                .map(|h| h.checkpoint)
                .unwrap_or_default(),
        }))
    }

    async fn get_inclusion_proof(
        &self,
        r: Request<InclusionProofRequest>,
    ) -> Result<Response<ProofResponse>, Status> {
        let r = r.into_inner();
        Ok(Response::new(
            self.inclusion_proof(r.leaf_index, r.tree_size)?,
        ))
    }

    async fn get_consistency_proof(
        &self,
        r: Request<ConsistencyProofRequest>,
    ) -> Result<Response<ProofResponse>, Status> {
        let r = r.into_inner();
        Ok(Response::new(
            self.consistency_proof(r.from_size, r.to_size)?,
        ))
    }

    async fn get_entries(
        &self,
        r: Request<GetEntriesRequest>,
    ) -> Result<Response<GetEntriesResponse>, Status> {
        let r = r.into_inner();
        Ok(Response::new(GetEntriesResponse {
            entries: self.entries(r.start, r.end)?,
        }))
    }
}
