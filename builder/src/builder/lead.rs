//! The lease loop: a standby follows the blocks stream, the holder of the builder lease
//! cuts blocks; blocks another builder published are taken from the stream, and stored
//! blocks the stream lacks are published again. The builder's health is watched here.

use super::*;

/// Stands by or cuts blocks until the builder is dropped, starting over after errors: it
/// follows the blocks stream into its store until it holds the lease, then follows the
/// firehose and cuts blocks until it loses the lease (or another builder's block fences
/// it off), then stands by again.
pub(super) async fn run(inner: std::sync::Weak<Inner>, js: jetstream::Context, ns: Namespace) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if inner.strong_count() == 0 {
            return;
        }
        match lead(&inner, &js, &ns).await {
            Ok(()) => return,
            Err(Error::Fenced(why)) => {
                tracing::warn!(why, "builder: another builder cuts blocks; standing by");
                backoff = Duration::from_millis(100);
            }
            Err(e) => {
                tracing::warn!(error = %e, "builder: following the firehose again");
                if let Some(i) = inner.upgrade() {
                    *i.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// How often a standby looks at the blocks stream and the lease.
pub(super) const STANDBY_POLL: Duration = Duration::from_millis(250);

/// One turn: stand by until the lease is ours, then cut blocks until it is lost.
pub(super) async fn lead(
    weak: &std::sync::Weak<Inner>,
    js: &jetstream::Context,
    ns: &Namespace,
) -> Result<()> {
    let Some((config, holder)) = weak.upgrade().map(|i| (i.config.clone(), i.holder.clone()))
    else {
        return Ok(());
    };
    let lease = Duration::from_millis(config.lease_ms);
    let kv = crate::lease::bucket(js, ns, config.replicas, lease).await?;
    let mut told = None;
    let revision = loop {
        let Some(inner) = weak.upgrade() else {
            return Ok(());
        };
        sync_from_stream(&inner, js, ns).await?;
        if inner.ignore_lease.load(Ordering::SeqCst) {
            break None;
        }
        match crate::lease::take(&kv, &holder).await? {
            crate::lease::Taken::Ours(rev) => break Some(rev),
            crate::lease::Taken::Held(other) => {
                inner.active.store(false, Ordering::SeqCst);
                if told.as_ref() != Some(&other) {
                    tracing::info!(
                        active = other,
                        blocks = inner.store.len(),
                        "block builder standing by: another builder holds the lease"
                    );
                    told = Some(other);
                }
            }
        }
        drop(inner);
        tokio::time::sleep(STANDBY_POLL).await;
    };
    let (lost_tx, lost) = tokio::sync::watch::channel(false);
    let keeper = match revision {
        Some(revision) => tokio::spawn(crate::lease::keep(
            kv,
            holder.clone(),
            revision,
            lease,
            lost_tx,
        )),
        // Ignoring the lease (a fault injected): never lost.
        None => tokio::spawn(async move {
            let _keep = lost_tx;
            std::future::pending::<()>().await;
        }),
    };
    if let Some(i) = weak.upgrade() {
        tracing::info!(
            holder,
            blocks = i.store.len(),
            "block builder active: it holds the lease"
        );
        i.active.store(true, Ordering::SeqCst);
    }
    let r = follow(weak, js, ns, lost).await;
    keeper.abort();
    // Fenced off, it stands by. After any other error it is still the one that should
    // cut (it takes its own lease back at once), and a builder that keeps failing is a
    // stalled one, not a standby.
    if matches!(r, Err(Error::Fenced(_)))
        && let Some(i) = weak.upgrade()
    {
        i.active.store(false, Ordering::SeqCst);
    }
    r
}

/// Where a message of the blocks stream belongs: its block's height (from its part
/// header, or its own header), if it is a block or a part of one.
pub(super) fn height_of(headers: Option<&async_nats::HeaderMap>, payload: &[u8]) -> Option<u64> {
    if let Some(p) = headers.and_then(|h| h.get(wire::BLOCK_PART_HEADER)) {
        return wire::parse_block_part(p.as_str()).map(|(h, _, _)| h);
    }
    Block::decode(payload)
        .ok()
        .and_then(|b| b.header)
        .and_then(|h| BlockHeader::decode(h.header.as_slice()).ok())
        .map(|h| h.height)
}

/// The first sequence of the blocks stream at or after `from` whose block is at `height`
/// or later (a binary search: heights only grow along the stream).
pub(super) async fn seek(
    stream: &stream::Stream,
    height: u64,
    from: u64,
    last: u64,
) -> Result<u64> {
    let (mut lo, mut hi) = (from, last + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let h = match stream.get_raw_message(mid).await {
            Ok(m) => height_of(Some(&m.headers), &m.payload),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => None,
            Err(e) => return Err(Error::Bus(format!("blocks stream: {e}"))),
        };
        match h {
            Some(h) if h >= height => hi = mid,
            Some(_) => lo = mid + 1,
            // Deleted or not a block: look from the next one (a linear step).
            None => lo = mid + 1,
        }
    }
    Ok(lo)
}

/// Brings the store up to the blocks stream: every block the stream holds beyond the
/// store is read, fully verified (signature, height, link, root) and stored, then indexed
/// (its transactions replayed by [`catch_up`]). Remembers the stream's last sequence as
/// the fence for the next publish.
pub(super) async fn sync_from_stream(
    inner: &Arc<Inner>,
    js: &jetstream::Context,
    ns: &Namespace,
) -> Result<()> {
    let bus = |e: &dyn std::fmt::Display| Error::Bus(format!("blocks stream: {e}"));
    let mut stream = js
        .get_stream(ns.blocks_stream())
        .await
        .map_err(|e| bus(&e))?;
    let state = stream.info().await.map_err(|e| bus(&e))?.state.clone();
    let (first, last) = (state.first_sequence, state.last_sequence);
    inner.fence.store(last, Ordering::SeqCst);
    if state.messages == 0 {
        return Ok(());
    }
    let local = inner.store.len();
    let mut next = inner.sync_next.load(Ordering::SeqCst);
    if next == 0 || next < first {
        next = seek(&stream, local, first, last).await?;
    }
    let mut parts = wire::BlockParts::default();
    let mut adopted = 0u64;
    let mut prev = inner.tip.lock().unwrap_or_else(|e| e.into_inner()).clone();
    while next <= last {
        let read = crate::blocks::read_block_message(&stream, next, &mut parts)
            .await
            .map_err(|e| bus(&e))?;
        next += 1;
        let Some(bytes) = read else {
            continue;
        };
        let h = inner.store.len();
        let b = Block::decode(bytes.as_slice()).map_err(|e| corrupted(h, e))?;
        let v = verify_block(&b, &inner.key.verifying_key()).map_err(|e| corrupted(h, e))?;
        let at = v.header.header.height;
        if at < h {
            continue; // a block the store has (a republish)
        }
        if at > h {
            return Err(corrupted(
                h,
                format!("the blocks stream skips from height {h} to {at}"),
            ));
        }
        if let Some(p) = &prev {
            v.header.check_follows(p).map_err(|e| corrupted(h, e))?;
        }
        let id = v.header.id;
        let i2 = inner.clone();
        tokio::task::spawn_blocking(move || {
            i2.store.append(bytes, id, |size, root| {
                i2.signer
                    .sign(size, root)
                    .map_err(|e| blockpost_storage::Error::Corrupted(e.to_string()))
            })
        })
        .await
        .map_err(|e| Error::Corrupted(format!("storing a block: {e}")))??;
        prev = Some(v.header);
        adopted += 1;
        // Resume after the last whole block: parts of one being published come again.
        inner.sync_next.store(next, Ordering::SeqCst);
    }
    if !parts.joining() {
        inner.sync_next.store(next, Ordering::SeqCst);
    }
    if adopted > 0 {
        let i2 = inner.clone();
        tokio::task::spawn_blocking(move || catch_up(&i2))
            .await
            .map_err(|e| Error::Corrupted(format!("indexing the store: {e}")))??;
        let len = inner.store.len();
        inner.published.fetch_max(len, Ordering::SeqCst);
        inner.blocks.send_replace(len);
        tracing::debug!(adopted, blocks = len, "blocks read from the blocks stream");
    }
    Ok(())
}

/// Publishes the stored blocks the blocks stream lacks: those cut while NATS was away
/// (a failed publish makes the loop start over, so the stream never has a gap), or all of
/// them into a recreated stream.
pub(super) async fn republish(
    inner: &Arc<Inner>,
    js: &jetstream::Context,
    ns: &Namespace,
) -> Result<()> {
    let len = inner.store.len();
    if len == 0 {
        return Ok(());
    }
    let bus = |e: &dyn std::fmt::Display| Error::Bus(format!("blocks stream: {e}"));
    let stream = js
        .get_stream(ns.blocks_stream())
        .await
        .map_err(|e| bus(&e))?;
    let next = match stream
        .get_last_raw_message_by_subject(&ns.blocks_subject())
        .await
    {
        // The last message is a part: its block is on the stream once its last part is.
        Ok(m) => match m
            .headers
            .get(wire::BLOCK_PART_HEADER)
            .and_then(|v| wire::parse_block_part(v.as_str()))
        {
            Some((height, part, parts)) if part == parts => height + 1,
            Some((height, _, _)) => height,
            None => Block::decode(m.payload.as_ref())
                .ok()
                .and_then(|b| b.header)
                .and_then(|h| BlockHeader::decode(h.header.as_slice()).ok())
                .map_or(0, |h| h.height + 1),
        },
        Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => 0,
        Err(e) => return Err(bus(&e)),
    };
    if next < len {
        tracing::info!(
            from = next,
            to = len,
            "publishing blocks the blocks stream lacks"
        );
    }
    for h in next..len {
        publish_block(js, ns, h, inner.store.block(h)?, &inner.fence).await?;
        inner.published.fetch_max(h + 1, Ordering::SeqCst);
    }
    inner.published.fetch_max(len, Ordering::SeqCst);
    Ok(())
}

/// How often the builder looks at its own progress.
pub(super) const HEALTH_EVERY: Duration = Duration::from_millis(250);

/// Watches the builder's progress until it is dropped: it is stalled when firehose
/// messages wait for a block (or stored blocks for the blocks stream) and it made no
/// progress for `stall_after_ms`. Each change is logged (an error naming the cause when it
/// stalls) and told to [`Builder::subscribe_health`]; the gateway refuses receipts while
/// it is stalled.
pub(super) async fn watch_health(weak: std::sync::Weak<Inner>, js: jetstream::Context) {
    let mut tick = tokio::time::interval(HEALTH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = (Vec::new(), 0, 0);
    let mut busy = false;
    let Some((layout, inner_holder)) = weak
        .upgrade()
        .map(|i| (i.firehose.clone(), i.holder.clone()))
    else {
        return;
    };
    let mut firehose: Vec<Option<stream::Stream>> = layout.all().map(|_| None).collect();
    loop {
        tick.tick().await;
        if weak.strong_count() == 0 {
            return;
        }
        // How far the firehose goes. Unknown while NATS is away: the tick is skipped (the
        // gateway answers for the bus itself), so that a flaky bus neither hides a stall
        // nor ends one.
        let mut ends = Vec::with_capacity(firehose.len());
        for (k, slot) in layout.all().zip(firehose.iter_mut()) {
            if slot.is_none() {
                *slot = js.get_stream(layout.stream(k)).await.ok();
            }
            let Some(f) = slot.as_mut() else { break };
            let Ok((last, first)) = f
                .info()
                .await
                .map(|i| (i.state.last_sequence, i.state.first_sequence))
            else {
                break;
            };
            // Messages deleted from the stream (its head by age or a purge, or its newest
            // by hand) are no work: what the builder's own consumer has left says so,
            // when it is there.
            let left = f
                .consumer_info(consumer_name(&inner_holder))
                .await
                .ok()
                .map(|c| c.num_pending + c.num_ack_pending as u64);
            ends.push((last, first, left));
        }
        if ends.len() != firehose.len() {
            continue;
        }
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let now = inner.clock.now_ms();
        // A standby watches the same: firehose messages no block took, whoever should
        // cut them. Its gateway then stops promising too, until a builder takes over.
        let mut handled = inner
            .handled_seqs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (h, l) in handled.iter_mut().zip(inner.last_seqs()) {
            *h = (*h).max(l);
        }
        let (stored, published) = (inner.store.len(), inner.published.load(Ordering::SeqCst));
        if (&handled, stored, published) != (&seen.0, seen.1, seen.2) {
            seen = (handled.clone(), stored, published);
            inner.progress_ms.store(now, Ordering::SeqCst);
            *inner.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        let waiting: u64 = ends
            .iter()
            .zip(&handled)
            .map(|(&(last, first, left), &handled)| match left {
                Some(0) => 0,
                _ => last.saturating_sub(handled.max(first.saturating_sub(1))),
            })
            .sum();
        let unpublished = stored.saturating_sub(published);
        // Time without progress counts from when work came, not from the last block of
        // an idle builder.
        let work = waiting > 0 || unpublished > 0;
        if work && !busy {
            inner.progress_ms.store(now, Ordering::SeqCst);
        }
        busy = work;
        let since_ms = inner.progress_ms.load(Ordering::SeqCst);
        let idle_ms = now.saturating_sub(since_ms);
        let stalled =
            work && idle_ms >= i64::try_from(inner.config.stall_after_ms).unwrap_or(i64::MAX);
        let health = if stalled {
            let cause = inner
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let reason = match cause {
                Some(e) => format!("no progress for {idle_ms} ms: {e}"),
                None if unpublished > 0 => format!(
                    "no progress for {idle_ms} ms: {unpublished} stored blocks are not known to be on the blocks stream"
                ),
                None => format!(
                    "no progress for {idle_ms} ms: {waiting} firehose messages wait for a block"
                ),
            };
            Health::Stalled { reason, since_ms }
        } else {
            Health::Serving
        };
        let was_stalled = inner.health.borrow().stalled().is_some();
        match (&health, was_stalled) {
            (Health::Stalled { reason, .. }, false) => {
                tracing::error!(reason = %reason, waiting, unpublished, "block builder stalled: the gateway refuses receipts until it recovers");
            }
            (Health::Serving, true) => {
                tracing::info!(blocks = stored, "block builder recovered");
            }
            _ => {}
        }
        // A stalled builder's reason (its idle time) changes every tick: tell only of
        // turns between serving and stalled.
        inner.health.send_if_modified(|h| {
            let turned = h.stalled().is_some() != health.stalled().is_some();
            *h = health;
            turned
        });
    }
}
