//! When to cut a block: the builder's batching rules as a state machine without I/O
//! ([`Batcher`]). The async loop pulls messages from the firehose partitions, checks them,
//! and hands each in with [`Batcher::offer`] and [`Batcher::push`] (or
//! [`Batcher::refuse`]); it ticks with the time and whether a transaction is due
//! ([`Batcher::tick`]); it cuts, stores and acknowledges what comes out ([`Cut`]).
//!
//! The rules:
//! - a message already taken (redelivered after a restart, or a second copy) is not taken
//!   again; the loop acknowledges it if it is in a block already;
//! - a cut comes when the pending messages reach the block's message count or byte size,
//!   and before a message that would take them past either;
//! - else when the first pending message has waited the block delay;
//! - else at a tick when a transaction is due to time out (or an anchor waits for its
//!   block), messages or not;
//! - every cut says, per partition, the last sequence the loop has disposed of (in this
//!   cut or refused before it): what the builder has handled once the cut is stored.
//!
//! Time is a plain count of milliseconds from any origin (the loop passes a monotonic
//! clock's), so the rules are tested without a runtime.

/// Limits of one cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Most messages in one cut.
    pub max_messages: usize,
    /// Most bytes of messages in one cut.
    pub max_bytes: usize,
    /// Longest a message waits for its cut, in milliseconds.
    pub delay_ms: u64,
}

/// What became of a message offered ([`Batcher::offer`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Not seen before: check it, then [`Batcher::push`] or [`Batcher::refuse`] it.
    Fresh,
    /// Taken before. `in_block`: it is in a stored block already (acknowledge it again).
    Again {
        /// Whether a stored block holds it.
        in_block: bool,
    },
}

/// Messages to cut into blocks.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Cut<M> {
    /// The messages, in the order they came.
    pub messages: Vec<M>,
    /// Per partition, the last sequence disposed of once this cut is stored.
    pub disposed: Vec<u64>,
}

/// The batching state of one follow of the firehose.
#[derive(Debug)]
pub(crate) struct Batcher<M> {
    limits: Limits,
    /// The last sequence taken per partition: in a block, being cut, or pending.
    taken: Vec<u64>,
    /// The last sequence disposed of per partition (pending, cut, or refused).
    disposed: Vec<u64>,
    pending: Vec<M>,
    bytes: usize,
    /// When the pending messages are cut at the latest.
    deadline: Option<u64>,
}

impl<M> Batcher<M> {
    /// A batcher that starts after `in_blocks` (the last sequence in a block, per
    /// partition).
    pub fn new(limits: Limits, in_blocks: Vec<u64>) -> Self {
        Self {
            limits,
            disposed: in_blocks.clone(),
            taken: in_blocks,
            pending: Vec::new(),
            bytes: 0,
            deadline: None,
        }
    }

    /// Message `seq` of partition `k` arrived; `in_blocks` is the last sequence in a
    /// stored block per partition now. A partition beyond those known is never fresh.
    pub fn offer(&mut self, k: u32, seq: u64, in_blocks: &[u64]) -> Seen {
        let Some(last) = self.taken.get_mut(k as usize) else {
            return Seen::Again { in_block: false };
        };
        if seq <= *last {
            return Seen::Again {
                in_block: in_blocks.get(k as usize).is_some_and(|b| seq <= *b),
            };
        }
        *last = seq;
        Seen::Fresh
    }

    /// Message `seq` of partition `k` goes in no block. Returns, when nothing is pending,
    /// the partitions' disposed sequences: handled once the block in flight is stored.
    /// Otherwise the next cut carries them.
    pub fn refuse(&mut self, k: u32, seq: u64) -> Option<Vec<u64>> {
        self.dispose(k, seq);
        self.pending.is_empty().then(|| self.disposed.clone())
    }

    fn dispose(&mut self, k: u32, seq: u64) {
        if let Some(d) = self.disposed.get_mut(k as usize) {
            *d = (*d).max(seq);
        }
    }

    /// A checked message `seq` of partition `k`, of `len` bytes, at time `now`. Returns
    /// the cuts it brings, in order: the pending messages before it, if it would take
    /// them past a limit; then the pending messages with it, if they reach one.
    pub fn push(&mut self, now: u64, k: u32, seq: u64, len: usize, message: M) -> Vec<Cut<M>> {
        let mut cuts = Vec::new();
        if !self.pending.is_empty()
            && (self.pending.len() + 1 > self.limits.max_messages
                || self.bytes + len > self.limits.max_bytes)
        {
            cuts.push(self.cut());
        }
        self.bytes += len;
        self.dispose(k, seq);
        self.pending.push(message);
        if self.deadline.is_none() {
            self.deadline = Some(now.saturating_add(self.limits.delay_ms));
        }
        if self.pending.len() >= self.limits.max_messages || self.bytes >= self.limits.max_bytes {
            cuts.push(self.cut());
        }
        cuts
    }

    /// The time is `now`; `due`: a transaction is due to time out (or an anchor waits
    /// for its block). The cut this brings, if any (without messages when only `due`).
    pub fn tick(&mut self, now: u64, due: bool) -> Option<Cut<M>> {
        (due || self.deadline.is_some_and(|d| d <= now)).then(|| self.cut())
    }

    /// When the pending messages are to be cut, if any are pending.
    pub fn deadline(&self) -> Option<u64> {
        self.deadline
    }

    /// Messages pending.
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    fn cut(&mut self) -> Cut<M> {
        self.bytes = 0;
        self.deadline = None;
        Cut {
            messages: std::mem::take(&mut self.pending),
            disposed: self.disposed.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const LIMITS: Limits = Limits {
        max_messages: 3,
        max_bytes: 100,
        delay_ms: 50,
    };

    fn cut(messages: &[&'static str], disposed: &[u64]) -> Cut<&'static str> {
        Cut {
            messages: messages.to_vec(),
            disposed: disposed.to_vec(),
        }
    }

    #[test]
    fn a_cut_comes_at_the_message_count() {
        let mut b = Batcher::new(LIMITS, vec![0]);
        assert!(b.push(0, 0, 1, 10, "a").is_empty());
        assert!(b.push(1, 0, 2, 10, "b").is_empty());
        assert_eq!(b.push(2, 0, 3, 10, "c"), [cut(&["a", "b", "c"], &[3])]);
        assert_eq!(b.pending(), 0);
        assert_eq!(b.deadline(), None);
    }

    #[test]
    fn a_cut_comes_at_the_byte_size_and_before_a_message_that_would_pass_it() {
        let mut b = Batcher::new(LIMITS, vec![0]);
        assert!(b.push(0, 0, 1, 60, "a").is_empty());
        // 60 + 50 > 100: "a" is cut alone, "b" waits.
        assert_eq!(b.push(0, 0, 2, 50, "b"), [cut(&["a"], &[1])]);
        assert_eq!(b.pending(), 1);
        // Exactly the size: cut with it.
        assert_eq!(b.push(0, 0, 3, 50, "c"), [cut(&["b", "c"], &[3])]);
        // One message larger than a block: alone, at once (the cut refuses it as too
        // large; what is pending goes first).
        assert!(b.push(0, 0, 4, 10, "d").is_empty());
        assert_eq!(
            b.push(0, 0, 5, 500, "e"),
            [cut(&["d"], &[4]), cut(&["e"], &[5])]
        );
    }

    #[test]
    fn a_cut_comes_after_the_delay_from_the_first_message() {
        let mut b = Batcher::new(LIMITS, vec![0]);
        assert_eq!(b.tick(1000, false), None, "nothing pending, nothing due");
        assert!(b.push(1000, 0, 1, 10, "a").is_empty());
        assert_eq!(b.deadline(), Some(1050));
        assert!(b.push(1040, 0, 2, 10, "b").is_empty());
        assert_eq!(b.deadline(), Some(1050), "the first message sets it");
        assert_eq!(b.tick(1049, false), None);
        assert_eq!(b.tick(1050, false), Some(cut(&["a", "b"], &[2])));
        assert_eq!(b.deadline(), None);
        assert_eq!(b.tick(5000, false), None);
    }

    #[test]
    fn a_due_transaction_gets_a_cut_without_messages() {
        let mut b: Batcher<&str> = Batcher::new(LIMITS, vec![7, 9]);
        assert_eq!(b.tick(0, true), Some(cut(&[], &[7, 9])));
    }

    #[test]
    fn messages_taken_once_and_acknowledged_again_when_in_a_block() {
        let mut b: Batcher<&str> = Batcher::new(LIMITS, vec![5, 0]);
        // At or below what is in a block: again, in a block.
        assert_eq!(b.offer(0, 5, &[5, 0]), Seen::Again { in_block: true });
        assert_eq!(b.offer(0, 6, &[5, 0]), Seen::Fresh);
        // Taken (pending or being cut), not in a block yet.
        assert_eq!(b.offer(0, 6, &[5, 0]), Seen::Again { in_block: false });
        assert_eq!(b.offer(1, 1, &[5, 0]), Seen::Fresh);
        // A partition this follow does not know.
        assert_eq!(b.offer(2, 1, &[5, 0]), Seen::Again { in_block: false });
    }

    #[test]
    fn refused_messages_are_disposed_of_with_the_next_cut_or_at_once() {
        let mut b = Batcher::new(LIMITS, vec![0, 0]);
        // Nothing pending: handled once the block in flight is stored.
        assert_eq!(b.refuse(1, 4), Some(vec![0, 4]));
        assert!(b.push(0, 0, 1, 10, "a").is_empty());
        // Something pending: the next cut carries it.
        assert_eq!(b.refuse(1, 5), None);
        assert_eq!(b.tick(50, false), Some(cut(&["a"], &[1, 5])));
    }
}
