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

/// Why the ledger takes no more messages for a transaction.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Closed {
    /// Its closing record, finished, is in a block.
    #[error("transaction {0} is finished")]
    Finished(String),
    /// Its closing record, timed out, is in a block.
    #[error("transaction {0} is timed out")]
    TimedOut(String),
    /// It holds [`MAX_TRANSACTION_MESSAGES`] messages already.
    #[error("transaction {id} holds {messages} messages, the most a transaction may")]
    Full {
        /// The transaction.
        id: String,
        /// Messages it holds.
        messages: u64,
    },
}

/// Whether the ledger takes more messages for a transaction: not once its closing record
/// is in a block, nor once it holds the most messages a transaction may. The ledger's
/// builder answers it and the node hands it to the gateway; a gateway without one accepts
/// every transaction. Neither crate knows the other: the trait is the contract.
pub trait TransactionGate: Send + Sync {
    /// Why transaction `id` takes no more messages, if it does not.
    fn refusal(&self, id: &str) -> Option<Closed>;

    /// Why no receipt can be issued now, if it cannot: the builder behind the gate is
    /// stalled, so a receipt's promise of a block by its deadline would not be kept.
    fn unavailable(&self) -> Option<String> {
        None
    }
}

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

/// Bytes a leaf of `len` bytes takes in an encoded block (field tag, length, bytes).
pub const fn framed_len(len: usize) -> usize {
    let mut varint = 1;
    let mut rest = len >> 7;
    while rest > 0 {
        varint += 1;
        rest >>= 7;
    }
    1 + varint + len
}

/// The longest closing leaf there can be: [`MAX_TRANSACTION_MESSAGES`] message ids, as
/// many parties that sent `finish`, each address and the transaction id at their longest.
pub const MAX_CLOSING_LEAF_LEN: usize = {
    let ids = MAX_TRANSACTION_MESSAGES * (1 + 1 + 32);
    let finished_by = MAX_TRANSACTION_MESSAGES * (1 + 1 + crate::Address::MAX_LEN);
    let transaction_id = framed_len(crate::MAX_TEXT_LEN);
    let (status, root, time) = (2, framed_len(32), 1 + 10);
    framed_len(ids + finished_by + transaction_id + status + root + time)
};

/// The shortest closing leaf there can be (one message id, its root, a status).
const MIN_CLOSING_LEAF_LEN: usize = framed_len(2 + framed_len(32) + framed_len(32));

/// Most bytes the time-out closings at the end of one block take in the encoded block,
/// framing included: [`MAX_EXPIRY_BYTES_PER_BLOCK`] of records (or one record longer than
/// that), each framed as a leaf.
pub const MAX_EXPIRY_LEAVES_LEN: usize = {
    let bytes = if MAX_EXPIRY_BYTES_PER_BLOCK > MAX_CLOSING_LEAF_LEN {
        MAX_EXPIRY_BYTES_PER_BLOCK
    } else {
        MAX_CLOSING_LEAF_LEN
    };
    let leaves = 1 + bytes / MIN_CLOSING_LEAF_LEN;
    bytes + leaves * (framed_len(MAX_CLOSING_LEAF_LEN) - MAX_CLOSING_LEAF_LEN)
};

/// Bytes an encoded block keeps for its signed header and its own framing.
pub const BLOCK_HEADER_ROOM: usize = 4096;

/// What a builder may put in one block. Every leaf counts: anchors and other records,
/// messages, the closing record a message brings, and room for the time-out closings the
/// rules add at the end of every block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockBudget {
    /// Most bytes of records, messages and their closings the builder fills a block with
    /// (its `max_block_bytes`). A block's first message goes in even when it alone is
    /// larger, as long as the block stays within `capacity`.
    pub max_fill_bytes: usize,
    /// Most records, messages and closing records in one block, before time-outs.
    pub max_leaves: usize,
    /// The largest encoded block, time-out closings at their worst included: a block that
    /// would not fit is never laid out.
    pub capacity: usize,
}

impl BlockBudget {
    /// No limit (replaying a block someone else laid out).
    pub const UNLIMITED: Self = Self {
        max_fill_bytes: usize::MAX,
        max_leaves: usize::MAX,
        capacity: usize::MAX,
    };

    /// The largest message (encoded envelope) a block within this budget always carries,
    /// whatever records come with it: a block whose records leave no room for it holds
    /// only them, and the message goes first in the next one.
    pub fn max_message_len(&self) -> usize {
        let room = self
            .capacity
            .saturating_sub(BLOCK_HEADER_ROOM)
            .saturating_sub(MAX_EXPIRY_LEAVES_LEN)
            .saturating_sub(framed_len(MAX_CLOSING_LEAF_LEN));
        // The largest `n` with framed_len(n) <= room.
        let mut n = room.saturating_sub(framed_len(room) - room);
        while n > 0 && framed_len(n) > room {
            n -= 1;
        }
        while framed_len(n + 1) <= room {
            n += 1;
        }
        n
    }
}

/// A block as laid out within a [`BlockBudget`].
#[derive(Clone, Debug, Default)]
pub struct Layout {
    /// Its leaves.
    pub leaves: Vec<Vec<u8>>,
    /// One [`Entry`] per leaf.
    pub entries: Vec<Entry>,
    /// How many of the messages offered it took, from the front (`too_large` among them);
    /// the rest go in the next block.
    pub taken: usize,
    /// Messages (their places among those offered) too large for any block within the
    /// budget: they are in no block, and the builder refuses them.
    pub too_large: Vec<usize>,
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

    /// The length of the closing leaf (its [`closing_leaf`] bytes) that message `m` would
    /// bring with it, in a block cut at `time_ms` (0 when it would not finish its
    /// transaction), without taking it.
    /// `closed(id)` says whether a transaction that is not open was closed before.
    pub fn closing_len_after(
        &self,
        m: &TxMessage,
        time_ms: i64,
        closed: impl FnOnce(&str) -> bool,
    ) -> usize {
        if !m.finish {
            return 0;
        }
        let empty = BTreeSet::new();
        let (count, parties, finished) = match self.open.get(&m.transaction_id) {
            Some(t) if t.messages.len() >= MAX_TRANSACTION_MESSAGES => return 0,
            Some(t) => (t.messages.len() + 1, &t.parties, &t.finished),
            None if closed(&m.transaction_id) => return 0,
            None => (1, &empty, &empty),
        };
        let done = |p: &String| *p == m.sender || finished.contains(p);
        if !(parties.iter().all(done) && m.recipients.iter().all(done)) {
            return 0;
        }
        let mut finished_by: Vec<String> = finished.iter().cloned().collect();
        if !finished.contains(&m.sender) {
            finished_by.push(m.sender.clone());
        }
        // Everything but the ids, encoded; each id is one more 34-byte field.
        let c = TransactionClosing {
            transaction_id: m.transaction_id.clone(),
            status: TransactionStatus::Finished as i32,
            message_ids: Vec::new(),
            messages_root: vec![0; 32],
            finished_by,
            time_ms,
        };
        framed_len(c.encoded_len() + count * framed_len(32))
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
    /// An anchor record.
    Anchor,
    /// A delivery record.
    Delivery,
    /// Another record.
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
    let l = lay_out_block_within(
        book,
        height,
        time_ms,
        records,
        &mut messages.into(),
        closed,
        &BlockBudget::UNLIMITED,
    );
    (l.leaves, l.entries)
}

/// [`lay_out_block`] within `budget`: it takes messages from the front of `messages` while
/// each, with the closing record it brings, keeps the block within the budget (the first
/// one within `capacity` alone), and leaves the rest in `messages` for the next block. The rules do not
/// depend on where the builder cut: a replay lays out the messages a block holds.
pub fn lay_out_block_within(
    book: &mut Book,
    height: u64,
    time_ms: i64,
    records: Vec<Vec<u8>>,
    messages: &mut std::collections::VecDeque<(Vec<u8>, TxMessage)>,
    closed: impl Fn(&str) -> bool,
    budget: &BlockBudget,
) -> Layout {
    let mut out = Layout {
        leaves: Vec::with_capacity(records.len() + messages.len()),
        entries: Vec::with_capacity(records.len() + messages.len()),
        ..Layout::default()
    };
    // Bytes of the encoded block so far, its header and the worst time-outs included.
    let mut used = BLOCK_HEADER_ROOM.saturating_add(MAX_EXPIRY_LEAVES_LEN);
    // Bytes of leaves the builder chose to fill (records, messages, their closings).
    let mut filled = 0usize;
    for r in records {
        used = used.saturating_add(framed_len(r.len()));
        filled = filled.saturating_add(r.len());
        let entry = match LedgerRecord::decode(r.as_slice()).map(|l| l.record) {
            Ok(Some(ledger_record::Record::Anchor(_))) => Entry::Anchor,
            Ok(Some(ledger_record::Record::Delivery(_))) => Entry::Delivery,
            _ => Entry::Other,
        };
        out.leaves.push(r);
        out.entries.push(entry);
    }
    let mut closed_here = std::collections::HashSet::new();
    let mut i = 0;
    while let Some((bytes, m)) = messages.front() {
        let closing =
            book.closing_len_after(m, time_ms, |id| closed_here.contains(id) || closed(id));
        let mut cost = framed_len(bytes.len());
        let mut leaves = 1;
        if closing > 0 {
            cost = cost.saturating_add(framed_len(closing));
            leaves += 1;
        }
        let fits_capacity = used.saturating_add(cost) <= budget.capacity;
        if out.leaves.is_empty() && !fits_capacity {
            // No block within the budget can hold it.
            messages.pop_front();
            out.too_large.push(i);
            i += 1;
            out.taken = i;
            continue;
        }
        let fits_fill = filled.saturating_add(cost) <= budget.max_fill_bytes
            && out.leaves.len().saturating_add(leaves) <= budget.max_leaves;
        let fits = fits_capacity && fits_fill;
        if !fits && !out.leaves.is_empty() {
            break;
        }
        let Some((bytes, m)) = messages.pop_front() else {
            break;
        };
        i += 1;
        out.taken = i;
        used = used.saturating_add(cost);
        filled = filled.saturating_add(cost);
        let step = book.message(&m, height, time_ms, |id| {
            closed_here.contains(id) || closed(id)
        });
        out.leaves.push(bytes);
        let finished = step == Step::Finished;
        let id = m.transaction_id.clone();
        out.entries.push(Entry::Message(m, step));
        if finished && let Some((t, c)) = book.close(&id, TransactionStatus::Finished, time_ms) {
            out.leaves.push(closing_leaf(&c));
            out.entries.push(Entry::Closing(t, c));
            closed_here.insert(id);
        }
    }
    for (t, c) in book.expire(time_ms) {
        out.leaves.push(closing_leaf(&c));
        out.entries.push(Entry::Closing(t, c));
    }
    out
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

/// Where a message or a record is in the ledger: its block's height, its leaf index there,
/// and the block's time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    /// The block.
    pub height: u64,
    /// The leaf in it.
    pub leaf_index: u64,
    /// When the block was cut (Unix ms).
    pub time_ms: i64,
}

/// Checks a closing record at `at` against its transaction `tx`'s messages in ledger
/// order, each with its place: it closes `tx`, carries its block's time, names no message
/// after it, sits right after the last `finish` when it says finished, and passes
/// [`check_closing`] with `deadline_ms`. What the client and an evidence bundle's check
/// both hold a closing to.
pub fn check_closing_placed(
    tx: &str,
    closing: &TransactionClosing,
    at: Place,
    messages: &[(TxMessage, Place)],
    deadline_ms: i64,
) -> std::result::Result<(), String> {
    if closing.transaction_id != tx {
        return Err(format!("it closes {:?}", closing.transaction_id));
    }
    if closing.time_ms != at.time_ms {
        return Err("its time is not its block's".into());
    }
    let n = closing.message_ids.len();
    if n > messages.len() || messages[..n].iter().any(|(_, p)| p.height > at.height) {
        return Err("it names messages that are not there, or after it".into());
    }
    if closing.status == TransactionStatus::Finished as i32 {
        let right_after = n
            .checked_sub(1)
            .map(|i| messages[i].1)
            .is_some_and(|p| (p.height, p.leaf_index + 1) == (at.height, at.leaf_index));
        if !right_after {
            return Err("a finished closing record is not right after the last finish".into());
        }
    }
    let closed: Vec<TxMessage> = messages[..n].iter().map(|(m, _)| m.clone()).collect();
    check_closing(closing, &closed, deadline_ms).map_err(|e| e.to_string())
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
    fn a_closing_is_checked_where_it_is() {
        let ms = [
            msg(1, "t", "a", &["b"], true),
            msg(2, "t", "b", &["a"], true),
        ];
        let mut b = Book::new(100, []);
        b.message(&ms[0], 0, 10, |_| false);
        b.message(&ms[1], 0, 10, |_| false);
        let (_, c) = b.close("t", TransactionStatus::Finished, 10).unwrap();
        let at = |height, leaf_index| Place {
            height,
            leaf_index,
            time_ms: 10,
        };
        let placed = vec![(ms[0].clone(), at(0, 0)), (ms[1].clone(), at(1, 4))];
        check_closing_placed("t", &c, at(1, 5), &placed, 110).unwrap();
        for (why, tx, place) in [
            ("not right after the last finish", "t", at(1, 6)),
            ("after it", "t", at(0, 9)),
            ("closes", "u", at(1, 5)),
            (
                "time",
                "t",
                Place {
                    time_ms: 11,
                    ..at(1, 5)
                },
            ),
        ] {
            let e = check_closing_placed(tx, &c, place, &placed, 110).unwrap_err();
            assert!(e.contains(why), "{why}: {e}");
        }
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

    /// The encoded block a layout gives, as the builder would store it (header at its
    /// largest room).
    fn block_len(leaves: &[Vec<u8>]) -> usize {
        BLOCK_HEADER_ROOM + leaves.iter().map(|l| framed_len(l.len())).sum::<usize>()
    }

    #[test]
    fn framed_len_is_what_prost_writes() {
        for n in [
            0usize,
            1,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            8 << 20,
        ] {
            let b = blockpost_proto::v1::Block {
                header: None,
                leaves: vec![vec![0; n]],
            };
            assert_eq!(b.encoded_len(), framed_len(n), "{n}");
        }
    }

    #[test]
    fn the_longest_closing_is_within_max_closing_leaf_len() {
        let tx = "t".repeat(crate::MAX_TEXT_LEN);
        let mut t = OpenTransaction {
            id: tx,
            opened_height: 0,
            deadline_ms: 0,
            parties: BTreeSet::new(),
            finished: BTreeSet::new(),
            messages: Vec::new(),
        };
        for i in 0..MAX_TRANSACTION_MESSAGES {
            t.messages.push([7; 32]);
            let a = format!("{i:0>63}");
            t.parties.insert(a.clone());
            t.finished.insert(a);
        }
        // A negative time takes the longest varint.
        let len = closing_leaf(&t.closing(TransactionStatus::TimedOut, -1)).len();
        assert!(
            len <= MAX_CLOSING_LEAF_LEN,
            "{len} > {MAX_CLOSING_LEAF_LEN}"
        );
        assert!(
            MAX_CLOSING_LEAF_LEN - len < 16,
            "the bound is loose by {}",
            MAX_CLOSING_LEAF_LEN - len
        );
        const { assert!(MAX_CLOSING_LEAF_LEN <= MAX_EXPIRY_LEAVES_LEN) };
    }

    #[test]
    fn closing_len_after_is_the_length_of_the_closing_laid_out() {
        let mut b = Book::new(1000, []);
        let never = |_: &str| false;
        let first = msg(1, "t", "alice", &["bob", "carol"], true);
        assert_eq!(
            b.closing_len_after(&first, 10, never),
            0,
            "bob has not finished"
        );
        b.message(&first, 0, 10, never);
        let second = msg(2, "t", "bob", &["alice"], true);
        assert_eq!(
            b.closing_len_after(&second, 10, never),
            0,
            "carol has not finished"
        );
        b.message(&second, 0, 10, never);
        assert_eq!(
            b.closing_len_after(&msg(3, "t", "carol", &["alice"], false), 10, never),
            0
        );
        let last = msg(4, "t", "carol", &["alice", "bob"], true);
        let predicted = b.closing_len_after(&last, 77, never);
        let l = lay_out_block_within(
            &mut b,
            1,
            77,
            Vec::new(),
            &mut vec![(vec![1; 10], last)].into(),
            never,
            &BlockBudget::UNLIMITED,
        );
        assert_eq!(l.leaves.len(), 2);
        assert_eq!(l.leaves[1].len(), predicted);
        // A lone message that finishes at once (it names only its sender) brings one too.
        let alone = msg(5, "solo", "dora", &[], true);
        let predicted = b.closing_len_after(&alone, 5, never);
        let l = lay_out_block(&mut b, 2, 5, Vec::new(), vec![(vec![1; 3], alone)], never);
        assert_eq!(l.0[1].len(), predicted);
        // Closed before: no closing.
        let late = msg(6, "t", "carol", &["alice"], true);
        assert_eq!(b.closing_len_after(&late, 10, |id| id == "t"), 0);
    }

    #[test]
    fn the_largest_message_fits_with_its_closing_and_the_worst_time_outs() {
        let budget = BlockBudget {
            max_fill_bytes: 64 << 10,
            max_leaves: 10,
            capacity: (8 << 20) - 1024,
        };
        let max = budget.max_message_len();
        assert!(max > 5 << 20 && max < budget.capacity, "{max}");
        // The longest closing there can be: 10,000 parties at the longest address each
        // sent finish in one transaction with the longest id; the last one finishes it
        // with the largest message.
        let tx = "t".repeat(crate::MAX_TEXT_LEN);
        let mut b = Book::new(1000, []);
        let party = |i: usize| format!("{i:0>63}");
        for i in 0..MAX_TRANSACTION_MESSAGES - 1 {
            let mut m = msg(0, &tx, &party(i), &[], true);
            m.id[..8].copy_from_slice(&(i as u64).to_be_bytes());
            // Everyone who joins must finish too: name the last party from the start.
            m.recipients = vec![party(MAX_TRANSACTION_MESSAGES - 1)];
            assert_eq!(b.message(&m, 0, 10, |_| false), Step::Open);
        }
        // Transactions overdue by the block's time take their worst share of it.
        for t in 0..40u64 {
            for i in 0..1_000u64 {
                let mut m = msg(0, &format!("old-{t}"), "x", &["y"], false);
                m.id[..8].copy_from_slice(&i.to_be_bytes());
                m.id[8..16].copy_from_slice(&t.to_be_bytes());
                b.message(&m, 0, 0, |_| false);
            }
        }
        let last = msg(200, &tx, &party(MAX_TRANSACTION_MESSAGES - 1), &[], true);
        let closing = b.closing_len_after(&last, 5_000, |_| false);
        assert!(closing + 64 > MAX_CLOSING_LEAF_LEN, "{closing}");
        let l = lay_out_block_within(
            &mut b,
            1,
            5_000,
            Vec::new(),
            &mut vec![(vec![0; max], last)].into(),
            |_| false,
            &budget,
        );
        assert_eq!((l.taken, l.too_large.len()), (1, 0));
        assert_eq!(l.leaves[1].len(), closing, "the closing follows it");
        assert!(l.entries.len() > 3, "time-outs close in the same block");
        assert!(block_len(&l.leaves) <= budget.capacity);
        // A message larger than a block's room for messages can never be in one; the one
        // after it still is.
        let room = budget.capacity - BLOCK_HEADER_ROOM - MAX_EXPIRY_LEAVES_LEN;
        let mut b = Book::new(1000, []);
        let l = lay_out_block_within(
            &mut b,
            1,
            5,
            Vec::new(),
            &mut vec![
                (vec![0; room], msg(1, "too-big", "a", &[], false)),
                (vec![1; 10], msg(2, "u", "a", &[], false)),
            ]
            .into(),
            |_| false,
            &budget,
        );
        assert_eq!((l.taken, l.too_large.clone()), (2, vec![0]));
        assert!(matches!(&l.entries[0], Entry::Message(m, Step::Open) if m.transaction_id == "u"));
        // With records first, a message that does not fit beside them waits for the next
        // block, where it fits.
        let mut offered = vec![(vec![0; room - 8], msg(3, "v", "a", &[], false))].into();
        let l = lay_out_block_within(
            &mut b,
            2,
            5,
            vec![vec![7; 100]],
            &mut offered,
            |_| false,
            &budget,
        );
        assert_eq!((l.taken, l.leaves.len(), offered.len()), (0, 1, 1));
        let l = lay_out_block_within(&mut b, 3, 5, Vec::new(), &mut offered, |_| false, &budget);
        assert_eq!((l.taken, l.too_large.len(), offered.len()), (1, 0, 0));
        assert!(block_len(&l.leaves) <= budget.capacity);
    }

    #[test]
    fn a_budget_splits_messages_over_blocks_that_replay_the_same() {
        let budget = BlockBudget {
            max_fill_bytes: 3_000,
            max_leaves: 8,
            capacity: 2 << 20,
        };
        let mut offered: std::collections::VecDeque<(Vec<u8>, TxMessage)> = (0..60u8)
            .map(|i| {
                let tx = format!("t{}", i / 3);
                let m = msg(i, &tx, &format!("p{}", i % 3), &["p0", "p1", "p2"], true);
                (vec![i; 100 + 40 * usize::from(i % 7)], m)
            })
            .collect();
        // A record comes first in the first block.
        let mut records = vec![vec![9u8; 200]];
        let mut builder = Book::new(1000, []);
        let mut auditor = Book::new(1000, []);
        let mut height = 0;
        while !offered.is_empty() {
            let before: Vec<_> = offered.iter().cloned().collect();
            let records_here = std::mem::take(&mut records);
            let l = lay_out_block_within(
                &mut builder,
                height,
                10,
                records_here.clone(),
                &mut offered,
                |_| false,
                &budget,
            );
            assert!(l.taken > 0 && l.too_large.is_empty());
            let filled: usize = l.leaves.iter().map(|x| framed_len(x.len())).sum();
            let first_alone = l.taken == 1;
            assert!(filled <= budget.max_fill_bytes || first_alone, "{filled}");
            assert!(l.leaves.len() <= budget.max_leaves || first_alone);
            // Laid out again without a budget, the messages the block took give the same
            // block: the rules do not depend on where the builder cut.
            let taken = before[..l.taken].to_vec();
            let again = lay_out_block(&mut auditor, height, 10, records_here, taken, |_| false);
            assert_eq!((again.0, again.1), (l.leaves.clone(), l.entries.clone()));
            height += 1;
        }
        assert!(height > 5, "{height} blocks");
        assert!(
            builder.is_empty() && auditor.is_empty(),
            "every transaction finished"
        );
    }
}
