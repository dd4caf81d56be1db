//! Every page's HTML: one layout (navigation, search box, banners for sources that are
//! away, what was verified, the pinned keys), a stylesheet served from the explorer itself,
//! and one function per page. No JavaScript: links and GET forms only. Every value is
//! escaped by maud.

use maud::{DOCTYPE, Markup, html};

use crate::fail::{Away, Fail};
use crate::views::*;

/// The stylesheet: calm, readable, printable.
pub const STYLE: &str = r#"
:root { --fg:#1d2330; --muted:#5b6475; --line:#d9dee7; --bg:#fbfcfd; --ok:#1e7a3c; --bad:#b42318; --warn:#9a6700; --link:#1f4fb3; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color:var(--fg); background:var(--bg); }
header.top { display:flex; gap:1.5rem; align-items:center; flex-wrap:wrap; padding:.6rem 1.5rem; border-bottom:1px solid var(--line); background:#fff; }
header.top .brand { font-weight:700; color:var(--fg); text-decoration:none; }
header.top nav a { margin-right:1rem; color:var(--link); text-decoration:none; }
header.top form { margin-left:auto; }
header.top input[type=search] { width:22rem; max-width:60vw; padding:.3rem .5rem; border:1px solid var(--line); border-radius:4px; }
main { max-width:1100px; margin:0 auto; padding:1rem 1.5rem 3rem; }
h1 { font-size:1.5rem; margin:.6rem 0 1rem; word-break:break-all; }
h2 { font-size:1.15rem; margin:1.6rem 0 .5rem; }
a { color:var(--link); }
table { border-collapse:collapse; width:100%; margin:.4rem 0 1rem; background:#fff; }
th, td { text-align:left; vertical-align:top; padding:.35rem .6rem; border-bottom:1px solid var(--line); }
th { color:var(--muted); font-weight:600; white-space:nowrap; }
table.kv th { width:13rem; }
code, .hash { font:13px/1.4 ui-monospace, SFMono-Regular, Menlo, monospace; word-break:break-all; }
pre { font:12px/1.4 ui-monospace, monospace; white-space:pre-wrap; word-break:break-all; background:#f3f5f8; padding:.6rem; border-radius:4px; }
.muted, .rel { color:var(--muted); }
.rel { font-size:.9em; }
.badge { display:inline-block; padding:0 .45rem; border-radius:3px; font-size:.85em; font-weight:600; border:1px solid currentColor; }
.ok { color:var(--ok); } .bad { color:var(--bad); } .warn { color:var(--warn); }
.banner { padding:.6rem 1rem; margin:.8rem 0; border-radius:4px; border:1px solid; }
.banner.away { color:var(--warn); background:#fff8e6; }
.banner.fail { color:var(--bad); background:#fef3f2; }
.timeline { list-style:none; padding:0; margin:0; border-left:3px solid var(--line); }
.timeline li { margin:0 0 1rem 0; padding:.2rem 0 .2rem 1rem; position:relative; }
.timeline li::before { content:""; position:absolute; left:-8px; top:.6rem; width:13px; height:13px; border-radius:50%; background:#fff; border:3px solid var(--link); }
.timeline li.closing::before { border-color:var(--ok); }
.body { background:#fff; border:1px solid var(--line); border-radius:4px; padding:.4rem .6rem; margin:.3rem 0; white-space:pre-wrap; }
.sealed { font-style:italic; color:var(--muted); }
footer.verified { margin-top:2.5rem; padding-top:.8rem; border-top:1px solid var(--line); font-size:.9em; color:var(--muted); }
footer.verified ul { margin:.3rem 0 .8rem 1.2rem; padding:0; }
.pager a { margin-right:1rem; }
.button { display:inline-block; padding:.35rem .8rem; border:1px solid var(--link); border-radius:4px; text-decoration:none; }
@media print { header.top form, header.top nav, .pager, .button { display:none; } body { background:#fff; } a { color:inherit; } }
"#;

/// A Unix time in ms as an RFC 3339 date in UTC.
pub fn date(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// How long ago (or ahead) `ms` is from `now`, in words.
pub fn relative(ms: i64, now: i64) -> String {
    let d = now.saturating_sub(ms);
    let (future, d) = (d < 0, d.unsigned_abs() / 1000);
    let amount = match d {
        0..=9 => {
            return if future {
                "in a moment".into()
            } else {
                "just now".into()
            };
        }
        10..=59 => format!("{d} s"),
        60..=3599 => format!("{} min", d / 60),
        3600..=86_399 => format!("{} h", d / 3600),
        _ => format!("{} days", d / 86_400),
    };
    if future {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

fn when(ms: i64, now: i64) -> Markup {
    if ms <= 0 {
        return html! { span.muted { "—" } };
    }
    html! {
        time datetime=(date(ms)) { (date(ms)) } " " span.rel { "(" (relative(ms, now)) ")" }
    }
}

fn hash(s: &str) -> Markup {
    html! { code.hash { (s) } }
}

fn verified_badge(ok: bool) -> Markup {
    if ok {
        html! { span.badge.ok title="verified" { "✓ verified" } }
    } else {
        html! { span.badge.bad { "✗ not verified" } }
    }
}

fn party(p: &PartyView) -> Markup {
    html! {
        a href=(format!("/participant/{}", p.address)) {
            @match &p.name { Some(n) => { (n) }, None => { (p.address) } }
        }
        @if p.name.is_some() { " " span.muted { "<" (p.address) ">" } }
        @if p.verified { " " span.badge.ok title="name backed by evidence to a trust anchor" { "verified name" } }
        @if p.revoked { " " span.badge.bad { "revoked" } }
    }
}

fn parties(ps: &[PartyView]) -> Markup {
    html! {
        @for (i, p) in ps.iter().enumerate() {
            @if i > 0 { ", " }
            (party(p))
        }
    }
}

/// `1 entry`, `2 entries`.
fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn tx_link(id: &str) -> Markup {
    html! { a href=(format!("/tx/{id}")) { code { (id) } } }
}

/// The whole page around `body`.
pub fn layout(
    title: &str,
    body: &Markup,
    verified: &[String],
    away: &[Away],
    stale_since: Option<i64>,
    pins: &Pins,
    now: i64,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Blockpost" }
                link rel="stylesheet" href="/static/style.css";
            }
            body {
                header.top {
                    a.brand href="/" { "Blockpost explorer" }
                    nav {
                        a href="/" { "Home" }
                        a href="/directory" { "Directory" }
                        a href="/alerts" { "Alerts" }
                        a href="/search" { "Search" }
                    }
                    form action="/search" method="get" role="search" {
                        input type="search" name="q" placeholder="height, message id, transaction, sender:…, text" aria-label="Search";
                    }
                }
                main {
                    @for a in away {
                        div.banner.away role="status" data-away=(a.source) {
                            strong { "The " (a.source) " is away. " }
                            (a.endpoint) " has not answered since " (when(a.since_ms, now)) ": " (a.why)
                        }
                    }
                    @if let Some(at) = stale_since {
                        div.banner.away role="status" data-stale="true" {
                            "This page is shown as it was last verified, " (when(at, now)) "."
                        }
                    }
                    (body)
                    @if !verified.is_empty() {
                        footer.verified {
                            strong { "Verified by this explorer before showing this page:" }
                            ul { @for v in verified { li { (v) } } }
                            @if !pins.builder.is_empty() {
                                "Pinned on first contact (in " code { (pins.state_dir) } "): directory log "
                                code { (pins.directory) } "; ledger " code { (pins.ledger) }
                                "; builder key " code { (pins.builder) } "."
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A failure as a page.
pub fn failure(f: &Fail) -> Markup {
    let class = match f {
        Fail::Unverified { .. } => "banner fail",
        Fail::Away(_) => "banner away",
        _ => "banner",
    };
    html! {
        h1 { (f.title()) }
        div class=(class) data-failure=(f.title()) { (f.to_string()) }
        @if let Fail::Unverified { .. } = f {
            p { "The explorer shows only what verifies against the keys it pinned. This answer did not, so it is not shown. Someone may have changed it on the way or on the node: tell its operator, and run an auditor." }
        }
        p { a href="/" { "Home" } " · " a href="/search" { "Search" } }
    }
}

fn checkpoint(title: &str, c: &CheckpointView, now: i64) -> Markup {
    html! {
        h2 { (title) }
        table.kv {
            tr { th { "origin" } td { code { (c.origin) } } }
            tr { th { "size" } td { (c.size) } }
            tr { th { "root" } td { (hash(&c.root)) } }
            tr { th { "signature" } td { (verified_badge(true)) " with the pinned key" } }
            tr { th { "witnesses" } td {
                @if c.cosignatures.is_empty() { span.muted { "no cosignatures on this checkpoint" } }
                @for w in &c.cosignatures {
                    div {
                        code { (w.name) } " "
                        @if w.verified { (verified_badge(true)) } @else { span.badge.warn { "key not known to the explorer" } }
                        @if let Some(t) = w.time_ms { " cosigned " (when(t, now)) }
                    }
                }
            } }
        }
    }
}

pub fn home(v: &HomeView, now: i64) -> Markup {
    html! {
        h1 { "Blockpost explorer" }
        @if let Some(a) = &v.auditor {
            h2 { "Auditor" }
            table.kv {
                tr { th { "endpoint" } td { code { (a.endpoint) } } }
                @if let Some(s) = &a.status {
                    tr { th { "blocks verified" } td { (s.blocks_verified) " (behind by " (s.blocks_lag) ")" } }
                    tr { th { "firehose checked" } td { (s.firehose_checked) " (behind by " (s.firehose_lag) ")" } }
                    tr { th { "alerts" } td {
                        @if s.alerts == 0 { span.badge.ok { "0" } } @else { a.bad href="/alerts" { (s.alerts) " alerts" } }
                    } }
                    tr { th { "progress" } td {
                        @if s.stalled { span.badge.bad { "stalled" } " " } @else { span.badge.ok { "current" } " " }
                        "last progress " (s.seconds_since_progress) " s ago; checked until " (when(s.checked_until_ms, now))
                    } }
                }
                @if let Some(w) = &a.away { tr { th { "status" } td.warn { (w) } } }
            }
        }
        (checkpoint("Directory checkpoint", &v.directory, now))
        (checkpoint("Ledger checkpoint", &v.ledger, now))
        h2 { "Newest blocks" }
        table #blocks {
            tr { th { "height" } th { "time" } th { "leaves" } th { "id" } }
            @for b in &v.blocks {
                tr {
                    td { a href=(format!("/block/{}", b.height)) { (b.height) } }
                    td { (when(b.time_ms, now)) }
                    td { (b.leaf_count) }
                    td { (hash(&b.id)) }
                }
            }
        }
        h2 { "Anchors" }
        @if v.anchors.is_empty() { p.muted { "The node has made no anchors yet." } }
        @else {
            table {
                tr { th { "ledger size" } th { "sink" } th { "reference" } th { "Bitcoin" } th { "time" } }
                @for a in &v.anchors {
                    tr {
                        td { (a.ledger_size) }
                        td { (a.sink) }
                        td { code { (a.reference) } }
                        td { @if a.sink != "bitcoin" { span.muted { "—" } } @else if a.confirmed { span.badge.ok { "confirmed" } } @else { span.badge.warn { "pending" } } }
                        td { (when(a.time_ms, now)) }
                    }
                }
            }
            p.muted { "As the node reports them; an evidence bundle carries the proofs, and " code { "blockpost verify" } " checks them against Bitcoin headers." }
        }
    }
}

pub fn block(v: &BlockView, now: i64) -> Markup {
    html! {
        h1 { "Block " (v.height) " " (verified_badge(true)) }
        p.pager {
            @if v.height > 0 { a href=(format!("/block/{}", v.height - 1)) rel="prev" { "← block " (v.height - 1) } }
            @if let Some(n) = v.next_height { a href=(format!("/block/{n}")) rel="next" { "block " (n) " →" } }
        }
        table.kv {
            tr { th { "id" } td { (hash(&v.id)) } }
            tr { th { "time" } td { (when(v.time_ms, now)) } }
            tr { th { "previous" } td {
                @if v.height == 0 { span.muted { "genesis" } }
                @else { a href=(format!("/block/{}", v.height - 1)) { (hash(&v.previous_hash)) } }
            } }
            tr { th { "Merkle root" } td { (hash(&v.merkle_root)) " over " (v.leaf_count) " leaves" } }
            tr { th { "firehose" } td {
                @for (p, a, b) in &v.partitions { div { "partition " (p) ": sequence " (a) "…" (b) } }
            } }
            tr { th { "directory" } td { "checkpoint of " (v.directory_size) " entries, root " (hash(&v.directory_root)) } }
            tr { th { "builder signature" } td { (verified_badge(true)) " key id " code { (v.builder_key_id) } } }
            tr { th { "ledger" } td { "leaf " (v.height) " of the ledger checkpoint of " (v.ledger_size) " blocks" } }
        }
        h2 { (count(v.leaf_count as usize, "leaf", "leaves"))
            @if v.leaves_from > 0 || v.next_from.is_some() { ": " (v.leaves_from) "…" (v.leaves_from + v.leaves.len() as u64) } }
        p.pager {
            @if v.leaves_from > 0 { a href=(format!("/block/{}?from={}", v.height, v.leaves_from.saturating_sub(LEAVES_PAGE as u64))) { "← earlier leaves" } }
            @if let Some(n) = v.next_from { a href=(format!("/block/{}?from={n}", v.height)) { "later leaves →" } }
        }
        table #leaves {
            tr { th { "#" } th { "kind" } th { "what" } th { "transaction" } }
            @for l in &v.leaves {
                tr data-kind=(l.kind) {
                    td { (l.index) }
                    td {
                        @match &l.message_id {
                            Some(id) if l.kind == "message" => { a href=(format!("/message/{id}")) { (l.kind) } },
                            _ => { (l.kind) },
                        }
                    }
                    td { (l.summary) }
                    td { @if let Some(t) = &l.transaction_id { (tx_link(t)) } }
                }
            }
        }
    }
}

fn settlement(s: &SettleView) -> Markup {
    html! {
        @match &s.unread {
            Some(why) => { div.muted { "settlement terms: " (why) } },
            None => {
                table.kv.settlement {
                    tr { th { "format" } td { (s.format) } }
                    tr { th { "reference" } td { code { (s.reference) } } }
                    tr { th { "instrument (ISIN)" } td { code { (s.isin) } } }
                    tr { th { "quantity" } td { (s.quantity) } }
                    @if let Some(a) = &s.amount { tr { th { "amount" } td { (a) } } }
                    tr { th { "side" } td { (s.side) } }
                    tr { th { "settlement date" } td { (s.settlement_date) } }
                }
            },
        }
    }
}

fn message_body(m: &MessageView) -> Markup {
    html! {
        @if let Some(b) = &m.body { div.body { (b) } }
        @if let Some(n) = m.sealed_for { div.body.sealed { "sealed end to end (" (n) @if n == 1 { " recipient key" } @else { " recipient keys" } "): only its parties can read it" } }
        @if let Some(s) = &m.settlement { (settlement(s)) }
        @if let Some(d) = &m.delivery { div { "carries ledger transaction " code { (d) } } }
    }
}

pub fn message(m: &MessageView, now: i64) -> Markup {
    html! {
        h1 { "Message " (verified_badge(true)) }
        table.kv {
            tr { th { "id" } td { (hash(&m.message_id)) } }
            tr { th { "transaction" } td { (tx_link(&m.transaction_id)) } }
            tr { th { "kind" } td { (m.kind) } }
            tr { th { "from" } td.sender { (party(&m.sender)) } }
            tr { th { "to" } td { (parties(&m.recipients)) } }
            tr { th { "sent" } td { (when(m.time_ms, now)) } }
            tr { th { "content type" } td { code { (m.content_type) } } }
            tr { th { "in block" } td { a href=(format!("/block/{}", m.height)) { "block " (m.height) } ", leaf " (m.leaf_index) } }
        }
        (message_body(m))
    }
}

pub fn transaction(t: &TxView, now: i64) -> Markup {
    let status_class = match t.status {
        "finished" => "badge ok",
        "timed out" => "badge bad",
        _ => "badge warn",
    };
    html! {
        h1 { "Transaction " code { (t.transaction_id) } }
        p {
            span class=(status_class) id="tx-status" { (t.status) } " "
            (verified_badge(true)) " "
            a.button href=(format!("/tx/{}/evidence.bpe", t.transaction_id)) download { "Download evidence bundle" }
        }
        table.kv {
            tr { th { "parties" } td #parties { (parties(&t.parties)) } }
            tr { th { "opened" } td { "in " a href=(format!("/block/{}", t.opened_height)) { "block " (t.opened_height) } } }
            @if t.closing.is_none() { tr { th { "times out" } td { (when(t.deadline_ms, now)) " unless every party finishes" } } }
        }
        h2 { "Timeline" }
        ol.timeline {
            @for m in &t.messages {
                li.message data-kind=(m.kind) {
                    div {
                        strong { (m.kind) } " · " (when(m.time_ms, now)) " · "
                        a href=(format!("/message/{}", m.message_id)) { code { (&m.message_id[..16]) } }
                        " · " a href=(format!("/block/{}", m.height)) { "block " (m.height) }
                    }
                    div.sender { (party(&m.sender)) " → " (parties(&m.recipients)) }
                    (message_body(m))
                }
            }
            @if let Some(c) = &t.closing {
                li.closing {
                    div { strong { "closed: " (c.status) } " · " (when(c.time_ms, now)) " · "
                        a href=(format!("/block/{}", c.height)) { "block " (c.height) } ", leaf " (c.leaf_index) }
                    div {
                        @if c.finished_by.is_empty() { "nobody finished: the deadline passed" }
                        @else { "finished by " (parties(&c.finished_by)) }
                        " · closes " (c.message_count) " messages"
                    }
                }
            }
        }
        @if !t.deliveries.is_empty() {
            h2 { "Deliveries to ledgers" }
            table {
                tr { th { "ledger" } th { "transaction" } th { "stage" } th { "block" } th { "time" } }
                @for d in &t.deliveries {
                    tr { td { (d.ledger) } td { code { (d.transaction) } } td { (d.stage) @if !d.reason.is_empty() { " (" (d.reason) ")" } }
                        td { a href=(format!("/block/{}", d.height)) { (d.height) } } td { (when(d.time_ms, now)) } }
                }
            }
        }
    }
}

fn entry(e: &EntryView, now: i64) -> Markup {
    html! {
        tr data-kind=(e.kind) {
            td { a href=(format!("/directory?from={}", e.leaf_index)) { (e.leaf_index) } }
            td { (e.kind) @if let Some(p) = e.previous_index { " of " (p) } }
            td { (when(e.logged_at_ms, now)) }
            td {
                div { "signing " code { (e.signing_key) } }
                div { "encryption " code { (e.encryption_key) } }
                @if let Some(c) = &e.certificate {
                    div { "certificate " code { (c.subject) } ", serial " code { (c.serial) } }
                    div.muted { "issued by " (c.issuer) ", valid " (c.not_before) " to " (c.not_after) }
                    div.muted { "SHA-256 " code { (c.sha256) } " · "
                        a href=(format!("/participant/{}/{}/certificate.pem", e.address, e.leaf_index)) { "PEM" } }
                }
            }
            td {
                (verified_badge(true)) " in checkpoint of " (e.proved_in)
                details.proof {
                    summary { "proof" }
                    div { "leaf " (e.leaf_index) ", audit path:" }
                    @for h in &e.inclusion_proof { div { code { (h) } } }
                    pre { (e.checkpoint) }
                }
            }
        }
    }
}

pub fn participant(p: &ParticipantView, now: i64) -> Markup {
    html! {
        h1 { (p.real_name) " " span.muted { "<" (p.address) ">" } }
        table.kv {
            tr { th { "address" } td { code { (p.address) } } }
            tr { th { "real name" } td #real-name { (p.real_name) } }
            tr { th { "name verified" } td #name-verified {
                @if p.verified { span.badge.ok { "verified" } }
                @else { span.badge.warn { "not verified" } " the directory took the name as given" }
                @if let Some(e) = p.history.iter().find(|e| e.trust_anchor.is_some()) {
                    div { "evidence chain " @for (i, s) in e.evidence.iter().enumerate() { @if i > 0 { " ← " } code { (s) } } }
                    @if let Some(a) = &e.trust_anchor { div { "trust anchor " code { (a) } } }
                }
            } }
            @if let Some(l) = p.history.iter().rev().find_map(|e| e.lei.clone()) { tr { th { "LEI" } td { code { (l) } } } }
            tr { th { "status" } td { @if p.revoked { span.badge.bad { "revoked" } } @else { span.badge.ok { "active" } } } }
        }
        h2 { "History (" (count(p.history.len(), "entry", "entries")) ") " (verified_badge(true)) }
        table #history {
            tr { th { "entry" } th { "kind" } th { "logged" } th { "keys and certificate" } th { "proof" } }
            @for e in p.history.iter().rev() { (entry(e, now)) }
        }
        h2 { "Transactions" }
        @if let Some(n) = &p.transactions_note { p.muted { (n) } }
        @if let Some(rows) = &p.transactions {
            @if rows.is_empty() { p.muted { "none in the auditor's index" } }
            @else {
                table #transactions {
                    tr { th { "transaction" } th { "messages" } th { "last" } }
                    @for r in rows { tr { td { (tx_link(&r.transaction_id)) } td { (r.messages) } td { (when(r.last_time_ms, now)) } } }
                }
            }
        }
    }
}

pub fn directory(d: &DirectoryView, now: i64) -> Markup {
    html! {
        h1 { "Directory log" }
        table.kv {
            tr { th { "size" } td { (d.size) " entries" } }
            tr { th { "root" } td { (hash(&d.root)) " " (verified_badge(true)) } }
        }
        h2 { "Entries " (d.from) "…" (d.from + d.entries.len() as u64) }
        p.pager {
            @if let Some(f) = d.previous_from { a href=(format!("/directory?from={f}")) rel="prev" { "← earlier" } }
            @if let Some(f) = d.next_from { a href=(format!("/directory?from={f}")) rel="next" { "later →" } }
        }
        table #entries {
            tr { th { "entry" } th { "kind" } th { "participant" } th { "logged" } th { "proof" } }
            @for e in &d.entries {
                tr data-kind=(e.kind) {
                    td { (e.leaf_index) }
                    td { (e.kind) }
                    td { a href=(format!("/participant/{}", e.address)) { (e.real_name) } " " span.muted { "<" (e.address) ">" }
                        @if e.verified { " " span.badge.ok { "verified name" } } }
                    td { (when(e.logged_at_ms, now)) }
                    td { (verified_badge(true)) }
                }
            }
        }
        h2 { "Checkpoints this explorer verified" }
        table {
            tr { th { "size" } th { "root" } th { "first seen" } }
            @for c in &d.checkpoints { tr { td { (c.size) } td { (hash(&c.root)) } td { (when(c.first_seen_ms, now)) } } }
        }
        p.muted { "Each one verified with the pinned log key and consistent with the one before it." }
    }
}

pub fn alerts(a: &AlertsView, now: i64) -> Markup {
    html! {
        h1 { "Alerts" }
        p.muted { "From the auditor at " code { (a.auditor) } ", newest first." }
        @if a.alerts.is_empty() { p #no-alerts { span.badge.ok { "no alerts" } " The auditor has found nothing wrong." } }
        @for x in &a.alerts {
            div.banner.fail.alert {
                strong { "#" (x.index) " " (x.kind) } " · " (when(x.time_ms, now)) " · "
                @match &x.link { Some(l) => { a href=(l) { (x.subject) } }, None => { (x.subject) } }
                div { (x.detail) }
                details { summary { "evidence" } pre { (serde_json::to_string_pretty(&x.evidence).unwrap_or_default()) } }
            }
        }
    }
}

pub fn search(s: &SearchView, has_auditor: bool, now: i64) -> Markup {
    html! {
        h1 { "Search" }
        form action="/search" method="get" {
            input type="search" name="q" value=(s.query) size="60" aria-label="Query";
            " " button type="submit" { "Search" }
        }
        @if !has_auditor { p.warn { "This explorer has no auditor: start it with " code { "--auditor ENDPOINT" } " to search messages." } }
        details open[s.query.is_empty()] {
            summary { "Query syntax" }
            p { "Full text over bodies and names, and fields: "
                code { "transaction_id:ID" } ", " code { "sender:ADDRESS" } ", " code { "recipient:ADDRESS" } ", "
                code { "kind:trade" } ", " code { "sender_name:bank" } ", " code { "isin:US0378331005" } ", "
                code { "height:[3 TO 9]" } "; combine with " code { "AND" } ", " code { "OR" } ", " code { "-" } " and quotes. "
                "A block height or a message id goes straight to its page." }
        }
        @if !s.query.is_empty() {
            h2 { (count(s.hits.len(), "hit", "hits")) @if s.offset > 0 { " from " (s.offset) } }
            table #hits {
                tr { th { "time" } th { "kind" } th { "from → to" } th { "transaction" } th { "message" } th { "proof" } }
                @for h in &s.hits {
                    tr {
                        td { (when(h.time_ms, now)) }
                        td { (h.kind) @if h.encrypted { " " span.sealed { "(sealed)" } } }
                        td {
                            a href=(format!("/participant/{}", h.sender)) { @if h.sender_name.is_empty() { (h.sender) } @else { (h.sender_name) } }
                            " → "
                            @for (i, r) in h.recipients.iter().enumerate() {
                                @if i > 0 { ", " }
                                a href=(format!("/participant/{r}")) { (h.recipient_names.get(i).filter(|n| !n.is_empty()).unwrap_or(r)) }
                            }
                        }
                        td { (tx_link(&h.transaction_id)) }
                        td { a href=(format!("/message/{}", h.message_id)) { code { (&h.message_id[..16]) } } " in "
                            a href=(format!("/block/{}", h.height)) { "block " (h.height) } }
                        td { @match &h.unverified { None => { (verified_badge(true)) }, Some(w) => { span.badge.bad title=(w) { "✗ not verified" } } } }
                    }
                }
            }
            p.pager { @if let Some(o) = s.next_offset {
                a href=(format!("/search?q={}&offset={o}", encode(&s.query))) rel="next" { "more →" }
            } }
        }
    }
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_dates_with_relative_times() {
        assert_eq!(date(0), "1970-01-01T00:00:00Z");
        let now = 1_800_000_000_000;
        assert_eq!(relative(now - 3_000, now), "just now");
        assert_eq!(relative(now - 42_000, now), "42 s ago");
        assert_eq!(relative(now - 3 * 60_000, now), "3 min ago");
        assert_eq!(relative(now - 5 * 3_600_000, now), "5 h ago");
        assert_eq!(relative(now - 3 * 86_400_000, now), "3 days ago");
        assert_eq!(relative(now + 2 * 3_600_000, now), "in 2 h");
    }

    #[test]
    fn values_are_escaped_and_queries_encoded() {
        let p = PartyView {
            address: "x".into(),
            name: Some("<script>alert(1)</script>".into()),
            verified: false,
            revoked: false,
        };
        let out = party(&p).into_string();
        assert!(!out.contains("<script>"), "{out}");
        assert!(out.contains("&lt;script&gt;"), "{out}");
        assert_eq!(encode("sender:a b&c"), "sender%3Aa%20b%26c");
    }
}
