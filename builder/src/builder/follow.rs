//! Following the firehose: one pull consumer per partition, merged; each group of
//! messages checked (envelope rules, sender key, signatures in one batch); the batching
//! rules ([`crate::batch::Batcher`]) say when to cut, and the [`Cutter`] cuts one block at a
//! time while the next one fills.

use super::*;

/// Most firehose messages checked together (batch signature verification, split over the
/// cores).
pub(super) const CHECK_BATCH: usize = 1024;

/// Messages asked of the server in one pull.
pub(super) const PULL_BATCH: usize = 2048;

/// Longest wait for the replica to learn of the sender key an envelope names, when it
/// has not reached that entry yet.
pub(super) const MAX_REPLICA_WAIT: Duration = Duration::from_secs(10);

/// Checks messages: each must be a canonical envelope that keeps the rules, from a sender
/// the replica knows, signed with the key at the index it names (checked in one batch).
/// `Err(why)` for a message that never can be in a block. Waits, in order, while the
/// replica does not know a sender yet (the gateway accepted the message, so it will);
/// `None` if the builder was dropped meanwhile.
pub(super) async fn check_all(
    inner: &Arc<Inner>,
    group: &[(u32, u64, jetstream::Message)],
) -> Option<Vec<std::result::Result<TxMessage, String>>> {
    let mut verdicts: Vec<std::result::Result<TxMessage, String>> = Vec::with_capacity(group.len());
    // Senders repeat within a group: ask the replica once per (sender, key index).
    let mut keys: std::collections::HashMap<(String, u64), ed25519_dalek::VerifyingKey> =
        std::collections::HashMap::new();
    let mut batch = Vec::new();
    let mut slots = Vec::new();
    for (i, (partition, _, m)) in group.iter().enumerate() {
        // Canonical: the payload is the encoded envelope, whose hash is the message id.
        let parsed = decode_canonical::<Envelope>(&m.payload, "envelope").and_then(|env| {
            let id = blockpost_core::message_id_of_encoded(&m.payload);
            ParsedEnvelope::parse(env, &inner.limits).map(|p| (id, p))
        });
        let (id, parsed) = match parsed {
            Ok(p) => p,
            Err(e) => {
                verdicts.push(Err(e.to_string()));
                continue;
            }
        };
        // A sender's envelopes are in its partition only: there, and only there, the
        // firehose de-duplicates its nonces.
        let own = inner.firehose.partition_of(parsed.sender());
        if own != *partition {
            verdicts.push(Err(format!(
                "on firehose partition {partition}, but sender {} is on partition {own}",
                parsed.sender()
            )));
            continue;
        }
        let index = parsed.content().sender_key_index;
        let cached = keys.get(&(parsed.sender().to_string(), index)).copied();
        let key = match cached {
            Some(k) => Some(k),
            None => {
                from_replica(inner, parsed.sender().as_str(), Some(index), |p| {
                    p.key_at(index)
                })
                .await?
            }
        };
        let Some(key) = key else {
            verdicts.push(Err(format!(
                "the directory has no key {index} for sender {}",
                parsed.sender()
            )));
            continue;
        };
        keys.insert((parsed.sender().to_string(), index), key);
        // A plaintext trade or instruction: its parties are the envelope's, as the gateway
        // checked (one that reached the firehose otherwise is refused here too).
        if parsed.settlement().is_some() {
            match settlement_parties(inner, &parsed).await {
                Some(Ok(())) => {}
                Some(Err(why)) => {
                    verdicts.push(Err(why));
                    continue;
                }
                None => return None,
            }
        }
        verdicts.push(Ok(TxMessage::new(id, parsed.content())));
        // Checked by the node's gateway (its tag verifies): the signature need not be
        // checked again.
        let tagged = inner.mac.as_ref().is_some_and(|mac| {
            m.headers
                .as_ref()
                .and_then(|h| h.get(wire::GATEWAY_MAC_HEADER))
                .is_some_and(|t| mac.check(&m.payload, t.as_str()))
        });
        if !tagged {
            slots.push(i);
            batch.push((parsed, key));
        }
    }
    inner
        .signatures_checked
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    // Split over the cores (core's one parallel batch check), off the async workers.
    let results = tokio::task::spawn_blocking(move || blockpost_core::verify_batch_parallel(batch))
        .await
        .ok()?;
    for (slot, r) in slots.into_iter().zip(results) {
        if let Err(e) = r {
            verdicts[slot] = Err(e.to_string());
        }
    }
    Some(verdicts)
}

/// What `pick` takes from the replica's participant `address` (at entry `index`, if one is
/// named), asked again while the replica may not have reached it: for at most
/// [`MAX_REPLICA_WAIT`], and with an index only until the replica applied it (a gateway
/// accepted the message, so its entries come). Waiting for the directory is not a stall.
/// `None` if the builder was dropped meanwhile; `Some(None)` if it never came.
async fn from_replica<T>(
    inner: &Arc<Inner>,
    address: &str,
    index: Option<u64>,
    pick: impl Fn(blockpost_core::Participant) -> Option<T>,
) -> Option<Option<T>> {
    let since = tokio::time::Instant::now();
    loop {
        let known = inner
            .replica
            .participant(address, index, Duration::from_millis(500))
            .await
            .ok()
            .flatten()
            .and_then(&pick);
        if known.is_some()
            || index.is_some_and(|i| i < inner.replica.applied())
            || since.elapsed() > MAX_REPLICA_WAIT
        {
            return Some(known);
        }
        if Arc::strong_count(inner) == 1 {
            return None;
        }
        inner
            .progress_ms
            .store(inner.clock.now_ms(), Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The parties of a plaintext trade or instruction against the bindings the replica holds
/// of its sender and recipients (waiting, as for a sender's key, while the replica may not
/// have reached them yet); `None` if the builder was dropped meanwhile.
async fn settlement_parties(
    inner: &Arc<Inner>,
    parsed: &ParsedEnvelope,
) -> Option<std::result::Result<(), String>> {
    let (Some(s), Some((_, kind))) = (
        parsed.settlement(),
        blockpost_core::settle_expect(parsed.kind()),
    ) else {
        return Some(Ok(()));
    };
    let mut found = Vec::with_capacity(parsed.recipients().len() + 1);
    for a in std::iter::once(parsed.sender()).chain(parsed.recipients()) {
        match from_replica(inner, a.as_str(), None, Some).await? {
            Some(p) => found.push(p),
            None => return Some(Err(format!("the directory has no entry for {a}"))),
        }
    }
    Some(
        blockpost_core::settle::check_bindings(
            s,
            &found[0].binding,
            found[1..].iter().map(|p| &p.binding),
        )
        .map_err(|e| format!("the {kind}'s parties: {e}")),
    )
}

/// The block being cut, stored and published while the next one fills: at most one at a
/// time, in order.
pub(super) struct Cutter {
    flight: Option<tokio::task::JoinHandle<Result<()>>>,
    /// What one block may hold.
    budget: BlockBudget,
}

impl Cutter {
    /// Waits for the block in flight.
    async fn finish(&mut self) -> Result<()> {
        match self.flight.take() {
            Some(f) => f
                .await
                .map_err(|e| Error::Corrupted(format!("cutting a block: {e}")))?,
            None => Ok(()),
        }
    }

    /// Messages up to `disposed` (per partition) go in no block and nothing is pending:
    /// the builder is done with them once the block in flight before them is stored.
    async fn disposed(&mut self, inner: &Inner, disposed: &[u64]) -> Result<()> {
        self.finish().await?;
        inner.handled(disposed);
        Ok(())
    }

    /// Waits for the block in flight, then starts cutting `cut`.
    async fn start(
        &mut self,
        inner: &Arc<Inner>,
        js: &jetstream::Context,
        ns: &Namespace,
        cut: crate::batch::Cut<Pending>,
    ) -> Result<()> {
        self.finish().await?;
        let (inner, js, ns, budget) = (inner.clone(), js.clone(), ns.clone(), self.budget);
        self.flight = Some(tokio::spawn(async move {
            self::cut(&inner, &js, &ns, cut.messages, budget, cut.disposed).await
        }));
        Ok(())
    }
}

/// Follows the firehose. It holds the builder only while it works on a message or a
/// block, so that a dropped builder closes its store at once (its lock too).
pub(super) async fn follow(
    weak: &std::sync::Weak<Inner>,
    js: &jetstream::Context,
    ns: &Namespace,
    lost: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    let Some(config) = weak.upgrade().map(|i| i.config.clone()) else {
        return Ok(());
    };
    let mut cutter = Cutter {
        flight: None,
        budget: budget(&config),
    };
    let r = follow_with(weak, js, ns, &mut cutter, lost).await;
    // Never start over (catch_up) while a block is being cut.
    let last = cutter.finish().await;
    r.and(last)
}

/// The messages of one firehose partition's consumer, each with the partition.
pub(super) type Tagged = std::pin::Pin<
    Box<dyn futures::Stream<Item = (u32, std::result::Result<jetstream::Message, String>)> + Send>,
>;

/// Whether deleting a consumer failed because there is none.
pub(super) fn consumer_not_found(e: &async_nats::jetstream::stream::ConsumerError) -> bool {
    use async_nats::jetstream::ErrorCode;
    use async_nats::jetstream::stream::ConsumerErrorKind;
    matches!(e.kind(), ConsumerErrorKind::JetStream(j) if j.error_code() == ErrorCode::CONSUMER_NOT_FOUND)
}

/// A fresh consumer of partition `k` of the firehose right after the last block: the
/// store, not the consumer, says where the builder stands, so that messages a previous
/// run had been handed (and never acknowledged, say before a kill -9) come again at once,
/// not after the ack wait.
pub(super) async fn partition_consumer(
    js: &jetstream::Context,
    firehose: &wire::Firehose,
    k: u32,
    holder: &str,
    start: u64,
    config: &BuilderConfig,
) -> Result<Tagged> {
    let bus = |e: &dyn std::fmt::Display| Error::Bus(format!("firehose partition {k}: {e}"));
    let stream = js
        .get_stream(firehose.stream(k))
        .await
        .map_err(|e| bus(&e))?;
    let name = consumer_name(holder);
    match stream.delete_consumer(&name).await {
        Ok(_) => {}
        Err(e) if consumer_not_found(&e) => {}
        Err(e) => return Err(bus(&e)),
    }
    let consumer = stream
        .get_or_create_consumer(
            &name,
            consumer::pull::Config {
                durable_name: Some(name.clone()),
                inactive_threshold: CONSUMER_LINGERS,
                filter_subject: firehose.subject(k),
                // One acknowledgement per cut and partition, of its last message in a
                // block: it covers every message before it (in these blocks or earlier
                // ones, or refused).
                ack_policy: consumer::AckPolicy::All,
                ack_wait: Duration::from_secs(60),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                max_ack_pending: (config.max_block_messages as i64).saturating_mul(4),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| bus(&e))?;
    // Short pulls with heartbeats: a consumer whose leader died (a server killed, its
    // election) is noticed in about two seconds, not after the default 30 s pull.
    let messages = consumer
        .stream()
        .max_messages_per_batch(PULL_BATCH)
        .expires(Duration::from_secs(5))
        .heartbeat(Duration::from_secs(1))
        .messages()
        .await
        .map_err(|e| bus(&e))?;
    Ok(Box::pin(messages.map(move |m| {
        (k, m.map_err(|e| format!("firehose partition {k}: {e}")))
    })))
}

pub(super) async fn follow_with(
    weak: &std::sync::Weak<Inner>,
    js: &jetstream::Context,
    ns: &Namespace,
    cutter: &mut Cutter,
    mut lost: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    let bus = |e: &dyn std::fmt::Display| Error::Bus(e.to_string());
    let Some(inner) = weak.upgrade() else {
        return Ok(());
    };
    // After an error the book may be ahead of the ledger, or a stored block not indexed.
    let i2 = inner.clone();
    tokio::task::spawn_blocking(move || catch_up(&i2))
        .await
        .map_err(|e| Error::Corrupted(format!("indexing the store: {e}")))??;
    // Blocks another builder published (or this one, before it died storing them).
    sync_from_stream(&inner, js, ns).await?;
    republish(&inner, js, ns).await?;
    let config = inner.config.clone();
    let holder = inner.holder.clone();
    let firehose = inner.firehose.clone();
    // Where this follow starts: right after the last message in a block, per partition.
    let in_blocks = inner.last_seqs();
    drop(inner);
    let mut partitions = Vec::with_capacity(in_blocks.len());
    for k in firehose.all() {
        let start = in_blocks[k as usize] + 1;
        partitions.push(partition_consumer(js, &firehose, k, &holder, start, &config).await?);
    }
    // Every partition at once, each in its order; a block takes from each a range.
    let mut messages = futures::stream::select_all(partitions);
    // When to cut ([`Batcher`]); the cut itself splits what it is given into blocks
    // within the budget. Its time: milliseconds of the runtime's monotonic clock.
    let mut batcher = Batcher::new(
        Limits {
            max_messages: config.max_block_messages,
            max_bytes: config.max_block_bytes,
            delay_ms: config.max_block_delay_ms,
        },
        in_blocks,
    );
    let origin = tokio::time::Instant::now();
    let now = move || u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let deadline = batcher
            .deadline()
            .map(|d| origin + Duration::from_millis(d));
        let next = tokio::select! {
            m = messages.next() => m,
            _ = lost.changed() => {
                return Err(Error::Fenced("the lease was lost".into()));
            }
            _ = tick.tick() => {
                let Some(inner) = weak.upgrade() else {
                    return Ok(()); // the builder was dropped
                };
                // A transaction due to time out gets its block now, messages or not.
                if let Some(cut) = batcher.tick(now(), inner.due(inner.clock.now_ms())) {
                    cutter.start(&inner, js, ns, cut).await?;
                }
                continue;
            }
            _ = sleep_until(deadline) => {
                let Some(inner) = weak.upgrade() else {
                    return Ok(());
                };
                if let Some(cut) = batcher.tick(now(), false) {
                    cutter.start(&inner, js, ns, cut).await?;
                }
                continue;
            }
        };
        let first = match next {
            Some((k, Ok(m))) => (k, m),
            Some((_, Err(e))) => return Err(Error::Bus(e)),
            None => return Err(Error::Bus("the firehose consumers ended".into())),
        };
        // Take what else has arrived, to check signatures in batches.
        let mut group = vec![first];
        while group.len() < CHECK_BATCH {
            match futures::FutureExt::now_or_never(messages.next()) {
                Some(Some((k, Ok(m)))) => group.push((k, m)),
                Some(Some((_, Err(e)))) => return Err(Error::Bus(e)),
                _ => break,
            }
        }
        let Some(inner) = weak.upgrade() else {
            return Ok(());
        };
        let inner = &inner;
        let in_blocks = inner.last_seqs();
        let mut fresh = Vec::with_capacity(group.len());
        for (k, m) in group {
            let seq = m.info().map_err(|e| bus(&e))?.stream_sequence;
            match batcher.offer(k, seq, &in_blocks) {
                Seen::Fresh => fresh.push((k, seq, m)),
                Seen::Again { in_block: true } => {
                    let _ = m.ack().await;
                }
                Seen::Again { in_block: false } => {}
            }
        }
        let tc = std::time::Instant::now();
        let Some(verdicts) = check_all(inner, &fresh).await else {
            return Ok(()); // the builder was dropped while waiting for the replica
        };
        tracing::trace!(
            n = verdicts.len(),
            ms = tc.elapsed().as_secs_f64() * 1e3,
            "checked"
        );
        for ((k, seq, m), verdict) in fresh.into_iter().zip(verdicts) {
            let tx = match verdict {
                Ok(tx) if !inner.misbehaves_on(&tx.transaction_id) => tx,
                refused => {
                    if let Err(why) = refused {
                        inner.refused.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            partition = k,
                            seq,
                            why,
                            "firehose message refused by the builder"
                        );
                    }
                    let _ = m.ack_with(AckKind::Term).await;
                    if let Some(disposed) = batcher.refuse(k, seq) {
                        cutter.disposed(inner, &disposed).await?;
                    }
                    continue;
                }
            };
            let payload = m.payload.to_vec();
            let len = payload.len();
            let p = Pending {
                partition: k,
                seq,
                payload,
                tx,
                message: m,
            };
            for cut in batcher.push(now(), k, seq, len, p) {
                cutter.start(inner, js, ns, cut).await?;
            }
        }
    }
}

pub(super) async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
