//! A directory client that verifies everything it receives: checkpoint signatures,
//! consistency with the newest checkpoint it verified before (kept in its state
//! directory), the inclusion proof of every entry, and that every entry was authorised by
//! its signed request and the entry before it (the same core rules the directory ran).

use std::path::{Path, PathBuf};

use blockpost_core::{
    Address, Binding, Identity, Operation, VerifiedCheckpoint, WitnessPolicy, authorize_entry,
    normalize_real_name, now_ms, verify_checkpoint, verify_history,
};
use blockpost_proto::v1::directory_client::DirectoryClient;
use blockpost_proto::v1::{
    ConsistencyProofRequest, EntryProof, EntryResponse, GetCheckpointRequest, GetInfoRequest,
    GetInfoResponse, InclusionProofRequest, LogEntry, LookupRequest, RegisterBody, RevokeBody,
    RotateBody, SignedRequest,
};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;

use crate::error::PinnedKeyChanged;
use crate::transport::{self, Connection};
use crate::{ConnectOptions, Error, Result};

/// Signs bytes with the key of an evidence certificate.
pub type EvidenceSigner<'a> = dyn Fn(&[u8]) -> std::result::Result<Vec<u8>, String> + 'a;

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
    /// The decoded entry.
    pub decoded: LogEntry,
    /// The binding it states.
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
    /// The witnesses whose cosignatures look-ups require.
    witnesses: WitnessPolicy,
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

/// The name of the files the client keeps about the node at `url`.
pub(crate) fn state_file_name(url: &str) -> String {
    url.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

impl Client {
    /// Connects, fetches the node's identity and pins its log key on first use (and, over
    /// TLS, the key of its certificate: see [`ConnectOptions`]).
    pub async fn connect(endpoint: &str, state_dir: &Path) -> Result<Self> {
        Self::connect_with(endpoint, state_dir, &ConnectOptions::default()).await
    }

    /// [`Client::connect`] with TLS options.
    pub async fn connect_with(
        endpoint: &str,
        state_dir: &Path,
        opts: &ConnectOptions,
    ) -> Result<Self> {
        let witnesses = WitnessPolicy::new(&opts.witnesses, opts.min_witnesses)
            .map_err(Error::WitnessPolicy)?;
        let Connection { channel, url } = transport::connect(endpoint, state_dir, opts).await?;
        let mut grpc = DirectoryClient::new(channel.clone()).max_decoding_message_size(64 << 20);
        let info = match grpc.get_info(GetInfoRequest {}).await {
            Ok(r) => r.into_inner(),
            // A status made here from a transport error (it has a source; the node's own
            // answers do not): not a node, or a TLS port spoken to in plaintext.
            Err(s) if std::error::Error::source(&s).is_some() => {
                return Err(Error::Unreachable {
                    why: transport::unreachable_why(&url, &s),
                    endpoint: url,
                });
            }
            Err(s) => return Err(s.into()),
        };
        let state_file = state_dir
            .join("directories")
            .join(format!("{}.json", state_file_name(&url)));
        let state_err = |why: String| Error::State {
            path: state_file.display().to_string(),
            why,
        };
        let mut newest = None;
        if let Ok(text) = std::fs::read_to_string(&state_file) {
            let t: Trusted = serde_json::from_str(&text).map_err(|e| {
                state_err(format!(
                    "damaged ({e}); delete it to trust the directory anew"
                ))
            })?;
            if t.verifier_key != info.verifier_key || t.origin != info.origin {
                return Err(Error::PinnedKeyChanged(Box::new(PinnedKeyChanged {
                    endpoint: url,
                    presented_origin: info.origin,
                    presented_key: info.verifier_key,
                    pinned_origin: t.origin,
                    pinned_key: t.verifier_key,
                    state_file: state_file.display().to_string(),
                })));
            }
            newest = Some(
                verify_checkpoint(t.checkpoint.as_bytes(), &t.verifier_key)
                    .map_err(|e| state_err(format!("stored checkpoint: {e}")))?,
            );
        }
        Ok(Self {
            grpc,
            channel,
            endpoint: url,
            info,
            state_file,
            newest,
            witnesses,
        })
    }

    /// The witnesses this client requires.
    pub fn witness_policy(&self) -> &WitnessPolicy {
        &self.witnesses
    }

    /// The node's newest witnessed checkpoint of at least `covering` entries, with the
    /// cosignatures the client requires, checked for consistency like any other;
    /// waits up to [`crate::WITNESS_WAIT`] for the witnesses to catch up.
    pub async fn witnessed_checkpoint(&mut self, covering: u64) -> Result<VerifiedCheckpoint> {
        let deadline = tokio::time::Instant::now() + crate::WITNESS_WAIT;
        loop {
            let note = self
                .grpc
                .get_checkpoint(GetCheckpointRequest {})
                .await?
                .into_inner()
                .witnessed_checkpoint;
            let short = if note.is_empty() {
                blockpost_core::Error::NotWitnessed {
                    size: "(none)".into(),
                    have: 0,
                    need: self.witnesses.min(),
                }
            } else {
                let cp = verify_checkpoint(&note, &self.info.verifier_key)
                    .map_err(Error::CheckpointSignature)?;
                match self.witnesses.check(&note) {
                    Ok(_) if cp.size >= covering => return self.accept_checkpoint(&note).await,
                    Ok(_) => blockpost_core::Error::NotWitnessed {
                        size: format!(
                            "{} (entry {} not covered yet)",
                            cp.size,
                            covering.saturating_sub(1)
                        ),
                        have: self.witnesses.min(),
                        need: self.witnesses.min(),
                    },
                    Err(e) => e,
                }
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::NotWitnessed {
                    log: "directory",
                    source: short.into(),
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// Verifies an entry against a checkpoint the required witnesses cosigned: the one in
    /// `p` if it carries their cosignatures, else the node's newest witnessed checkpoint
    /// that covers the entry (waiting for it), with a proof at its size.
    pub async fn accept_witnessed_entry(&mut self, p: EntryProof) -> Result<VerifiedEntry> {
        if !self.witnesses.is_required() || self.witnesses.check(&p.checkpoint).is_ok() {
            return self.accept_entry(p).await;
        }
        let w = self
            .witnessed_checkpoint(p.leaf_index.saturating_add(1))
            .await?;
        let proof = self
            .grpc
            .get_inclusion_proof(InclusionProofRequest {
                leaf_index: p.leaf_index,
                tree_size: w.size,
            })
            .await?
            .into_inner()
            .hashes;
        self.accept_entry(EntryProof {
            checkpoint: w.note,
            inclusion_proof: proof,
            ..p
        })
        .await
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

    /// Verifies a checkpoint (and, when the client requires witnesses, their
    /// cosignatures on it) and its consistency with the newest one verified before, then
    /// remembers the newer of the two.
    pub async fn accept_checkpoint(&mut self, note: &[u8]) -> Result<VerifiedCheckpoint> {
        if self.witnesses.is_required() {
            verify_checkpoint(note, &self.info.verifier_key).map_err(Error::CheckpointSignature)?;
            self.witnesses
                .check(note)
                .map_err(|source| Error::NotWitnessed {
                    log: "directory",
                    source: source.into(),
                })?;
        }
        self.accept_any_checkpoint(note).await
    }

    /// [`Client::accept_checkpoint`] without the witnesses' cosignatures: for the
    /// client's own writes, whose entries no witness has seen yet.
    async fn accept_any_checkpoint(&mut self, note: &[u8]) -> Result<VerifiedCheckpoint> {
        let cp =
            verify_checkpoint(note, &self.info.verifier_key).map_err(Error::CheckpointSignature)?;
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
                    .await?
                    .into_inner()
                    .hashes
            };
            a.verify_consistency(b, &proof)
                .map_err(Error::InconsistentCheckpoint)?;
        }
        if self.newest.as_ref().is_none_or(|o| cp.size > o.size) {
            self.save(&cp)?;
            self.newest = Some(cp.clone());
        }
        Ok(cp)
    }

    fn save(&self, cp: &VerifiedCheckpoint) -> Result<()> {
        let err = |why: String| Error::State {
            path: self.state_file.display().to_string(),
            why,
        };
        let t = Trusted {
            origin: self.info.origin.clone(),
            verifier_key: self.info.verifier_key.clone(),
            checkpoint: String::from_utf8(cp.note.clone())
                .map_err(|_| err("checkpoint is not UTF-8".into()))?,
        };
        if let Some(dir) = self.state_file.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        let json = serde_json::to_vec_pretty(&t).map_err(|e| err(e.to_string()))?;
        blockpost_files::write_atomic(&self.state_file, &json).map_err(|e| err(e.to_string()))
    }

    /// Verifies an entry's checkpoint and inclusion proof and decodes it. Who authorised
    /// it is checked by the callers, which know the entry it supersedes. The checkpoint
    /// need not carry witness cosignatures ([`Client::accept_witnessed_entry`] requires
    /// them).
    pub async fn accept_entry(&mut self, p: EntryProof) -> Result<VerifiedEntry> {
        let cp = self.accept_any_checkpoint(&p.checkpoint).await?;
        cp.verify_inclusion(p.leaf_index, &p.entry, &p.inclusion_proof)
            .map_err(|source| Error::BadProof {
                index: p.leaf_index,
                source,
            })?;
        let bad = |source| Error::BadEntry {
            index: p.leaf_index,
            source,
        };
        let decoded = LogEntry::decode(p.entry.as_slice()).map_err(|e| {
            bad(blockpost_core::Error::Malformed {
                what: "log entry",
                why: e.to_string(),
            })
        })?;
        let binding = Binding::from_entry(&decoded).map_err(bad)?;
        Ok(VerifiedEntry {
            leaf_index: p.leaf_index,
            entry: p.entry,
            decoded,
            binding,
            inclusion_proof: p.inclusion_proof,
            checkpoint: cp,
        })
    }

    /// Verifies the entry in a register, rotate or revoke answer, and that the request
    /// inside it authorised it given `previous`.
    async fn accept_response(
        &mut self,
        resp: std::result::Result<tonic::Response<EntryResponse>, tonic::Status>,
        previous: Option<&VerifiedEntry>,
    ) -> Result<VerifiedEntry> {
        let proof = resp?
            .into_inner()
            .proof
            .ok_or_else(|| Error::UnexpectedAnswer("no proof in the answer".into()))?;
        let e = self.accept_entry(proof).await?;
        authorize_entry(&e.decoded, previous.map(|p| (p.leaf_index, &p.binding))).map_err(
            |source| Error::BadEntry {
                index: e.leaf_index,
                source,
            },
        )?;
        Ok(e)
    }

    /// Fetches and verifies the newest checkpoint (the newest witnessed one, when the
    /// client requires witnesses).
    pub async fn checkpoint(&mut self) -> Result<VerifiedCheckpoint> {
        if self.witnesses.is_required() {
            return self.witnessed_checkpoint(0).await;
        }
        let note = self
            .grpc
            .get_checkpoint(GetCheckpointRequest {})
            .await?
            .into_inner()
            .checkpoint;
        self.accept_checkpoint(&note).await
    }

    /// Inclusion proofs of the entries at `indexes` against one checkpoint that covers
    /// them all: the newest witnessed one when it does (its cosignatures make the proofs
    /// stronger evidence), else the newest. The checkpoint is verified and checked for
    /// consistency like any other; each proof is the caller's to check with the entry.
    pub async fn prove_entries(
        &mut self,
        indexes: &[u64],
    ) -> Result<(VerifiedCheckpoint, Vec<Vec<Vec<u8>>>)> {
        let covering = indexes.iter().max().map_or(0, |i| i + 1);
        let r = self
            .grpc
            .get_checkpoint(GetCheckpointRequest {})
            .await?
            .into_inner();
        let witnessed = !r.witnessed_checkpoint.is_empty()
            && verify_checkpoint(&r.witnessed_checkpoint, &self.info.verifier_key)
                .is_ok_and(|cp| cp.size >= covering);
        let cp = if witnessed {
            self.accept_checkpoint(&r.witnessed_checkpoint).await?
        } else if self.witnesses.is_required() {
            self.witnessed_checkpoint(covering).await?
        } else {
            self.accept_checkpoint(&r.checkpoint).await?
        };
        let mut proofs = Vec::with_capacity(indexes.len());
        for &leaf_index in indexes {
            proofs.push(
                self.grpc
                    .get_inclusion_proof(InclusionProofRequest {
                        leaf_index,
                        tree_size: cp.size,
                    })
                    .await?
                    .into_inner()
                    .hashes,
            );
        }
        Ok((cp, proofs))
    }

    /// At most `limit` entries of the log from `start` (fewer at its end), each verified in
    /// one checkpoint by its inclusion proof and decoded. Who authorised each entry is not
    /// checked here (that needs the entry it supersedes: [`Client::lookup`] checks a whole
    /// history); an entry that does not decode is refused.
    pub async fn entries(
        &mut self,
        start: u64,
        limit: u64,
    ) -> Result<(VerifiedCheckpoint, Vec<VerifiedEntry>)> {
        let newest = self.checkpoint().await?;
        let end = newest.size.min(start.saturating_add(limit));
        if start >= end {
            return Ok((newest, Vec::new()));
        }
        let mut raw: Vec<Vec<u8>> = Vec::new();
        while (start + raw.len() as u64) < end {
            let got = self
                .grpc
                .get_entries(blockpost_proto::v1::GetEntriesRequest {
                    start: start + raw.len() as u64,
                    end,
                })
                .await?
                .into_inner()
                .entries;
            if got.is_empty() || raw.len() + got.len() > (end - start) as usize {
                return Err(Error::UnexpectedAnswer(format!(
                    "asked for entries {start}..{end}, got {} more after {}",
                    got.len(),
                    raw.len()
                )));
            }
            raw.extend(got);
        }
        let indexes: Vec<u64> = (start..end).collect();
        let (cp, proofs) = self.prove_entries(&indexes).await?;
        let mut out = Vec::with_capacity(raw.len());
        for ((leaf_index, entry), inclusion_proof) in indexes.into_iter().zip(raw).zip(proofs) {
            cp.verify_inclusion(leaf_index, &entry, &inclusion_proof)
                .map_err(|source| Error::BadProof {
                    index: leaf_index,
                    source,
                })?;
            let bad = |source| Error::BadEntry {
                index: leaf_index,
                source,
            };
            let decoded = LogEntry::decode(entry.as_slice()).map_err(|e| {
                bad(blockpost_core::Error::Malformed {
                    what: "log entry",
                    why: e.to_string(),
                })
            })?;
            let binding = Binding::from_entry(&decoded).map_err(bad)?;
            out.push(VerifiedEntry {
                leaf_index,
                entry,
                decoded,
                binding,
                inclusion_proof,
                checkpoint: cp.clone(),
            });
        }
        Ok((cp, out))
    }

    /// The consistency proof of the directory log from `from_size` entries to
    /// `to_size` (unchecked: the caller holds the roots).
    pub async fn consistency_proof(
        &mut self,
        from_size: u64,
        to_size: u64,
    ) -> Result<Vec<Vec<u8>>> {
        if from_size == 0 || from_size == to_size {
            return Ok(Vec::new());
        }
        Ok(self
            .grpc
            .get_consistency_proof(ConsistencyProofRequest { from_size, to_size })
            .await?
            .into_inner()
            .hashes)
    }

    /// Registers `id` under `address` and `real_name`, optionally with evidence.
    pub async fn register(
        &mut self,
        id: &Identity,
        address: &str,
        real_name: &str,
        evidence: Option<(&[Vec<u8>], &EvidenceSigner<'_>)>,
    ) -> Result<VerifiedEntry> {
        self.register_with_lei(id, address, real_name, None, evidence)
            .await
    }

    /// [`Self::register`] declaring an ISO 17442 LEI too, which trades and settlement
    /// instructions may name the participant by. The directory checks its check digits;
    /// it is self-declared (the `verified` flag covers the real name only).
    pub async fn register_with_lei(
        &mut self,
        id: &Identity,
        address: &str,
        real_name: &str,
        lei: Option<&str>,
        evidence: Option<(&[Vec<u8>], &EvidenceSigner<'_>)>,
    ) -> Result<VerifiedEntry> {
        let body = RegisterBody {
            lei: lei.unwrap_or_default().to_owned(),
            address: address.into(),
            // The directory takes names in Unicode NFC: normalise before signing.
            real_name: normalize_real_name(real_name),
            signing_key: id.signing_public().to_vec(),
            encryption_key: id.encryption_public().to_vec(),
            evidence_chain: evidence.map(|(c, _)| c.to_vec()).unwrap_or_default(),
            timestamp_ms: now_ms(),
        }
        .encode_to_vec();
        let signature = Operation::Register.sign(&id.signing, &body);
        let second_signature = match evidence {
            Some((_, sign)) => {
                sign(&Operation::Register.message(&body)).map_err(Error::EvidenceSigner)?
            }
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
        let e = self.accept_response(resp, None).await?;
        expect_binding(&e, address, &id.signing_public())?;
        Ok(e)
    }

    /// Every entry of `address`, verified and checked to form one authorised chain.
    pub async fn lookup(&mut self, address: &str) -> Result<Vec<VerifiedEntry>> {
        let addr = Address::parse(address)?;
        let resp = self
            .grpc
            .lookup(LookupRequest {
                address: address.into(),
            })
            .await?
            .into_inner();
        let mut out: Vec<VerifiedEntry> = Vec::with_capacity(resp.history.len());
        for p in resp.history {
            out.push(self.accept_witnessed_entry(p).await?);
        }
        let entries: Vec<(u64, &[u8])> = out
            .iter()
            .map(|e| (e.leaf_index, e.entry.as_slice()))
            .collect();
        verify_history(&addr, &entries).map_err(|source| Error::BrokenHistory {
            address: address.to_owned(),
            source,
        })?;
        Ok(out)
    }

    /// Current entry of `address`.
    pub async fn current(&mut self, address: &str) -> Result<VerifiedEntry> {
        let mut h = self.lookup(address).await?;
        h.pop()
            .ok_or_else(|| Error::UnexpectedAnswer(format!("no entry for {address}")))
    }

    /// Replaces the keys of `address` (held by `old`) with `new`.
    pub async fn rotate(
        &mut self,
        old: &Identity,
        new: &Identity,
        address: &str,
    ) -> Result<VerifiedEntry> {
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
        let e = self.accept_response(resp, Some(&cur)).await?;
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
    ) -> Result<VerifiedEntry> {
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
                req.second_signature =
                    sign(&Operation::Revoke.message(&req.body)).map_err(Error::EvidenceSigner)?
            }
            (None, None) => {
                return Err(Error::Refused(
                    "a revocation needs the current key or the evidence key".into(),
                ));
            }
        }
        let resp = self.grpc.revoke(req).await;
        let e = self.accept_response(resp, Some(&cur)).await?;
        if !e.binding.revoked() || e.binding.address.as_str() != address {
            return Err(Error::UnexpectedAnswer(
                "a revocation answered with an unrelated entry".into(),
            ));
        }
        Ok(e)
    }
}

fn expect_binding(e: &VerifiedEntry, address: &str, key: &[u8; 32]) -> Result<()> {
    if e.binding.address.as_str() != address || &e.binding.signing_key != key {
        return Err(Error::UnexpectedAnswer(format!(
            "an entry that does not bind {address} to our key"
        )));
    }
    Ok(())
}
