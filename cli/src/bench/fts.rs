//! The side-by-side in `blockpost bench audit`: the auditor's search index (tantivy)
//! against SQLite FTS5 (through rusqlite with its bundled SQLite), which is what a user
//! would reach for instead, on the same corpus: every message of every block, with the
//! fields the auditor indexes. Each is timed indexing it from scratch, measured on disk,
//! and asked the same four kinds of query.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use blockpost_auditor::{IndexedMessage, SearchIndex};
use blockpost_client::{Client, Ledger};
use blockpost_core::decode_canonical;
use blockpost_proto::v1::envelope_content::Body;
use blockpost_proto::v1::{Envelope, EnvelopeContent};

use crate::say;

/// The messages of blocks `0..blocks`, as the auditor indexes them, fetched and verified
/// through the client.
pub async fn corpus(
    dir: &mut Client,
    state: &Path,
    blocks: u64,
) -> anyhow::Result<Vec<(u64, Vec<IndexedMessage>)>> {
    let mut ledger = Ledger::connect(dir, state).await?;
    let mut names: HashMap<String, String> = HashMap::new();
    let mut out = Vec::new();
    for h in 0..blocks {
        let b = ledger.block(Some(h)).await?;
        let mut docs = Vec::new();
        for (leaf, bytes) in b.block.leaves.iter().enumerate() {
            let Ok(env) = decode_canonical::<Envelope>(bytes, "envelope") else {
                continue; // a closing or anchor record
            };
            let Ok(c) = decode_canonical::<EnvelopeContent>(&env.content, "content") else {
                continue;
            };
            let mut name = async |a: &str| -> anyhow::Result<String> {
                if let Some(n) = names.get(a) {
                    return Ok(n.clone());
                }
                let n = dir.current(a).await?.binding.real_name;
                names.insert(a.to_owned(), n.clone());
                Ok(n)
            };
            let sender_name = name(&c.sender).await?;
            let mut recipient_names = Vec::new();
            for r in &c.recipients {
                recipient_names.push(name(r).await?);
            }
            docs.push(IndexedMessage {
                settlement: None,
                message_id: hex::encode(blockpost_core::message_id_of_encoded(bytes)),
                transaction_id: c.transaction_id.clone(),
                kind: blockpost_core::kind_name(c.kind).to_owned(),
                sender: c.sender.clone(),
                sender_name,
                recipients: c.recipients.clone(),
                recipient_names,
                time_ms: c.timestamp_ms,
                height: h,
                leaf: leaf as u64,
                content_type: c.content_type.clone(),
                encrypted: matches!(c.body, Some(Body::Encrypted(_))),
                body: match &c.body {
                    Some(Body::Plaintext(p)) => String::from_utf8(p.clone()).ok(),
                    _ => None,
                },
            });
        }
        out.push((h, docs));
    }
    Ok(out)
}

/// The four kinds of query, as tantivy and as SQL over FTS5.
enum Query {
    Transaction(String),
    SenderName(String),
    TimeRange(i64, i64),
    Kind(&'static str),
}

fn queries(n: usize, senders: usize, messages: usize, now: i64) -> Vec<Query> {
    (0..n)
        .map(|i| match i % 4 {
            0 => Query::Transaction(format!("tx-{}", (i * 7919) % (messages / 4).max(1))),
            1 => Query::SenderName(format!("sender {} ag", i % senders.max(1))),
            2 => Query::TimeRange(now - 1_000 * (i as i64 % 60), now),
            _ => Query::Kind("message"),
        })
        .collect()
}

fn pct(v: &[Duration], p: f64) -> f64 {
    super::messages::pct(v, p)
}

/// Indexes `corpus` with both and prints the comparison.
pub fn compare(
    corpus: &[(u64, Vec<IndexedMessage>)],
    dir: &Path,
    senders: usize,
) -> anyhow::Result<()> {
    let n: usize = corpus.iter().map(|(_, d)| d.len()).sum();
    let now = blockpost_core::now_ms();
    let qs = queries(400, senders, n, now);

    // tantivy, as the auditor uses it.
    let tdir = dir.join("tantivy");
    let t = Instant::now();
    let index = SearchIndex::open(&tdir, &[])?;
    for (h, docs) in corpus {
        index.add(*h, docs.clone())?;
    }
    index.commit()?;
    let t_index = t.elapsed();
    let t_bytes = super::blocks::dir_size(&tdir);
    let mut t_lat = Vec::new();
    let mut t_hits = 0;
    for q in &qs {
        let q = match q {
            Query::Transaction(t) => format!("transaction_id:{t}"),
            Query::SenderName(s) => format!("sender_name:\"{s}\""),
            Query::TimeRange(a, b) => format!("time:[{a} TO {b}]"),
            Query::Kind(k) => format!("kind:{k}"),
        };
        let t = Instant::now();
        t_hits += index
            .search(&q, 10, 0, false)?
            .map_err(|e| anyhow::anyhow!(e))?
            .len();
        t_lat.push(t.elapsed());
    }
    t_lat.sort();
    drop(index);

    // SQLite FTS5: the text fields in an FTS5 table, time and height in a plain table
    // with a b-tree index on time (FTS5 has no ranges).
    let path = dir.join("fts5.db");
    let t = Instant::now();
    let mut db = rusqlite::Connection::open(&path)?;
    db.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         CREATE VIRTUAL TABLE fts USING fts5(
             message_id UNINDEXED, transaction_id, kind, sender, sender_name, recipient,
             recipient_name, content_type, body, encrypted, tokenize = 'unicode61');
         CREATE TABLE meta (id INTEGER PRIMARY KEY, time INTEGER, height INTEGER, leaf INTEGER);",
    )?;
    {
        let tx = db.transaction()?;
        {
            let mut fts = tx.prepare(
                "INSERT INTO fts (rowid, message_id, transaction_id, kind, sender, sender_name,
                 recipient, recipient_name, content_type, body, encrypted)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?;
            let mut meta =
                tx.prepare("INSERT INTO meta (id, time, height, leaf) VALUES (?1, ?2, ?3, ?4)")?;
            let mut id = 0i64;
            for (_, docs) in corpus {
                for m in docs {
                    id += 1;
                    fts.execute(rusqlite::params![
                        id,
                        m.message_id,
                        m.transaction_id,
                        m.kind,
                        m.sender,
                        m.sender_name,
                        m.recipients.join(" "),
                        m.recipient_names.join(" "),
                        m.content_type,
                        m.body,
                        if m.encrypted { "yes" } else { "no" },
                    ])?;
                    meta.execute(rusqlite::params![
                        id,
                        m.time_ms,
                        m.height as i64,
                        m.leaf as i64
                    ])?;
                }
            }
        }
        tx.execute_batch("CREATE INDEX meta_time ON meta (time);")?;
        tx.commit()?;
    }
    db.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
    let s_index = t.elapsed();
    let s_bytes = std::fs::metadata(&path)?.len();
    let mut s_lat = Vec::new();
    let mut s_hits = 0;
    {
        let mut by_match = db.prepare(
            "SELECT fts.message_id, meta.height FROM fts JOIN meta ON meta.id = fts.rowid
             WHERE fts MATCH ?1 LIMIT 10",
        )?;
        let mut by_time = db.prepare(
            "SELECT fts.message_id, meta.height FROM meta JOIN fts ON fts.rowid = meta.id
             WHERE meta.time BETWEEN ?1 AND ?2 LIMIT 10",
        )?;
        for q in &qs {
            let t = Instant::now();
            let rows = match q {
                Query::Transaction(t) => by_match
                    .query_map([format!("transaction_id:\"{t}\"")], |r| {
                        r.get::<_, String>(0)
                    })?
                    .count(),
                Query::SenderName(s) => by_match
                    .query_map([format!("sender_name:\"{s}\"")], |r| r.get::<_, String>(0))?
                    .count(),
                Query::TimeRange(a, b) => by_time
                    .query_map([a, b], |r| r.get::<_, String>(0))?
                    .count(),
                Query::Kind(k) => by_match
                    .query_map([format!("kind:{k}")], |r| r.get::<_, String>(0))?
                    .count(),
            };
            s_lat.push(t.elapsed());
            s_hits += rows;
        }
    }
    s_lat.sort();
    say!(
        "search side by side on the same {n} messages (indexed from scratch, one writer, top 10 of the same {} queries):",
        qs.len()
    );
    say!(
        "  tantivy (the auditor's): indexed at {:.0} msgs/s, {:.0} bytes per message on disk; query p50 {:.3} ms  p99 {:.3} ms ({t_hits} hits)",
        n as f64 / t_index.as_secs_f64(),
        t_bytes as f64 / n.max(1) as f64,
        pct(&t_lat, 0.5),
        pct(&t_lat, 0.99),
    );
    say!(
        "  SQLite FTS5 (bundled {}): indexed at {:.0} msgs/s, {:.0} bytes per message on disk; query p50 {:.3} ms  p99 {:.3} ms ({s_hits} hits)",
        rusqlite::version(),
        n as f64 / s_index.as_secs_f64(),
        s_bytes as f64 / n.max(1) as f64,
        pct(&s_lat, 0.5),
        pct(&s_lat, 0.99),
    );
    Ok(())
}
