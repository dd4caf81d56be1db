//! The `blockpost.v1.Messaging` gRPC service: a thin adapter over [`Gateway`], plus the
//! inbox and firehose streams.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::{AckKind, Message};
use blockpost_core::{Address, inbox_message, wire};
use blockpost_proto::v1::inbox_client_message::Msg as ClientMsg;
use blockpost_proto::v1::inbox_server_message::Msg as ServerMsg;
use blockpost_proto::v1::messaging_server::{self, MessagingServer};
use blockpost_proto::v1::submit_result::Result as SubmitOutcome;
use blockpost_proto::v1::{
    Envelope, FirehoseMessage, FirehoseRequest, GatewayInfo, GetGatewayInfoRequest,
    InboxClientMessage, InboxDelivery, InboxServerMessage, Receipt, SubmitError, SubmitResult,
};
use futures::{Stream, StreamExt as _};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::bus;
use crate::gateway::Gateway;
use crate::{BusError, Error, InboxDenial, Result};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Envelopes in flight per submission stream.
const STREAM_WINDOW: usize = 256;

impl Gateway {
    /// The tonic service for this gateway.
    pub fn into_service(self) -> MessagingServer<Self> {
        // The largest envelope that is valid and fits in one NATS message, with its
        // framing; anything larger is refused by tonic from its length prefix, before a
        // byte of it is buffered.
        let limit = self
            .inner
            .config
            .limits()
            .max_content_len()
            .saturating_add(4096)
            .min(self.inner.max_envelope);
        MessagingServer::new(self).max_decoding_message_size(limit)
    }
}

#[tonic::async_trait]
impl messaging_server::Messaging for Gateway {
    async fn get_gateway_info(
        &self,
        _: Request<GetGatewayInfoRequest>,
    ) -> Result<Response<GatewayInfo>, Status> {
        Ok(Response::new(self.info()))
    }

    async fn submit(&self, r: Request<Envelope>) -> Result<Response<Receipt>, Status> {
        Ok(Response::new(Gateway::submit(self, r.into_inner()).await?))
    }

    type SubmitStreamStream = BoxStream<SubmitResult>;

    async fn submit_stream(
        &self,
        r: Request<Streaming<Envelope>>,
    ) -> Result<Response<Self::SubmitStreamStream>, Status> {
        let gw = self.clone();
        // A frame that does not decode gets one error result, and the stream ends there:
        // results stay one to one with the frames before it, and a broken stream is never
        // read again (it would only repeat the decoder's error).
        let out = r
            .into_inner()
            .scan(false, |broken, frame| {
                if *broken {
                    return futures::future::ready(None);
                }
                *broken = frame.is_err();
                futures::future::ready(Some(frame))
            })
            .map(move |env| {
                let gw = gw.clone();
                async move {
                    let outcome = match env {
                        Ok(env) => match gw.submit(env).await {
                            Ok(r) => SubmitOutcome::Receipt(r),
                            Err(e) => SubmitOutcome::Error(SubmitError {
                                code: e.code() as i32,
                                message: e.to_string(),
                            }),
                        },
                        Err(s) => SubmitOutcome::Error(SubmitError {
                            code: tonic::Code::InvalidArgument as i32,
                            message: format!(
                                "malformed frame, the stream ends here: {}",
                                s.message()
                            ),
                        }),
                    };
                    Ok(SubmitResult {
                        result: Some(outcome),
                    })
                }
            })
            .buffered(STREAM_WINDOW);
        Ok(Response::new(Box::pin(out)))
    }

    type InboxStream = BoxStream<InboxServerMessage>;

    async fn inbox(
        &self,
        r: Request<Streaming<InboxClientMessage>>,
    ) -> Result<Response<Self::InboxStream>, Status> {
        let (tx, rx) = mpsc::channel(256);
        let gw = self.clone();
        let incoming = r.into_inner();
        tokio::spawn(async move {
            if let Err(e) = serve_inbox(gw, incoming, tx.clone()).await {
                let _ = tx.send(Err(e.into())).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type FirehoseStream = BoxStream<FirehoseMessage>;

    async fn firehose(
        &self,
        r: Request<FirehoseRequest>,
    ) -> Result<Response<Self::FirehoseStream>, Status> {
        let peer = r.remote_addr().map(|a| a.ip());
        let r = r.into_inner();
        let gw = self.clone();
        let config = &gw.inner.config;
        let slot = FollowerSlot::take(&gw, peer)?;
        let js = gw
            .inner
            .followers_nats
            .get()
            .cloned()
            .unwrap_or_else(|| gw.inner.js.clone());
        let partitions = gw.inner.firehose.partitions();
        if r.partition >= partitions {
            return Err(Error::NoPartition {
                asked: r.partition,
                partitions,
            }
            .into());
        }
        let partition = r.partition;
        let mut stream = js
            .get_stream(gw.inner.firehose.stream(partition))
            .await
            .map_err(|e| Status::from(bus(e)))?;
        let last = stream
            .info()
            .await
            .map_err(|e| Status::from(bus(e)))?
            .state
            .last_sequence;
        let from = r.from_sequence.max(1);
        let (tx, rx) = mpsc::channel(FOLLOWER_QUEUE);
        let (fail, failed) = mpsc::channel(1);
        if !r.follow && from > last {
            return Ok(Response::new(follower_stream(rx, failed)));
        }
        // An ephemeral pull consumer that delivers only what this follower asks for, in
        // batches it has room for; removed as soon as the follower ends.
        let consumer = stream
            .create_consumer(pull::Config {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                },
                ack_policy: AckPolicy::None,
                // Outlives the longest wait of a follower that does not read.
                inactive_threshold: Duration::from_millis(config.slow_follower_ms)
                    + FOLLOWER_PULL_WAIT
                    + Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .map_err(|e| Status::from(bus(e)))?;
        let name = consumer.cached_info().name.clone();
        let buffer = Arc::new(tokio::sync::Semaphore::new(config.follower_buffer_bytes));
        let (room, slow) = (
            config.follower_buffer_bytes,
            Duration::from_millis(config.slow_follower_ms),
        );
        let max_payload = js.client().server_info().max_payload;
        tokio::spawn(async move {
            let _slot = slot;
            let outcome = tokio::select! {
                // The client went away: end at once, not at the next message.
                () = tx.closed() => Ok(()),
                r = feed(&consumer, &tx, &buffer, room, slow, max_payload, r.follow, last, partition) => r,
            };
            if let Err(status) = outcome {
                if status.code() == tonic::Code::ResourceExhausted {
                    gw.inner
                        .followers
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .dropped += 1;
                }
                let _ = fail.try_send(status);
            }
            let _ = stream.delete_consumer(&name).await;
        });
        Ok(Response::new(follower_stream(rx, failed)))
    }
}

/// Firehose messages queued for one follower, at most (bytes are bounded too).
const FOLLOWER_QUEUE: usize = 1024;

/// Messages asked of the server in one pull for a follower.
const FOLLOWER_PULL: usize = 256;

/// How long one pull of a follower waits for new messages.
const FOLLOWER_PULL_WAIT: Duration = Duration::from_secs(5);

/// Pause before a follower pulls again after a pull that returned nothing at once.
const FOLLOWER_RETRY: Duration = Duration::from_millis(100);

/// Firehose followers served now.
#[derive(Debug, Default)]
pub(crate) struct Followers {
    /// In all.
    pub(crate) total: usize,
    /// Per peer.
    per_peer: HashMap<std::net::IpAddr, usize>,
    /// Dropped so far for reading too slowly.
    pub(crate) dropped: u64,
}

/// One follower's place among [`Followers`], given back when dropped.
struct FollowerSlot {
    gw: Gateway,
    peer: Option<std::net::IpAddr>,
}

impl FollowerSlot {
    fn take(gw: &Gateway, peer: Option<std::net::IpAddr>) -> Result<Self, Status> {
        let c = &gw.inner.config;
        let mut f = gw.inner.followers.lock().unwrap_or_else(|e| e.into_inner());
        if f.total >= c.max_followers {
            return Err(Error::TooManyFollowers {
                max: c.max_followers,
                per_peer: None,
            }
            .into());
        }
        if let Some(p) = peer {
            let n = f.per_peer.entry(p).or_default();
            if *n >= c.max_followers_per_peer {
                return Err(Error::TooManyFollowers {
                    max: c.max_followers_per_peer,
                    per_peer: Some(p),
                }
                .into());
            }
            *n += 1;
        }
        f.total += 1;
        Ok(Self {
            gw: gw.clone(),
            peer,
        })
    }
}

impl Drop for FollowerSlot {
    fn drop(&mut self) {
        let mut f = self
            .gw
            .inner
            .followers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        f.total = f.total.saturating_sub(1);
        if let Some(p) = self.peer
            && let Some(n) = f.per_peer.get_mut(&p)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                f.per_peer.remove(&p);
            }
        }
    }
}

/// A firehose message and the room it takes in its follower's buffer.
type Queued = (FirehoseMessage, tokio::sync::OwnedSemaphorePermit);

/// What a follower reads: its queue, and the error that ends it first.
fn follower_stream(
    rx: mpsc::Receiver<Queued>,
    failed: mpsc::Receiver<Status>,
) -> BoxStream<FirehoseMessage> {
    Box::pin(futures::stream::unfold(
        (rx, failed, false),
        |(mut rx, mut failed, done)| async move {
            if done {
                return None;
            }
            tokio::select! {
                biased;
                Some(status) = failed.recv() => Some((Err(status), (rx, failed, true))),
                item = rx.recv() => match item {
                    // Its room is given back once tonic took it.
                    Some((m, _room)) => Some((Ok(m), (rx, failed, false))),
                    None => failed.try_recv().ok().map(|st| (Err(st), (rx, failed, true))),
                },
            }
        },
    ))
}

/// Pulls the firehose for one follower, each pull only once its buffer has room, until
/// it has what it asked for (without `follow`: up to `last`). A follower whose buffer stays
/// full for `slow` is dropped (RESOURCE_EXHAUSTED).
#[allow(clippy::too_many_arguments)]
async fn feed(
    consumer: &async_nats::jetstream::consumer::Consumer<pull::Config>,
    tx: &mpsc::Sender<Queued>,
    buffer: &Arc<tokio::sync::Semaphore>,
    room: usize,
    slow: Duration,
    max_payload: usize,
    follow: bool,
    last: u64,
    partition: u32,
) -> Result<(), Status> {
    let too_slow = || {
        Status::from(Error::TooSlow {
            room,
            ms: slow.as_millis(),
        })
    };
    // A pull asks for at most the room the buffer has, so that what a follower holds is
    // its buffer and one pull; a message larger than that room is asked for alone.
    let mut whole = false;
    loop {
        // Pull only with room for at least one more message.
        let first = tokio::time::timeout(slow, buffer.clone().acquire_owned())
            .await
            .map_err(|_| too_slow())?
            .map_err(|_| Status::from(Error::ClientGone))?;
        drop(first);
        let (messages, bytes) = if whole {
            (1, max_payload)
        } else {
            (FOLLOWER_PULL, buffer.available_permits().clamp(1, room))
        };
        let asked = tokio::time::Instant::now();
        let mut got = 0usize;
        let mut batch = consumer
            .batch()
            .max_messages(messages)
            .max_bytes(bytes)
            .expires(FOLLOWER_PULL_WAIT)
            .messages()
            .await
            .map_err(|e| Status::from(bus(e)))?;
        let mut too_small = false;
        while let Some(m) = batch.next().await {
            let m = match m {
                Ok(m) => m,
                // The server refuses a pull whose byte limit the next message exceeds
                // (409 Message Size Exceeds MaxBytes): ask for it alone.
                Err(e) if e.to_string().contains("MaxBytes") => {
                    too_small = true;
                    break;
                }
                // Anything else (the consumer is gone, the bus is away) ends the stream: the
                // follower follows again from its next sequence.
                Err(e) => return Err(Error::FollowFailed(e.to_string()).into()),
            };
            got += 1;
            let Ok(info) = m.info() else { continue };
            let seq = info.stream_sequence;
            let Ok(envelope) = Envelope::decode(m.payload.as_ref()) else {
                continue;
            };
            let message_id = header(&m, wire::MESSAGE_ID_HEADER)
                .and_then(|h| hex::decode(h).ok())
                .unwrap_or_default();
            let item = FirehoseMessage {
                sequence: seq,
                envelope: Some(envelope),
                message_id,
                partition,
            };
            let held = u32::try_from(m.payload.len().clamp(1, room)).unwrap_or(u32::MAX);
            let permit = tokio::time::timeout(slow, buffer.clone().acquire_many_owned(held))
                .await
                .map_err(|_| too_slow())?
                .map_err(|_| Status::from(Error::ClientGone))?;
            let queued = tokio::time::timeout(slow, tx.send((item, permit)))
                .await
                .map_err(|_| too_slow())?;
            if queued.is_err() || (!follow && seq >= last) {
                return Ok(());
            }
        }
        // Nothing came, and sooner than the pull's wait: the next message is larger than
        // the room asked for. Ask for it alone (once; a pull that returns nothing again
        // waits a moment before the next).
        let quick = got == 0 && asked.elapsed() < FOLLOWER_PULL_WAIT / 2;
        if quick && whole {
            tokio::time::sleep(FOLLOWER_RETRY).await;
        }
        whole = !whole && (too_small || quick);
    }
}

/// Why an inbox message is not handed out.
enum Undeliverable {
    /// It can never be: dropped for good (Term) and counted.
    Never(&'static str),
    /// Not now (the bus is away, the replica has not learned the sender yet): handed back
    /// (Nak) in order, to come again.
    NotYet(&'static str),
}

/// Checks one inbox message against the firehose and the directory replica.
async fn verified_delivery(
    gw: &Gateway,
    firehose: &[async_nats::jetstream::stream::Stream],
    m: &Message,
    address: &Address,
    (partition, firehose_sequence): (u32, u64),
) -> Result<Envelope, Undeliverable> {
    use Undeliverable::{Never, NotYet};
    let firehose = firehose
        .get(partition as usize)
        .ok_or(Never("names a firehose partition that does not exist"))?;
    let on_firehose = match firehose.get_raw_message(firehose_sequence).await {
        Ok(m) => m,
        Err(e) => {
            use async_nats::jetstream::stream::RawMessageErrorKind as K;
            return Err(match e.kind() {
                K::NoMessageFound | K::InvalidSubject => Never("not on the firehose"),
                _ => NotYet("the firehose cannot be read right now"),
            });
        }
    };
    // An inbox entry points at its firehose message (sequence and id); one written by an
    // older gateway carries a copy, which must be that message.
    let bytes: &[u8] = if m.payload.is_empty() {
        let named = header(m, wire::MESSAGE_ID_HEADER).unwrap_or_default();
        if named != hex::encode(blockpost_core::message_id_of_encoded(&on_firehose.payload)) {
            return Err(Never(
                "names another message than the firehose holds at its sequence",
            ));
        }
        on_firehose.payload.as_ref()
    } else if on_firehose.payload.as_ref() != m.payload.as_ref() {
        return Err(Never("differs from the firehose message at its sequence"));
    } else {
        m.payload.as_ref()
    };
    let envelope = Envelope::decode(bytes).map_err(|_| Never("not an envelope"))?;
    let parsed = blockpost_core::ParsedEnvelope::parse(envelope.clone(), &gw.inner.limits)
        .map_err(|_| Never("breaks the envelope rules"))?;
    if !parsed.recipients().contains(address) {
        return Err(Never("not addressed to this inbox"));
    }
    if gw.inner.firehose.partition_of(parsed.sender()) != partition {
        return Err(Never("on another firehose partition than its sender's"));
    }
    // The replica may be a moment behind the directory (after a restart, say).
    let sender = gw
        .replica()
        .participant(
            parsed.sender().as_str(),
            Some(parsed.content().sender_key_index),
            Duration::from_millis(500),
        )
        .await
        .ok()
        .flatten()
        .ok_or(NotYet("the replica does not know the sender yet"))?;
    let key = sender
        .key_at(parsed.content().sender_key_index)
        .ok_or(NotYet(
            "the replica does not know that key of the sender yet",
        ))?;
    parsed
        .verify(&key)
        .map_err(|_| Never("not signed by its sender"))?;
    Ok(envelope)
}

fn header(m: &async_nats::Message, name: &str) -> Option<String> {
    m.headers.as_ref()?.get(name).map(|v| v.as_str().to_owned())
}

async fn serve_inbox(
    gw: Gateway,
    mut incoming: Streaming<InboxClientMessage>,
    tx: mpsc::Sender<Result<InboxServerMessage, Status>>,
) -> Result<()> {
    let challenge: [u8; 32] = rand::random();
    let closed = |_| Error::ClientGone;
    tx.send(Ok(InboxServerMessage {
        msg: Some(ServerMsg::Challenge(challenge.to_vec())),
    }))
    .await
    .map_err(closed)?;
    let hello = match tokio::time::timeout(Duration::from_secs(30), incoming.message()).await {
        Ok(Ok(Some(InboxClientMessage {
            msg: Some(ClientMsg::Hello(h)),
        }))) => h,
        Ok(Ok(_)) => {
            return Err(Error::InboxDenied(InboxDenial::NoHello));
        }
        Ok(Err(s)) => return Err(Error::Stream(Box::new(s))),
        Err(_) => return Err(Error::InboxDenied(InboxDenial::HelloTimeout(30))),
    };
    let address = Address::parse(&hello.address)?;
    let p = gw
        .replica()
        .participant(address.as_str(), None, Duration::from_millis(500))
        .await
        .map_err(|_| BusError::ReplicaBusy {
            waiters: blockpost_replica::MAX_WAITERS,
            mib: blockpost_replica::MAX_WAITING_BYTES >> 20,
        })?
        .ok_or_else(|| Error::InboxDenied(InboxDenial::Unregistered(address.to_string())))?;
    if p.revoked() {
        return Err(Error::InboxDenied(InboxDenial::Revoked(
            address.to_string(),
        )));
    }
    let sig = ed25519_dalek::Signature::from_slice(&hello.signature)
        .map_err(|_| Error::InboxDenied(InboxDenial::MalformedSignature))?;
    p.signing_key
        .verify_strict(&inbox_message(&challenge, address.as_str()), &sig)
        .map_err(|_| Error::InboxDenied(InboxDenial::WrongKey(address.to_string())))?;

    // One session per inbox on this gateway: wait briefly for a previous one to finish.
    let slot = gw
        .inner
        .sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(address.to_string())
        .or_default()
        .clone();
    let _session = tokio::time::timeout(Duration::from_secs(5), slot.lock_owned())
        .await
        .map_err(|_| Error::InboxBusy(address.to_string()))?;
    let stream = gw
        .inner
        .js
        .get_stream(gw.inner.ns.inbox_stream())
        .await
        .map_err(bus)?;
    let mut firehose = Vec::new();
    for k in gw.inner.firehose.all() {
        firehose.push(
            gw.inner
                .js
                .get_stream(gw.inner.firehose.stream(k))
                .await
                .map_err(bus)?,
        );
    }
    let consumer = stream
        .get_or_create_consumer(
            &format!("inbox-{address}"),
            pull::Config {
                durable_name: Some(format!("inbox-{address}")),
                filter_subject: gw.inner.ns.inbox_subject(&address),
                ack_policy: AckPolicy::Explicit,
                ack_wait: Duration::from_secs(10),
                ..Default::default()
            },
        )
        .await
        .map_err(bus)?;

    // Delivered but not yet acknowledged by the client.
    let pending: Arc<Mutex<HashMap<u64, Message>>> = Arc::default();
    let (done_tx, mut done) = tokio::sync::watch::channel(false);
    let acker = {
        let pending = pending.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = incoming.message().await {
                if let Some(ClientMsg::Ack(seq)) = m.msg {
                    let msg = pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&seq);
                    if let Some(msg) = msg {
                        let _ = msg.double_ack().await;
                    }
                }
            }
            let _ = done_tx.send(true);
        })
    };
    loop {
        // The client is gone when it closes its side or drops our responses.
        if *done.borrow() || tx.is_closed() {
            break;
        }
        let in_flight = pending.lock().unwrap_or_else(|e| e.into_inner()).len();
        if in_flight >= 512 {
            let _ = tokio::time::timeout(Duration::from_millis(50), done.changed()).await;
            continue;
        }
        let expires = if hello.follow {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(250)
        };
        let fetch = consumer
            .fetch()
            .max_messages(128)
            .expires(expires)
            .messages();
        let mut batch = tokio::select! {
            b = fetch => b.map_err(bus)?,
            _ = tx.closed() => break,
        };
        let mut got = 0;
        let mut gone = false;
        let mut held_back = false;
        while let Some(m) = batch.next().await {
            let Ok(m) = m else { break };
            if gone || tx.is_closed() {
                // The client went away mid-batch: the rest is handed back with what it did
                // not acknowledge, in sequence order, rather than after the ack wait.
                gone = true;
                if let Ok(info) = m.info() {
                    let seq = info.stream_sequence;
                    pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(seq, m);
                }
                continue;
            }
            let Ok(info) = m.info() else { continue };
            let seq = info.stream_sequence;
            let firehose_sequence = header(&m, wire::FIREHOSE_SEQ_HEADER)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let firehose_partition: u32 = header(&m, wire::FIREHOSE_PARTITION_HEADER)
                .map_or(Some(0), |s| s.parse().ok())
                .unwrap_or(u32::MAX);
            // Nothing read from NATS is handed out unverified: the delivery must be an
            // envelope for this address, on the firehose at the sequence it names, signed by
            // its sender's key. Anything else is dropped for good and counted.
            let envelope = match verified_delivery(
                &gw,
                &firehose,
                &m,
                &address,
                (firehose_partition, firehose_sequence),
            )
            .await
            {
                Ok(e) => e,
                Err(Undeliverable::Never(why)) => {
                    gw.inner
                        .refused_deliveries
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(%address, seq, why, "inbox message refused");
                    let _ = m.ack_with(AckKind::Term).await;
                    continue;
                }
                Err(Undeliverable::NotYet(why)) => {
                    // Keep the order: this one and the rest of the batch go back.
                    tracing::info!(%address, seq, why, "inbox message held back");
                    let mut back = vec![m];
                    while let Some(Ok(rest)) = batch.next().await {
                        back.push(rest);
                    }
                    for m in back {
                        let _ = m.ack_with(AckKind::Nak(None)).await;
                    }
                    held_back = true;
                    break;
                }
            };
            pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(seq, m);
            let d = InboxDelivery {
                sequence: seq,
                envelope: Some(envelope),
                firehose_sequence,
                firehose_partition,
            };
            if tx
                .send(Ok(InboxServerMessage {
                    msg: Some(ServerMsg::Delivery(d)),
                }))
                .await
                .is_err()
            {
                gone = true;
                continue;
            }
            got += 1;
        }
        if gone {
            break;
        }
        if held_back {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        if got == 0 && !hello.follow {
            // Everything was delivered: wait for the client's acknowledgements, then end.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while !pending.lock().unwrap_or_else(|e| e.into_inner()).is_empty() && !*done.borrow() {
                tokio::select! {
                    _ = done.changed() => {}
                    _ = tx.closed() => break,
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
            break;
        }
    }
    acker.abort();
    // Whatever the client did not acknowledge comes again on its next read.
    // In sequence order, so that they come again in order.
    let mut left: Vec<(u64, Message)> = pending
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain()
        .collect();
    left.sort_by_key(|(seq, _)| *seq);
    let left = left.into_iter().map(|(_, m)| m);
    for m in left {
        let _ = m.ack_with(AckKind::Nak(None)).await;
    }
    Ok(())
}
