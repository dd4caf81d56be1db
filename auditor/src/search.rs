//! Full-text audit search: every message of every verified block, in a tantivy index
//! (`DATA/search/`), searched with tantivy's query syntax. The index is derived data: each
//! commit records (as its payload) how many blocks it covers, so that after a restart the
//! auditor indexes only the blocks after them; an index of another format, or one whose
//! payload cannot be read, is rebuilt from the blocks.

use std::path::Path;
use std::sync::Mutex;

use tantivy::collector::{Collector, SegmentCollector, TopDocs};
use tantivy::query::{QueryParser, Weight};
use tantivy::schema::{
    FAST, Field, INDEXED, STORED, STRING, Schema, TEXT, TantivyDocument, Value as _,
};
use tantivy::{
    DocAddress, DocId, DocSet as _, Index, IndexReader, IndexWriter, Order, ReloadPolicy, Score,
    SegmentOrdinal, SegmentReader, TERMINATED, doc,
};

use crate::{Error, Result};

/// Most hits in one answer.
pub const MAX_HITS: usize = 100;
/// The writer's memory budget.
const WRITER_HEAP: usize = 50 << 20;
/// The index's format (its schema and payload): another one is rebuilt.
const FORMAT: &str = "blockpost-search 3";

/// The first `.0` matches in index order (segment, then document), without scoring: each
/// segment's matches are read only until there are enough.
struct FirstMatches(usize);

impl Collector for FirstMatches {
    type Fruit = Vec<DocAddress>;
    type Child = FirstInSegment;

    fn for_segment(
        &self,
        segment: SegmentOrdinal,
        _: &SegmentReader,
    ) -> tantivy::Result<Self::Child> {
        Ok(FirstInSegment {
            segment,
            want: self.0,
            docs: Vec::new(),
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(&self, fruits: Vec<Vec<DocAddress>>) -> tantivy::Result<Vec<DocAddress>> {
        let mut all: Vec<DocAddress> = fruits.into_iter().flatten().collect();
        all.sort();
        all.truncate(self.0);
        Ok(all)
    }

    fn collect_segment(
        &self,
        weight: &dyn Weight,
        segment: SegmentOrdinal,
        reader: &SegmentReader,
    ) -> tantivy::Result<Vec<DocAddress>> {
        let mut scorer = weight.scorer(reader, 1.0)?;
        let alive = reader.alive_bitset();
        let mut docs = Vec::new();
        let mut doc = scorer.doc();
        while doc != TERMINATED && docs.len() < self.0 {
            if alive.is_none_or(|a| a.is_alive(doc)) {
                docs.push(DocAddress::new(segment, doc));
            }
            doc = scorer.advance();
        }
        Ok(docs)
    }
}

/// [`FirstMatches`] in one segment (when tantivy collects without
/// [`Collector::collect_segment`]).
struct FirstInSegment {
    segment: SegmentOrdinal,
    want: usize,
    docs: Vec<DocAddress>,
}

impl SegmentCollector for FirstInSegment {
    type Fruit = Vec<DocAddress>;

    fn collect(&mut self, doc: DocId, _: Score) {
        if self.docs.len() < self.want {
            self.docs.push(DocAddress::new(self.segment, doc));
        }
    }

    fn harvest(self) -> Vec<DocAddress> {
        self.docs
    }
}

/// One message, as indexed.
#[derive(Clone, Debug, Default)]
pub struct IndexedMessage {
    /// SHA-256 of the envelope, hex.
    pub message_id: String,
    /// Its transaction.
    pub transaction_id: String,
    /// message, document or finish.
    pub kind: String,
    /// The sender's address and real name (from the replayed directory).
    pub sender: String,
    /// The sender's real name.
    pub sender_name: String,
    /// The recipients' addresses.
    pub recipients: Vec<String>,
    /// The recipients' real names.
    pub recipient_names: Vec<String>,
    /// The sender's timestamp (ms since the Unix epoch).
    pub time_ms: i64,
    /// The block that holds it, and its leaf there.
    pub height: u64,
    /// Its leaf index in the block.
    pub leaf: u64,
    /// The body's content type.
    pub content_type: String,
    /// The body's text, if it is not encrypted or the auditor opened it (and is UTF-8).
    pub body: Option<String>,
    /// Whether the body was sent encrypted.
    pub encrypted: bool,
    /// What a trade or settlement instruction says, when its body could be read.
    pub settlement: Option<SettlementFields>,
}

/// The fields of a trade or settlement instruction that are indexed, each searchable by
/// its name: `isin:US0378331005`, `currency:USD`, `side:deliver`, `market:XNYS`,
/// `reference:...`, `quantity:[100 TO 500]`, `amount:[50000 TO 100000]`,
/// `trade_date:[2026-12-01 TO 2026-12-31]`, `settlement_date:2026-12-07`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SettlementFields {
    /// The instrument.
    pub isin: String,
    /// Units or face amount.
    pub quantity: f64,
    /// The cash amount, if any.
    pub amount: Option<f64>,
    /// Its currency.
    pub currency: Option<String>,
    /// Trade date, `YYYY-MM-DD`.
    pub trade_date: Option<String>,
    /// Settlement date, `YYYY-MM-DD`.
    pub settlement_date: String,
    /// buy, sell, deliver or receive.
    pub side: String,
    /// The market's MIC.
    pub market: Option<String>,
    /// The message's own reference (ExecID, AllocID, TxId).
    pub reference: String,
}

impl SettlementFields {
    /// The indexed fields of a read settlement.
    pub fn of(s: &blockpost_core::settle::Settlement) -> Self {
        Self {
            isin: s.isin.clone(),
            quantity: s.quantity.to_f64(),
            amount: s.amount.as_ref().map(|a| a.value.to_f64()),
            currency: s.amount.as_ref().map(|a| a.currency.clone()),
            trade_date: s.trade_date.map(|d| d.to_string()),
            settlement_date: s.settlement_date.to_string(),
            side: s.side.as_str().to_owned(),
            market: s.market.clone(),
            reference: s.reference.clone(),
        }
    }
}

/// A search hit.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Hit {
    /// SHA-256 of the envelope, hex.
    pub message_id: String,
    /// The block that holds it.
    pub height: u64,
    /// Its leaf index there.
    pub leaf: u64,
    /// The sender's timestamp.
    pub time_ms: i64,
    /// Relevance (0 when sorted by time, and for a filter).
    pub score: f32,
    /// The sender's real name when the message was indexed.
    pub sender_name: String,
    /// Each recipient's real name then, in order.
    pub recipient_names: Vec<String>,
}

struct Fields {
    message_id: Field,
    transaction_id: Field,
    kind: Field,
    sender: Field,
    sender_name: Field,
    recipient: Field,
    recipient_name: Field,
    time: Field,
    height: Field,
    leaf: Field,
    content_type: Field,
    body: Field,
    encrypted: Field,
    isin: Field,
    quantity: Field,
    amount: Field,
    currency: Field,
    trade_date: Field,
    settlement_date: Field,
    side: Field,
    market: Field,
    reference: Field,
}

/// The search index.
pub struct SearchIndex {
    index: Index,
    /// The writer, and the number of blocks whose messages it holds.
    writer: Mutex<(IndexWriter, u64)>,
    /// Blocks covered by the last commit (at open: what the index on disk covers).
    committed: std::sync::atomic::AtomicU64,
    reader: IndexReader,
    f: Fields,
}

fn err(e: impl std::fmt::Display) -> Error {
    Error::State {
        path: "search index".into(),
        why: e.to_string(),
    }
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let f = Fields {
        message_id: b.add_text_field("message_id", STRING | STORED),
        transaction_id: b.add_text_field("transaction_id", STRING | STORED),
        kind: b.add_text_field("kind", STRING | STORED),
        sender: b.add_text_field("sender", STRING | STORED),
        sender_name: b.add_text_field("sender_name", TEXT | STORED),
        recipient: b.add_text_field("recipient", STRING | STORED),
        recipient_name: b.add_text_field("recipient_name", TEXT | STORED),
        time: b.add_i64_field("time", INDEXED | FAST | STORED),
        height: b.add_u64_field("height", INDEXED | FAST | STORED),
        leaf: b.add_u64_field("leaf", STORED),
        content_type: b.add_text_field("content_type", STRING | STORED),
        body: b.add_text_field("body", TEXT),
        encrypted: b.add_text_field("encrypted", STRING),
        isin: b.add_text_field("isin", STRING | STORED),
        quantity: b.add_f64_field("quantity", INDEXED | FAST),
        amount: b.add_f64_field("amount", INDEXED | FAST),
        currency: b.add_text_field("currency", STRING),
        trade_date: b.add_text_field("trade_date", STRING),
        settlement_date: b.add_text_field("settlement_date", STRING),
        side: b.add_text_field("side", STRING),
        market: b.add_text_field("market", STRING),
        reference: b.add_text_field("reference", STRING),
    };
    (b.build(), f)
}

impl SearchIndex {
    /// Opens the index in `dir`: the one there if it is of this format and was made with
    /// the same `opened` (the addresses whose encrypted bodies are indexed; see
    /// [`SearchIndex::blocks`]), else a new, empty one.
    pub fn open(dir: &Path, opened: &[&str]) -> Result<Self> {
        let (schema, f) = schema();
        let format = dir.join("FORMAT");
        let mut opened = opened.to_vec();
        opened.sort_unstable();
        let stamp = format!("{FORMAT}\nopened: {}\n", opened.join(" "));
        let kept = std::fs::read_to_string(&format).is_ok_and(|v| v == stamp);
        let opened = kept
            .then(|| Index::open_in_dir(dir).ok())
            .flatten()
            .and_then(|index| {
                let blocks = index.load_metas().ok()?.payload?.parse::<u64>().ok()?;
                Some((index, blocks))
            });
        let (index, blocks) = match opened {
            Some(o) => o,
            None => {
                // Derived data: start from nothing.
                if dir.exists() {
                    std::fs::remove_dir_all(dir).map_err(err)?;
                }
                std::fs::create_dir_all(dir).map_err(err)?;
                let index = Index::create_in_dir(dir, schema).map_err(err)?;
                std::fs::write(&format, &stamp).map_err(err)?;
                (index, 0)
            }
        };
        let writer = index.writer(WRITER_HEAP).map_err(err)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(err)?;
        Ok(Self {
            index,
            writer: Mutex::new((writer, blocks)),
            committed: std::sync::atomic::AtomicU64::new(blocks),
            reader,
            f,
        })
    }

    /// How many blocks (heights 0 to this, exclusive) the index holds the messages of, as
    /// of its last commit: a restarted auditor indexes the blocks from there on.
    pub fn blocks(&self) -> u64 {
        self.committed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Adds the messages of block `height` (visible after [`SearchIndex::commit`]); a
    /// block the index holds already is skipped.
    pub fn add(&self, height: u64, messages: Vec<IndexedMessage>) -> Result<()> {
        let mut guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if height < guard.1 {
            return Ok(());
        }
        guard.1 = height + 1;
        let w = &guard.0;
        let f = &self.f;
        for m in messages {
            let mut d = doc!(
                f.message_id => m.message_id,
                f.transaction_id => m.transaction_id,
                f.kind => m.kind,
                f.sender => m.sender,
                f.sender_name => m.sender_name,
                f.time => m.time_ms,
                f.height => m.height,
                f.leaf => m.leaf,
                f.content_type => m.content_type,
                f.encrypted => if m.encrypted { "yes" } else { "no" },
            );
            for r in m.recipients {
                d.add_text(f.recipient, r);
            }
            for n in m.recipient_names {
                d.add_text(f.recipient_name, n);
            }
            if let Some(b) = m.body {
                d.add_text(f.body, b);
            }
            if let Some(s) = m.settlement {
                d.add_text(f.isin, s.isin);
                d.add_f64(f.quantity, s.quantity);
                if let Some(a) = s.amount {
                    d.add_f64(f.amount, a);
                }
                if let Some(c) = s.currency {
                    d.add_text(f.currency, c);
                }
                if let Some(t) = s.trade_date {
                    d.add_text(f.trade_date, t);
                }
                d.add_text(f.settlement_date, s.settlement_date);
                d.add_text(f.side, s.side);
                if let Some(m) = s.market {
                    d.add_text(f.market, m);
                }
                d.add_text(f.reference, s.reference);
            }
            w.add_document(d).map_err(err)?;
        }
        Ok(())
    }

    /// Makes what was added searchable.
    pub fn commit(&self) -> Result<()> {
        let mut guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let blocks = guard.1;
        let mut prepared = guard.0.prepare_commit().map_err(err)?;
        prepared.set_payload(&blocks.to_string());
        prepared.commit().map_err(err)?;
        drop(guard);
        self.committed
            .store(blocks, std::sync::atomic::Ordering::SeqCst);
        self.reader.reload().map_err(err)
    }

    /// Searches with tantivy's query syntax (`sender_name:"Bank A" AND body:Megacorp`,
    /// `time:[1700000000000 TO 1800000000000]`). Words of bodies are ranked by relevance; a
    /// filter (exact fields, names and ranges only) answers its first matches in index order (stable
    /// while the index is unchanged, not by time) without reading the rest; newest first with
    /// `by_time`. `Err(why)` for a query that does not parse.
    pub fn search(
        &self,
        query: &str,
        limit: usize,
        offset: usize,
        by_time: bool,
    ) -> Result<std::result::Result<Vec<Hit>, String>> {
        let f = &self.f;
        let parser = QueryParser::for_index(
            &self.index,
            vec![
                f.body,
                f.sender_name,
                f.recipient_name,
                f.transaction_id,
                f.sender,
                f.recipient,
                f.message_id,
            ],
        );
        let q = match parser.parse_query(query) {
            Ok(q) => q,
            Err(e) => return Ok(Err(format!("query {query:?}: {e}"))),
        };
        let searcher = self.reader.searcher();
        let limit = limit.clamp(1, MAX_HITS);
        let top = TopDocs::with_limit(limit).and_offset(offset);
        // Only words of a body are ranked. Anything else is a filter: exact fields, ranges,
        // and names (every message of "Bank A AG" matches its name alike, so BM25 would
        // only rank shorter names first). A filter takes its first matches in index order
        // and stops there, as a database's LIMIT does.
        let mut ranked = false;
        q.query_terms(&mut |t, _| ranked |= t.field() == f.body);
        let found: Vec<(f32, DocAddress)> = if !by_time && !ranked {
            searcher
                .search(&q, &FirstMatches(offset.saturating_add(limit)))
                .map_err(err)?
                .into_iter()
                .skip(offset)
                .map(|a| (0.0, a))
                .collect()
        } else if by_time {
            searcher
                .search(&q, &top.order_by_fast_field::<i64>("time", Order::Desc))
                .map_err(err)?
                .into_iter()
                .map(|(_, a)| (0.0, a))
                .collect()
        } else {
            searcher.search(&q, &top.order_by_score()).map_err(err)?
        };
        let mut hits = Vec::with_capacity(found.len());
        for (score, addr) in found {
            let d: TantivyDocument = searcher.doc(addr).map_err(err)?;
            let text = |field| {
                d.get_first(field)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_owned()
            };
            hits.push(Hit {
                message_id: text(f.message_id),
                height: d.get_first(f.height).and_then(|v| v.as_u64()).unwrap_or(0),
                leaf: d.get_first(f.leaf).and_then(|v| v.as_u64()).unwrap_or(0),
                time_ms: d.get_first(f.time).and_then(|v| v.as_i64()).unwrap_or(0),
                score,
                sender_name: text(f.sender_name),
                recipient_names: d
                    .get_all(f.recipient_name)
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect(),
            });
        }
        Ok(Ok(hits))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn msg(height: u64, leaf: u64, tx: &str, body: &str) -> IndexedMessage {
        IndexedMessage {
            message_id: format!("{height:02}{leaf:02}"),
            transaction_id: tx.into(),
            kind: "message".into(),
            sender: "bank-a".into(),
            sender_name: "Bank A AG".into(),
            recipients: vec!["bank-b".into()],
            recipient_names: vec!["Bank B AG".into()],
            time_ms: 1_000 * height as i64 + leaf as i64,
            height,
            leaf,
            content_type: "text/plain".into(),
            body: Some(body.into()),
            encrypted: false,
            settlement: None,
        }
    }

    #[test]
    fn settlement_fields_are_searched_exactly_and_by_range() {
        let dir = tempfile::tempdir().unwrap();
        let index = SearchIndex::open(dir.path(), &[]).unwrap();
        let trade = |leaf: u64, isin: &str, qty: f64, date: &str| {
            let mut m = msg(0, leaf, "dvp", "trade");
            m.kind = "trade".into();
            m.settlement = Some(SettlementFields {
                isin: isin.into(),
                quantity: qty,
                amount: Some(qty * 189.25),
                currency: Some("USD".into()),
                trade_date: Some("2026-12-04".into()),
                settlement_date: date.into(),
                side: "sell".into(),
                market: Some("XNYS".into()),
                reference: format!("EXEC-{leaf}"),
            });
            m
        };
        index
            .add(
                0,
                vec![
                    trade(0, "US0378331005", 400.0, "2026-12-07"),
                    trade(1, "US0378331005", 100.0, "2027-01-04"),
                    trade(2, "US5949181045", 50.0, "2026-12-08"),
                    msg(0, 3, "other", "US0378331005 in a text"),
                ],
            )
            .unwrap();
        index.commit().unwrap();
        let leaves = |q: &str| -> Vec<u64> {
            let mut v: Vec<u64> = index
                .search(q, 10, 0, false)
                .unwrap()
                .unwrap()
                .iter()
                .map(|h| h.leaf)
                .collect();
            v.sort_unstable();
            v
        };
        assert_eq!(leaves("isin:US0378331005"), [0, 1]);
        assert_eq!(
            leaves("isin:US0378331005 AND settlement_date:[2026-12-01 TO 2026-12-31]"),
            [0]
        );
        assert_eq!(leaves("quantity:[60 TO 1000]"), [0, 1]);
        assert_eq!(leaves("amount:[10000 TO 20000]"), [1]);
        assert_eq!(
            leaves("currency:USD AND side:sell AND market:XNYS"),
            [0, 1, 2]
        );
        assert_eq!(leaves("reference:EXEC-2"), [2]);
        assert_eq!(leaves("US0378331005"), [3]);
    }

    #[test]
    fn a_filter_answers_its_first_matches_in_order_and_free_text_is_ranked() {
        let dir = tempfile::tempdir().unwrap();
        let index = SearchIndex::open(dir.path(), &[]).unwrap();
        // Three blocks, each its own commit (its own segment).
        for h in 0..3u64 {
            let docs = (0..4)
                .map(|l| {
                    let body = if h == 1 && l == 2 {
                        "megacorp megacorp megacorp"
                    } else {
                        "deliver megacorp against cash and other words here"
                    };
                    msg(h, l, &format!("tx-{}", l % 2), body)
                })
                .collect();
            index.add(h, docs).unwrap();
            index.commit().unwrap();
        }
        let at = |hits: Vec<Hit>| -> Vec<(u64, u64)> {
            hits.iter().map(|h| (h.height, h.leaf)).collect()
        };
        // An exact field: its first matches in index order (stable, not by time); pages
        // of it are disjoint and together are all of them.
        let sorted = |mut v: Vec<(u64, u64)>| {
            v.sort();
            v
        };
        let everything: Vec<(u64, u64)> =
            (0..3).flat_map(|h| (0..4).map(move |l| (h, l))).collect();
        let first = at(index.search("kind:message", 5, 0, false).unwrap().unwrap());
        assert_eq!(first.len(), 5);
        let mut pages = first.clone();
        for offset in [5, 10] {
            pages.extend(at(index
                .search("kind:message", 5, offset, false)
                .unwrap()
                .unwrap()));
        }
        assert_eq!(sorted(pages.clone()), everything);
        assert_eq!(
            at(index.search("kind:message", 5, 0, false).unwrap().unwrap()),
            first
        );
        let tx = at(index
            .search("transaction_id:tx-1", 10, 0, false)
            .unwrap()
            .unwrap());
        assert_eq!(
            sorted(tx),
            vec![(0, 1), (0, 3), (1, 1), (1, 3), (2, 1), (2, 3)]
        );
        // A range is a filter too.
        let range = at(index
            .search("time:[1000 TO 1003]", 10, 0, false)
            .unwrap()
            .unwrap());
        assert_eq!(sorted(range), vec![(1, 0), (1, 1), (1, 2), (1, 3)]);
        assert!(
            index
                .search("kind:message", 10, 0, false)
                .unwrap()
                .unwrap()
                .iter()
                .all(|h| h.score == 0.0)
        );
        // Names filter too.
        let named = index
            .search(r#"sender_name:"bank a""#, 3, 0, false)
            .unwrap()
            .unwrap();
        assert_eq!(named.len(), 3);
        assert!(named.iter().all(|h| h.score == 0.0));
        // Words of a body are ranked: the message that says it three times comes first.
        let text = index.search("body:megacorp", 3, 0, false).unwrap().unwrap();
        assert_eq!((text[0].height, text[0].leaf), (1, 2));
        assert!(text[0].score > text[1].score);
        // Newest first on request.
        let newest = index.search("kind:message", 2, 0, true).unwrap().unwrap();
        assert_eq!(at(newest), vec![(2, 3), (2, 2)]);
    }
}
