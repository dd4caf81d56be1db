//! The daemon: follows the node's firehose and blocks streams, checks them with
//! [`Chain`] and [`Promises`], and raises alerts.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull::OrderedConfig};
use blockpost_client::{ConnectOptions, Ledger, Messenger};
use blockpost_core::wire::Namespace;
use blockpost_core::{decode_canonical, message_id_of_encoded, now_ms};
use blockpost_proto::v1::{Envelope, GetGatewayInfoRequest};
use futures::StreamExt as _;
use serde::Serialize;

use crate::Result;
use crate::alert::{Alert, AlertLog};
use crate::chain::Chain;
use crate::promises::Promises;

/// How the auditor reaches the node and where it keeps its files.
#[derive(Clone, Debug)]
pub struct AuditorConfig {
    /// The node's gRPC endpoint (keys, directory look-ups).
    pub node: String,
    /// How to verify the node's TLS certificate.
    pub connect: ConnectOptions,
    /// The auditor's data directory: pinned keys (`client/`) and `alerts.jsonl`.
    pub data: PathBuf,
    /// Time allowed past a receipt's deadline before a missing message is an omission.
    pub grace_ms: u64,
}

impl AuditorConfig {
    /// The defaults for a node at `node`, with files in `data`.
    pub fn new(node: impl Into<String>, data: impl Into<PathBuf>) -> Self {
        Self {
            node: node.into(),
            connect: ConnectOptions::default(),
            data: data.into(),
            grace_ms: 1_000,
        }
    }
}

/// Where the auditor stands.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AuditStatus {
    /// Blocks verified (the chain's length).
    pub blocks_verified: u64,
    /// The last firehose sequence read and checked.
    pub firehose_checked: u64,
    /// Valid firehose messages not in a block yet.
    pub waiting: usize,
    /// Alerts raised, in all (also before a restart).
    pub alerts: usize,
    /// Whether the auditor has read every block the stream holds.
    pub blocks_current: bool,
    /// Whether the node has a ledger whose blocks are checked.
    pub ledger: bool,
}

struct State {
    chain: Option<Chain>,
    promises: Promises,
    /// The next blocks stream sequence to read.
    next_block_seq: u64,
}

struct Inner {
    state: Mutex<State>,
    log: Mutex<AlertLog>,
    blocks_current: AtomicBool,
    alerts: tokio::sync::broadcast::Sender<Alert>,
}

impl Inner {
    fn raise(&self, alerts: Vec<Alert>) {
        if alerts.is_empty() {
            return;
        }
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        match log.raise(alerts) {
            Ok(new) => {
                for a in new {
                    let _ = self.alerts.send(a);
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot write the alert file"),
        }
    }
}

/// A running auditor; its tasks stop when it is dropped.
pub struct Auditor {
    inner: Arc<Inner>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Auditor {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Auditor {
    /// Connects to the node (pinning its keys on first contact) and starts following its
    /// streams on `nats` (read-only credentials suffice).
    pub async fn start(config: AuditorConfig, nats: async_nats::Client) -> Result<Self> {
        let client_dir = config.data.join("client");
        let log = AlertLog::open(&config.data.join("alerts.jsonl"))?;
        let mut messenger =
            Messenger::connect_with(&config.node, &client_dir, &config.connect).await?;
        let promise_ms = messenger
            .grpc()
            .get_gateway_info(GetGatewayInfoRequest {})
            .await
            .map_err(blockpost_client::Error::from)?
            .into_inner()
            .max_block_delay_ms;
        let ns = Namespace::for_origin(&messenger.directory.info().origin);
        let chain = match Ledger::connect(&messenger.directory, &client_dir).await {
            Ok(l) => {
                let key = blockpost_core::ed25519_key(&l.info().builder_key)
                    .map_err(blockpost_client::Error::from)?;
                Some(Chain::new(key, l.info().transaction_timeout_ms))
            }
            Err(e) if e.code() == Some(tonic::Code::Unimplemented) => {
                tracing::warn!("the node has no ledger: blocks are not checked, omissions are");
                None
            }
            Err(e) => return Err(e.into()),
        };
        // Refresh the directory so that sender keys are looked up against a verified state.
        messenger.directory.checkpoint().await?;
        let (alerts, _) = tokio::sync::broadcast::channel(1024);
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                chain,
                promises: Promises::new(promise_ms, config.grace_ms),
                next_block_seq: 1,
            }),
            log: Mutex::new(log),
            blocks_current: AtomicBool::new(false),
            alerts,
        });
        let js = jetstream::new(nats);
        let tasks = vec![
            tokio::spawn(firehose_loop(
                Arc::downgrade(&inner),
                js.clone(),
                ns.clone(),
                messenger,
            )),
            tokio::spawn(blocks_loop(Arc::downgrade(&inner), js, ns)),
            tokio::spawn(tick_loop(Arc::downgrade(&inner))),
        ];
        Ok(Self { inner, tasks })
    }

    /// Where the auditor stands.
    pub fn status(&self) -> AuditStatus {
        let s = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        AuditStatus {
            blocks_verified: s.chain.as_ref().map_or(0, Chain::len),
            firehose_checked: s.promises.last_seq(),
            waiting: s.promises.waiting(),
            alerts: self
                .inner
                .log
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .all()
                .len(),
            blocks_current: self.inner.blocks_current.load(Ordering::SeqCst),
            ledger: s.chain.is_some(),
        }
    }

    /// Every alert raised, oldest first (also those of earlier runs).
    pub fn alerts(&self) -> Vec<Alert> {
        self.inner
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .all()
            .to_vec()
    }

    /// New alerts as they are raised.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Alert> {
        self.inner.alerts.subscribe()
    }
}

fn published_ms(info: &jetstream::message::Info<'_>) -> i64 {
    i64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// Whether a client error is the verdict on an envelope (it is not valid), not a failure
/// to reach the node.
fn is_verdict(e: &blockpost_client::Error) -> bool {
    use blockpost_client::Error as E;
    match e {
        E::BadEnvelope { .. } | E::Core(_) => true,
        E::Status(s) => matches!(
            s.code(),
            tonic::Code::NotFound | tonic::Code::InvalidArgument
        ),
        _ => false,
    }
}

/// Checks one firehose payload: its id if it is a canonical envelope, and why it is not
/// valid if it is not. Retries while the node cannot be asked.
async fn check_envelope(
    messenger: &mut Messenger,
    payload: &[u8],
) -> (Option<[u8; 32]>, Option<String>) {
    let env = match decode_canonical::<Envelope>(payload, "envelope") {
        Ok(e) => e,
        Err(e) => return (None, Some(e.to_string())),
    };
    let id = message_id_of_encoded(payload);
    let mut backoff = Duration::from_millis(100);
    loop {
        match messenger.open(&env, None).await {
            Ok(_) => return (Some(id), None),
            Err(e) if is_verdict(&e) => {
                let why = std::error::Error::source(&e)
                    .map_or_else(|| e.to_string(), |s| format!("{e}: {s}"));
                return (Some(id), Some(why));
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot check a firehose message against the directory; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn firehose_loop(
    weak: Weak<Inner>,
    js: jetstream::Context,
    ns: Namespace,
    mut messenger: Messenger,
) {
    loop {
        let start = match weak.upgrade() {
            Some(i) => {
                i.state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .promises
                    .last_seq()
                    + 1
            }
            None => return,
        };
        let r: std::result::Result<(), String> = async {
            let stream = js
                .get_stream(ns.firehose_stream())
                .await
                .map_err(|e| e.to_string())?;
            let consumer = stream
                .create_consumer(OrderedConfig {
                    deliver_policy: DeliverPolicy::ByStartSequence {
                        start_sequence: start,
                    },
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?;
            let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
            while let Some(m) = messages.next().await {
                let m = m.map_err(|e| e.to_string())?;
                let info = m.info().map_err(|e| e.to_string())?;
                let (seq, published) = (info.stream_sequence, published_ms(&info));
                let (id, invalid) = check_envelope(&mut messenger, &m.payload).await;
                let Some(inner) = weak.upgrade() else {
                    return Ok(());
                };
                let alerts = inner
                    .state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .promises
                    .firehose(seq, id, published, invalid, now_ms());
                inner.raise(alerts);
            }
            Err("the firehose consumer ended".into())
        }
        .await;
        if let Err(e) = r {
            tracing::debug!(error = %e, "auditor: following the firehose again");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn blocks_loop(weak: Weak<Inner>, js: jetstream::Context, ns: Namespace) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let start = inner
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next_block_seq;
        drop(inner);
        let r: std::result::Result<(), String> = async {
            let mut stream = match js.get_stream(ns.blocks_stream()).await {
                Ok(s) => s,
                Err(e) if e.to_string().contains("not found") => {
                    // No builder has made it yet: nothing to read, nothing unread.
                    if let Some(i) = weak.upgrade() {
                        i.blocks_current.store(true, Ordering::SeqCst);
                    }
                    return Err("no blocks stream yet".into());
                }
                Err(e) => return Err(e.to_string()),
            };
            let last = stream
                .info()
                .await
                .map_err(|e| e.to_string())?
                .state
                .last_sequence;
            if last < start
                && let Some(i) = weak.upgrade()
            {
                i.blocks_current.store(true, Ordering::SeqCst);
            }
            let consumer = stream
                .create_consumer(OrderedConfig {
                    deliver_policy: DeliverPolicy::ByStartSequence {
                        start_sequence: start,
                    },
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?;
            let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
            while let Some(m) = messages.next().await {
                let m = m.map_err(|e| e.to_string())?;
                let info = m.info().map_err(|e| e.to_string())?;
                let (seq, pending) = (info.stream_sequence, info.pending);
                let Some(inner) = weak.upgrade() else {
                    return Ok(());
                };
                let payload = m.payload.clone();
                let alerts = {
                    let mut s = inner.state.lock().unwrap_or_else(|e| e.into_inner());
                    s.next_block_seq = seq + 1;
                    let now = now_ms();
                    let checked = s.chain.as_mut().map(|c| c.block(&payload, now));
                    match checked {
                        Some((mut alerts, seen)) => {
                            if let Some(seen) = seen {
                                alerts.extend(s.promises.block(seen, now));
                            }
                            alerts
                        }
                        None => Vec::new(),
                    }
                };
                inner.blocks_current.store(pending == 0, Ordering::SeqCst);
                inner.raise(alerts);
            }
            Err("the blocks consumer ended".into())
        }
        .await;
        if let Err(e) = r {
            tracing::debug!(error = %e, "auditor: following the blocks again");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn tick_loop(weak: Weak<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let Some(inner) = weak.upgrade() else { return };
        let current = inner.blocks_current.load(Ordering::SeqCst);
        let alerts = inner
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .promises
            .tick(now_ms(), current);
        inner.raise(alerts);
    }
}
