//! The auditor's readers: thin async loops that follow the node's streams (directory,
//! each firehose partition and its tail, blocks) and its ledger, and hand what they read
//! to the [`crate::core::AuditCore`] as events. They hold no state of the checks: where
//! to start comes from the core's [`View`], and every rule is the core's. A reader whose
//! consumer fails follows its stream again from the next sequence it has not handed over.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull::OrderedConfig};
use blockpost_client::Messenger;
use blockpost_core::wire::{Firehose, Namespace};
use blockpost_core::{decode_canonical, message_id_of_encoded};
use blockpost_proto::v1::Envelope;
use futures::StreamExt as _;

use crate::core::{Event, FirehoseMessage, View};

/// What a reader holds: the way to the core, and the core's view.
#[derive(Clone)]
pub(crate) struct Feed {
    pub(crate) events: tokio::sync::mpsc::Sender<crate::drive::Request>,
    pub(crate) view: tokio::sync::watch::Receiver<View>,
}

impl Feed {
    /// Hands `event` to the core; false once the core has stopped.
    async fn send(&self, event: Event) -> bool {
        self.events
            .send(crate::drive::Request::Event(event, None))
            .await
            .is_ok()
    }

    /// The core's view, as of its last effects.
    fn view(&self) -> View {
        self.view.borrow().clone()
    }
}

/// Most firehose messages checked together (one batch of signatures, split over the
/// cores).
const CHECK_BATCH: usize = 1024;

/// Batches of firehose messages whose signatures are being checked while the next is
/// read, per partition.
const CHECKS_IN_FLIGHT: usize = 2;

/// How long an ordered consumer may deliver nothing before the stream is asked whether it
/// holds more.
const STALL_CHECK: Duration = Duration::from_secs(2);

/// How long a reader waits before following its stream again after an error.
const AGAIN: Duration = Duration::from_millis(200);

fn published_ms(info: &jetstream::message::Info<'_>) -> i64 {
    i64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// Firehose payloads on their way to being checked: each decoded and its sender's key found
/// ([`prepare_envelopes`]); the signatures wait for [`Prepared::verify`].
struct Prepared {
    out: Vec<FirehoseMessage>,
    slots: Vec<usize>,
    batch: blockpost_client::PreparedBatch,
}

impl Prepared {
    /// Checks the signatures (blocking: split over the cores) and gives, for each payload,
    /// its id if it is a valid envelope and why it is not if it is not.
    fn verify(self) -> Vec<FirehoseMessage> {
        let Self {
            mut out,
            slots,
            batch,
        } = self;
        for (slot, v) in slots.into_iter().zip(batch.verify()) {
            if let Err(e) = v {
                let why = std::error::Error::source(&e)
                    .map_or_else(|| e.to_string(), |s| format!("{e}: {s}"));
                out[slot].invalid = Some(why);
            }
        }
        out
    }
}

/// The first half of checking firehose payloads: each decoded (a canonical envelope, in
/// its sender's partition) and its sender's key found in the verified directory. Retries
/// while the node cannot be asked. The messenger is needed only here, not while the
/// signatures are checked.
async fn prepare_envelopes(
    messenger: &tokio::sync::Mutex<Messenger>,
    items: &[(u64, i64, bytes::Bytes)],
    partition: (u32, &Firehose),
) -> Prepared {
    let mut out: Vec<FirehoseMessage> = Vec::with_capacity(items.len());
    let mut envs = Vec::new();
    let mut slots = Vec::new();
    for (seq, published_ms, payload) in items {
        let mut m = FirehoseMessage {
            seq: *seq,
            published_ms: *published_ms,
            id: None,
            invalid: None,
        };
        match decode_canonical::<Envelope>(payload, "envelope") {
            Ok(env) => {
                m.id = Some(message_id_of_encoded(payload));
                // A sender's envelopes belong in its partition only (there the firehose
                // de-duplicates its nonces).
                let misplaced = <blockpost_proto::v1::EnvelopeContent as prost::Message>::decode(
                    env.content.as_slice(),
                )
                .ok()
                .and_then(|c| blockpost_core::Address::parse(&c.sender).ok())
                .map(|a| partition.1.partition_of(&a))
                .filter(|own| *own != partition.0);
                if let Some(own) = misplaced {
                    m.invalid = Some(format!(
                        "on firehose partition {}, but its sender is on partition {own}",
                        partition.0
                    ));
                } else {
                    slots.push(out.len());
                    envs.push(env);
                }
            }
            Err(e) => m.invalid = Some(e.to_string()),
        }
        out.push(m);
    }
    let mut backoff = Duration::from_millis(100);
    let batch = loop {
        match messenger.lock().await.prepare_batch(envs.clone()).await {
            Ok(b) => break b,
            Err(e) => {
                tracing::warn!(error = %e, "cannot check firehose messages against the directory; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    Prepared { out, slots, batch }
}

/// A reader's session with its stream: one consumer, from where the reader stands, until
/// it fails (`Err`: followed again after [`AGAIN`]) or the core stops (`Ok`).
pub(crate) trait Session: Send {
    /// What it follows, for the log.
    const WHAT: &'static str;
    /// One session.
    fn session(&mut self) -> impl std::future::Future<Output = Result<(), String>> + Send;
}

/// Runs sessions of `reader` until the core stops: the reconnect loop of every reader.
pub(crate) async fn follow_again<R: Session>(mut reader: R) {
    loop {
        match reader.session().await {
            Ok(()) => return,
            Err(e) => tracing::debug!(error = %e, "auditor: following the {} again", R::WHAT),
        }
        tokio::time::sleep(AGAIN).await;
    }
}

/// Follows partition `k` of the firehose: each message checked, and handed to the core.
pub(crate) struct FirehoseReader {
    feed: Feed,
    js: jetstream::Context,
    k: u32,
    firehose: Firehose,
    messenger: Arc<tokio::sync::Mutex<Messenger>>,
    /// The next sequence to hand over.
    next: u64,
}

impl FirehoseReader {
    /// A reader of partition `k`, which starts once the core has replayed the blocks
    /// checked before a restart (so that the messages read again are found in them);
    /// `None` if the core stopped first.
    pub(crate) async fn once_replayed(
        feed: Feed,
        js: jetstream::Context,
        k: u32,
        firehose: Firehose,
        messenger: Arc<tokio::sync::Mutex<Messenger>>,
    ) -> Option<Self> {
        let mut view = feed.view.clone();
        let next = loop {
            {
                let v = view.borrow_and_update();
                if v.replayed {
                    break v.last_seq.get(k as usize).copied().unwrap_or(0) + 1;
                }
            }
            view.changed().await.ok()?;
        };
        Some(Self {
            feed,
            js,
            k,
            firehose,
            messenger,
            next,
        })
    }
}

impl Session for FirehoseReader {
    const WHAT: &'static str = "firehose";

    async fn session(&mut self) -> Result<(), String> {
        let mut stream = self
            .js
            .get_stream(self.firehose.stream(self.k))
            .await
            .map_err(|e| e.to_string())?;
        let mut messages = ordered(&stream, None, self.next).await?;
        // Two stages, so that the signatures of one batch are checked (on the blocking pool,
        // over the cores) while the next is fetched, decoded and its keys found: the
        // reader hands each batch's check over in order, and the hand-over awaits them in
        // that order and gives them to the core. `read` is the last sequence read.
        let (checks, mut checked) = tokio::sync::mpsc::channel::<(
            u64,
            tokio::task::JoinHandle<Vec<FirehoseMessage>>,
        )>(CHECKS_IN_FLIGHT);
        let (k, firehose, messenger) = (self.k, &self.firehose, &self.messenger);
        let mut read = self.next - 1;
        let reader = async move {
            // Messages read and not yet handed to a check. While both checks in flight are
            // busy the group grows (to at most CHECK_BATCH), so batches are large exactly
            // when the signature checks are the bottleneck, and small (quick) when not.
            let mut group: Vec<jetstream::Message> = Vec::new();
            loop {
                tokio::select! {
                    biased;
                    () = checks.closed() => return Ok(()),
                    permit = checks.reserve(), if !group.is_empty() => {
                        let Ok(permit) = permit else { return Ok(()) };
                        let mut items = Vec::with_capacity(group.len());
                        for m in group.drain(..) {
                            let info = m.info().map_err(|e| e.to_string())?;
                            items.push((info.stream_sequence, published_ms(&info), m.payload.clone()));
                        }
                        // `read` is the group's last sequence: the whole group goes.
                        let prepared = prepare_envelopes(messenger, &items, (k, firehose)).await;
                        permit.send((read, tokio::task::spawn_blocking(move || prepared.verify())));
                    }
                    m = next_or_stalled(&mut messages, &mut stream, read),
                        if group.len() < CHECK_BATCH =>
                    {
                        let Some(m) = m? else {
                            return Err("the firehose consumer ended".to_string());
                        };
                        group.push(m.map_err(|e| e.to_string())?);
                        // Take what else has arrived.
                        while group.len() < CHECK_BATCH {
                            match futures::FutureExt::now_or_never(messages.next()) {
                                Some(Some(m)) => group.push(m.map_err(|e| e.to_string())?),
                                _ => break,
                            }
                        }
                        if let Some(m) = group.last() {
                            read = m.info().map_err(|e| e.to_string())?.stream_sequence;
                        }
                    }
                }
            }
        };
        let feed = &self.feed;
        let hand_over = async move {
            let mut handed = None;
            while let Some((last, check)) = checked.recv().await {
                let Ok(messages) = check.await else {
                    // A check that panicked: nothing of it was handed over; read it again.
                    return (handed, true);
                };
                let event = Event::Firehose {
                    partition: k,
                    messages,
                };
                if !feed.send(event).await {
                    return (handed, false);
                }
                handed = Some(last);
            }
            (handed, true)
        };
        // The hand-over ends when the reader has (its sender dropped) and every check it
        // started was handed over, or first when the core stops (the reader then sees the
        // channel closed).
        let (read_result, (handed, core_running)) = tokio::join!(reader, hand_over);
        if let Some(last) = handed {
            self.next = self.next.max(last + 1);
        }
        if !core_running {
            return Ok(());
        }
        // The reader stops by itself only with an error; otherwise the hand-over gave up on
        // a check that panicked, and the stream is followed again after what was handed.
        read_result.and(Err(
            "a signature check failed; following the firehose again".into(),
        ))
    }
}

/// A message deleted from the end of the firehose leaves no gap for the next message to
/// show. So twice a second: when the stream's last sequence is past the last one read and
/// reading has not moved for a second, ask the stream for the next sequence; those it no
/// longer holds were deleted. Also tells the core the stream's end (for the lag).
pub(crate) async fn firehose_tail(feed: Feed, js: jetstream::Context, k: u32, name: String) {
    /// Most sequences probed at once.
    const MAX_PROBE: u64 = 1_000;
    let mut still: Option<(u64, tokio::time::Instant)> = None;
    let mut told = None;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let ours = feed.view().last_seq.get(k as usize).copied().unwrap_or(0);
        let Ok(mut stream) = js.get_stream(&name).await else {
            continue;
        };
        let Ok(info) = stream.info().await else {
            continue;
        };
        let last = info.state.last_sequence;
        if told != Some(last) {
            if !feed.send(Event::FirehoseEnd { partition: k, last }).await {
                return;
            }
            told = Some(last);
        }
        if last <= ours {
            still = None;
            continue;
        }
        match still {
            Some((o, since)) if o == ours && since.elapsed() >= Duration::from_secs(1) => {
                still = None;
                let mut through = ours;
                while through < last && through - ours < MAX_PROBE {
                    match stream.get_raw_message(through + 1).await {
                        Err(e)
                            if e.kind()
                                == jetstream::stream::RawMessageErrorKind::NoMessageFound =>
                        {
                            through += 1;
                        }
                        _ => break,
                    }
                }
                if through > ours {
                    let event = Event::FirehoseDeleted {
                        partition: k,
                        after: ours,
                        through,
                    };
                    if !feed.send(event).await {
                        return;
                    }
                }
            }
            Some((o, _)) if o == ours => {}
            _ => still = Some((ours, tokio::time::Instant::now())),
        }
    }
}

/// Follows the blocks stream: each block (joined from its parts) to the core.
pub(crate) struct BlocksReader {
    feed: Feed,
    js: jetstream::Context,
    ns: Namespace,
    /// The stream sequence after the last whole block handed over.
    next: u64,
}

impl BlocksReader {
    pub(crate) fn new(feed: Feed, js: jetstream::Context, ns: Namespace) -> Self {
        Self {
            feed,
            js,
            ns,
            next: 1,
        }
    }
}

impl Session for BlocksReader {
    const WHAT: &'static str = "blocks";

    async fn session(&mut self) -> Result<(), String> {
        let mut stream = match self.js.get_stream(self.ns.blocks_stream()).await {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    jetstream::context::GetStreamErrorKind::JetStream(j)
                        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
                ) =>
            {
                // No builder has made it yet: nothing to read, nothing unread.
                if !self.feed.send(Event::BlocksRead).await {
                    return Ok(());
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
        if last < self.next && !self.feed.send(Event::BlocksRead).await {
            return Ok(());
        }
        let mut messages = ordered(&stream, None, self.next).await?;
        let mut read = self.next.saturating_sub(1);
        // Blocks longer than one message of the bus travel in parts.
        let mut parts = blockpost_core::wire::BlockParts::default();
        while let Some(m) = next_or_stalled(&mut messages, &mut stream, read).await? {
            let m = m.map_err(|e| e.to_string())?;
            let info = m.info().map_err(|e| e.to_string())?;
            read = info.stream_sequence;
            let (seq, pending) = (info.stream_sequence, info.pending);
            let part = m
                .headers
                .as_ref()
                .and_then(|h| h.get(blockpost_core::wire::BLOCK_PART_HEADER))
                .map(|v| v.as_str().to_owned());
            let Some(bytes) = parts.push(part.as_deref(), &m.payload) else {
                if !parts.joining() {
                    tracing::warn!(seq, "a block part that follows no part before it: skipped");
                }
                continue;
            };
            if !self.feed.send(Event::Block { bytes, pending }).await {
                return Ok(());
            }
            self.next = seq + 1;
        }
        Err("the blocks consumer ended".into())
    }
}

/// Follows the directory stream: checkpoints and entries, in order.
pub(crate) struct DirectoryReader {
    feed: Feed,
    js: jetstream::Context,
    ns: Namespace,
    /// The next stream sequence to read.
    next: u64,
}

impl DirectoryReader {
    pub(crate) fn new(feed: Feed, js: jetstream::Context, ns: Namespace) -> Self {
        Self {
            feed,
            js,
            ns,
            next: 1,
        }
    }
}

impl Session for DirectoryReader {
    const WHAT: &'static str = "directory";

    async fn session(&mut self) -> Result<(), String> {
        let ns = &self.ns;
        let stream = self
            .js
            .get_stream(ns.directory_stream())
            .await
            .map_err(|e| e.to_string())?;
        let mut messages = ordered(&stream, Some(ns.directory_subjects()), self.next).await?;
        let (entry_subject, checkpoint_subject) = (ns.entry_subject(), ns.checkpoint_subject());
        while let Some(m) = messages.next().await {
            let m = m.map_err(|e| e.to_string())?;
            let seq = m.info().map_err(|e| e.to_string())?.stream_sequence;
            let event = if m.subject.as_str() == checkpoint_subject {
                Some(Event::DirectoryCheckpoint(m.payload.clone()))
            } else if m.subject.as_str() == entry_subject {
                let index = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(blockpost_core::wire::LEAF_INDEX_HEADER))
                    .and_then(|v| v.as_str().parse::<u64>().ok());
                Some(Event::DirectoryEntry {
                    index,
                    entry: m.payload.clone(),
                })
            } else {
                None
            };
            if let Some(event) = event
                && !self.feed.send(event).await
            {
                return Ok(());
            }
            self.next = seq + 1;
        }
        Err("the directory consumer ended".into())
    }
}

/// Asks the node for its newest ledger checkpoint once a second, for the core to check
/// against the chain it verified.
pub(crate) async fn ledger(feed: Feed, channel: tonic::transport::Channel) {
    use blockpost_proto::v1::ledger_client::LedgerClient;
    use blockpost_proto::v1::{GetBlockRequest, get_block_request};
    if !feed.view().status.ledger {
        return;
    }
    let mut grpc = LedgerClient::new(channel).max_decoding_message_size(128 << 20);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let r = grpc
            .get_block(GetBlockRequest {
                at: Some(get_block_request::At::Latest(true)),
                ..Default::default()
            })
            .await;
        match r {
            Ok(r) => {
                let note = r.into_inner().ledger_checkpoint;
                if !feed.send(Event::LedgerCheckpoint(note)).await {
                    return;
                }
            }
            // No block yet, or the node is away: ask again later.
            Err(_) => continue,
        }
    }
}

/// Tells the core the time has passed, four times a second.
pub(crate) async fn ticks(feed: Feed) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        if !feed.send(Event::Tick).await {
            return;
        }
    }
}

/// The next message of an ordered consumer. When none comes for [`STALL_CHECK`] although
/// the stream holds messages after `read` (the last sequence read), the consumer is
/// stalled (seen with multi-megabyte blocks: it delivered again only when a new message
/// came): an error, so that the caller follows the stream again from where it is.
async fn next_or_stalled(
    messages: &mut jetstream::consumer::pull::Ordered,
    stream: &mut jetstream::stream::Stream,
    read: u64,
) -> Result<Option<Result<jetstream::Message, jetstream::consumer::pull::OrderedError>>, String> {
    loop {
        match tokio::time::timeout(STALL_CHECK, messages.next()).await {
            Ok(m) => return Ok(m),
            Err(_) => {
                let last = stream
                    .info()
                    .await
                    .map_err(|e| e.to_string())?
                    .state
                    .last_sequence;
                if last > read {
                    tracing::warn!(
                        read,
                        last,
                        "a stream consumer delivered nothing for 2 s with messages left: following the stream again"
                    );
                    return Err(format!(
                        "the consumer stalled at {read} with the stream at {last}"
                    ));
                }
            }
        }
    }
}

/// An ordered consumer of `stream` (its `filter` subjects, or all) from sequence `start`:
/// how every reader of the auditor reads the node's streams.
async fn ordered(
    stream: &jetstream::stream::Stream,
    filter: Option<String>,
    start: u64,
) -> Result<jetstream::consumer::pull::Ordered, String> {
    stream
        .create_consumer(OrderedConfig {
            filter_subject: filter.unwrap_or_default(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?
        .messages()
        .await
        .map_err(|e| e.to_string())
}
