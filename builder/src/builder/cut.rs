//! Cutting blocks: the transaction rules close what is due, the messages go in ledger
//! order within the block budget, each block is signed, put on the blocks stream (fenced),
//! stored, indexed, and only then are its messages acknowledged.

use super::*;
use crate::maps::MapDue;
use blockpost_core::blockmap::{TreeLevels, block_map_with};

/// Publishes block `height` on the blocks stream (de-duplicated by height): whole when it
/// fits in one message of this bus, else in parts ([`wire::BLOCK_PART_HEADER`]). Each
/// message expects the stream's last sequence to be `fence` (what this builder last saw or
/// published), which it then advances: if another builder published in between, the
/// stream refuses it and this builder is [`Error::Fenced`].
pub(super) async fn publish_block(
    js: &jetstream::Context,
    ns: &Namespace,
    height: u64,
    encoded: Vec<u8>,
    fence: &AtomicU64,
) -> Result<()> {
    let part_len = wire::block_part_len(js.client().server_info().max_payload);
    let encoded = bytes::Bytes::from(encoded);
    let parts = encoded.len().div_ceil(part_len).max(1);
    if parts > 1 {
        tracing::debug!(
            height,
            bytes = encoded.len(),
            parts,
            "block travels in parts"
        );
    }
    for k in 1..=parts {
        let chunk = encoded.slice((k - 1) * part_len..(k * part_len).min(encoded.len()));
        let mut headers = async_nats::HeaderMap::new();
        if parts == 1 {
            headers.insert(wire::MSG_ID_HEADER, wire::block_msg_id(height).as_str());
        } else {
            headers.insert(
                wire::MSG_ID_HEADER,
                wire::block_part_msg_id(height, k, parts).as_str(),
            );
            headers.insert(
                wire::BLOCK_PART_HEADER,
                wire::block_part(height, k, parts).as_str(),
            );
        }
        let expected = fence.load(Ordering::SeqCst);
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            expected.to_string().as_str(),
        );
        let failed =
            |e: &dyn std::fmt::Display| Error::Bus(format!("publishing block {height}: {e}"));
        // A stream electing a leader answers nothing for a few seconds: try again in place
        // (the same message, the same fence) rather than start the firehose over, which
        // needs the cluster's meta leader too. If an attempt did land, the next is a
        // duplicate, and the builder reads its own block back from the stream.
        let started = std::time::Instant::now();
        let mut backoff = Duration::from_millis(100);
        let ack = loop {
            let sent = match js
                .publish_with_headers(ns.blocks_subject(), headers.clone(), chunk.clone())
                .await
            {
                Ok(f) => f.await,
                Err(e) => Err(e),
            };
            match sent {
                Ok(a) => break a,
                Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                    return Err(Error::Fenced(format!(
                        "block {height}: the blocks stream moved past sequence {expected}"
                    )));
                }
                Err(e) if started.elapsed() < PUBLISH_RETRY_FOR => {
                    tracing::debug!(height, error = %e, "publishing a block: trying again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(failed(&e)),
            }
        };
        if ack.duplicate {
            return Err(Error::Fenced(format!(
                "block {height}: the blocks stream holds it already (sequence {})",
                ack.sequence
            )));
        }
        fence.store(ack.sequence, Ordering::SeqCst);
    }
    Ok(())
}

/// What one block may hold: the configured fill, within the largest block there may be
/// (blocks longer than one message of the bus travel in parts).
pub(super) fn budget(config: &BuilderConfig) -> BlockBudget {
    BlockBudget {
        max_fill_bytes: config.max_block_bytes,
        max_leaves: config.max_block_messages,
        capacity: MAX_BLOCK_LEN,
    }
}

/// What one cut made: the blocks, in order, and the firehose messages (partition,
/// sequence) too large for any block.
pub(super) struct Cut {
    blocks: Vec<u64>,
    too_large: Vec<(u32, u64)>,
}

/// Cuts, stores, indexes and publishes the blocks of `pending` messages and the closing
/// records the transaction rules put with them (a block may hold only closings: a
/// transaction timed out while no message came), each within `budget`, as many as they
/// need; then acknowledges the messages. Messages go in ledger order: by partition, then
/// by sequence, so that every block takes from each partition one range.
pub(super) async fn cut(
    inner: &Arc<Inner>,
    js: &jetstream::Context,
    ns: &Namespace,
    mut pending: Vec<Pending>,
    budget: BlockBudget,
    disposed: Vec<u64>,
) -> Result<()> {
    pending.sort_by_key(|p| (p.partition, p.seq));
    let now = inner.clock.now_ms();
    if pending.is_empty() && !inner.due(now) {
        return Ok(());
    }
    if inner.fail_cuts.load(Ordering::SeqCst) {
        return Err(Error::Corrupted(
            "fault injected: cutting blocks fails".into(),
        ));
    }
    let offered: Vec<((u32, u64), Vec<u8>, TxMessage)> = pending
        .iter()
        .map(|p| ((p.partition, p.seq), p.payload.clone(), p.tx.clone()))
        .collect();
    let (directory_size, directory_root) = inner
        .replica
        .checkpoint_in_force()
        .map_or((0, empty_root()), |cp| (cp.size, cp.root));
    let mut seqs: std::collections::VecDeque<(u32, u64)> =
        offered.iter().map(|(s, _, _)| *s).collect();
    let mut messages: std::collections::VecDeque<(Vec<u8>, TxMessage)> =
        offered.into_iter().map(|(_, b, t)| (b, t)).collect();
    let mut done = Cut {
        blocks: Vec::new(),
        too_large: Vec::new(),
    };
    // One block at least (time-outs and anchors may be due), then until every message is
    // in one. Each block is on the blocks stream (fenced) before it is stored: a builder
    // fenced off by another never stores, serves or signs a checkpoint over a block that
    // is not the chain's.
    loop {
        let inner2 = inner.clone();
        let (made, s2, m2) = tokio::task::spawn_blocking(move || {
            let made = cut_one(
                &inner2,
                now,
                &mut messages,
                &budget,
                (directory_size, directory_root),
                &seqs,
            );
            (made, seqs, messages)
        })
        .await
        .map_err(|e| Error::Corrupted(format!("cutting a block: {e}")))?;
        (seqs, messages) = (s2, m2);
        let made = made?;
        let taken: Vec<(u32, u64)> = seqs.drain(..made.taken).collect();
        done.too_large
            .extend(made.too_large.iter().map(|&i| taken[i]));
        let progressed = made.block.is_some() || made.taken > 0;
        if let Some(b) = made.block {
            publish_block(js, ns, b.height, b.encoded.clone(), &inner.fence).await?;
            inner.published.fetch_max(b.height + 1, Ordering::SeqCst);
            let inner2 = inner.clone();
            let height = b.height;
            tokio::task::spawn_blocking(move || keep_block(&inner2, b))
                .await
                .map_err(|e| Error::Corrupted(format!("storing a block: {e}")))??;
            done.blocks.push(height);
        }
        if messages.is_empty() || !progressed {
            break;
        }
    }
    for &(partition, seq) in &done.too_large {
        inner.refused.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            partition,
            seq,
            capacity = budget.capacity,
            "firehose message too large for any block: refused (it is in no block, and auditors report it as omitted)"
        );
        if let Some(p) = pending
            .iter()
            .find(|p| (p.partition, p.seq) == (partition, seq))
        {
            let _ = p.message.ack_with(AckKind::Term).await;
        }
    }
    let Some(&height) = done.blocks.last() else {
        inner.handled(&disposed);
        return Ok(());
    };
    inner.blocks.send_replace(height + 1);
    // Durable: now the messages may go (acknowledging the last of a partition
    // acknowledges all of it before).
    let mut last_of: std::collections::BTreeMap<u32, &Pending> = Default::default();
    for p in &pending {
        if !done.too_large.contains(&(p.partition, p.seq)) {
            last_of.insert(p.partition, p);
        }
    }
    for p in last_of.values() {
        let _ = p.message.ack().await;
    }
    inner.handled(&disposed);
    tracing::debug!(height, messages = pending.len(), "block cut");
    Ok(())
}

/// One block made by [`cut_one`].
pub(super) struct OneBlock {
    /// How many of the messages offered it took (`too_large` among them).
    taken: usize,
    /// Those too large for any block (their places among the taken).
    too_large: Vec<usize>,
    /// The block, unless it holds nothing: published, then kept ([`keep_block`]).
    block: Option<Made>,
}

/// A block laid out and signed, not yet stored.
pub(super) struct Made {
    height: u64,
    encoded: Vec<u8>,
    verified: VerifiedHeader,
    signed_bytes: Vec<u8>,
    entries: Vec<blockpost_core::transaction::Entry>,
    last_seqs: Vec<u64>,
    /// Its map, made from the tree hashed for its root (`None` if it could not be made:
    /// the maps' thread then makes it from the stored block).
    map: Option<Vec<u8>>,
}

/// Stores and indexes a block made by [`cut_one`] (and published).
pub(super) fn keep_block(inner: &Inner, b: Made) -> Result<()> {
    let t0 = std::time::Instant::now();
    let (height, id) = (b.height, b.verified.id);
    if inner.store.len() != height {
        return Err(Error::Corrupted(format!(
            "block {height} was made on a store of {} blocks",
            inner.store.len()
        )));
    }
    inner.store.append(b.encoded, id, |size, root| {
        inner
            .signer
            .sign(size, root)
            .map_err(|e| blockpost_storage::Error::Corrupted(e.to_string()))
    })?;
    *inner.tip.lock().unwrap_or_else(|e| e.into_inner()) = Some(b.verified);
    inner
        .last_seqs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone_from(&b.last_seqs);
    // Its map, for look-ups, is written on the maps' own thread (made there from the
    // stored block if it is not made here, or the thread is busy).
    let _ = inner.maps_due.try_send(MapDue::Made(height, b.map));
    let t1 = t0.elapsed();
    let book = inner.book.lock().unwrap_or_else(|e| e.into_inner());
    inner
        .index
        .commit(height, id, &b.signed_bytes, &b.entries, &book, &b.last_seqs)?;
    tracing::debug!(
        height,
        store_ms = t1.as_secs_f64() * 1e3,
        index_ms = (t0.elapsed() - t1).as_secs_f64() * 1e3,
        "block kept"
    );
    Ok(())
}

/// Lays out, signs, stores and indexes the next block: as many of `messages` as fit in
/// `budget` (taken from the front), with the records and closings the rules add. A block
/// larger than the budget's capacity is never stored.
pub(super) fn cut_one(
    inner: &Inner,
    now: i64,
    messages: &mut std::collections::VecDeque<(Vec<u8>, TxMessage)>,
    budget: &BlockBudget,
    (directory_size, directory_root): (u64, [u8; 32]),
    seqs: &std::collections::VecDeque<(u32, u64)>,
) -> Result<OneBlock> {
    let tip = inner.tip.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let height = inner.store.len();
    let time_ms = tip.as_ref().map_or(now, |t| now.max(t.header.time_ms));
    let t0 = std::time::Instant::now();
    let mut book = inner.book.lock().unwrap_or_else(|e| e.into_inner());
    let index = &inner.index;
    let mut records = inner.anchors.records_after(index.anchors_recorded()?)?;
    records.append(&mut inner.inject.lock().unwrap_or_else(|e| e.into_inner()));
    // Delivery records, unless the role holds its state (sending): the next cut takes them.
    if let Ok(mut d) = inner.deliveries.try_lock() {
        records.extend(d.take(height));
    }
    // An index that cannot be read aborts the cut (the book is reloaded), rather than
    // taking a closed transaction for an open one.
    let closed = ClosedLookup::new(index);
    let layout = lay_out_block_within(
        &mut book,
        height,
        time_ms,
        records,
        messages,
        |id| closed.closed(id),
        budget,
    );
    closed.finish()?;
    let mut made = OneBlock {
        taken: layout.taken,
        too_large: layout.too_large,
        block: None,
    };
    if layout.leaves.is_empty() {
        return Ok(made);
    }
    // One range per partition the block took from, in partition order (the messages
    // are sorted so).
    let mut ranges: Vec<PartitionRange> = Vec::new();
    let mut last_seqs = inner.last_seqs();
    for (_, &(partition, seq)) in seqs
        .iter()
        .take(made.taken)
        .enumerate()
        .filter(|(i, _)| !made.too_large.contains(i))
    {
        match ranges.last_mut() {
            Some(r) if r.partition == partition => r.last_seq = seq,
            _ => ranges.push(PartitionRange {
                partition,
                first_seq: seq,
                last_seq: seq,
            }),
        }
        if let Some(l) = last_seqs.get_mut(partition as usize) {
            *l = seq;
        }
    }
    let (leaves, entries) = (layout.leaves, layout.entries);
    let t1 = t0.elapsed();
    // The tree level by level: its root is signed, and it is the block's map for look-ups.
    let levels = TreeLevels::new(leaves.iter().map(|l| leaf_hash(l)).collect());
    let header = BlockHeader {
        height,
        previous_hash: tip.as_ref().map_or_else(Vec::new, |t| t.id.to_vec()),
        merkle_root: levels.root().to_vec(),
        leaf_count: leaves.len() as u64,
        partitions: ranges,
        directory_size,
        directory_root: directory_root.to_vec(),
        time_ms,
        builder_key_id: builder_key_id(&inner.key.verifying_key()).to_vec(),
    };
    let signed = sign_header(&inner.key, &header);
    let id = blockpost_core::block::block_id(&signed.header);
    let verified = VerifiedHeader {
        header,
        bytes: signed.header.clone(),
        signature: signed.signature.clone(),
        id,
    };
    let signed_bytes = signed.encode_to_vec();
    let encoded = Block {
        header: Some(signed),
        leaves,
    }
    .encode_to_vec();
    if encoded.len() > budget.capacity {
        // The layout keeps within the budget; should it ever not, nothing is stored (the
        // book is reloaded from the index) and the builder reports itself stalled.
        return Err(Error::Corrupted(format!(
            "block {height} would take {} bytes, more than the largest block ({}): not stored",
            encoded.len(),
            budget.capacity
        )));
    }
    let map = match block_map_with(&encoded, &levels) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!(height, error = %e, "the block's map: made again from the stored block");
            None
        }
    };
    tracing::debug!(
        height,
        bytes = encoded.len(),
        lay_out_ms = t1.as_secs_f64() * 1e3,
        hash_sign_ms = (t0.elapsed() - t1).as_secs_f64() * 1e3,
        "block made"
    );
    drop(book);
    made.block = Some(Made {
        height,
        encoded,
        verified,
        signed_bytes,
        entries,
        last_seqs,
        map,
    });
    Ok(made)
}
