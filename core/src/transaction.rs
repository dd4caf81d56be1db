//! Transactions: when the ledger closes one, and what its closing record says.
//!
//! A transaction is every message with its `transaction_id`, in ledger order. Its parties
//! are every sender and recipient of those messages. It opens with its first message, in
//! the block cut at time `t`; its deadline is `t + timeout`, or the earlier
//! `transaction_deadline_ms` its first message asks for. It closes exactly once:
//! - **finished**, right after the message with which the last party sent `finish` (the
//!   closing record is the next leaf of the same block);
//! - **timed out**, at the end of the first block cut at or after its deadline (records in
//!   order of deadline, then id, at most [`MAX_EXPIRY_BYTES_PER_BLOCK`] of them per block:
//!   the rest in the next blocks), if it did not finish in that block.
//!
//! A transaction holds at most [`MAX_TRANSACTION_MESSAGES`] messages.
//!
//! The builder decides with a [`Book`]; an auditor replays the same [`Book`] over the
//! blocks and must get the same closing records, byte for byte.

use std::collections::{BTreeSet, HashMap};

use blockpost_proto::v1::{
    EnvelopeContent, LedgerRecord, MessageKind, TransactionClosing, TransactionStatus,
    ledger_record,
};
use prost::Message as _;

use crate::block::merkle_root;
use crate::leaf_hash;

/// Default time until an unfinished transaction times out: one hour.
pub const DEFAULT_TRANSACTION_TIMEOUT_MS: u64 = 60 * 60 * 1000;

/// Most messages in one transaction (its closing record lists every id: about 340 KB at
/// most). A message beyond it is in the ledger but not in the transaction ([`Step::Full`]);
/// the gateway refuses it.
pub const MAX_TRANSACTION_MESSAGES: usize = 10_000;

/// Most bytes of time-out closing records in one block (at least one record): the rest
/// close, in the same order, in the blocks after it.
pub const MAX_EXPIRY_BYTES_PER_BLOCK: usize = 1 << 20;

/// What of a message a transaction needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxMessage {
    /// The message id (SHA-256 of the envelope).
    pub id: [u8; 32],
    /// Its transaction.
    pub transaction_id: String,
    /// The sender's address.
    pub sender: String,
    /// The recipients' addresses.
    pub recipients: Vec<String>,
    /// Whether it is a `finish`.
    pub finish: bool,
    /// The deadline it asks for (only a first message's counts).
    pub deadline_ms: Option<i64>,
}

impl TxMessage {
    /// From a message's id and its (checked) content.
    pub fn new(id: [u8; 32], c: &EnvelopeContent) -> Self {
        Self {
            id,
            transaction_id: c.transaction_id.clone(),
            sender: c.sender.clone(),
            recipients: c.recipients.clone(),
            finish: c.kind == MessageKind::Finish as i32,
            deadline_ms: c.transaction_deadline_ms,
        }
    }
}

/// A transaction that is not closed yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenTransaction {
    /// Its id.
    pub id: String,
    /// The block holding its first message.
    pub opened_height: u64,
    /// When it times out, ms since the Unix epoch.
    pub deadline_ms: i64,
    /// Every sender and recipient so far.
    pub parties: BTreeSet<String>,
    /// The parties that sent `finish`.
    pub finished: BTreeSet<String>,
    /// Its message ids, in ledger order.
    pub messages: Vec<[u8; 32]>,
}

impl OpenTransaction {
    /// Whether every party sent `finish`.
    pub fn is_finished(&self) -> bool {
        !self.parties.is_empty() && self.parties.is_subset(&self.finished)
    }

    /// The closing record for it, with `status`, at `time_ms`.
    pub fn closing(&self, status: TransactionStatus, time_ms: i64) -> TransactionClosing {
        let hashes: Vec<[u8; 32]> = self.messages.iter().map(|id| leaf_hash(id)).collect();
        TransactionClosing {
            transaction_id: self.id.clone(),
            status: status as i32,
            message_ids: self.messages.iter().map(|m| m.to_vec()).collect(),
            messages_root: merkle_root(&hashes).to_vec(),
            finished_by: self.finished.iter().cloned().collect(),
            time_ms,
        }
    }
}

/// The leaf bytes of a closing record.
pub fn closing_leaf(c: &TransactionClosing) -> Vec<u8> {
    LedgerRecord {
        record: Some(ledger_record::Record::Closing(c.clone())),
    }
    .encode_to_vec()
}

/// What a message did to its transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// It opened the transaction or joined an open one, which is still open.
    Open,
    /// With it every party has sent `finish`: close the transaction as finished now.
    Finished,
    /// The transaction was closed before: the message is in the ledger but not in it.
    Late,
    /// The transaction holds [`MAX_TRANSACTION_MESSAGES`]: the message is in the ledger but
    /// not in it.
    Full,
}

/// Every open transaction, and the rules that close them.
#[derive(Clone, Debug)]
pub struct Book {
    timeout_ms: u64,
    open: HashMap<String, OpenTransaction>,
    by_deadline: BTreeSet<(i64, String)>,
}

impl Book {
    /// A book with `timeout_ms` as the default timeout, holding `open` transactions.
    pub fn new(timeout_ms: u64, open: impl IntoIterator<Item = OpenTransaction>) -> Self {
        let mut b = Self {
            timeout_ms,
            open: HashMap::new(),
            by_deadline: BTreeSet::new(),
        };
        for t in open {
            b.by_deadline.insert((t.deadline_ms, t.id.clone()));
            b.open.insert(t.id.clone(), t);
        }
        b
    }

    /// The default timeout.
    pub fn timeout_ms(&self) -> u64 {
        self.timeout_ms
    }

    /// An open transaction.
    pub fn get(&self, id: &str) -> Option<&OpenTransaction> {
        self.open.get(id)
    }

    /// How many transactions are open.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// The earliest deadline of an open transaction.
    pub fn next_deadline(&self) -> Option<i64> {
        self.by_deadline.first().map(|(d, _)| *d)
    }

    /// Takes message `m`, in the block at `height` cut at `time_ms`. `closed(id)` says
    /// whether a transaction that is not open was closed before.
    pub fn message(
        &mut self,
        m: &TxMessage,
        height: u64,
        time_ms: i64,
        closed: impl FnOnce(&str) -> bool,
    ) -> Step {
        let t = match self.open.get_mut(&m.transaction_id) {
            Some(t) => t,
            None => {
                if closed(&m.transaction_id) {
                    return Step::Late;
                }
                let deadline_ms = deadline_of(m, time_ms, self.timeout_ms);
                self.by_deadline
                    .insert((deadline_ms, m.transaction_id.clone()));
                self.open
                    .entry(m.transaction_id.clone())
                    .or_insert_with(|| OpenTransaction {
                        id: m.transaction_id.clone(),
                        opened_height: height,
                        deadline_ms,
                        parties: BTreeSet::new(),
                        finished: BTreeSet::new(),
                        messages: Vec::new(),
                    })
            }
        };
        if t.messages.len() >= MAX_TRANSACTION_MESSAGES {
            return Step::Full;
        }
        t.messages.push(m.id);
        t.parties.insert(m.sender.clone());
        t.parties.extend(m.recipients.iter().cloned());
        if m.finish {
            t.finished.insert(m.sender.clone());
            if t.is_finished() {
                return Step::Finished;
            }
        }
        Step::Open
    }

    /// Closes open transaction `id` with `status` at `time_ms`: its closing record.
    pub fn close(
        &mut self,
        id: &str,
        status: TransactionStatus,
        time_ms: i64,
    ) -> Option<(OpenTransaction, TransactionClosing)> {
        let t = self.open.remove(id)?;
        self.by_deadline.remove(&(t.deadline_ms, t.id.clone()));
        let c = t.closing(status, time_ms);
        Some((t, c))
    }

    /// The open transactions whose deadline is at or before `time_ms`, earliest first.
    pub fn overdue(&self, time_ms: i64) -> Vec<&OpenTransaction> {
        self.by_deadline
            .iter()
            .take_while(|(d, _)| *d <= time_ms)
            .filter_map(|(_, id)| self.open.get(id))
            .collect()
    }

    /// Closes, as timed out, the open transactions whose deadline is at or before
    /// `time_ms`, in order of deadline, then id, as long as their closing records fit in
    /// [`MAX_EXPIRY_BYTES_PER_BLOCK`] (the first always does).
    pub fn expire(&mut self, time_ms: i64) -> Vec<(OpenTransaction, TransactionClosing)> {
        let due: Vec<String> = self
            .by_deadline
            .iter()
            .take_while(|(d, _)| *d <= time_ms)
            .map(|(_, id)| id.clone())
            .collect();
        let mut out = Vec::new();
        let mut bytes = 0;
        for id in due {
            let Some(t) = self.open.get(&id) else {
                continue;
            };
            let len = closing_leaf(&t.closing(TransactionStatus::TimedOut, time_ms)).len();
            if !out.is_empty() && bytes + len > MAX_EXPIRY_BYTES_PER_BLOCK {
                break;
            }
            bytes += len;
            out.extend(self.close(&id, TransactionStatus::TimedOut, time_ms));
        }
        out
    }
}

/// One leaf of a block, as the transaction rules see it.
#[derive(Clone, Debug, PartialEq)]
pub enum Entry {
    /// A message, and what it did to its transaction.
    Message(TxMessage, Step),
    /// A closing record: the transaction as it was when closed, and the record.
    Closing(OpenTransaction, TransactionClosing),
    /// Another record (an anchor).
    Other,
}

/// Lays out a block: `records` (anchors) first, then each message followed, where the rules
/// say so, by its transaction's closing record, then the closings of transactions due by
/// `time_ms`. Returns the leaves and one [`Entry`] per leaf. `closed(id)` says whether the
/// ledger closed a transaction in an earlier block.
pub fn lay_out_block(
    book: &mut Book,
    height: u64,
    time_ms: i64,
    records: Vec<Vec<u8>>,
    messages: Vec<(Vec<u8>, TxMessage)>,
    closed: impl Fn(&str) -> bool,
) -> (Vec<Vec<u8>>, Vec<Entry>) {
    let mut leaves = Vec::with_capacity(records.len() + messages.len());
    let mut entries = Vec::with_capacity(leaves.capacity());
    for r in records {
        leaves.push(r);
        entries.push(Entry::Other);
    }
    let mut closed_here = std::collections::HashSet::new();
    for (bytes, m) in messages {
        let step = book.message(&m, height, time_ms, |id| {
            closed_here.contains(id) || closed(id)
        });
        leaves.push(bytes);
        let finished = step == Step::Finished;
        let id = m.transaction_id.clone();
        entries.push(Entry::Message(m, step));
        if finished && let Some((t, c)) = book.close(&id, TransactionStatus::Finished, time_ms) {
            leaves.push(closing_leaf(&c));
            entries.push(Entry::Closing(t, c));
            closed_here.insert(id);
        }
    }
    for (t, c) in book.expire(time_ms) {
        leaves.push(closing_leaf(&c));
        entries.push(Entry::Closing(t, c));
    }
    (leaves, entries)
}

/// Replays a block's leaves (checked by [`crate::block::verify_block`]) through `book`:
/// its closing records must be exactly the ones [`lay_out_block`] gives for its messages,
/// at the same places, byte for byte. On an error the book is left in an unknown state.
pub fn replay_block(
    book: &mut Book,
    height: u64,
    time_ms: i64,
    leaves: &[Vec<u8>],
    closed: impl Fn(&str) -> bool,
) -> crate::Result<Vec<Entry>> {
    use crate::block::{Leaf, classify_leaf};
    let bad = |why: String| crate::Error::Malformed {
        what: "block transactions",
        why: format!("block {height}: {why}"),
    };
    let mut records = Vec::new();
    let mut messages = Vec::new();
    for (i, leaf) in leaves.iter().enumerate() {
        match classify_leaf(leaf)? {
            Leaf::Message(env) => {
                let c: EnvelopeContent = crate::decode_canonical(&env.content, "envelope content")?;
                messages.push((leaf.clone(), TxMessage::new(crate::message_id(&env), &c)));
            }
            Leaf::Record(LedgerRecord {
                record: Some(ledger_record::Record::Closing(_)),
            }) => {}
            Leaf::Record(_) if messages.is_empty() => records.push(leaf.clone()),
            Leaf::Record(_) => return Err(bad(format!("record {i} comes after a message"))),
        }
    }
    let (want, entries) = lay_out_block(book, height, time_ms, records, messages, closed);
    if want.len() != leaves.len() {
        return Err(bad(format!(
            "{} leaves, but the transaction rules give {}",
            leaves.len(),
            want.len()
        )));
    }
    if let Some(i) = want.iter().zip(leaves).position(|(a, b)| a != b) {
        return Err(bad(format!(
            "leaf {i} is not what the transaction rules give there (a closing record missing, \
             extra or different)"
        )));
    }
    Ok(entries)
}

/// The deadline of a transaction whose first message `first` is in a block cut at
/// `opened_ms`, with default timeout `timeout_ms`.
pub fn deadline_of(first: &TxMessage, opened_ms: i64, timeout_ms: u64) -> i64 {
    let by_timeout = opened_ms.saturating_add_unsigned(timeout_ms);
    first.deadline_ms.map_or(by_timeout, |d| d.min(by_timeout))
}

/// Checks a closing record against the messages it closes (ids and contents, in ledger
/// order, each verified in its block) and the transaction's deadline: the ids, their root,
/// who finished, and the status (finished exactly when every party sent `finish` and the
/// last one was the last message; timed out only at or after the deadline).
pub fn check_closing(
    closing: &TransactionClosing,
    messages: &[TxMessage],
    deadline_ms: i64,
) -> crate::Result<()> {
    let bad = |why: String| crate::Error::Malformed {
        what: "transaction closing",
        why: format!("transaction {}: {why}", closing.transaction_id),
    };
    let mut t = OpenTransaction {
        id: closing.transaction_id.clone(),
        opened_height: 0,
        deadline_ms,
        parties: BTreeSet::new(),
        finished: BTreeSet::new(),
        messages: Vec::new(),
    };
    let mut finished_at = None;
    for (i, m) in messages.iter().enumerate() {
        if m.transaction_id != closing.transaction_id {
            return Err(bad(format!(
                "message {i} is of transaction {}",
                m.transaction_id
            )));
        }
        t.messages.push(m.id);
        t.parties.insert(m.sender.clone());
        t.parties.extend(m.recipients.iter().cloned());
        if m.finish {
            t.finished.insert(m.sender.clone());
        }
        if finished_at.is_none() && t.is_finished() {
            finished_at = Some(i);
        }
    }
    let status = match TransactionStatus::try_from(closing.status) {
        Ok(TransactionStatus::Finished) => {
            if finished_at != Some(messages.len().saturating_sub(1)) || messages.is_empty() {
                return Err(bad(
                    "says finished, but its messages do not finish it with the last one".into(),
                ));
            }
            TransactionStatus::Finished
        }
        Ok(TransactionStatus::TimedOut) => {
            if finished_at.is_some() {
                return Err(bad("says timed out, but every party sent finish".into()));
            }
            if closing.time_ms < deadline_ms {
                return Err(bad(format!(
                    "timed out at {} before its deadline {deadline_ms}",
                    closing.time_ms
                )));
            }
            TransactionStatus::TimedOut
        }
        _ => return Err(bad(format!("status {} does not close", closing.status))),
    };
    let want = t.closing(status, closing.time_ms);
    if want.message_ids != closing.message_ids {
        return Err(bad(
            "its message ids are not the transaction's messages".into()
        ));
    }
    if want.messages_root != closing.messages_root {
        return Err(bad(
            "its messages root is not the root over its message ids".into(),
        ));
    }
    if want.finished_by != closing.finished_by {
        return Err(bad(format!(
            "says finished by {:?}, its messages say {:?}",
            closing.finished_by, want.finished_by
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn msg(n: u8, tx: &str, from: &str, to: &[&str], finish: bool) -> TxMessage {
        TxMessage {
            id: [n; 32],
            transaction_id: tx.into(),
            sender: from.into(),
            recipients: to.iter().map(|s| s.to_string()).collect(),
            finish,
            deadline_ms: None,
        }
    }

    #[test]
    fn finished_when_every_party_sent_finish() {
        let mut b = Book::new(1000, []);
        let never = |_: &str| false;
        assert_eq!(
            b.message(&msg(1, "t", "a", &["b"], false), 0, 10, never),
            Step::Open
        );
        assert_eq!(
            b.message(&msg(2, "t", "a", &["b"], true), 0, 10, never),
            Step::Open
        );
        // A new party joins: finishing now needs c too.
        assert_eq!(
            b.message(&msg(3, "t", "b", &["a", "c"], true), 1, 20, never),
            Step::Open
        );
        assert_eq!(
            b.message(&msg(4, "t", "c", &["a"], true), 1, 20, never),
            Step::Finished
        );
        let (t, c) = b.close("t", TransactionStatus::Finished, 20).unwrap();
        assert_eq!(t.opened_height, 0);
        assert_eq!(c.status, TransactionStatus::Finished as i32);
        assert_eq!(c.finished_by, vec!["a", "b", "c"]);
        assert_eq!(c.message_ids.len(), 4);
        let hashes: Vec<_> = (1..=4u8).map(|n| leaf_hash(&[n; 32])).collect();
        assert_eq!(c.messages_root, merkle_root(&hashes).to_vec());
        assert!(b.is_empty());
        assert_eq!(
            b.message(&msg(5, "t", "a", &["b"], false), 2, 30, |_| true),
            Step::Late
        );
        assert!(b.is_empty());
    }

    #[test]
    fn times_out_at_the_first_block_at_or_after_its_deadline() {
        let mut b = Book::new(1000, []);
        let mut m = msg(1, "early", "a", &["b"], false);
        m.deadline_ms = Some(500);
        b.message(&m, 0, 100, |_| false);
        // A later message cannot move the deadline.
        let mut m2 = msg(2, "early", "a", &["b"], false);
        m2.deadline_ms = Some(50_000);
        b.message(&m2, 0, 100, |_| false);
        let mut m3 = msg(3, "late", "a", &["b"], false);
        m3.deadline_ms = Some(99_999); // later than the default: the default wins
        b.message(&m3, 0, 200, |_| false);
        b.message(&msg(4, "plain", "a", &["b"], false), 0, 100, |_| false);
        assert_eq!(b.get("early").unwrap().deadline_ms, 500);
        assert_eq!(b.get("late").unwrap().deadline_ms, 1200);
        assert_eq!(b.get("plain").unwrap().deadline_ms, 1100);
        assert_eq!(b.next_deadline(), Some(500));
        assert!(b.expire(499).is_empty());
        let closed: Vec<String> = b.expire(1150).into_iter().map(|(t, _)| t.id).collect();
        assert_eq!(closed, vec!["early", "plain"]);
        let (_, c) = b.expire(5000).pop().unwrap();
        assert_eq!(c.transaction_id, "late");
        assert_eq!(c.status, TransactionStatus::TimedOut as i32);
        assert!(c.finished_by.is_empty());
        assert_eq!(b.next_deadline(), None);
    }

    #[test]
    fn a_replay_gives_the_same_closings_and_refuses_others() {
        let enc = |n: u8, tx: &str, from: &str, to: &str, kind: MessageKind| {
            let c = EnvelopeContent {
                sender: from.into(),
                recipients: vec![to.into()],
                transaction_id: tx.into(),
                kind: kind as i32,
                timestamp_ms: 1,
                nonce: n.into(),
                ..Default::default()
            };
            let env = blockpost_proto::v1::Envelope {
                content: c.encode_to_vec(),
                signature: vec![n; 64],
            };
            let bytes = env.encode_to_vec();
            (bytes, TxMessage::new(crate::message_id(&env), &c))
        };
        let msgs = vec![
            enc(1, "s", "a", "b", MessageKind::Finish),
            enc(2, "s", "b", "a", MessageKind::Finish),
            enc(3, "s", "a", "b", MessageKind::Message), // late: s closed just before
            enc(4, "old", "a", "b", MessageKind::Message),
        ];
        let mut built = Book::new(100, []);
        let (leaves, entries) = lay_out_block(&mut built, 0, 1000, vec![], msgs.clone(), |_| false);
        assert_eq!(leaves.len(), 5);
        assert!(matches!(&entries[2], Entry::Closing(_, c) if c.transaction_id == "s"));
        assert!(matches!(&entries[3], Entry::Message(_, Step::Late)));
        // "old" opens at 1000 and is due at 1100: the next block at 1100 closes it alone.
        let (later, _) = lay_out_block(&mut built, 1, 1100, vec![], vec![], |id| id == "s");
        assert_eq!(later.len(), 1);

        let mut replayed = Book::new(100, []);
        assert_eq!(
            replay_block(&mut replayed, 0, 1000, &leaves, |_| false).unwrap(),
            entries
        );
        replay_block(&mut replayed, 1, 1100, &later, |id| id == "s").unwrap();
        assert!(replayed.is_empty());

        // A closing dropped, or a block that should have closed one and did not.
        let mut dropped = leaves.clone();
        dropped.remove(2);
        assert!(replay_block(&mut Book::new(100, []), 0, 1000, &dropped, |_| false).is_err());
        let mut b = Book::new(100, []);
        replay_block(&mut b, 0, 1000, &leaves, |_| false).unwrap();
        assert!(replay_block(&mut b, 1, 1100, &[], |id| id == "s").is_err());
    }

    #[test]
    fn a_closing_is_checked_against_its_messages() {
        let ms = vec![
            msg(1, "t", "a", &["b"], true),
            msg(2, "t", "b", &["a"], true),
        ];
        let mut b = Book::new(100, []);
        b.message(&ms[0], 0, 10, |_| false);
        assert_eq!(b.message(&ms[1], 0, 10, |_| false), Step::Finished);
        let (_, c) = b.close("t", TransactionStatus::Finished, 10).unwrap();
        check_closing(&c, &ms, 110).unwrap();
        assert!(check_closing(&c, &ms[..1], 110).is_err());
        let mut timed = c.clone();
        timed.status = TransactionStatus::TimedOut as i32;
        assert!(check_closing(&timed, &ms, 110).is_err());
        let mut who = c.clone();
        who.finished_by.pop();
        assert!(check_closing(&who, &ms, 110).is_err());
        let mut root = c.clone();
        root.messages_root[0] ^= 1;
        assert!(check_closing(&root, &ms, 110).is_err());

        let open = vec![msg(1, "t", "a", &["b"], false)];
        let mut b = Book::new(100, []);
        b.message(&open[0], 0, 10, |_| false);
        let (_, c) = b.expire(110).pop().unwrap();
        check_closing(&c, &open, 110).unwrap();
        assert!(
            check_closing(&c, &open, 111).is_err(),
            "before its deadline"
        );
        assert_eq!(deadline_of(&open[0], 10, 100), 110);
    }

    #[test]
    fn a_full_transaction_takes_no_more_and_expiry_is_spread_over_blocks() {
        let mut b = Book::new(100, []);
        for t in 0..4u64 {
            for i in 0..MAX_TRANSACTION_MESSAGES {
                let mut m = msg(0, &format!("big-{t}"), "a", &["b"], false);
                m.id[..8].copy_from_slice(&(i as u64).to_be_bytes());
                m.id[8..16].copy_from_slice(&t.to_be_bytes());
                assert_eq!(b.message(&m, 0, 10, |_| false), Step::Open);
            }
        }
        let finish = msg(9, "big-0", "a", &["b"], true);
        assert_eq!(b.message(&finish, 0, 10, |_| false), Step::Full);
        assert!(b.get("big-0").unwrap().finished.is_empty());
        b.message(&msg(1, "small", "a", &["b"], false), 0, 10, |_| false);
        // A closing of 10,000 ids is about 340 KB: three fill a block's expiry budget.
        let first = b.expire(110);
        let bytes: usize = first.iter().map(|(_, c)| closing_leaf(c).len()).sum();
        assert!(bytes <= MAX_EXPIRY_BYTES_PER_BLOCK, "{bytes}");
        let ids: Vec<&str> = first.iter().map(|(t, _)| t.id.as_str()).collect();
        assert_eq!(ids, ["big-0", "big-1", "big-2"]);
        let next: Vec<String> = b.expire(120).into_iter().map(|(t, _)| t.id).collect();
        assert_eq!(next, ["big-3", "small"]);
        assert!(b.is_empty());
    }

    #[test]
    fn a_book_rebuilt_from_its_open_transactions_decides_the_same() {
        let mut a = Book::new(1000, []);
        a.message(&msg(1, "t", "a", &["b"], true), 0, 10, |_| false);
        let copy = Book::new(1000, [a.get("t").unwrap().clone()]);
        let mut b = copy.clone();
        let m = msg(2, "t", "b", &["a"], true);
        assert_eq!(a.message(&m, 1, 20, |_| false), Step::Finished);
        assert_eq!(b.message(&m, 1, 20, |_| false), Step::Finished);
        assert_eq!(
            a.close("t", TransactionStatus::Finished, 20),
            b.close("t", TransactionStatus::Finished, 20)
        );
        assert_eq!(copy.next_deadline(), Some(1010));
    }
}
