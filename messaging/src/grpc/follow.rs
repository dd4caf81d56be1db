//! Firehose followers: bounded in number (in all and per peer), each with a byte buffer;
//! a follower that reads too slowly is dropped with `TOO_SLOW`, and follows again from its
//! next sequence.

use super::*;

/// Firehose messages queued for one follower, at most (bytes are bounded too).
pub(super) const FOLLOWER_QUEUE: usize = 1024;

/// Messages asked of the server in one pull for a follower.
pub(super) const FOLLOWER_PULL: usize = 256;

/// How long one pull of a follower waits for new messages.
pub(super) const FOLLOWER_PULL_WAIT: Duration = Duration::from_secs(5);

/// Pause before a follower pulls again after a pull that returned nothing at once.
pub(super) const FOLLOWER_RETRY: Duration = Duration::from_millis(100);

/// One follower's place among [`Followers`], given back when dropped.
pub(super) struct FollowerSlot {
    gw: Gateway,
    peer: Option<std::net::IpAddr>,
}

impl FollowerSlot {
    pub(super) fn take(gw: &Gateway, peer: Option<std::net::IpAddr>) -> Result<Self, Status> {
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
pub(super) type Queued = (FirehoseMessage, tokio::sync::OwnedSemaphorePermit);

/// What a follower reads: its queue, and the error that ends it first.
pub(super) fn follower_stream(
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
pub(super) async fn feed(
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
