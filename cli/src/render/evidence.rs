//! Evidence bundles: what `export` wrote, and what `verify` proved, for people (terminal
//! or a self-contained HTML page that prints well) or as JSON.

use std::path::Path;

use blockpost_core::bundle::{Members, Party, Report};
use serde_json::json;

use super::*;

/// A bundle written.
pub fn exported(file: &Path, m: &Members, bytes: usize, json: bool) -> anyhow::Result<()> {
    if json {
        say!(
            "{}",
            json!({
                "file": file.display().to_string(),
                "members": m.keys().collect::<Vec<_>>(),
                "bytes": bytes,
            })
        );
        return Ok(());
    }
    say!(
        "wrote {} ({} members, {bytes} bytes); it verifies offline: blockpost verify {}",
        file.display(),
        m.len(),
        file.display()
    );
    Ok(())
}

fn who(p: &Party) -> String {
    let mut s = party(&p.real_name, &p.address);
    if p.verified {
        s.push_str(" (name verified)");
    }
    if let Some(l) = &p.lei {
        s.push_str(&format!(" LEI {l}"));
    }
    s
}

/// One line per body: its text, the opened text, or why there is none.
fn body(
    m: &blockpost_core::bundle::MessageReport,
    opened: &Option<Result<String, String>>,
) -> String {
    match (&m.text, opened) {
        (Some(t), _) => t.replace('\u{1}', "|"),
        (None, Some(Ok(t))) => format!(
            "{} (sealed; opened with the keyring)",
            t.replace('\u{1}', "|")
        ),
        (None, Some(Err(why))) => format!("<sealed: {why}>"),
        (None, None) if m.sealed => "<sealed end to end>".into(),
        (None, None) => "<no text body>".into(),
    }
}

/// The check's report.
pub fn evidence(
    file: &Path,
    r: &Report,
    opened: &[Option<Result<String, String>>],
    json: bool,
) -> anyhow::Result<()> {
    if json {
        let mut v = serde_json::to_value(r)?;
        v["file"] = json!(file.display().to_string());
        v["verified"] = json!(true);
        if let Some(ms) = v["messages"].as_array_mut() {
            for (m, o) in ms.iter_mut().zip(opened) {
                match o {
                    Some(Ok(t)) => m["opened"] = json!(t),
                    Some(Err(why)) => m["unopened"] = json!(why),
                    None => {}
                }
            }
        }
        say!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    say!(
        "{}: evidence for {}; every check passed",
        file.display(),
        r.subject
    );
    if let Some(s) = &r.status {
        say!("  status      {s}");
    }
    if let (Some("open"), Some(d)) = (r.status.as_deref(), r.deadline_ms) {
        say!("  times out   {} unless every party finishes", date(d));
    }
    say!("keys");
    for k in &r.keys {
        say!(
            "  {:<22} {}  ({})",
            k.label,
            k.key,
            if k.source == "trusted" {
                "as trusted"
            } else {
                "taken from the bundle"
            }
        );
    }
    let list = |v: &[String]| {
        if v.is_empty() {
            "no trusted witness".to_owned()
        } else {
            v.join(", ")
        }
    };
    say!(
        "  ledger checkpoint of {} blocks, cosigned by {}",
        r.ledger_size,
        list(&r.ledger_cosigners)
    );
    say!(
        "  directory checkpoint of {} entries, cosigned by {}",
        r.directory_size,
        list(&r.directory_cosigners)
    );
    say!("who said what, and when");
    for (m, o) in r.messages.iter().zip(opened) {
        say!(
            "  {}  block {} leaf {}  {} (key of entry {}) -> {}  [{}]",
            date(m.timestamp_ms),
            m.height,
            m.leaf_index,
            who(&m.sender),
            m.sender_key_index,
            m.recipients.iter().map(who).collect::<Vec<_>>().join(", "),
            m.kind
        );
        say!("      {}", body(m, o));
    }
    if let Some(c) = &r.closing {
        say!(
            "  closed {} at {} in block {}{}",
            c.status,
            date(c.time_ms),
            c.height,
            if c.finished_by.is_empty() {
                String::new()
            } else {
                format!(", finished by {}", c.finished_by.join(", "))
            }
        );
    }
    for x in &r.receipts {
        say!(
            "receipt  {}: accepted {}, promised in a block by {}: {}",
            &x.message_id[..16],
            date(x.accepted_at_ms),
            date(x.block_deadline_ms),
            if x.kept { "kept" } else { "NOT kept" }
        );
    }
    for a in &r.anchors {
        say!(
            "anchor   ledger of {} blocks, {}: {}{}",
            a.ledger_size,
            a.reference,
            a.status,
            match (&a.bitcoin_block, a.bitcoin_height, a.bitcoin_time) {
                (Some(b), Some(h), Some(t)) =>
                    format!(" (block {b}, height {h}, {})", date(i64::from(t) * 1000)),
                (None, Some(h), _) => format!(" (height {h})"),
                _ => String::new(),
            }
        );
    }
    if !r.not_proved.is_empty() {
        say!("not proved");
        for n in &r.not_proved {
            say!("  - {n}");
        }
    }
    Ok(())
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The report as one self-contained HTML page (no script, no outside resource).
pub fn evidence_html(file: &Path, r: &Report, opened: &[Option<Result<String, String>>]) -> String {
    let mut h = String::new();
    h.push_str("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">");
    h.push_str(&format!("<title>Evidence: {}</title>", esc(&r.subject)));
    h.push_str(
        "<style>body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}\
         h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem;border-bottom:1px solid #ccc}\
         table{border-collapse:collapse;width:100%}td,th{text-align:left;vertical-align:top;padding:.3rem .5rem;border-bottom:1px solid #eee}\
         code{font-size:.85em;word-break:break-all}.ok{color:#176b2c}.warn{color:#8a5a00}\
         @media print{body{margin:0;max-width:none}a{color:inherit}}</style></head><body>",
    );
    h.push_str(&format!(
        "<h1>Evidence for {}</h1><p class=\"ok\">Every check passed: <code>{}</code>, checked offline.</p>",
        esc(&r.subject),
        esc(&file.display().to_string())
    ));
    if let Some(s) = &r.status {
        h.push_str(&format!("<p>Status: <strong>{}</strong></p>", esc(s)));
    }
    if let (Some("open"), Some(d)) = (r.status.as_deref(), r.deadline_ms) {
        h.push_str(&format!(
            "<p>It times out {} unless every party finishes.</p>",
            esc(&date(d))
        ));
    }
    h.push_str("<h2>Who said what, and when</h2><table><tr><th>Sent</th><th>From</th><th>To</th><th>Kind</th><th>Block</th><th>Body</th></tr>");
    for (m, o) in r.messages.iter().zip(opened) {
        h.push_str(&format!(
            "<tr><td>{}</td><td>{}<br><small>key of directory entry {}</small></td><td>{}</td><td>{}</td><td>{} / {}</td><td>{}</td></tr>",
            esc(&date(m.timestamp_ms)),
            esc(&who(&m.sender)),
            m.sender_key_index,
            esc(&m.recipients.iter().map(who).collect::<Vec<_>>().join(", ")),
            esc(&m.kind),
            m.height,
            m.leaf_index,
            esc(&body(m, o))
        ));
    }
    h.push_str("</table>");
    if let Some(c) = &r.closing {
        h.push_str(&format!(
            "<p>Closed <strong>{}</strong> at {} in block {}{}.</p>",
            esc(&c.status),
            esc(&date(c.time_ms)),
            c.height,
            if c.finished_by.is_empty() {
                String::new()
            } else {
                format!(", finished by {}", esc(&c.finished_by.join(", ")))
            }
        ));
    }
    h.push_str("<h2>What was proved, against which keys</h2><table><tr><th>Key</th><th>Value</th><th>Source</th></tr>");
    for k in &r.keys {
        h.push_str(&format!(
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
            esc(k.label),
            esc(&k.key),
            if k.source == "trusted" {
                "as trusted"
            } else {
                "<span class=\"warn\">taken from the bundle</span>"
            }
        ));
    }
    h.push_str("</table>");
    h.push_str(&format!(
        "<p>Ledger checkpoint of {} blocks, cosigned by {}. Directory checkpoint of {} entries, cosigned by {}.</p>",
        r.ledger_size,
        esc(&r.ledger_cosigners.join(", ")).chars().next().map_or("no trusted witness".to_owned(), |_| esc(&r.ledger_cosigners.join(", "))),
        r.directory_size,
        esc(&r.directory_cosigners.join(", ")).chars().next().map_or("no trusted witness".to_owned(), |_| esc(&r.directory_cosigners.join(", "))),
    ));
    if !r.receipts.is_empty() {
        h.push_str("<h2>Receipts</h2><ul>");
        for x in &r.receipts {
            h.push_str(&format!(
                "<li><code>{}</code>: accepted {}, promised in a block by {}: {}</li>",
                esc(&x.message_id),
                esc(&date(x.accepted_at_ms)),
                esc(&date(x.block_deadline_ms)),
                if x.kept {
                    "kept"
                } else {
                    "<strong>not kept</strong>"
                }
            ));
        }
        h.push_str("</ul>");
    }
    if !r.anchors.is_empty() {
        h.push_str("<h2>Bitcoin anchors</h2><ul>");
        for a in &r.anchors {
            h.push_str(&format!(
                "<li>Ledger of {} blocks, <code>{}</code>: {}{}</li>",
                a.ledger_size,
                esc(&a.reference),
                esc(&a.status),
                match (&a.bitcoin_block, a.bitcoin_height) {
                    (Some(b), Some(ht)) => format!(" (block <code>{}</code>, height {ht})", esc(b)),
                    _ => String::new(),
                }
            ));
        }
        h.push_str("</ul>");
    }
    if !r.not_proved.is_empty() {
        h.push_str("<h2>Not proved</h2><ul>");
        for n in &r.not_proved {
            h.push_str(&format!("<li>{}</li>", esc(n)));
        }
        h.push_str("</ul>");
    }
    h.push_str("</body></html>\n");
    h
}
