//! One function per page: fetch through the verifying clients, build the page's view (a
//! plain struct: its JSON is the page's JSON twin, its HTML comes from `html`), and say
//! what was verified. Failures are [`Fail`]s, each with its own status page.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use blockpost_client::VerifiedEntry;
use blockpost_core::block::Leaf;
use blockpost_core::{Clock, VerifiedCheckpoint, WitnessKey};
use blockpost_proto::v1::envelope_content::Body;
use blockpost_proto::v1::ledger_record::Record;
use blockpost_proto::v1::{
    AlertsRequest, EnvelopeContent, GetAuditStatusRequest, GetCheckpointRequest, GetWitnessRequest,
    SearchRequest,
};
use maud::Markup;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::Config;
use crate::fail::{Away, Fail, chain, status_of};
use crate::html;
use crate::source::{Auditor, Held, Node};
pub use crate::views::*;

/// The query parameters any page takes.
#[derive(Deserialize, Default)]
pub struct Params {
    pub format: Option<String>,
    pub q: Option<String>,
    pub from: Option<String>,
    pub offset: Option<String>,
}

/// A request as the page functions see it.
pub struct Req {
    pub json: bool,
    pub params: Params,
    /// The path and query: the cache key.
    pub key: String,
}

/// The request's parameters and format, from its URI and `Accept` header.
pub fn req(uri: &Uri, headers: &HeaderMap) -> Result<Req, Fail> {
    let params = match uri.query() {
        None => Params::default(),
        Some(_) => {
            axum::extract::Query::<Params>::try_from_uri(uri)
                .map_err(|e| Fail::BadInput(format!("the query string: {}", e.body_text())))?
                .0
        }
    };
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let json = match params.format.as_deref() {
        Some("json") => true,
        Some("html") | None => {
            params.format.is_none()
                && accept.contains("application/json")
                && !accept.contains("text/html")
        }
        Some(other) => {
            return Err(Fail::BadInput(format!(
                "format={other}: the formats are html and json"
            )));
        }
    };
    Ok(Req {
        json,
        params,
        key: uri
            .path_and_query()
            .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned()),
    })
}

/// Entries on one page of the directory log.
pub const DIRECTORY_PAGE: u64 = 50;
/// Search hits on one page.
pub const SEARCH_PAGE: u32 = 25;
/// Blocks on the home page.
pub const HOME_BLOCKS: u64 = 10;
/// Alerts read from the auditor for one page.
pub const MAX_ALERTS: usize = 500;
/// Pages kept to serve while a source is away: at most this many...
const CACHED_PAGES: usize = 512;
/// ...and at most this many bytes of HTML and JSON in all.
const CACHED_BYTES: usize = 64 << 20;
/// Party names remembered at most.
const NAMES: usize = 10_000;
/// How long a participant's name is reused before it is looked up again (ms).
const NAME_TTL_MS: i64 = 60_000;
/// Directory checkpoints remembered for the log page.
const SEEN_CHECKPOINTS: usize = 50;

/// A built page: its HTML body, its JSON twin and what was verified.
#[derive(Clone)]
pub struct Page {
    pub title: String,
    pub kind: &'static str,
    pub json: Value,
    pub body: Markup,
    /// What was verified, against which pinned keys.
    pub verified: Vec<String>,
}

impl Page {
    /// About what it holds in memory: its HTML, twice for its JSON.
    fn bytes(&self) -> usize {
        self.body.0.len() * 3
    }

    fn new<V: Serialize>(
        kind: &'static str,
        title: String,
        view: &V,
        body: Markup,
        verified: Vec<String>,
    ) -> Self {
        let json = serde_json::to_value(view).unwrap_or(Value::Null);
        Self {
            title,
            kind,
            json,
            body,
            verified,
        }
    }
}

/// Pages as last built, by path and query, with when; their order, oldest first; and
/// their bytes in all.
type Cache = (HashMap<String, (Page, i64)>, VecDeque<String>, usize);

/// The explorer's state.
pub struct App {
    node: Node,
    auditor: Option<Auditor>,
    clock: Arc<dyn Clock>,
    state_dir: String,
    witnesses: Vec<WitnessKey>,
    cache: Mutex<Cache>,
    names: Mutex<HashMap<String, (PartyView, i64)>>,
    seen: Mutex<VecDeque<SeenCheckpoint>>,
    pins: Mutex<Pins>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A file name made of the safe characters of `s`.
pub fn file_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect()
}

fn parse_height(s: &str) -> Result<u64, Fail> {
    s.parse::<u64>()
        .map_err(|_| Fail::BadInput(format!("{s:?} is not a block height (a number from 0 up)")))
}

fn parse_id(s: &str) -> Result<[u8; 32], Fail> {
    let bad = || {
        Fail::BadInput(format!(
            "{:?} is not a message id (64 hexadecimal digits, the SHA-256 of the envelope)",
            s.chars().take(80).collect::<String>()
        ))
    };
    let b = hex::decode(s).map_err(|_| bad())?;
    b.try_into().map_err(|_| bad())
}

fn parse_number(what: &str, s: Option<&str>) -> Result<u64, Fail> {
    match s {
        None | Some("") => Ok(0),
        Some(v) => v
            .parse()
            .map_err(|_| Fail::BadInput(format!("{what}={v:?} is not a number"))),
    }
}

fn check_transaction_id(id: &str) -> Result<(), Fail> {
    if id.is_empty()
        || id.len() > 128
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c))
    {
        return Err(Fail::BadInput(format!(
            "{:?} is not a transaction id (1 to 128 letters, digits and - _ . : /)",
            id.chars().take(80).collect::<String>()
        )));
    }
    Ok(())
}

fn content_of(env: &blockpost_proto::v1::Envelope) -> EnvelopeContent {
    blockpost_core::decode_canonical::<EnvelopeContent>(&env.content, "content").unwrap_or_default()
}

fn short(b: &[u8]) -> String {
    hex::encode(&b[..b.len().min(8)])
}

impl App {
    pub fn new(config: Config) -> Result<Self, crate::config::Error> {
        let auditor = match &config.auditor {
            Some(a) => Some(Auditor::new(a, config.call_timeout)?),
            None => None,
        };
        let witnesses = config
            .options
            .witnesses
            .iter()
            .filter_map(|k| WitnessKey::parse(k).ok())
            .collect();
        let state_dir = config.state_dir.display().to_string();
        Ok(Self {
            node: Node::new(
                &config.node,
                config.options,
                config.state_dir,
                config.call_timeout,
            ),
            auditor,
            clock: config.clock,
            state_dir,
            witnesses,
            cache: Mutex::new((HashMap::new(), VecDeque::new(), 0)),
            names: Mutex::new(HashMap::new()),
            seen: Mutex::new(VecDeque::new()),
            pins: Mutex::new(Pins::default()),
        })
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    fn auditor(&self) -> Result<&Auditor, Fail> {
        self.auditor.as_ref().ok_or(Fail::NoAuditor)
    }

    async fn node(&self) -> Result<Held<'_>, Fail> {
        let h = self.node.get(self.now()).await?;
        let c = &*h.conn;
        let ci = c.client.info();
        let li = c.ledger.info();
        *lock(&self.pins) = Pins {
            directory: format!("{} ({})", ci.origin, ci.verifier_key),
            ledger: format!("{} ({})", li.origin, li.verifier_key),
            builder: hex::encode(&li.builder_key),
            state_dir: self.state_dir.clone(),
        };
        Ok(h)
    }

    fn pins(&self) -> Pins {
        lock(&self.pins).clone()
    }

    /// Serves a built page (and keeps it), or the failure (or the page as last seen,
    /// while a source is away).
    pub fn respond(&self, r: &Req, built: Result<Page, Fail>) -> Response {
        let now = self.now();
        match built {
            Ok(page) => {
                {
                    let mut c = lock(&self.cache);
                    let (map, order, bytes) = &mut *c;
                    *bytes += page.bytes();
                    match map.insert(r.key.clone(), (page.clone(), now)) {
                        Some((old, _)) => *bytes -= old.bytes(),
                        None => order.push_back(r.key.clone()),
                    }
                    while order.len() > CACHED_PAGES || *bytes > CACHED_BYTES {
                        let Some(key) = order.pop_front() else { break };
                        if let Some((old, _)) = map.remove(&key) {
                            *bytes -= old.bytes();
                        }
                    }
                }
                self.render(r.json, &page, None, axum::http::StatusCode::OK)
            }
            Err(Fail::Away(a)) => {
                let cached = lock(&self.cache).0.get(&r.key).cloned();
                match cached {
                    Some((page, at)) => {
                        self.render(r.json, &page, Some(at), axum::http::StatusCode::OK)
                    }
                    None => self.respond_fail(r.json, Fail::Away(a)),
                }
            }
            Err(f) => self.respond_fail(r.json, f),
        }
    }

    fn away(&self) -> Vec<Away> {
        let mut v: Vec<Away> = self.node.away().into_iter().collect();
        if let Some(a) = &self.auditor {
            v.extend(a.away());
        }
        v
    }

    fn render(
        &self,
        json: bool,
        page: &Page,
        stale_since: Option<i64>,
        status: axum::http::StatusCode,
    ) -> Response {
        let away = self.away();
        if json {
            let mut v = serde_json::json!({
                "page": page.kind,
                "title": page.title,
                "verified": page.verified,
                "away": away,
                "stale_since_ms": stale_since,
            });
            v["data"] = page.json.clone();
            return (
                status,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                serde_json::to_string_pretty(&v).unwrap_or_default(),
            )
                .into_response();
        }
        let markup = html::layout(
            &page.title,
            &page.body,
            &page.verified,
            &away,
            stale_since,
            &self.pins(),
            self.now(),
        );
        (status, markup).into_response()
    }

    /// Serves a failure page.
    pub fn respond_fail(&self, json: bool, f: Fail) -> Response {
        let status = status_of(&f);
        let page = Page::new(
            "error",
            f.title().to_owned(),
            &serde_json::json!({
                "status": status.as_u16(),
                "error": f.title(),
                "message": f.to_string(),
            }),
            html::failure(&f),
            Vec::new(),
        );
        self.render(json, &page, None, status)
    }

    /// A party's verified name (cached for a minute).
    async fn party(&self, h: &mut Held<'_>, address: &str) -> PartyView {
        let now = self.now();
        if let Some((p, at)) = lock(&self.names).get(address)
            && now - at < NAME_TTL_MS
        {
            return p.clone();
        }
        let r = h.ctl.call(h.conn.client.lookup(address)).await;
        let p = match r {
            Ok(history) => {
                let last = history.last().map(|e| &e.binding);
                PartyView {
                    address: address.to_owned(),
                    name: history
                        .iter()
                        .rev()
                        .find(|e| !e.binding.real_name.is_empty())
                        .map(|e| e.binding.real_name.clone()),
                    verified: last.is_some_and(|b| b.verified),
                    revoked: last.is_some_and(blockpost_core::Binding::revoked),
                }
            }
            Err(_) => PartyView {
                address: address.to_owned(),
                name: None,
                verified: false,
                revoked: false,
            },
        };
        if p.name.is_some() {
            let mut names = lock(&self.names);
            if names.len() >= NAMES {
                names.retain(|_, (_, at)| now - *at < NAME_TTL_MS);
                if names.len() >= NAMES {
                    names.clear();
                }
            }
            names.insert(address.to_owned(), (p.clone(), now));
        }
        p
    }

    fn cosignatures(&self, note: &[u8], extra: Option<&WitnessKey>) -> Vec<CosignView> {
        blockpost_core::claimed_cosigners(note)
            .into_iter()
            .map(|name| {
                let time = self
                    .witnesses
                    .iter()
                    .chain(extra)
                    .filter(|k| k.name() == name)
                    .find_map(|k| k.cosigned_at(note).ok().flatten());
                CosignView {
                    name,
                    verified: time.is_some(),
                    time_ms: time.and_then(|t| i64::try_from(t).ok()).map(|t| t * 1000),
                }
            })
            .collect()
    }

    fn remember(&self, cp: &VerifiedCheckpoint) {
        let mut seen = lock(&self.seen);
        if seen.back().is_some_and(|s| s.size >= cp.size) {
            return;
        }
        seen.push_back(SeenCheckpoint {
            size: cp.size,
            root: hex::encode(cp.root),
            first_seen_ms: self.now(),
        });
        while seen.len() > SEEN_CHECKPOINTS {
            seen.pop_front();
        }
    }

    fn checkpoint_view(
        &self,
        cp: &VerifiedCheckpoint,
        note: &[u8],
        extra: Option<&WitnessKey>,
    ) -> CheckpointView {
        CheckpointView {
            origin: cp.origin.clone(),
            size: cp.size,
            root: hex::encode(cp.root),
            note: String::from_utf8_lossy(note).into_owned(),
            cosignatures: self.cosignatures(note, extra),
        }
    }

    // ---- pages ---------------------------------------------------------------------

    pub async fn home(&self, _r: &Req) -> Result<Page, Fail> {
        let now = self.now();
        // The auditor's witness key, for the cosignatures (its say, labelled as such).
        let mut auditor_view = None;
        let mut auditor_key = None;
        if let Some(a) = &self.auditor {
            let status = a
                .call(now, a.grpc().get_audit_status(GetAuditStatusRequest {}))
                .await;
            if let Ok(w) = a
                .call(now, a.grpc().get_witness(GetWitnessRequest {}))
                .await
            {
                auditor_key = WitnessKey::parse(&w.witness_key).ok();
            }
            auditor_view = Some(match status {
                Ok(s) => AuditorView {
                    endpoint: a.endpoint().to_owned(),
                    status: Some(AuditStatusView {
                        blocks_verified: s.blocks_verified,
                        blocks_lag: s.blocks_lag,
                        firehose_checked: s.firehose_checked,
                        firehose_lag: s.firehose_lag,
                        alerts: s.alerts,
                        stalled: s.stalled,
                        seconds_since_progress: s.seconds_since_progress,
                        checked_until_ms: s.checked_until_ms,
                    }),
                    away: None,
                },
                Err(f) => AuditorView {
                    endpoint: a.endpoint().to_owned(),
                    status: None,
                    away: Some(f.to_string()),
                },
            });
        }
        let mut h = self.node().await?;
        // One GetCheckpoint: the newest checkpoint, verified as the client's `checkpoint()`
        // would, and the node's newest witnessed one, whose note carries the cosignatures
        // (shown when it is the same size). A client that requires witnesses gets the
        // witnessed checkpoint itself.
        let (dcp, dir_note) = if h.conn.client.witness_policy().is_required() {
            let cp = h.ctl.call(h.conn.client.checkpoint()).await?;
            let note = cp.note.clone();
            (cp, note)
        } else {
            let mut dir_grpc = blockpost_proto::v1::directory_client::DirectoryClient::new(
                h.conn.client.channel(),
            );
            let raw = h
                .ctl
                .call(async {
                    Ok::<_, blockpost_client::Error>(
                        dir_grpc
                            .get_checkpoint(GetCheckpointRequest {})
                            .await?
                            .into_inner(),
                    )
                })
                .await?;
            let cp = h
                .ctl
                .call(h.conn.client.accept_checkpoint(&raw.checkpoint))
                .await?;
            let verifier_key = &h.conn.client.info().verifier_key;
            let note =
                match blockpost_core::verify_checkpoint(&raw.witnessed_checkpoint, verifier_key) {
                    Ok(w) if w.size == cp.size => raw.witnessed_checkpoint,
                    _ => cp.note.clone(),
                };
            (cp, note)
        };
        self.remember(&dcp);
        let newest = h.ctl.call(h.conn.ledger.block(None)).await?;
        let top = newest.block.header.header.height;
        let heights: Vec<u64> = (top.saturating_sub(HOME_BLOCKS - 1)..top).rev().collect();
        let mut blocks = vec![BlockRow {
            height: top,
            id: hex::encode(newest.block.header.id),
            time_ms: newest.block.header.header.time_ms,
            leaf_count: newest.block.header.header.leaf_count,
        }];
        if !heights.is_empty() {
            let proofs = h.ctl.call(h.conn.ledger.proofs(&heights, &[])).await?;
            blocks.extend(proofs.headers.iter().map(|x| BlockRow {
                height: x.header.height,
                id: hex::encode(x.id),
                time_ms: x.header.time_ms,
                leaf_count: x.header.leaf_count,
            }));
        }
        let anchors = h
            .ctl
            .call(h.conn.ledger.anchors())
            .await
            .unwrap_or_default()
            .into_iter()
            .rev()
            .take(10)
            .map(|a| AnchorView {
                ledger_size: a.ledger_size,
                ledger_root: hex::encode(&a.ledger_root),
                confirmed: a.sink == "bitcoin" && !a.bitcoin_header.is_empty(),
                sink: a.sink,
                reference: a.reference,
                time_ms: a.time_ms,
            })
            .collect();
        let view = HomeView {
            directory: self.checkpoint_view(&dcp, &dir_note, auditor_key.as_ref()),
            ledger: self.checkpoint_view(
                &newest.checkpoint,
                &newest.checkpoint.note,
                auditor_key.as_ref(),
            ),
            blocks,
            anchors,
            auditor: auditor_view,
            pins: self.pins(),
        };
        let verified = vec![
            format!(
                "the directory checkpoint of {} entries: signature with the pinned log key, consistent with every checkpoint seen before",
                dcp.size
            ),
            format!(
                "block {top}: builder signature with the pinned builder key, every leaf in its Merkle root, its id in the ledger checkpoint of {} blocks signed with the pinned ledger key",
                newest.checkpoint.size
            ),
            "the older headers: builder signatures and chain links, each proved in the same ledger checkpoint".into(),
            "witness cosignatures marked verified: with the witness keys given to the explorer or the auditor's own".into(),
            "anchors are listed as the node reports them: export a bundle and `blockpost verify` it to check one against Bitcoin".into(),
        ];
        let body = html::home(&view, now);
        Ok(Page::new(
            "home",
            "Blockpost explorer".into(),
            &view,
            body,
            verified,
        ))
    }

    pub async fn block(&self, r: &Req, height: &str) -> Result<Page, Fail> {
        let height = parse_height(height)?;
        let from = parse_number("from", r.params.from.as_deref())?;
        let mut h = self.node().await?;
        let b = h.ctl.call(h.conn.ledger.block(Some(height))).await?;
        let x = &b.block.header.header;
        let mut leaves = Vec::with_capacity(b.block.leaves.len());
        let shown = b
            .block
            .leaves
            .iter()
            .zip(&b.block.kinds)
            .enumerate()
            .skip(usize::try_from(from).unwrap_or(usize::MAX))
            .take(LEAVES_PAGE);
        for (i, (bytes, kind)) in shown {
            leaves.push(match kind {
                Leaf::Message(env) => {
                    let c = content_of(env);
                    LeafView {
                        index: i as u64,
                        kind: "message",
                        message_id: Some(hex::encode(blockpost_core::block::block_id(bytes))),
                        transaction_id: Some(c.transaction_id.clone()),
                        summary: format!(
                            "{} from {} to {}",
                            blockpost_core::kind_name(c.kind),
                            c.sender,
                            c.recipients.join(", ")
                        ),
                    }
                }
                Leaf::Record(r) => record_leaf(i as u64, r),
            });
        }
        let view = BlockView {
            height,
            id: hex::encode(b.block.header.id),
            time_ms: x.time_ms,
            previous_hash: hex::encode(&x.previous_hash),
            next_height: (height + 1 < b.checkpoint.size).then_some(height + 1),
            merkle_root: hex::encode(&x.merkle_root),
            leaf_count: x.leaf_count,
            partitions: x
                .partitions
                .iter()
                .map(|p| (p.partition, p.first_seq, p.last_seq))
                .collect(),
            directory_size: x.directory_size,
            directory_root: hex::encode(&x.directory_root),
            builder_key_id: hex::encode(&x.builder_key_id),
            signature: hex::encode(&b.block.header.signature),
            ledger_size: b.checkpoint.size,
            leaves_from: from,
            next_from: (from + (LEAVES_PAGE as u64) < x.leaf_count)
                .then_some(from + LEAVES_PAGE as u64),
            leaves,
        };
        let verified = vec![
            "the builder's signature over the header, with the pinned builder key".into(),
            format!(
                "every one of the {} leaves: its kind, and all of them together against the Merkle root",
                x.leaf_count
            ),
            if height > 0 {
                format!(
                    "the link to block {}: the previous hash is its id",
                    height - 1
                )
            } else {
                "the genesis block: no previous block".into()
            },
            format!(
                "the block id in the ledger checkpoint of {} blocks, signed with the pinned ledger key",
                b.checkpoint.size
            ),
        ];
        let body = html::block(&view, self.now());
        Ok(Page::new(
            "block",
            format!("Block {height}"),
            &view,
            body,
            verified,
        ))
    }

    async fn message_view(
        &self,
        h: &mut Held<'_>,
        m: &blockpost_client::LedgerMessage,
    ) -> MessageView {
        let c = content_of(&m.envelope);
        let sender = self.party(h, &c.sender).await;
        let mut recipients = Vec::with_capacity(c.recipients.len());
        for a in &c.recipients {
            recipients.push(self.party(h, a).await);
        }
        let (body, sealed_for) = match &c.body {
            Some(Body::Plaintext(p)) => (Some(String::from_utf8_lossy(p).into_owned()), None),
            Some(Body::Encrypted(e)) => (None, Some(e.ciphertexts.len())),
            None => (None, None),
        };
        let settlement = blockpost_core::settle_expect(c.kind()).map(|(expect, _)| match &c.body {
            Some(Body::Plaintext(p)) => match blockpost_core::settle::parse(expect, p) {
                Ok(s) => SettleView {
                    format: s.format.to_string(),
                    reference: s.reference.clone(),
                    isin: s.isin.clone(),
                    quantity: s.quantity.to_string(),
                    amount: s
                        .amount
                        .as_ref()
                        .map(|a| format!("{} {}", a.value, a.currency)),
                    side: s.side.as_str().to_owned(),
                    settlement_date: s.settlement_date.to_string(),
                    unread: None,
                },
                Err(e) => unread_settlement(e.to_string()),
            },
            _ => unread_settlement("sealed: only its parties can read it".into()),
        });
        MessageView {
            message_id: hex::encode(m.message_id),
            transaction_id: c.transaction_id.clone(),
            kind: blockpost_core::kind_name(c.kind),
            sender,
            recipients,
            time_ms: c.timestamp_ms,
            content_type: c.content_type.clone(),
            body,
            sealed_for,
            height: m.header.header.height,
            leaf_index: m.leaf_index,
            block_id: hex::encode(m.header.id),
            ledger_size: m.checkpoint.size,
            settlement,
            delivery: c
                .delivery
                .as_ref()
                .map(|d| blockpost_core::delivery::show_commitment(&d.ledger, &d.commitment)),
        }
    }

    pub async fn message(&self, _r: &Req, id: &str) -> Result<Page, Fail> {
        let id = parse_id(id)?;
        let mut h = self.node().await?;
        let m = h.ctl.call(h.conn.ledger.message(id)).await?;
        let view = self.message_view(&mut h, &m).await;
        let verified = vec![
            "the sender's signature, by the gateway's rules, when the block was built; here: the envelope is leaf ".to_owned()
                + &m.leaf_index.to_string()
                + " of the block's Merkle root",
            "the block header's signature with the pinned builder key".into(),
            format!(
                "the block id in the ledger checkpoint of {} blocks, signed with the pinned ledger key",
                m.checkpoint.size
            ),
            "names: each party's verified directory history".into(),
        ];
        let body = html::message(&view, self.now());
        Ok(Page::new(
            "message",
            format!("Message {}", &view.message_id[..16]),
            &view,
            body,
            verified,
        ))
    }

    pub async fn transaction(&self, _r: &Req, id: &str) -> Result<Page, Fail> {
        check_transaction_id(id)?;
        let mut h = self.node().await?;
        let t = h.ctl.call(h.conn.ledger.transaction(id)).await?;
        let mut messages = Vec::with_capacity(t.messages.len());
        for m in &t.messages {
            messages.push(self.message_view(&mut h, m).await);
        }
        let mut parties = Vec::new();
        for a in &t.state.parties {
            parties.push(self.party(&mut h, a).await);
        }
        let closing = match &t.closing {
            Some((c, leaf)) => {
                let mut finished_by = Vec::new();
                for a in &c.finished_by {
                    finished_by.push(self.party(&mut h, a).await);
                }
                Some(ClosingView {
                    status: blockpost_core::status_name(c.status),
                    time_ms: c.time_ms,
                    height: leaf.header.header.height,
                    leaf_index: leaf.leaf_index,
                    finished_by,
                    message_count: c.message_ids.len(),
                })
            }
            None => None,
        };
        // Deliveries to ledgers, from the blocks after the closing (the builder records
        // them there); read from the blocks already verified.
        let mut deliveries = Vec::new();
        if let Some((_, leaf)) = &t.closing {
            let from = leaf.header.header.height;
            let top = leaf.checkpoint.size;
            for height in from..top.min(from + 5) {
                let Ok(b) = h.ctl.call(h.conn.ledger.block(Some(height))).await else {
                    break;
                };
                for k in &b.block.kinds {
                    if let Leaf::Record(r) = k
                        && let Some(Record::Delivery(d)) = &r.record
                        && d.transaction_id == id
                    {
                        deliveries.push(DeliveryView {
                            height,
                            ledger: d.ledger.clone(),
                            transaction: blockpost_core::delivery::show_commitment(
                                &d.ledger,
                                &d.commitment,
                            ),
                            stage: blockpost_core::delivery::stage_name(d.stage).to_owned(),
                            reason: d.reason.clone(),
                            time_ms: d.time_ms,
                        });
                    }
                }
            }
        }
        let view = TxView {
            transaction_id: id.to_owned(),
            status: blockpost_core::status_name(t.state.status),
            parties,
            finished_by: t.state.finished_by.clone(),
            opened_height: t.state.opened_height,
            deadline_ms: t.state.deadline_ms,
            messages,
            closing,
            deliveries,
        };
        let verified = vec![
            format!(
                "each of the {} messages: in its block's Merkle root, the block signed with the pinned builder key and proved in the ledger signed with the pinned ledger key",
                view.messages.len()
            ),
            "the state: its parties, finishes and deadline as the messages and the ledger's timeout give them".into(),
            "the closing record in its block, checked against the messages it closes".into(),
            "names: each party's verified directory history".into(),
        ];
        let body = html::transaction(&view, self.now());
        Ok(Page::new(
            "transaction",
            format!("Transaction {id}"),
            &view,
            body,
            verified,
        ))
    }

    /// The evidence bundle of a transaction, made through the verifying clients.
    pub async fn evidence(&self, id: &str) -> Result<Vec<u8>, Fail> {
        check_transaction_id(id)?;
        let now = self.now();
        let mut h = self.node().await?;
        let members = h
            .ctl
            .call({
                let c = &mut *h.conn;
                blockpost_client::bundle::export(
                    &mut c.client,
                    &mut c.ledger,
                    blockpost_client::bundle::Subject::Transaction(id),
                    &[],
                    now,
                )
            })
            .await?;
        blockpost_client::bundle::to_zip(&members).map_err(|e| Fail::Refused(chain(&e)))
    }

    pub async fn participant(&self, _r: &Req, address: &str) -> Result<Page, Fail> {
        blockpost_core::Address::parse(address)
            .map_err(|e| Fail::BadInput(format!("{address:?} is not an address: {e}")))?;
        let mut h = self.node().await?;
        let history = h.ctl.call(h.conn.client.lookup(address)).await?;
        drop(h);
        let last = history
            .last()
            .ok_or_else(|| Fail::NotFound(format!("{address} is not in the directory")))?;
        let view_history: Vec<EntryView> = history.iter().map(entry_view).collect();
        let (transactions, note) = match self.auditor() {
            Err(_) => (
                None,
                Some("start the explorer with --auditor to list its transactions".to_owned()),
            ),
            Ok(a) => {
                let q = format!("sender:\"{address}\" OR recipient:\"{address}\"");
                match a
                    .call(
                        self.now(),
                        a.grpc().search(SearchRequest {
                            query: q,
                            limit: 100,
                            offset: 0,
                            by_time: true,
                        }),
                    )
                    .await
                {
                    Ok(res) => {
                        let mut by: BTreeMap<String, (usize, i64)> = BTreeMap::new();
                        for hit in &res.hits {
                            let tx = hit_content(&hit.envelope).transaction_id;
                            let e = by.entry(tx).or_insert((0, 0));
                            e.0 += 1;
                            e.1 = e.1.max(hit.time_ms);
                        }
                        let mut rows: Vec<TxRow> = by
                            .into_iter()
                            .map(|(transaction_id, (messages, last_time_ms))| TxRow {
                                transaction_id,
                                messages,
                                last_time_ms,
                            })
                            .collect();
                        rows.sort_by_key(|r| std::cmp::Reverse(r.last_time_ms));
                        let note = (res.hits.len() == 100).then(|| {
                            "from its newest 100 messages in the auditor's index".to_owned()
                        });
                        (Some(rows), note)
                    }
                    Err(f) => (None, Some(format!("the auditor's index: {f}"))),
                }
            }
        };
        let view = ParticipantView {
            address: address.to_owned(),
            real_name: history
                .iter()
                .rev()
                .find(|e| !e.binding.real_name.is_empty())
                .map(|e| e.binding.real_name.clone())
                .unwrap_or_default(),
            verified: last.binding.verified,
            revoked: last.binding.revoked(),
            history: view_history,
            transactions,
            transactions_note: note,
        };
        let verified = vec![
            format!(
                "each of its {} entries: inclusion proof in a directory checkpoint signed with the pinned log key",
                history.len()
            ),
            "the history as one chain: each rotation and revocation signed by the keys it replaces (or the evidence key)".into(),
            "the certificates: as the directory issued them (decoded here; check them with openssl against the directory's CA)".into(),
            "its transactions: from the auditor's index (open one to verify it)".into(),
        ];
        let body = html::participant(&view, self.now());
        Ok(Page::new(
            "participant",
            format!("{} ({address})", view.real_name),
            &view,
            body,
            verified,
        ))
    }

    /// The PEM of the certificate of `address`'s entry `index`.
    pub async fn certificate(&self, address: &str, index: &str) -> Result<String, Fail> {
        blockpost_core::Address::parse(address)
            .map_err(|e| Fail::BadInput(format!("{address:?} is not an address: {e}")))?;
        let index = parse_number("entry", Some(index))?;
        let mut h = self.node().await?;
        let history = h.ctl.call(h.conn.client.lookup(address)).await?;
        let e = history
            .iter()
            .find(|e| e.leaf_index == index)
            .ok_or_else(|| Fail::NotFound(format!("{address} has no entry {index}")))?;
        if e.binding.certificate.is_empty() {
            return Err(Fail::NotFound(format!(
                "entry {index} of {address} carries no certificate (a revocation)"
            )));
        }
        Ok(blockpost_client::bundle::pem(
            "CERTIFICATE",
            &e.binding.certificate,
        ))
    }

    pub async fn directory(&self, r: &Req) -> Result<Page, Fail> {
        let from = parse_number("from", r.params.from.as_deref())?;
        let mut h = self.node().await?;
        let (cp, entries) = h
            .ctl
            .call(h.conn.client.entries(from, DIRECTORY_PAGE))
            .await?;
        drop(h);
        self.remember(&cp);
        if from >= cp.size && cp.size > 0 {
            return Err(Fail::NotFound(format!(
                "the directory log has {} entries: there is no entry {from}",
                cp.size
            )));
        }
        let view = DirectoryView {
            size: cp.size,
            root: hex::encode(cp.root),
            from,
            entries: entries.iter().map(entry_view).collect(),
            previous_from: (from > 0).then(|| from.saturating_sub(DIRECTORY_PAGE)),
            next_from: (from + DIRECTORY_PAGE < cp.size).then_some(from + DIRECTORY_PAGE),
            checkpoints: lock(&self.seen).iter().rev().cloned().collect(),
        };
        let verified = vec![
            format!(
                "the checkpoint of {} entries: signature with the pinned log key",
                cp.size
            ),
            "every checkpoint listed: each consistent with the one before it (the client refuses one that is not)".into(),
            format!(
                "each entry shown: its inclusion proof in the checkpoint of {} entries, and that it decodes",
                cp.size
            ),
            "who authorised each entry is checked on the participant's page, with the entry it supersedes".into(),
        ];
        let body = html::directory(&view, self.now());
        Ok(Page::new(
            "directory",
            "Directory log".into(),
            &view,
            body,
            verified,
        ))
    }

    pub async fn alerts(&self, _r: &Req) -> Result<Page, Fail> {
        let a = self.auditor()?;
        let now = self.now();
        // The newest MAX_ALERTS: from the count the auditor reports.
        let total = a
            .call(now, a.grpc().get_audit_status(GetAuditStatusRequest {}))
            .await?
            .alerts;
        let mut stream = a
            .call(
                now,
                a.grpc().alerts(AlertsRequest {
                    from: total.saturating_sub(MAX_ALERTS as u64),
                    follow: false,
                }),
            )
            .await?;
        let mut alerts = VecDeque::new();
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while let Some(x) = stream.message().await.transpose() {
                match x {
                    Ok(al) => {
                        alerts.push_back(al);
                        if alerts.len() > MAX_ALERTS {
                            alerts.pop_front();
                        }
                    }
                    Err(s) => return Err(s),
                }
            }
            Ok(())
        })
        .await;
        match read {
            Ok(Ok(())) => {}
            Ok(Err(s)) => return Err(Fail::from_status(&s, "the auditor")),
            Err(_) => {
                return Err(Fail::Refused(
                    "the auditor's alerts did not end within 10 s".into(),
                ));
            }
        }
        let view = AlertsView {
            auditor: a.endpoint().to_owned(),
            alerts: alerts
                .into_iter()
                .rev()
                .map(|al| {
                    let evidence: Value =
                        serde_json::from_str(&al.evidence_json).unwrap_or(Value::Null);
                    AlertView {
                        link: alert_link(&al.subject, &evidence),
                        index: al.index,
                        kind: al.kind,
                        subject: al.subject,
                        time_ms: al.time_ms,
                        detail: al.detail,
                        evidence,
                    }
                })
                .collect(),
        };
        let verified = vec![
            "alerts are the auditor's findings, each with the evidence it kept: the auditor verified them, the explorer shows them".into(),
        ];
        let body = html::alerts(&view, now);
        Ok(Page::new("alerts", "Alerts".into(), &view, body, verified))
    }

    pub async fn search(&self, r: &Req) -> Result<Page, Fail> {
        let query = r.params.q.clone().unwrap_or_default();
        let query = query.trim().to_owned();
        let offset = u32::try_from(parse_number("offset", r.params.offset.as_deref())?)
            .map_err(|_| Fail::BadInput("offset is too large".into()))?;
        if query.len() > 1000 {
            return Err(Fail::BadInput(
                "the query is longer than 1000 characters".into(),
            ));
        }
        let mut hits = Vec::new();
        let mut next_offset = None;
        if !query.is_empty() {
            let a = self.auditor()?;
            let res = a
                .call(
                    self.now(),
                    a.grpc().search(SearchRequest {
                        query: query.clone(),
                        limit: SEARCH_PAGE,
                        offset,
                        by_time: true,
                    }),
                )
                .await?;
            next_offset = (res.hits.len() == SEARCH_PAGE as usize).then_some(offset + SEARCH_PAGE);
            // Each hit verified like a node's answer (the node's pinned keys); while the
            // node is away, hits are shown and marked unverified.
            let mut node = self.node().await.ok();
            for hit in &res.hits {
                let unverified = match node.as_mut() {
                    Some(h) => match h.ctl.call(h.conn.ledger.verify_hit(hit)).await {
                        Ok(_) => None,
                        Err(f) => Some(f.to_string()),
                    },
                    None => Some("the node is away: not verified".into()),
                };
                let c = hit_content(&hit.envelope);
                hits.push(HitView {
                    message_id: hex::encode(&hit.message_id),
                    height: hit.height,
                    leaf_index: hit.leaf_index,
                    time_ms: hit.time_ms,
                    transaction_id: c.transaction_id.clone(),
                    kind: blockpost_core::kind_name(c.kind),
                    sender: c.sender.clone(),
                    sender_name: hit.sender_name.clone(),
                    recipients: c.recipients.clone(),
                    recipient_names: hit.recipient_names.clone(),
                    encrypted: matches!(c.body, Some(Body::Encrypted(_))),
                    unverified,
                });
            }
        }
        let view = SearchView {
            query: query.clone(),
            offset,
            hits,
            next_offset,
        };
        let verified = vec![
            "each hit marked verified: its envelope in its block's Merkle root, the header signed with the pinned builder key, the block in the ledger signed with the pinned ledger key".into(),
            "names beside hits are the auditor's index (the participant pages verify them)".into(),
        ];
        let body = html::search(&view, self.auditor.is_some(), self.now());
        let title = if query.is_empty() {
            "Search".to_owned()
        } else {
            format!("Search: {query}")
        };
        Ok(Page::new("search", title, &view, body, verified))
    }

    /// Where a search for `q` goes straight to a page (a height, a message id, a
    /// transaction, an address), if it does.
    pub fn shortcut(q: &str) -> Option<String> {
        let q = q.trim();
        if !q.is_empty() && q.len() <= 20 && q.bytes().all(|b| b.is_ascii_digit()) {
            return Some(format!("/block/{q}"));
        }
        if q.len() == 64 && q.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Some(format!("/message/{}", q.to_ascii_lowercase()));
        }
        None
    }
}

fn unread_settlement(why: String) -> SettleView {
    SettleView {
        format: String::new(),
        reference: String::new(),
        isin: String::new(),
        quantity: String::new(),
        amount: None,
        side: String::new(),
        settlement_date: String::new(),
        unread: Some(why),
    }
}

fn hit_content(envelope: &[u8]) -> EnvelopeContent {
    blockpost_core::decode_canonical::<blockpost_proto::v1::Envelope>(envelope, "envelope")
        .map(|e| content_of(&e))
        .unwrap_or_default()
}

fn record_leaf(index: u64, r: &blockpost_proto::v1::LedgerRecord) -> LeafView {
    match &r.record {
        Some(Record::Closing(c)) => LeafView {
            index,
            kind: "closing",
            message_id: None,
            transaction_id: Some(c.transaction_id.clone()),
            summary: format!(
                "{} over {} messages{}",
                blockpost_core::status_name(c.status),
                c.message_ids.len(),
                if c.finished_by.is_empty() {
                    String::new()
                } else {
                    format!(", finished by {}", c.finished_by.join(", "))
                }
            ),
        },
        Some(Record::Anchor(a)) => LeafView {
            index,
            kind: "anchor",
            message_id: None,
            transaction_id: None,
            summary: format!(
                "ledger of {} blocks (root {}) in {} {}",
                a.ledger_size,
                short(&a.ledger_root),
                a.sink,
                a.reference
            ),
        },
        Some(Record::Delivery(d)) => LeafView {
            index,
            kind: "delivery",
            message_id: Some(hex::encode(&d.message_id)),
            transaction_id: Some(d.transaction_id.clone()),
            summary: format!(
                "{} to {}: {}{}",
                blockpost_core::delivery::stage_name(d.stage),
                d.ledger,
                blockpost_core::delivery::show_commitment(&d.ledger, &d.commitment),
                if d.reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", d.reason)
                }
            ),
        },
        None => LeafView {
            index,
            kind: "record",
            message_id: None,
            transaction_id: None,
            summary: String::new(),
        },
    }
}

fn cert_view(der: &[u8]) -> Option<CertView> {
    let (_, c) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(CertView {
        subject: c.subject().to_string(),
        issuer: c.issuer().to_string(),
        serial: c.raw_serial_as_string(),
        not_before: c.validity().not_before.to_string(),
        not_after: c.validity().not_after.to_string(),
        sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(der)),
    })
}

fn entry_view(e: &VerifiedEntry) -> EntryView {
    let b = &e.binding;
    let kind = match b.kind {
        blockpost_proto::v1::EntryKind::Register => "register",
        blockpost_proto::v1::EntryKind::Rotate => "rotate",
        blockpost_proto::v1::EntryKind::Revoke => "revoke",
        blockpost_proto::v1::EntryKind::Unspecified => "unspecified",
    };
    // The evidence chain the registration carried, leaf first.
    let chain: Vec<Vec<u8>> = e
        .decoded
        .request
        .as_ref()
        .filter(|_| b.kind == blockpost_proto::v1::EntryKind::Register)
        .and_then(|r| {
            blockpost_core::decode_canonical::<blockpost_proto::v1::RegisterBody>(
                &r.body,
                "register body",
            )
            .ok()
        })
        .map(|body| body.evidence_chain)
        .unwrap_or_default();
    let parsed: Vec<(String, String)> = chain
        .iter()
        .filter_map(|der| {
            let (_, c) = x509_parser::parse_x509_certificate(der).ok()?;
            Some((c.subject().to_string(), c.issuer().to_string()))
        })
        .collect();
    EntryView {
        leaf_index: e.leaf_index,
        kind,
        address: b.address.to_string(),
        real_name: b.real_name.clone(),
        verified: b.verified,
        lei: b.lei.clone(),
        logged_at_ms: b.logged_at_ms,
        signing_key: hex::encode(b.signing_key),
        encryption_key: hex::encode(b.encryption_key),
        previous_index: b.previous_index,
        certificate: cert_view(&b.certificate),
        trust_anchor: parsed.last().map(|(_, issuer)| issuer.clone()),
        evidence: parsed.into_iter().map(|(s, _)| s).collect(),
        proved_in: e.checkpoint.size,
        inclusion_proof: e.inclusion_proof.iter().map(hex::encode).collect(),
        checkpoint: String::from_utf8_lossy(&e.checkpoint.note).into_owned(),
    }
}

/// The page an alert's subject or evidence names.
fn alert_link(subject: &str, evidence: &Value) -> Option<String> {
    for key in ["transaction_id"] {
        if let Some(t) = evidence.get(key).and_then(Value::as_str) {
            return Some(format!("/tx/{t}"));
        }
    }
    if let Some(m) = evidence.get("message_id").and_then(Value::as_str)
        && m.len() == 64
    {
        return Some(format!("/message/{m}"));
    }
    let words: Vec<&str> = subject.split_whitespace().collect();
    for w in words.windows(2) {
        if matches!(w[0], "block" | "height") && w[1].bytes().all(|b| b.is_ascii_digit()) {
            return Some(format!("/block/{}", w[1]));
        }
    }
    for w in &words {
        if w.len() == 64 && w.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Some(format!("/message/{w}"));
        }
    }
    if let Some(h) = evidence.get("height").and_then(Value::as_u64) {
        return Some(format!("/block/{h}"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_checked_before_any_call() {
        assert!(matches!(parse_height("12"), Ok(12)));
        assert!(matches!(parse_height("-1"), Err(Fail::BadInput(_))));
        assert!(matches!(parse_height("latest"), Err(Fail::BadInput(_))));
        assert!(parse_id(&"ab".repeat(32)).is_ok());
        assert!(matches!(parse_id("abc"), Err(Fail::BadInput(_))));
        assert!(matches!(parse_id(&"zz".repeat(32)), Err(Fail::BadInput(_))));
        assert!(check_transaction_id("settle-1-2").is_ok());
        assert!(check_transaction_id("").is_err());
        assert!(check_transaction_id("a b").is_err());
        assert!(check_transaction_id(&"x".repeat(129)).is_err());
        assert!(matches!(
            parse_number("from", Some("x")),
            Err(Fail::BadInput(_))
        ));
        assert!(matches!(parse_number("from", None), Ok(0)));
        assert_eq!(file_name("bank a/../x"), "bank_a_.._x");
    }

    #[test]
    fn searches_that_name_a_page_go_there() {
        assert_eq!(App::shortcut(" 42 ").as_deref(), Some("/block/42"));
        let id = "AB".repeat(32);
        assert_eq!(
            App::shortcut(&id),
            Some(format!("/message/{}", id.to_ascii_lowercase()))
        );
        assert_eq!(App::shortcut("sender:bank-a"), None);
    }

    #[test]
    fn alerts_link_to_what_they_name() {
        let none = Value::Null;
        assert_eq!(alert_link("block 7", &none).as_deref(), Some("/block/7"));
        assert_eq!(
            alert_link("x", &serde_json::json!({"transaction_id": "t1"})).as_deref(),
            Some("/tx/t1")
        );
        assert_eq!(
            alert_link("ledger size 3", &serde_json::json!({"height": 3})).as_deref(),
            Some("/block/3")
        );
        assert_eq!(alert_link("directory checkpoint ab", &none), None);
    }
}
