//! The node's promises, checked from the firehose and the verified blocks: every valid
//! firehose message in a block by its deadline; no block holding a message that is not on
//! the firehose in the range the block names, nor one that is not valid; no sequence
//! missing from any firehose partition; and, once per episode, a builder that has stopped
//! putting messages in blocks. No I/O.
//!
//! A firehose has one or more partitions, each its own sequence ([`Promises::with_partitions`]);
//! every position here is a (partition, sequence).

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::alert::{Alert, AlertKind};
use crate::chain::BlockSeen;

/// Where a restarted auditor takes up the promises (`DATA/resume.json`): the blocks whose
/// promises were checked are not checked again (they are still verified and replayed),
/// and the firehose is read again from the first message that may still matter.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResumePoint {
    /// Blocks (heights 0 to this, exclusive) whose promises were checked.
    pub blocks_checked: u64,
    /// The last sequence of firehose partition 0 those blocks name.
    pub matched_through: u64,
    /// The first sequence of firehose partition 0 to read again: no message before it is
    /// waiting for a block, or is in a block not checked yet.
    pub firehose_from: u64,
    /// The same for partitions 1 and on, in order (none on a firehose of one partition).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<PartitionPoint>,
}

/// Where reading of one firehose partition takes up ([`ResumePoint`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartitionPoint {
    /// The last sequence of the partition the checked blocks name.
    pub matched_through: u64,
    /// The first sequence of the partition to read again.
    pub firehose_from: u64,
}

impl ResumePoint {
    /// Partition `k`'s point.
    fn of(&self, k: usize) -> PartitionPoint {
        if k == 0 {
            PartitionPoint {
                matched_through: self.matched_through,
                firehose_from: self.firehose_from,
            }
        } else {
            self.partitions.get(k - 1).copied().unwrap_or_default()
        }
    }
}

/// A valid firehose message not in a block yet.
struct Waiting {
    id: [u8; 32],
    deadline_ms: i64,
}

/// A receipt handed to the auditor whose message is not in a block yet.
struct Receipted {
    deadline_ms: i64,
    evidence: serde_json::Value,
}

/// What the auditor knows of the firehose and how the blocks kept to it.
pub struct Promises {
    promise_ms: i64,
    grace_ms: i64,
    /// Valid firehose messages not in a block yet, by partition and sequence.
    waiting: BTreeMap<(u32, u64), Waiting>,
    /// Every firehose message: its partition and sequence, and why it is not valid if it
    /// is not.
    seen: HashMap<[u8; 32], (u32, u64, Option<String>)>,
    /// The last sequence read, per partition.
    last_seq: Vec<u64>,
    /// Blocks whose range the firehose has not reached yet, in order.
    early: VecDeque<BlockSeen>,
    /// The time of the newest verified block.
    ledger_time_ms: i64,
    /// Receipts handed in, by message id, whose message is in no block yet.
    receipts: HashMap<[u8; 32], Receipted>,
    /// Blocks below this height were checked before a restart ([`ResumePoint`]).
    skip_below: u64,
    /// Blocks checked, and the last firehose sequence they name, per partition.
    blocks_checked: u64,
    matched_through: Vec<u64>,
    /// Whether the node has a block builder (a ledger): if not, messages in no block are
    /// omissions only, never a stalled builder.
    builder: bool,
    /// The stall episode already reported: the `matched_through` at which the builder was
    /// found stalled. A block that names later messages ends it.
    stalled_at: Option<Vec<u64>>,
}

/// How a position reads in an alert: the sequence alone on a firehose of one partition.
fn at(partitions: usize, k: u32, what: &str) -> String {
    if partitions == 1 {
        what.to_owned()
    } else {
        format!("partition {k} {what}")
    }
}

impl Promises {
    /// Checks promises of `promise_ms` (receipt to block), allowing `grace_ms` more, on a
    /// firehose of one partition.
    pub fn new(promise_ms: u64, grace_ms: u64) -> Self {
        Self {
            promise_ms: i64::try_from(promise_ms).unwrap_or(i64::MAX),
            grace_ms: i64::try_from(grace_ms).unwrap_or(i64::MAX),
            waiting: BTreeMap::new(),
            seen: HashMap::new(),
            last_seq: vec![0],
            early: VecDeque::new(),
            ledger_time_ms: i64::MIN,
            receipts: HashMap::new(),
            skip_below: 0,
            blocks_checked: 0,
            matched_through: vec![0],
            builder: true,
            stalled_at: None,
        }
    }

    /// On a firehose of `partitions` partitions (at least 1).
    pub fn with_partitions(mut self, partitions: u32) -> Self {
        let n = partitions.max(1) as usize;
        self.last_seq = vec![0; n];
        self.matched_through = vec![0; n];
        self
    }

    /// How many partitions the firehose has.
    pub fn partitions(&self) -> u32 {
        self.last_seq.len() as u32
    }

    /// The node has no block builder (no ledger): no block is expected, so messages past
    /// their deadline are omissions, and no [`AlertKind::BuilderStalled`] is raised.
    pub fn without_builder(&mut self) {
        self.builder = false;
    }

    /// Takes up where an earlier run stopped.
    pub fn resume(&mut self, r: ResumePoint) {
        for k in 0..self.last_seq.len() {
            let p = r.of(k);
            self.last_seq[k] = p.firehose_from.saturating_sub(1);
            self.matched_through[k] = p.matched_through;
        }
        self.skip_below = r.blocks_checked;
        self.blocks_checked = r.blocks_checked;
    }

    /// Where a restart would take up now.
    pub fn resume_point(&self) -> ResumePoint {
        let points: Vec<PartitionPoint> = (0..self.last_seq.len())
            .map(|k| {
                let mut from = (self.last_seq[k] + 1).min(self.matched_through[k] + 1);
                let part = (k as u32, 0)..=(k as u32, u64::MAX);
                if let Some(((_, seq), _)) = self.waiting.range(part).next() {
                    from = from.min(*seq);
                }
                PartitionPoint {
                    matched_through: self.matched_through[k],
                    firehose_from: from,
                }
            })
            .collect();
        ResumePoint {
            blocks_checked: self.blocks_checked,
            matched_through: points[0].matched_through,
            firehose_from: points[0].firehose_from,
            partitions: points[1..].to_vec(),
        }
    }

    /// Blocks below this height had their promises checked before a restart.
    pub fn skip_below(&self) -> u64 {
        self.skip_below
    }

    /// The last sequence of partition `k` read.
    pub fn last_seq(&self, k: u32) -> u64 {
        self.last_seq.get(k as usize).copied().unwrap_or(0)
    }

    /// The last sequence read, summed over the partitions.
    pub fn read(&self) -> u64 {
        self.last_seq.iter().sum()
    }

    /// Valid firehose messages not in a block yet.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Receipts handed in whose message is in no block yet.
    pub fn receipts_waiting(&self) -> usize {
        self.receipts.len()
    }

    /// A receipt for message `id` (not in a verified block), promising a block by
    /// `deadline_ms`; `evidence` is the signed receipt, for the alert if it is broken.
    pub fn receipt(&mut self, id: [u8; 32], deadline_ms: i64, evidence: serde_json::Value) {
        self.receipts.insert(
            id,
            Receipted {
                deadline_ms,
                evidence,
            },
        );
    }

    /// [`Promises::firehose_at`] partition 0.
    #[cfg(test)]
    pub fn firehose(
        &mut self,
        seq: u64,
        id: Option<[u8; 32]>,
        published_ms: i64,
        invalid: Option<String>,
        placed: bool,
        now_ms: i64,
    ) -> Vec<Alert> {
        self.firehose_at(0, seq, id, published_ms, invalid, placed, now_ms)
    }

    /// Message `seq` of firehose partition `k`, published at `published_ms`: its id (if
    /// it is an envelope) and, if it is not valid (envelope rules, sender signature, its
    /// sender's partition), why. `placed`: it is in a verified block (read again after a
    /// restart, its block was checked before).
    #[allow(clippy::too_many_arguments)]
    pub fn firehose_at(
        &mut self,
        k: u32,
        seq: u64,
        id: Option<[u8; 32]>,
        published_ms: i64,
        invalid: Option<String>,
        placed: bool,
        now_ms: i64,
    ) -> Vec<Alert> {
        let mut alerts = Vec::new();
        let Some(&last) = self.last_seq.get(k as usize) else {
            return alerts;
        };
        if seq <= last {
            return alerts;
        }
        if seq > last + 1 {
            alerts.extend(self.gap_through(k, seq - 1, now_ms));
        }
        self.last_seq[k as usize] = seq;
        if let Some(id) = id {
            let matched = placed && seq <= self.matched_through[k as usize];
            if invalid.is_none() && !matched {
                self.waiting.insert(
                    (k, seq),
                    Waiting {
                        id,
                        deadline_ms: published_ms.saturating_add(self.promise_ms),
                    },
                );
            }
            // A message seen twice (an envelope published again on another partition, where
            // it is not valid) is known by its valid sighting.
            match self.seen.entry(id) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert((k, seq, invalid));
                }
                std::collections::hash_map::Entry::Occupied(mut o) => {
                    if o.get().2.is_some() && invalid.is_none() {
                        o.insert((k, seq, invalid));
                    }
                }
            }
        }
        alerts.extend(self.drain_early(now_ms));
        alerts
    }

    /// Sequences of partition `k` after the last one read, through `through`, are not in
    /// the stream (deleted): an alert, and reading goes on after them.
    pub fn gap_through(&mut self, k: u32, through: u64, now_ms: i64) -> Vec<Alert> {
        let n = self.last_seq.len();
        let Some(&last) = self.last_seq.get(k as usize) else {
            return Vec::new();
        };
        if through <= last {
            return Vec::new();
        }
        let from = last + 1;
        let mut alerts = vec![Alert::new(
            AlertKind::FirehoseGap,
            format!("firehose {}", at(n, k, &format!("{from}..{through}"))),
            now_ms,
            format!(
                "firehose {} are missing: deleted from the stream",
                at(n, k, &format!("sequences {from} to {through}"))
            ),
            serde_json::json!({ "partition": k, "first_missing": from, "last_missing": through }),
        )];
        self.last_seq[k as usize] = through;
        alerts.extend(self.drain_early(now_ms));
        alerts
    }

    /// Whether the firehose has been read through every range of `b`.
    fn read_through(&self, b: &BlockSeen) -> bool {
        b.ranges
            .iter()
            .all(|&(k, _, last)| last <= self.last_seq(k))
    }

    /// A verified block (in chain order).
    pub fn block(&mut self, b: BlockSeen, now_ms: i64) -> Vec<Alert> {
        self.ledger_time_ms = self.ledger_time_ms.max(b.time_ms);
        if b.height < self.skip_below {
            // Checked before the restart: only the receipts handed in are settled.
            for id in &b.messages {
                self.receipts.remove(id);
            }
            return Vec::new();
        }
        if !self.read_through(&b) || !self.early.is_empty() {
            self.early.push_back(b);
            return Vec::new();
        }
        self.check_block(&b, now_ms)
    }

    /// Checks the blocks that waited for the firehose, as far as it has been read.
    fn drain_early(&mut self, now_ms: i64) -> Vec<Alert> {
        let mut alerts = Vec::new();
        while self.early.front().is_some_and(|b| self.read_through(b)) {
            if let Some(b) = self.early.pop_front() {
                alerts.extend(self.check_block(&b, now_ms));
            }
        }
        alerts
    }

    fn check_block(&mut self, b: &BlockSeen, now_ms: i64) -> Vec<Alert> {
        let mut alerts = Vec::new();
        self.blocks_checked = self.blocks_checked.max(b.height + 1);
        for &(k, _, last) in &b.ranges {
            if let Some(m) = self.matched_through.get_mut(k as usize) {
                *m = (*m).max(last);
            }
        }
        let n = self.last_seq.len();
        for id in &b.messages {
            self.receipts.remove(id);
            let in_range = |k: u32, seq: u64| {
                b.ranges
                    .iter()
                    .any(|&(p, f, l)| p == k && (f..=l).contains(&seq))
            };
            match self.seen.get(id) {
                Some((k, seq, None)) if in_range(*k, *seq) => {
                    self.waiting.remove(&(*k, *seq));
                }
                Some((k, seq, Some(why))) if in_range(*k, *seq) => alerts.push(Alert::new(
                    AlertKind::BlockInvalid,
                    format!("message {}", hex::encode(id)),
                    now_ms,
                    format!(
                        "block {} holds message {} (firehose {}), which is not valid: {why}",
                        b.height,
                        hex::encode(id),
                        at(n, *k, &seq.to_string())
                    ),
                    serde_json::json!({
                        "height": b.height,
                        "message_id": hex::encode(id),
                        "firehose_partition": k,
                        "firehose_sequence": seq,
                    }),
                )),
                other => alerts.push(Alert::new(
                    AlertKind::UnknownMessage,
                    format!("message {}", hex::encode(id)),
                    now_ms,
                    format!(
                        "block {} holds message {}, which is not on the firehose in the ranges it names ({:?})",
                        b.height,
                        hex::encode(id),
                        b.ranges
                    ),
                    serde_json::json!({
                        "height": b.height,
                        "message_id": hex::encode(id),
                        "ranges": b.ranges,
                        "firehose_partition": other.map(|(k, _, _)| *k),
                        "firehose_sequence": other.map(|(_, s, _)| *s),
                    }),
                )),
            }
        }
        alerts
    }

    /// Omissions at `now_ms`: valid firehose messages past their deadline plus the grace
    /// and in no block. Only once the ledger has moved past a deadline, or the auditor has
    /// read every block there is (`blocks_current`), since a block not read yet may hold
    /// the message.
    ///
    /// And a stalled builder, once per episode ([`AlertKind::BuilderStalled`], after the
    /// omissions): every block is read (`blocks_current`, none waiting for the firehose),
    /// and the messages past their deadline all come after the last firehose sequence any
    /// block names (`matched_through`), so no block has taken a message for at least the
    /// promise. Its subject names `matched_through`: the episode lasts until a block names
    /// later messages, and a later stall is another alert. A message skipped by blocks
    /// that name messages after it is an omission only (the builder is running).
    ///
    /// Known limit: a builder that keeps running but omits only the newest messages, with
    /// no message after them on the firehose for a block to name, looks like a stall (the
    /// alert's detail says so); the omissions are raised either way.
    pub fn tick(&mut self, now_ms: i64, blocks_current: bool) -> Vec<Alert> {
        let mut alerts = Vec::new();
        // A block read but waiting for the firehose to be read through its range may hold
        // any message from the start of that range on: those are not due yet (on a
        // backlog older than the promise, every message would be, wrongly).
        // Deadlines grow with the sequence of a partition (JetStream stamps messages in
        // stream order): stop at the first that is not due, so that a long backlog costs
        // nothing here.
        let mut due: Vec<(u32, u64)> = Vec::new();
        for k in 0..self.last_seq.len() as u32 {
            let unchecked_from = self
                .early
                .iter()
                .find_map(|b| b.ranges.iter().find(|r| r.0 == k).map(|r| r.1))
                .unwrap_or(u64::MAX);
            due.extend(
                self.waiting
                    .range((k, 0)..=(k, u64::MAX))
                    .take_while(|((_, seq), w)| {
                        let past = w.deadline_ms.saturating_add(self.grace_ms);
                        *seq < unchecked_from
                            && past < now_ms
                            && (blocks_current || self.ledger_time_ms > past)
                    })
                    .map(|(at, _)| *at),
            );
        }
        let stalled = self.stalled(&due, now_ms, blocks_current);
        // A receipt's message may be in any block not checked yet.
        let due_receipts: Vec<[u8; 32]> = if self.early.is_empty() {
            self.receipts
                .iter()
                .filter(|(_, r)| {
                    let past = r.deadline_ms.saturating_add(self.grace_ms);
                    past < now_ms && (blocks_current || self.ledger_time_ms > past)
                })
                .map(|(id, _)| *id)
                .collect()
        } else {
            Vec::new()
        };
        for id in due_receipts {
            if let Some(r) = self.receipts.remove(&id) {
                alerts.push(Alert::new(
                    AlertKind::Omission,
                    format!("message {}", hex::encode(id)),
                    now_ms,
                    format!(
                        "message {} has a receipt promising a block by {}, and is in no block {} ms after it",
                        hex::encode(id),
                        r.deadline_ms,
                        now_ms - r.deadline_ms
                    ),
                    serde_json::json!({
                        "message_id": hex::encode(id),
                        "deadline_ms": r.deadline_ms,
                        "receipt": r.evidence,
                    }),
                ));
            }
        }
        let n = self.last_seq.len();
        for (k, seq) in due {
            if let Some(w) = self.waiting.remove(&(k, seq)) {
                alerts.push(Alert::new(
                    AlertKind::Omission,
                    format!("message {}", hex::encode(w.id)),
                    now_ms,
                    format!(
                        "message {} (firehose {}) is in no block {} ms after its deadline",
                        hex::encode(w.id),
                        at(n, k, &seq.to_string()),
                        now_ms - w.deadline_ms
                    ),
                    serde_json::json!({
                        "message_id": hex::encode(w.id),
                        "firehose_partition": k,
                        "firehose_sequence": seq,
                        "deadline_ms": w.deadline_ms,
                    }),
                ));
            }
        }
        alerts.extend(stalled);
        alerts
    }

    /// The stalled-builder alert for the firehose messages `due` (in partition and
    /// sequence order, still waiting), if this is a new episode ([`Promises::tick`]): in a
    /// partition, the first due comes after every sequence any block names.
    fn stalled(&mut self, due: &[(u32, u64)], now_ms: i64, blocks_current: bool) -> Option<Alert> {
        let through = self.matched_through.clone();
        let &(k, first) = due.iter().find(|&&(k, seq)| seq > through[k as usize])?;
        let first_of_k = due.iter().find(|d| d.0 == k).map(|d| d.1);
        if !self.builder
            || !blocks_current
            || !self.early.is_empty()
            || first_of_k != Some(first)
            || self.stalled_at.as_ref() == Some(&through)
        {
            return None;
        }
        let deadline_ms = self.waiting.get(&(k, first))?.deadline_ms;
        self.stalled_at = Some(through.clone());
        let n = through.len();
        let named = if n == 1 {
            through[0].to_string()
        } else {
            through
                .iter()
                .enumerate()
                .map(|(k, s)| format!("{k}:{s}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        Some(Alert::new(
            AlertKind::BuilderStalled,
            format!("builder at firehose {named}"),
            now_ms,
            format!(
                "no block covers firehose messages past {named}, and {} of them are past their deadline: the builder is stalled (or omits the newest messages)",
                due.len()
            ),
            serde_json::json!({
                "matched_through": if n == 1 { serde_json::json!(through[0]) } else { serde_json::json!(through) },
                "blocks_checked": self.blocks_checked,
                "newest_block_time_ms": (self.ledger_time_ms != i64::MIN).then_some(self.ledger_time_ms),
                "first_overdue_partition": k,
                "first_overdue_seq": first,
                "first_deadline_ms": deadline_ms,
                "overdue": due.len(),
            }),
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn block(height: u64, time_ms: i64, ids: &[u8], range: (u64, u64)) -> BlockSeen {
        BlockSeen {
            height,
            time_ms,
            messages: ids.iter().map(|i| [*i; 32]).collect(),
            ranges: vec![(0, range.0, range.1)],
            directory: (0, [0; 32]),
            contents: Vec::new(),
        }
    }

    fn kinds(a: &[Alert]) -> Vec<AlertKind> {
        a.iter().map(|a| a.kind).collect()
    }

    #[test]
    fn kept_promises_raise_nothing() {
        let mut p = Promises::new(1_000, 500);
        for s in 1..=3u8 {
            assert!(
                p.firehose(u64::from(s), Some([s; 32]), 0, None, false, 0)
                    .is_empty()
            );
        }
        // A refused (invalid) message is not expected in a block.
        assert!(
            p.firehose(4, Some([4; 32]), 0, Some("bad signature".into()), false, 0)
                .is_empty()
        );
        assert!(p.block(block(0, 100, &[1, 2, 3], (1, 4)), 100).is_empty());
        assert_eq!(p.waiting(), 0);
        assert!(p.tick(10_000, true).is_empty());
    }

    #[test]
    fn each_broken_promise_has_its_alert() {
        let mut p = Promises::new(1_000, 500);
        p.firehose(1, Some([1; 32]), 0, None, false, 0);
        p.firehose(
            2,
            Some([2; 32]),
            0,
            Some("not signed by its sender".into()),
            false,
            0,
        );
        // 3 and 4 deleted from the stream.
        let gap = p.firehose(5, Some([5; 32]), 0, None, false, 0);
        assert_eq!(kinds(&gap), vec![AlertKind::FirehoseGap]);
        assert_eq!(gap[0].subject, "firehose 3..4");
        // Block 0 holds 1, the invalid 2, and 9 which the firehose never had; 5 is left out.
        let a = p.block(block(0, 100, &[1, 2, 9], (1, 5)), 100);
        assert_eq!(
            kinds(&a),
            vec![AlertKind::BlockInvalid, AlertKind::UnknownMessage]
        );
        // Not before deadline + grace...
        assert!(p.tick(1_400, true).is_empty());
        // ... nor while a block not read yet may hold it.
        assert!(p.tick(1_600, false).is_empty());
        let o = p.tick(1_600, true);
        assert_eq!(kinds(&o), vec![AlertKind::Omission]);
        assert_eq!(o[0].subject, format!("message {}", hex::encode([5; 32])));
        assert!(p.tick(5_000, true).is_empty(), "an omission is raised once");
        // The last messages deleted: found by asking the stream, then reading goes on.
        let tail = p.gap_through(0, 7, 5_000);
        assert_eq!(kinds(&tail), vec![AlertKind::FirehoseGap]);
        assert_eq!(tail[0].subject, "firehose 6..7");
        assert!(p.gap_through(0, 7, 5_000).is_empty());
        assert!(
            p.firehose(8, Some([8; 32]), 5_000, None, false, 5_000)
                .is_empty()
        );
    }

    #[test]
    fn a_restart_resumes_without_checking_a_block_twice_or_losing_an_omission() {
        let mut p = Promises::new(1_000, 0);
        for s in 1..=3u8 {
            p.firehose(u64::from(s), Some([s; 32]), 0, None, false, 0);
        }
        // Block 0 names firehose 1 to 3 and omits 2.
        assert!(p.block(block(0, 100, &[1, 3], (1, 3)), 100).is_empty());
        let point = p.resume_point();
        assert_eq!(
            point,
            ResumePoint {
                blocks_checked: 1,
                matched_through: 3,
                firehose_from: 2,
                partitions: Vec::new(),
            }
        );
        // A new run: block 0 is replayed (not checked again), the firehose read from 2.
        let mut q = Promises::new(1_000, 0);
        q.resume(point);
        assert_eq!(q.skip_below(), 1);
        assert!(q.block(block(0, 100, &[1, 3], (1, 3)), 100).is_empty());
        assert!(q.firehose(2, Some([2; 32]), 0, None, false, 100).is_empty());
        // 3 is in block 0, which was checked: not waiting.
        assert!(q.firehose(3, Some([3; 32]), 0, None, true, 100).is_empty());
        assert_eq!(q.waiting(), 1);
        assert_eq!(kinds(&q.tick(5_000, true)), vec![AlertKind::Omission]);
        // Then on as usual.
        q.firehose(4, Some([4; 32]), 5_000, None, false, 5_000);
        assert!(q.block(block(1, 5_100, &[4], (4, 4)), 5_100).is_empty());
        assert_eq!(q.resume_point().firehose_from, 5);
    }

    #[test]
    fn a_block_ahead_of_the_firehose_waits_for_it() {
        let mut p = Promises::new(1_000, 0);
        p.firehose(1, Some([1; 32]), 0, None, false, 0);
        assert!(p.block(block(0, 100, &[1, 2], (1, 2)), 100).is_empty());
        assert!(p.block(block(1, 200, &[3], (3, 3)), 200).is_empty());
        // Message 1 is read and long past its deadline, but block 0 (which holds it) waits
        // for message 2: not an omission (a backlog older than the promise).
        assert!(p.tick(10_000, true).is_empty());
        assert_eq!(p.waiting(), 1);
        assert!(p.firehose(2, Some([2; 32]), 0, None, false, 0).is_empty());
        assert!(p.firehose(3, Some([3; 32]), 0, None, false, 0).is_empty());
        assert_eq!(p.waiting(), 0);
        // The ledger moved past the deadlines: a late tick knows without reading more.
        assert!(p.tick(10_000, false).is_empty());
    }

    #[test]
    fn a_stalled_builder_is_one_alert_per_episode() {
        let mut p = Promises::new(1_000, 500);
        p.firehose(1, Some([1; 32]), 0, None, false, 0);
        p.firehose(2, Some([2; 32]), 0, None, false, 0);
        assert!(p.block(block(0, 100, &[1], (1, 1)), 100).is_empty());
        // Not while a block not read yet may hold message 2.
        assert!(p.tick(2_000, false).is_empty());
        // No block covers message 2, past its deadline: an omission, and the stall.
        let a = p.tick(2_000, true);
        assert_eq!(
            kinds(&a),
            vec![AlertKind::Omission, AlertKind::BuilderStalled]
        );
        assert_eq!(a[1].subject, "builder at firehose 1");
        assert_eq!(a[1].evidence["matched_through"], 1);
        assert_eq!(a[1].evidence["blocks_checked"], 1);
        assert_eq!(a[1].evidence["newest_block_time_ms"], 100);
        assert_eq!(a[1].evidence["first_overdue_seq"], 2);
        assert_eq!(a[1].evidence["first_deadline_ms"], 1_000);
        assert_eq!(a[1].evidence["overdue"], 1);
        // Still stalled: message 3 is an omission of its own, the stall is not raised again.
        p.firehose(3, Some([3; 32]), 3_000, None, false, 3_000);
        assert!(p.tick(4_000, true).is_empty());
        assert_eq!(kinds(&p.tick(4_600, true)), vec![AlertKind::Omission]);
        assert!(p.tick(10_000, true).is_empty());
        // A block ends the episode (it names message 3, omitted before); the next stall
        // is another alert.
        assert!(p.block(block(1, 10_000, &[3], (3, 3)), 10_000).is_empty());
        p.firehose(4, Some([4; 32]), 10_000, None, false, 10_000);
        let a = p.tick(12_000, true);
        assert_eq!(
            kinds(&a),
            vec![AlertKind::Omission, AlertKind::BuilderStalled]
        );
        assert_eq!(a[1].subject, "builder at firehose 3");
        assert_eq!(a[1].evidence["first_overdue_seq"], 4);
    }

    #[test]
    fn a_builder_that_skips_a_message_is_an_omission_not_a_stall() {
        let mut p = Promises::new(1_000, 500);
        for s in 1..=3u8 {
            p.firehose(u64::from(s), Some([s; 32]), 0, None, false, 0);
        }
        assert!(p.block(block(0, 100, &[1], (1, 1)), 100).is_empty());
        assert!(p.block(block(1, 200, &[3], (3, 3)), 200).is_empty());
        assert_eq!(kinds(&p.tick(2_000, true)), vec![AlertKind::Omission]);
        assert!(p.tick(10_000, true).is_empty());
    }

    #[test]
    fn without_a_builder_messages_in_no_block_are_omissions_only() {
        let mut p = Promises::new(1_000, 500);
        p.without_builder();
        p.firehose(1, Some([1; 32]), 0, None, false, 0);
        p.firehose(2, Some([2; 32]), 0, None, false, 0);
        assert_eq!(
            kinds(&p.tick(2_000, true)),
            vec![AlertKind::Omission, AlertKind::Omission]
        );
        assert!(p.tick(10_000, true).is_empty());
    }

    #[test]
    fn partitions_are_checked_each_on_its_own_sequence() {
        let mut p = Promises::new(1_000, 0).with_partitions(2);
        assert_eq!(p.partitions(), 2);
        let at = |ids: &[u8], ranges: &[(u32, u64, u64)], height: u64| BlockSeen {
            height,
            time_ms: 100,
            messages: ids.iter().map(|i| [*i; 32]).collect(),
            ranges: ranges.to_vec(),
            directory: (0, [0; 32]),
            contents: Vec::new(),
        };
        // Partition 0: 1, 2; partition 1: 1, then 4 (2 and 3 deleted from its stream).
        assert!(
            p.firehose_at(0, 1, Some([1; 32]), 0, None, false, 0)
                .is_empty()
        );
        assert!(
            p.firehose_at(1, 1, Some([11; 32]), 0, None, false, 0)
                .is_empty()
        );
        assert!(
            p.firehose_at(0, 2, Some([2; 32]), 0, None, false, 0)
                .is_empty()
        );
        let gap = p.firehose_at(1, 4, Some([14; 32]), 0, None, false, 0);
        assert_eq!(kinds(&gap), vec![AlertKind::FirehoseGap]);
        assert_eq!(gap[0].subject, "firehose partition 1 2..3");
        assert_eq!(gap[0].evidence["partition"], 1);
        assert_eq!((p.last_seq(0), p.last_seq(1), p.read()), (2, 4, 6));
        // A block naming both partitions, ahead of partition 1's reading: it waits.
        assert!(
            p.block(at(&[1, 2, 11], &[(0, 1, 2), (1, 1, 5)], 0), 100)
                .is_empty()
        );
        assert_eq!(p.waiting(), 4);
        // Read through: checked; partition 1's 4 was left out, which is an omission,
        // and the same sequence number in the other partition is another message.
        assert!(
            p.firehose_at(1, 5, Some([15; 32]), 0, None, false, 0)
                .is_empty()
        );
        assert_eq!(p.waiting(), 2);
        let o = p.tick(2_000, true);
        assert_eq!(kinds(&o), vec![AlertKind::Omission, AlertKind::Omission]);
        assert!(o.iter().all(|a| a.evidence["firehose_partition"] == 1));
        // A message found in another partition than the range names is unknown there.
        p.firehose_at(0, 3, Some([3; 32]), 2_000, None, false, 2_000);
        let a = p.block(at(&[3], &[(1, 5, 5)], 1), 2_000);
        assert_eq!(kinds(&a), vec![AlertKind::UnknownMessage]);
        // The resume point keeps each partition's own place.
        let r = p.resume_point();
        assert_eq!((r.matched_through, r.firehose_from), (2, 3));
        assert_eq!(
            r.partitions,
            vec![PartitionPoint {
                matched_through: 5,
                firehose_from: 6
            }]
        );
        let json = serde_json::to_string(&r).unwrap();
        let mut q = Promises::new(1_000, 0).with_partitions(2);
        q.resume(serde_json::from_str(&json).unwrap());
        assert_eq!((q.last_seq(0), q.last_seq(1)), (2, 5));
        // A resume point of one partition reads as before partitions.
        let one = Promises::new(1_000, 0).resume_point();
        assert_eq!(
            serde_json::to_string(&one).unwrap(),
            r#"{"blocks_checked":0,"matched_through":0,"firehose_from":1}"#
        );
    }
}
