//! The Directory service of a process that does not run the directory (a gateway-only or
//! builder-only process): every call is forwarded to the directory's endpoint
//! (`directory_endpoint`), and its answer passed back as it came.
//!
//! Forwarding adds no trust: every answer the directory gives is signed or proved (entry
//! proofs, checkpoints, certificates), and clients verify it with `core` as they would
//! from the directory itself. A call the directory cannot be reached for is answered
//! `UNAVAILABLE`, naming where the directory is.

use std::time::Duration;

use blockpost_proto::v1::directory_client::DirectoryClient;
use blockpost_proto::v1::directory_server::{self, DirectoryServer};
use blockpost_proto::v1::{
    CheckpointResponse, ConsistencyProofRequest, EntryResponse, GetCheckpointRequest,
    GetEntriesRequest, GetEntriesResponse, GetInfoRequest, GetInfoResponse, InclusionProofRequest,
    LookupRequest, LookupResponse, ProofResponse, SignedRequest,
};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::{Error, Result};

/// How long a forwarded call may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// Forwards the Directory service to the directory's endpoint.
#[derive(Clone)]
pub struct DirectoryForward {
    endpoint: String,
    client: DirectoryClient<Channel>,
}

impl DirectoryForward {
    /// A forwarder to `endpoint` (`http://HOST:PORT`); it connects on first use, and again
    /// after the directory restarts.
    pub fn new(endpoint: &str) -> Result<Self> {
        let channel = Endpoint::from_shared(endpoint.to_owned())
            .map_err(|e| Error::Config(format!("directory_endpoint {endpoint:?}: {e}")))?
            .connect_timeout(Duration::from_secs(3))
            .timeout(FORWARD_TIMEOUT)
            .connect_lazy();
        let client = DirectoryClient::new(channel)
            .max_decoding_message_size(blockpost_directory::MAX_MESSAGE_LEN)
            .max_encoding_message_size(blockpost_directory::MAX_MESSAGE_LEN);
        Ok(Self {
            endpoint: endpoint.to_owned(),
            client,
        })
    }

    /// Where the directory is.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The tonic service.
    pub fn into_service(self) -> DirectoryServer<Self> {
        DirectoryServer::new(self).max_decoding_message_size(blockpost_directory::MAX_MESSAGE_LEN)
    }

    fn failed(&self, s: Status) -> Status {
        match s.code() {
            // The directory's own answers pass unchanged; transport failures name it.
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
                if !s.metadata().contains_key("content-type") =>
            {
                Status::unavailable(format!(
                    "this process does not run the directory, and the directory at {} did not answer: {}",
                    self.endpoint,
                    s.message()
                ))
            }
            _ => s,
        }
    }
}

/// The answer as it came (its message; the directory's metadata stays there), or a
/// transport failure naming the directory.
fn pass<T>(f: &DirectoryForward, r: Result<Response<T>, Status>) -> Result<Response<T>, Status> {
    r.map(|a| Response::new(a.into_inner()))
        .map_err(|s| f.failed(s))
}

// Each call forwards the request's message only: the caller's metadata stays here.
#[tonic::async_trait]
impl directory_server::Directory for DirectoryForward {
    async fn get_info(
        &self,
        r: Request<GetInfoRequest>,
    ) -> Result<Response<GetInfoResponse>, Status> {
        let mut c = self.client.clone();
        pass(self, c.get_info(r.into_inner()).await)
    }

    async fn register(&self, r: Request<SignedRequest>) -> Result<Response<EntryResponse>, Status> {
        let mut c = self.client.clone();
        pass(self, c.register(r.into_inner()).await)
    }

    async fn rotate(&self, r: Request<SignedRequest>) -> Result<Response<EntryResponse>, Status> {
        let mut c = self.client.clone();
        pass(self, c.rotate(r.into_inner()).await)
    }

    async fn revoke(&self, r: Request<SignedRequest>) -> Result<Response<EntryResponse>, Status> {
        let mut c = self.client.clone();
        pass(self, c.revoke(r.into_inner()).await)
    }

    async fn lookup(&self, r: Request<LookupRequest>) -> Result<Response<LookupResponse>, Status> {
        let mut c = self.client.clone();
        pass(self, c.lookup(r.into_inner()).await)
    }

    async fn get_checkpoint(
        &self,
        r: Request<GetCheckpointRequest>,
    ) -> Result<Response<CheckpointResponse>, Status> {
        let mut c = self.client.clone();
        pass(self, c.get_checkpoint(r.into_inner()).await)
    }

    async fn get_inclusion_proof(
        &self,
        r: Request<InclusionProofRequest>,
    ) -> Result<Response<ProofResponse>, Status> {
        let mut c = self.client.clone();
        pass(self, c.get_inclusion_proof(r.into_inner()).await)
    }

    async fn get_consistency_proof(
        &self,
        r: Request<ConsistencyProofRequest>,
    ) -> Result<Response<ProofResponse>, Status> {
        let mut c = self.client.clone();
        pass(self, c.get_consistency_proof(r.into_inner()).await)
    }

    async fn get_entries(
        &self,
        r: Request<GetEntriesRequest>,
    ) -> Result<Response<GetEntriesResponse>, Status> {
        let mut c = self.client.clone();
        pass(self, c.get_entries(r.into_inner()).await)
    }
}
