//! The directory's logic: checks requests, issues certificates, sequences entries in
//! batches and answers look-ups and proofs. The gRPC adapter in `grpc` is a thin layer on
//! top of [`Directory`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use blockpost_core::wire::Namespace;
use blockpost_core::{
    Address, Binding, CheckpointSigner, Clock, MAX_REASON_LEN, TrustAnchors, authorize_request,
    check_clock, check_real_name, decode_canonical, decode_entry, ed25519_key, x25519_key,
};
use blockpost_proto::v1::{
    EntryKind, EntryProof, GetInfoResponse, LogEntry, LookupResponse, ProofResponse, RegisterBody,
    RevokeBody, RotateBody, SignedRequest,
};
use blockpost_storage::Head;
use ed25519_dalek::SigningKey;
use prost::Message as _;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, watch};

use crate::ca::{Ca, Subject};
use crate::config::DirectoryConfig;
use crate::limit::RegistrationLimiter;
use crate::storage::Store;
use crate::{Error, Result};

/// Largest signed request body.
pub const MAX_BODY_LEN: usize = 96 * 1024;
/// Most entries returned by one `GetEntries` call.
pub const MAX_ENTRIES_PER_CALL: u64 = 1000;
/// Default of the most entry bytes returned by one `GetEntries` call (at least one entry is
/// returned); `[directory] max_entries_bytes`.
pub const MAX_ENTRIES_BYTES: usize = 1 << 20;

/// What the node hands the directory from its data directory.
pub struct DirectoryParts {
    /// The log's origin line.
    pub origin: String,
    /// Signs checkpoints.
    pub log_key: SigningKey,
    /// Signs certificates.
    pub ca_key: SigningKey,
    /// Where the CA certificate is kept.
    pub ca_cert: PathBuf,
    /// Where the log is kept.
    pub log_dir: PathBuf,
}

/// A running directory. Cheap to clone.
#[derive(Clone)]
pub struct Directory {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) store: Store,
    pub(crate) config: DirectoryConfig,
    ca: Ca,
    pub(crate) signer: CheckpointSigner,
    anchors: TrustAnchors,
    clock: Arc<dyn Clock>,
    seq: mpsc::Sender<Pending>,
    changed: watch::Sender<u64>,
    /// The newest checkpoint witnesses cosigned, as the node collected it.
    witnessed: blockpost_storage::Witnessed,
    /// Rate limits of unverified registrations.
    limiter: RegistrationLimiter,
}

impl crate::publish::Trailed for Inner {
    fn store(&self) -> &Store {
        &self.store
    }
}

enum Precondition {
    /// The address has never been registered.
    Unregistered,
    /// The address's newest entry is this one, and not a revocation.
    Current(u64),
}

struct Pending {
    address: String,
    entry: Vec<u8>,
    revokes: bool,
    pre: Precondition,
    reply: oneshot::Sender<Result<EntryProof>>,
}

impl Directory {
    /// Opens the log (creating the CA certificate on first start), and starts the
    /// sequencer, and the NATS publisher when a client is given.
    pub async fn start(
        config: DirectoryConfig,
        parts: DirectoryParts,
        clock: Arc<dyn Clock>,
        nats: Option<async_nats::Client>,
    ) -> Result<Self> {
        let cfg = config.clone();
        let (inner, rx) = tokio::task::spawn_blocking(move || Self::open(cfg, parts, clock))
            .await
            .map_err(|e| Error::Config(format!("start-up task failed: {e}")))??;
        let inner = Arc::new(inner);
        // The tasks hold the directory weakly: when its last handle is dropped, the log
        // (and its lock) is closed and they end.
        tokio::spawn(sequencer(Arc::downgrade(&inner), rx));
        if let Some(client) = nats {
            let target = crate::publish::Target {
                ns: blockpost_core::wire::Namespace::for_origin(inner.signer.origin()),
                replicas: inner.config.replicas,
            };
            tokio::spawn(crate::publish::run(
                Arc::downgrade(&inner),
                target,
                client,
                inner.changed.subscribe(),
            ));
        }
        Ok(Self { inner })
    }

    fn open(
        config: DirectoryConfig,
        parts: DirectoryParts,
        clock: Arc<dyn Clock>,
    ) -> Result<(Inner, mpsc::Receiver<Pending>)> {
        config.validate().map_err(Error::Config)?;
        let origin = parts.origin;
        let signer = CheckpointSigner::new(&origin, parts.log_key)?;
        let ca = Ca::load_or_create(&parts.ca_key, &parts.ca_cert, &origin)?;
        let mut anchors = Vec::new();
        for p in &config.trust_anchors {
            let pem = std::fs::read(p)
                .map_err(|e| Error::Config(format!("trust anchor {}: {e}", p.display())))?;
            let a = TrustAnchors::from_pem(&pem)
                .map_err(|e| Error::Config(format!("trust anchor {}: {e}", p.display())))?;
            anchors.extend(a.into_ders());
        }
        let anchors = TrustAnchors::new(anchors)?;
        let store = Store::open(&parts.log_dir)?;
        store.ensure_checkpoint(|size, root| Ok(signer.sign(size, root)?))?;
        let (tx, rx) = mpsc::channel(config.max_batch.max(1) * 4);
        let (changed, _) = watch::channel(store.head().size);
        tracing::info!(
            origin,
            entries = store.len(),
            anchors = anchors.len(),
            "directory log opened"
        );
        Ok((
            Inner {
                limiter: RegistrationLimiter::new(&config),
                store,
                config,
                ca,
                signer,
                anchors,
                clock,
                seq: tx,
                changed,
                witnessed: Default::default(),
            },
            rx,
        ))
    }

    /// The node's public identity.
    pub fn info(&self) -> GetInfoResponse {
        GetInfoResponse {
            origin: self.inner.signer.origin().to_owned(),
            verifier_key: self.inner.signer.verifier_key(),
            ca_certificate_pem: self.inner.ca.cert_pem().to_owned(),
            require_verified: self.inner.config.require_verified,
        }
    }

    /// A TLS server certificate for the node's gRPC port, issued by the directory CA for
    /// `key` (ed25519) and `names` (DNS names or IP addresses): PEM, the certificate and
    /// then the CA certificate. Valid from an hour ago by the wall clock (TLS clients check
    /// it against theirs, whatever clock the directory runs on).
    pub fn issue_server_certificate(&self, key: [u8; 32], names: &[String]) -> Result<String> {
        let now = time::OffsetDateTime::now_utc();
        self.inner
            .ca
            .issue_server(key, names, now - time::Duration::hours(1))
    }

    /// The NATS namespace of this log: its streams and subjects.
    pub fn namespace(&self) -> Namespace {
        Namespace::for_origin(self.inner.signer.origin())
    }

    /// The newest checkpoint.
    pub fn checkpoint(&self) -> Vec<u8> {
        self.inner.store.head().checkpoint
    }

    /// The newest checkpoint witnesses cosigned (the node's witness collector sets it).
    pub fn witnessed(&self) -> &blockpost_storage::Witnessed {
        &self.inner.witnessed
    }

    /// The newest log head (size and signed checkpoint).
    pub fn head(&self) -> blockpost_storage::Head {
        self.inner.store.head()
    }

    /// Number of entries in the newest checkpoint.
    pub fn size(&self) -> u64 {
        self.inner.store.head().size
    }

    /// Registers a new binding; returns once it is durable and covered by a checkpoint.
    /// A call in process: only the limit for all peers applies to an unverified
    /// registration (see [`Directory::register_from`]).
    pub async fn register(&self, req: SignedRequest) -> Result<EntryProof> {
        self.register_from(req, None).await
    }

    /// [`Directory::register`] for a client at `peer`: an unverified registration (one
    /// without evidence) is held to the limits for its address and for all peers
    /// (`[directory] unverified_*`), and refused with [`Error::RateLimited`] beyond them.
    /// Registrations with evidence are not limited.
    pub async fn register_from(
        &self,
        req: SignedRequest,
        peer: Option<IpAddr>,
    ) -> Result<EntryProof> {
        let inner = self.inner.clone();
        let pending = blocking(move || inner.check_register(req, peer)).await??;
        self.sequence(pending).await
    }

    /// Replaces the keys of a binding.
    pub async fn rotate(&self, req: SignedRequest) -> Result<EntryProof> {
        let inner = self.inner.clone();
        let pending = blocking(move || inner.check_rotate(req)).await??;
        self.sequence(pending).await
    }

    /// Ends a binding.
    pub async fn revoke(&self, req: SignedRequest) -> Result<EntryProof> {
        let inner = self.inner.clone();
        let pending = blocking(move || inner.check_revoke(req)).await??;
        self.sequence(pending).await
    }

    async fn sequence(&self, p: (String, Vec<u8>, bool, Precondition)) -> Result<EntryProof> {
        let (reply, rx) = oneshot::channel();
        let (address, entry, revokes, pre) = p;
        self.inner
            .seq
            .send(Pending {
                address,
                entry,
                revokes,
                pre,
                reply,
            })
            .await
            .map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Every entry of `address` with an inclusion proof in the newest checkpoint.
    pub fn lookup(&self, address: &str) -> Result<LookupResponse> {
        let address = Address::parse(address)?;
        let head = self.inner.store.head();
        let state = self
            .inner
            .store
            .address(address.as_str())
            .ok_or_else(|| Error::NotFound(address.to_string()))?;
        let mut history = Vec::with_capacity(state.entries.len());
        for &i in state.entries.iter().filter(|&&i| i < head.size) {
            history.push(self.inner.entry_proof(i, &head)?);
        }
        if history.is_empty() {
            return Err(Error::NotFound(address.to_string()));
        }
        Ok(LookupResponse { history })
    }

    /// Inclusion proof for `index` in the tree of `size` leaves (0: the newest checkpoint).
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<ProofResponse> {
        let head = self.inner.store.head();
        let size = if size == 0 { head.size } else { size };
        if size > head.size {
            return Err(Error::OutOfRange(format!(
                "tree size {size} is beyond the newest checkpoint ({})",
                head.size
            )));
        }
        let hashes = self.inner.store.prove_inclusion(index, size)?;
        Ok(ProofResponse {
            hashes: hashes.iter().map(|h| h.to_vec()).collect(),
            newest_checkpoint: head.checkpoint,
            tree_size: size,
        })
    }

    /// Consistency proof from `from` leaves to `to` leaves (0: the newest checkpoint).
    pub fn consistency_proof(&self, from: u64, to: u64) -> Result<ProofResponse> {
        let head = self.inner.store.head();
        let to = if to == 0 { head.size } else { to };
        if to > head.size {
            return Err(Error::OutOfRange(format!(
                "tree size {to} is beyond the newest checkpoint ({})",
                head.size
            )));
        }
        if from > to {
            return Err(Error::OutOfRange(format!(
                "from size {from} is larger than to size {to}"
            )));
        }
        let hashes = self.inner.store.prove_consistency(from, to)?;
        Ok(ProofResponse {
            hashes: hashes.iter().map(|h| h.to_vec()).collect(),
            newest_checkpoint: head.checkpoint,
            tree_size: to,
        })
    }

    /// Raw entries from `start` towards `end` (exclusive), within the newest checkpoint: at
    /// most [`MAX_ENTRIES_PER_CALL`] and `max_entries_bytes`; ask again from where it ended.
    pub fn entries(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>> {
        let size = self.inner.store.head().size;
        if start >= end {
            return Err(Error::InvalidRequest(format!(
                "empty range [{start}, {end})"
            )));
        }
        if start >= size {
            return Err(Error::OutOfRange(format!(
                "start {start} is beyond the newest checkpoint ({size})"
            )));
        }
        let end = end
            .min(size)
            .min(start.saturating_add(MAX_ENTRIES_PER_CALL));
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for i in start..end {
            let e = self.inner.store.entry(i)?;
            bytes += e.len();
            if !out.is_empty() && bytes > self.inner.config.max_entries_bytes {
                break;
            }
            out.push(e);
        }
        Ok(out)
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| Error::ShuttingDown)
}

type Checked = (String, Vec<u8>, bool, Precondition);

impl Inner {
    fn check_clock(&self, ts: i64) -> Result<()> {
        Ok(check_clock(
            ts,
            self.clock.now_ms(),
            self.config.max_clock_skew_ms,
        )?)
    }

    fn check_register(&self, req: SignedRequest, peer: Option<IpAddr>) -> Result<Checked> {
        check_len("body", req.body.len(), MAX_BODY_LEN)?;
        let body: RegisterBody = decode_canonical(&req.body, "RegisterBody")?;
        let address = Address::parse(&body.address)?;
        check_real_name(&body.real_name)?;
        ed25519_key(&body.signing_key)?;
        x25519_key(&body.encryption_key)?;
        self.check_clock(body.timestamp_ms)?;
        if !body.evidence_chain.is_empty() && self.anchors.is_empty() {
            return Err(blockpost_core::Error::Evidence(
                blockpost_core::EvidenceError::TrustAnchor {
                    why: "this directory has no trust anchors configured".into(),
                },
            )
            .into());
        }
        // Signatures first, before anything is spent on the request: the same core rule
        // every verifier re-runs on the logged entry.
        let auth = authorize_request(EntryKind::Register, &req, None)?;
        let (verified, evidence_key) = if body.evidence_chain.is_empty() {
            if !req.second_signature.is_empty() {
                return Err(Error::InvalidRequest(
                    "evidence signature given without an evidence chain".into(),
                ));
            }
            if self.config.require_verified {
                return Err(Error::EvidenceRequired);
            }
            (false, Vec::new())
        } else {
            let now_secs = self.clock.now_ms().div_euclid(1000);
            let ev = self
                .anchors
                .check(&body.evidence_chain, &body.real_name, now_secs)?;
            (true, ev.leaf_spki)
        };
        if self.store.address(address.as_str()).is_some() {
            return Err(Error::AddressTaken(address.to_string()));
        }
        let logged_at_ms = self.clock.now_ms();
        // Only a request that would be logged spends a token: garbage, forged signatures
        // and taken addresses are refused above without draining anyone's limit.
        if !verified {
            self.limiter.admit(peer, logged_at_ms)?;
        }
        let certificate = self.issue(
            &body.real_name,
            &address,
            &body.signing_key,
            &body.encryption_key,
            logged_at_ms,
        )?;
        let entry = LogEntry {
            kind: EntryKind::Register as i32,
            address: address.to_string(),
            real_name: body.real_name,
            verified,
            signing_key: body.signing_key,
            encryption_key: body.encryption_key,
            certificate,
            previous_index: 0,
            logged_at_ms,
            request: Some(req),
            evidence_key,
        };
        // The entry says exactly what the request says (the rest of `authorize_entry`).
        auth.check_entry(&entry, None)?;
        Ok((
            address.to_string(),
            entry.encode_to_vec(),
            false,
            Precondition::Unregistered,
        ))
    }

    fn current(&self, address: &Address, named: u64) -> Result<(u64, Binding)> {
        let st = self
            .store
            .address(address.as_str())
            .ok_or_else(|| Error::NotFound(address.to_string()))?;
        let current = st
            .current()
            .ok_or_else(|| Error::NotFound(address.to_string()))?;
        if st.revoked {
            return Err(Error::KeyRevoked {
                address: address.to_string(),
                at: current,
            });
        }
        if current != named {
            return Err(Error::Stale {
                address: address.to_string(),
                current,
                named,
            });
        }
        let (_, binding) = decode_entry(&self.store.entry(current)?)?;
        Ok((current, binding))
    }

    fn check_rotate(&self, req: SignedRequest) -> Result<Checked> {
        check_len("body", req.body.len(), MAX_BODY_LEN)?;
        let body: RotateBody = decode_canonical(&req.body, "RotateBody")?;
        let address = Address::parse(&body.address)?;
        ed25519_key(&body.new_signing_key)?;
        x25519_key(&body.new_encryption_key)?;
        self.check_clock(body.timestamp_ms)?;
        let (current, prev) = self.current(&address, body.current_index)?;
        let auth = authorize_request(EntryKind::Rotate, &req, Some((current, &prev)))?;
        let logged_at_ms = self.clock.now_ms();
        let certificate = self.issue(
            &prev.real_name,
            &address,
            &body.new_signing_key,
            &body.new_encryption_key,
            logged_at_ms,
        )?;
        let entry = LogEntry {
            kind: EntryKind::Rotate as i32,
            address: address.to_string(),
            real_name: prev.real_name.clone(),
            verified: prev.verified,
            signing_key: body.new_signing_key,
            encryption_key: body.new_encryption_key,
            certificate,
            previous_index: current,
            logged_at_ms,
            request: Some(req),
            evidence_key: prev.evidence_key.clone(),
        };
        auth.check_entry(&entry, Some(&prev))?;
        Ok((
            address.to_string(),
            entry.encode_to_vec(),
            false,
            Precondition::Current(current),
        ))
    }

    fn check_revoke(&self, req: SignedRequest) -> Result<Checked> {
        check_len("body", req.body.len(), MAX_BODY_LEN)?;
        let body: RevokeBody = decode_canonical(&req.body, "RevokeBody")?;
        let address = Address::parse(&body.address)?;
        check_len("reason", body.reason.len(), MAX_REASON_LEN)?;
        self.check_clock(body.timestamp_ms)?;
        let (current, prev) = self.current(&address, body.current_index)?;
        let auth = authorize_request(EntryKind::Revoke, &req, Some((current, &prev)))?;
        let entry = LogEntry {
            kind: EntryKind::Revoke as i32,
            address: address.to_string(),
            real_name: prev.real_name.clone(),
            verified: prev.verified,
            signing_key: prev.signing_key.to_vec(),
            encryption_key: prev.encryption_key.to_vec(),
            certificate: Vec::new(),
            previous_index: current,
            logged_at_ms: self.clock.now_ms(),
            request: Some(req),
            evidence_key: prev.evidence_key.clone(),
        };
        auth.check_entry(&entry, Some(&prev))?;
        Ok((
            address.to_string(),
            entry.encode_to_vec(),
            true,
            Precondition::Current(current),
        ))
    }

    fn issue(
        &self,
        real_name: &str,
        address: &Address,
        sk: &[u8],
        ek: &[u8],
        at_ms: i64,
    ) -> Result<Vec<u8>> {
        let not_before = OffsetDateTime::from_unix_timestamp(at_ms.div_euclid(1000))
            .map_err(|e| Error::Certificate(e.to_string()))?;
        let key = |b: &[u8]| -> Result<[u8; 32]> {
            b.try_into()
                .map_err(|_| Error::InvalidRequest("key of the wrong length".into()))
        };
        self.ca.issue(
            &Subject {
                real_name,
                address: address.as_str(),
                signing_key: key(sk)?,
                encryption_key: key(ek)?,
            },
            not_before,
        )
    }

    fn entry_proof(&self, index: u64, head: &Head) -> Result<EntryProof> {
        Ok(EntryProof {
            leaf_index: index,
            entry: self.store.entry(index)?,
            inclusion_proof: self
                .store
                .prove_inclusion(index, head.size)?
                .iter()
                .map(|h| h.to_vec())
                .collect(),
            checkpoint: head.checkpoint.clone(),
        })
    }

    /// Sequences one batch: re-checks preconditions in order, appends durably, signs one
    /// checkpoint, then answers every request with its proof.
    fn commit(&self, batch: Vec<Pending>) {
        // Address states as they will be after the accepted part of this batch.
        let mut overlay: HashMap<String, (u64, bool)> = HashMap::new();
        let mut accepted = Vec::with_capacity(batch.len());
        let next = self.store.len();
        for p in batch {
            let state = overlay.get(&p.address).copied().or_else(|| {
                self.store
                    .address(&p.address)
                    .and_then(|s| s.current().map(|c| (c, s.revoked)))
            });
            let verdict = match (&p.pre, state) {
                (Precondition::Unregistered, None) => Ok(()),
                (Precondition::Unregistered, Some(_)) => {
                    Err(Error::AddressTaken(p.address.clone()))
                }
                (Precondition::Current(_), None) => Err(Error::NotFound(p.address.clone())),
                (Precondition::Current(_), Some((at, true))) => Err(Error::KeyRevoked {
                    address: p.address.clone(),
                    at,
                }),
                (Precondition::Current(want), Some((cur, false))) if *want != cur => {
                    Err(Error::Stale {
                        address: p.address.clone(),
                        current: cur,
                        named: *want,
                    })
                }
                (Precondition::Current(_), Some(_)) => Ok(()),
            };
            match verdict {
                Ok(()) => {
                    overlay.insert(p.address.clone(), (next + accepted.len() as u64, p.revokes));
                    accepted.push(p);
                }
                Err(e) => {
                    let _ = p.reply.send(Err(e));
                }
            }
        }
        if accepted.is_empty() {
            return;
        }
        let entries: Vec<Vec<u8>> = accepted
            .iter_mut()
            .map(|p| std::mem::take(&mut p.entry))
            .collect();
        let bindings: Vec<(String, bool)> = accepted
            .iter()
            .map(|p| (p.address.clone(), p.revokes))
            .collect();
        match self.store.append(&entries, &bindings, |size, root| {
            Ok(self.signer.sign(size, root)?)
        }) {
            Ok((first, head)) => {
                let _ = self.changed.send(head.size);
                for (i, p) in accepted.into_iter().enumerate() {
                    let _ = p.reply.send(self.entry_proof(first + i as u64, &head));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "appending a batch failed; nothing of it was acknowledged");
                // Every waiter gets the same failure, with its OS error kept (a full disk is
                // RESOURCE_EXHAUSTED, not INTERNAL).
                let msg = e.to_string();
                let os = match &e {
                    Error::Storage(blockpost_storage::Error::Io(io)) => io.raw_os_error(),
                    _ => None,
                };
                for p in accepted {
                    let io = match os {
                        Some(code) => std::io::Error::new(
                            std::io::Error::from_raw_os_error(code).kind(),
                            OsError {
                                code,
                                msg: msg.clone(),
                            },
                        ),
                        None => std::io::Error::other(msg.clone()),
                    };
                    let _ = p
                        .reply
                        .send(Err(Error::Storage(blockpost_storage::Error::Io(io))));
                }
            }
        }
    }
}

/// An OS error passed on to several waiters: its code and the original message.
#[derive(Debug)]
struct OsError {
    code: i32,
    msg: String,
}

impl std::fmt::Display for OsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for OsError {}

/// Whether an I/O error means the disk (or the file size limit) is full.
pub(crate) fn disk_full(e: &std::io::Error) -> bool {
    let code = e.raw_os_error().or_else(|| {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<OsError>())
            .map(|o| o.code)
    });
    // ENOSPC, EDQUOT, EFBIG.
    matches!(code, Some(28 | 122 | 27))
        || matches!(
            e.kind(),
            std::io::ErrorKind::StorageFull
                | std::io::ErrorKind::QuotaExceeded
                | std::io::ErrorKind::FileTooLarge
        )
}

fn check_len(field: &'static str, len: usize, limit: usize) -> Result<()> {
    if len > limit {
        return Err(Error::TooLarge { field, len, limit });
    }
    Ok(())
}

async fn sequencer(inner: std::sync::Weak<Inner>, mut rx: mpsc::Receiver<Pending>) {
    while let Some(first) = rx.recv().await {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let max = inner.config.max_batch.max(1);
        let mut batch = Vec::with_capacity(64);
        batch.push(first);
        while batch.len() < max {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let inner2 = inner.clone();
        if tokio::task::spawn_blocking(move || inner2.commit(batch))
            .await
            .is_err()
        {
            tracing::error!("sequencer batch panicked");
        }
    }
}
