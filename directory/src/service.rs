//! The directory's handle: starts it, hands requests to the sequencer and answers
//! look-ups and proofs. What a request must satisfy is in `admit` (checked before it is
//! sequenced), how batches are appended and answered in `sequence`; the gRPC adapter in
//! `grpc` is a thin layer on top of [`Directory`].

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use blockpost_core::wire::Namespace;
use blockpost_core::{Address, CheckpointSigner, Clock, TrustAnchors};
use blockpost_proto::v1::{
    EntryProof, GetInfoResponse, LookupResponse, ProofResponse, SignedRequest,
};
use blockpost_storage::Head;
use ed25519_dalek::SigningKey;
use tokio::sync::{mpsc, oneshot, watch};

use crate::ca::Ca;
use crate::config::DirectoryConfig;
use crate::limit::RegistrationLimiter;
use crate::storage::Store;
use crate::{Error, InvalidRequest, OutOfRange, Result};

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
    pub(crate) ca: Ca,
    pub(crate) signer: CheckpointSigner,
    pub(crate) anchors: TrustAnchors,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) seq: mpsc::Sender<Pending>,
    pub(crate) changed: watch::Sender<u64>,
    /// The newest checkpoint witnesses cosigned, as the node collected it.
    pub(crate) witnessed: blockpost_storage::Witnessed,
    /// Rate limits of unverified registrations.
    pub(crate) limiter: RegistrationLimiter,
}

impl crate::publish::Trailed for Inner {
    fn store(&self) -> &Store {
        &self.store
    }
}

pub(crate) enum Precondition {
    /// The address has never been registered.
    Unregistered,
    /// The address's newest entry is this one, and not a revocation.
    Current(u64),
}

pub(crate) struct Pending {
    pub(crate) address: String,
    pub(crate) entry: Vec<u8>,
    pub(crate) revokes: bool,
    pub(crate) pre: Precondition,
    pub(crate) reply: oneshot::Sender<Result<EntryProof>>,
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
        tokio::spawn(Inner::sequencer(Arc::downgrade(&inner), rx));
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
            return Err(Error::OutOfRange(OutOfRange::BeyondHead {
                what: "tree size",
                asked: size,
                head: head.size,
            }));
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
            return Err(Error::OutOfRange(OutOfRange::BeyondHead {
                what: "tree size",
                asked: to,
                head: head.size,
            }));
        }
        if from > to {
            return Err(Error::OutOfRange(OutOfRange::Reversed { from, to }));
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
            return Err(Error::InvalidRequest(InvalidRequest::EmptyRange {
                start,
                end,
            }));
        }
        if start >= size {
            return Err(Error::OutOfRange(OutOfRange::BeyondHead {
                what: "start",
                asked: start,
                head: size,
            }));
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

impl Inner {
    pub(crate) fn entry_proof(&self, index: u64, head: &Head) -> Result<EntryProof> {
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
}
