//! A directory client that verifies everything it receives: checkpoint signatures,
//! consistency with the newest checkpoint it verified before (kept in its state
//! directory), and the inclusion proof of every entry.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use blockpost_core::{
    Binding, Identity, Operation, VerifiedCheckpoint, decode_entry, now_ms, verify_checkpoint,
};
use blockpost_proto::v1::directory_client::DirectoryClient;
use blockpost_proto::v1::{
    ConsistencyProofRequest, EntryProof, EntryResponse, GetCheckpointRequest, GetInfoRequest,
    GetInfoResponse, LookupRequest, RegisterBody, RevokeBody, RotateBody, SignedRequest,
};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;

/// Signs bytes with the key of an evidence certificate.
pub type EvidenceSigner<'a> = dyn Fn(&[u8]) -> anyhow::Result<Vec<u8>> + 'a;

/// What the client remembers of one directory.
#[derive(Serialize, Deserialize)]
struct Trusted {
    origin: String,
    verifier_key: String,
    /// Newest verified checkpoint (signed note text).
    checkpoint: String,
}

/// An entry whose checkpoint and inclusion proof were verified.
#[derive(Clone, Debug)]
pub struct VerifiedEntry {
    /// Leaf index.
    pub leaf_index: u64,
    /// Leaf bytes.
    pub entry: Vec<u8>,
    /// The decoded binding.
    pub binding: Binding,
    /// Inclusion proof (RFC 6962 order).
    pub inclusion_proof: Vec<Vec<u8>>,
    /// The checkpoint the proof was checked against.
    pub checkpoint: VerifiedCheckpoint,
}

/// A verifying directory client.
pub struct Client {
    grpc: DirectoryClient<Channel>,
    channel: Channel,
    endpoint: String,
    info: GetInfoResponse,
    state_file: PathBuf,
    newest: Option<VerifiedCheckpoint>,
}

/// Where the client keeps what it verified: `$BLOCKPOST_CONFIG_DIR`, else
/// `$XDG_CONFIG_HOME/blockpost`, else `~/.config/blockpost`.
pub fn config_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BLOCKPOST_CONFIG_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME") {
        return PathBuf::from(d).join("blockpost");
    }
    std::env::var_os("HOME").map_or_else(
        || PathBuf::from(".blockpost"),
        |h| PathBuf::from(h).join(".config/blockpost"),
    )
}

impl Client {
    /// Connects, fetches the node's identity and pins its log key on first use.
    pub async fn connect(endpoint: &str, state_dir: &Path) -> anyhow::Result<Self> {
        let url = if endpoint.contains("://") {
            endpoint.to_owned()
        } else {
            format!("http://{endpoint}")
        };
        let channel = Channel::from_shared(url.clone())
            .with_context(|| format!("bad endpoint {endpoint:?}"))?
            .connect_timeout(std::time::Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("cannot reach the directory at {url}"))?;
        let mut grpc = DirectoryClient::new(channel.clone()).max_decoding_message_size(64 << 20);
        let info = grpc
            .get_info(GetInfoRequest {})
            .await
            .map_err(status)?
            .into_inner();
        let name: String = url
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let state_file = state_dir.join("directories").join(format!("{name}.json"));
        let mut newest = None;
        if let Ok(text) = std::fs::read_to_string(&state_file) {
            let t: Trusted = serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is damaged; delete it to trust the directory anew",
                    state_file.display()
                )
            })?;
            if t.verifier_key != info.verifier_key || t.origin != info.origin {
                bail!(
                    "the directory at {url} now presents log {:?} with key {:?}, but {} pinned log {:?} with key {:?}: \
                     refusing to continue (delete that file only if the operator announced a new log)",
                    info.origin,
                    info.verifier_key,
                    state_file.display(),
                    t.origin,
                    t.verifier_key
                );
            }
            newest = Some(
                verify_checkpoint(t.checkpoint.as_bytes(), &t.verifier_key)
                    .with_context(|| format!("stored checkpoint in {}", state_file.display()))?,
            );
        }
        Ok(Self {
            grpc,
            channel,
            endpoint: url,
            info,
            state_file,
            newest,
        })
    }

    /// The node's public identity.
    pub fn info(&self) -> &GetInfoResponse {
        &self.info
    }

    /// The gRPC channel, for the node's other services.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The endpoint URL.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Verifies a checkpoint and its consistency with the newest one verified before, then
    /// remembers the newer of the two.
    pub async fn accept_checkpoint(&mut self, note: &[u8]) -> anyhow::Result<VerifiedCheckpoint> {
        let cp = verify_checkpoint(note, &self.info.verifier_key)
            .context("checkpoint from the directory")?;
        if let Some(old) = self.newest.clone() {
            let (a, b) = if cp.size >= old.size {
                (&old, &cp)
            } else {
                (&cp, &old)
            };
            let proof = if a.size == 0 || a.size == b.size {
                Vec::new()
            } else {
                self.grpc
                    .get_consistency_proof(ConsistencyProofRequest {
                        from_size: a.size,
                        to_size: b.size,
                    })
                    .await
                    .map_err(status)?
                    .into_inner()
                    .hashes
            };
            a.verify_consistency(b, &proof)
                .context("the directory's log is not consistent with what it showed before")?;
        }
        if self.newest.as_ref().is_none_or(|o| cp.size > o.size) {
            self.save(&cp)?;
            self.newest = Some(cp.clone());
        }
        Ok(cp)
    }

    fn save(&self, cp: &VerifiedCheckpoint) -> anyhow::Result<()> {
        let t = Trusted {
            origin: self.info.origin.clone(),
            verifier_key: self.info.verifier_key.clone(),
            checkpoint: String::from_utf8(cp.note.clone())?,
        };
        if let Some(dir) = self.state_file.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let tmp = self.state_file.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&t)?)?;
        std::fs::rename(&tmp, &self.state_file)?;
        Ok(())
    }

    /// Verifies an entry with its proof.
    pub async fn accept_entry(&mut self, p: EntryProof) -> anyhow::Result<VerifiedEntry> {
        let cp = self.accept_checkpoint(&p.checkpoint).await?;
        cp.verify_inclusion(p.leaf_index, &p.entry, &p.inclusion_proof)
            .with_context(|| {
                format!(
                    "entry {} is not in the log the directory signed",
                    p.leaf_index
                )
            })?;
        let (_, binding) = decode_entry(&p.entry)?;
        Ok(VerifiedEntry {
            leaf_index: p.leaf_index,
            entry: p.entry,
            binding,
            inclusion_proof: p.inclusion_proof,
            checkpoint: cp,
        })
    }

    /// Verifies the entry in a register, rotate or revoke answer.
    async fn accept_response(
        &mut self,
        resp: Result<tonic::Response<EntryResponse>, tonic::Status>,
    ) -> anyhow::Result<VerifiedEntry> {
        let proof = resp
            .map_err(status)?
            .into_inner()
            .proof
            .ok_or_else(|| anyhow!("directory returned no proof"))?;
        self.accept_entry(proof).await
    }

    /// Fetches and verifies the newest checkpoint.
    pub async fn checkpoint(&mut self) -> anyhow::Result<VerifiedCheckpoint> {
        let note = self
            .grpc
            .get_checkpoint(GetCheckpointRequest {})
            .await
            .map_err(status)?
            .into_inner()
            .checkpoint;
        self.accept_checkpoint(&note).await
    }

    /// Registers `id` under `address` and `real_name`, optionally with evidence.
    pub async fn register(
        &mut self,
        id: &Identity,
        address: &str,
        real_name: &str,
        evidence: Option<(&[Vec<u8>], &EvidenceSigner<'_>)>,
    ) -> anyhow::Result<VerifiedEntry> {
        let body = RegisterBody {
            address: address.into(),
            real_name: real_name.into(),
            signing_key: id.signing_public().to_vec(),
            encryption_key: id.encryption_public().to_vec(),
            evidence_chain: evidence.map(|(c, _)| c.to_vec()).unwrap_or_default(),
            timestamp_ms: now_ms(),
        }
        .encode_to_vec();
        let signature = Operation::Register.sign(&id.signing, &body);
        let second_signature = match evidence {
            Some((_, sign)) => sign(&Operation::Register.message(&body))?,
            None => Vec::new(),
        };
        let resp = self
            .grpc
            .register(SignedRequest {
                body,
                signature,
                second_signature,
            })
            .await;
        let e = self.accept_response(resp).await?;
        expect_binding(&e, address, &id.signing_public())?;
        Ok(e)
    }

    /// Every entry of `address`, verified and checked to form one chain.
    pub async fn lookup(&mut self, address: &str) -> anyhow::Result<Vec<VerifiedEntry>> {
        let resp = self
            .grpc
            .lookup(LookupRequest {
                address: address.into(),
            })
            .await
            .map_err(status)?
            .into_inner();
        let mut out: Vec<VerifiedEntry> = Vec::with_capacity(resp.history.len());
        for p in resp.history {
            let e = self.accept_entry(p).await?;
            if e.binding.address.as_str() != address {
                bail!(
                    "directory answered a look-up of {address} with an entry for {}",
                    e.binding.address
                );
            }
            if let Some(prev) = out.last()
                && e.binding.previous_index != Some(prev.leaf_index)
            {
                bail!("history of {address} is broken at entry {}", e.leaf_index);
            }
            out.push(e);
        }
        if out.is_empty() {
            bail!("directory returned an empty history for {address}");
        }
        Ok(out)
    }

    /// Current entry of `address`.
    pub async fn current(&mut self, address: &str) -> anyhow::Result<VerifiedEntry> {
        let mut h = self.lookup(address).await?;
        h.pop().ok_or_else(|| anyhow!("no entry"))
    }

    /// Replaces the keys of `address` (held by `old`) with `new`.
    pub async fn rotate(
        &mut self,
        old: &Identity,
        new: &Identity,
        address: &str,
    ) -> anyhow::Result<VerifiedEntry> {
        let cur = self.current(address).await?;
        let body = RotateBody {
            address: address.into(),
            current_index: cur.leaf_index,
            new_signing_key: new.signing_public().to_vec(),
            new_encryption_key: new.encryption_public().to_vec(),
            timestamp_ms: now_ms(),
        }
        .encode_to_vec();
        let req = SignedRequest {
            signature: Operation::Rotate.sign(&old.signing, &body),
            second_signature: Operation::Rotate.sign(&new.signing, &body),
            body,
        };
        let resp = self.grpc.rotate(req).await;
        let e = self.accept_response(resp).await?;
        expect_binding(&e, address, &new.signing_public())?;
        Ok(e)
    }

    /// Revokes `address`, signed by its current key or by its evidence key.
    pub async fn revoke(
        &mut self,
        address: &str,
        reason: &str,
        current_key: Option<&Identity>,
        evidence_sign: Option<&EvidenceSigner<'_>>,
    ) -> anyhow::Result<VerifiedEntry> {
        let cur = self.current(address).await?;
        let body = RevokeBody {
            address: address.into(),
            current_index: cur.leaf_index,
            reason: reason.into(),
            timestamp_ms: now_ms(),
        }
        .encode_to_vec();
        let mut req = SignedRequest {
            body,
            ..Default::default()
        };
        match (current_key, evidence_sign) {
            (Some(id), _) => req.signature = Operation::Revoke.sign(&id.signing, &req.body),
            (None, Some(sign)) => {
                req.second_signature = sign(&Operation::Revoke.message(&req.body))?
            }
            (None, None) => bail!("a revocation needs the current key or the evidence key"),
        }
        let resp = self.grpc.revoke(req).await;
        let e = self.accept_response(resp).await?;
        if !e.binding.revoked() || e.binding.address.as_str() != address {
            bail!("directory answered a revocation with an unrelated entry");
        }
        Ok(e)
    }
}

fn expect_binding(e: &VerifiedEntry, address: &str, key: &[u8; 32]) -> anyhow::Result<()> {
    if e.binding.address.as_str() != address || &e.binding.signing_key != key {
        bail!("directory answered with an entry that does not bind {address} to our key");
    }
    Ok(())
}

/// Turns a gRPC status into an error that names the code and the server's message.
pub fn status(s: tonic::Status) -> anyhow::Error {
    anyhow!("refused by the node: {:?}: {}", s.code(), s.message())
}
