//! The settlement summary `blockpost tx` shows for a transaction that carries a trade or
//! settlement instructions: what is traded, between whom (real names from the directory),
//! each side's instruction and whether it agrees with the trade.

use std::collections::HashMap;

use blockpost_core::settle::{self, Settlement};
use blockpost_proto::v1::EnvelopeContent;
use blockpost_proto::v1::envelope_content::Body;
use serde_json::{Value, json};

/// What the directory says of a party, for display.
#[derive(Clone, Debug, Default)]
pub struct Named {
    /// Real name.
    pub real_name: String,
    /// LEI, if the binding has one.
    pub lei: Option<String>,
    /// Whether the real name is backed by evidence.
    pub verified: bool,
}

/// One trade or instruction of the transaction.
struct Item<'a> {
    sender: &'a str,
    /// A ledger transaction it carries for delivery: the ledger and its id.
    delivery: Option<(String, String)>,
    message_id: [u8; 32],
    /// Read and checked, or why not (sealed, or invalid).
    read: Result<Settlement, String>,
}

fn items<'a>(
    t: &'a blockpost_client::LedgerTransaction,
    contents: &'a [EnvelopeContent],
) -> (Vec<Item<'a>>, Vec<Item<'a>>) {
    let (mut trades, mut instructions) = (Vec::new(), Vec::new());
    for (m, c) in t.messages.iter().zip(contents) {
        let Some((expect, _)) = blockpost_core::settle_expect(c.kind()) else {
            continue;
        };
        let read = match &c.body {
            Some(Body::Plaintext(p)) => settle::parse(expect, p).map_err(|e| e.to_string()),
            Some(Body::Encrypted(_)) => Err("sealed (only its parties can read it)".into()),
            None => Err("no body".into()),
        };
        let item = Item {
            delivery: c.delivery.as_ref().map(|d| {
                (
                    d.ledger.clone(),
                    blockpost_core::delivery::show_commitment(&d.ledger, &d.commitment),
                )
            }),
            sender: &c.sender,
            message_id: m.message_id,
            read,
        };
        match expect {
            settle::Expect::Trade => trades.push(item),
            settle::Expect::Instruction => instructions.push(item),
        }
    }
    (trades, instructions)
}

fn settlement_json(s: &Settlement) -> Value {
    json!({
        "format": s.format.to_string(),
        "reference": s.reference,
        "isin": s.isin,
        "quantity": s.quantity.to_string(),
        "price": s.price.map(|p| p.to_string()),
        "amount": s.amount.as_ref().map(|a| a.value.to_string()),
        "currency": s.amount.as_ref().map(|a| a.currency.clone()),
        "trade_date": s.trade_date.map(|d| d.to_string()),
        "settlement_date": s.settlement_date.to_string(),
        "market": s.market,
        "side": s.side.as_str(),
        "against_payment": s.against_payment,
        "account": s.account,
        "parties": s.parties.iter().map(|p| json!({
            "role": p.role,
            "id": p.id.to_string(),
        })).collect::<Vec<_>>(),
    })
}

/// The summary as JSON, or `None` when the transaction has no trade or instruction.
pub fn summary_json(
    t: &blockpost_client::LedgerTransaction,
    contents: &[EnvelopeContent],
    names: &HashMap<String, Named>,
) -> Option<Value> {
    let (trades, instructions) = items(t, contents);
    if trades.is_empty() && instructions.is_empty() {
        return None;
    }
    let trade = trades.iter().rev().find_map(|i| i.read.as_ref().ok());
    let one = |i: &Item<'_>| {
        let mut v = match &i.read {
            Ok(s) => settlement_json(s),
            Err(why) => json!({ "unread": why }),
        };
        v["sender"] = json!(i.sender);
        v["message_id"] = json!(hex::encode(i.message_id));
        if let Some((ledger, id)) = &i.delivery {
            v["delivery"] = json!({ "ledger": ledger, "transaction": id, "sealed": true });
        }
        if let (Some(t), Ok(s)) = (trade, &i.read) {
            v["differs_from_trade"] = json!(settle::differences(t, s));
        }
        v
    };
    let parties: Vec<Value> = t
        .state
        .parties
        .iter()
        .map(|a| {
            let n = names.get(a).cloned().unwrap_or_default();
            json!({
                "address": a,
                "real_name": n.real_name,
                "verified": n.verified,
                "lei": n.lei,
            })
        })
        .collect();
    Some(json!({
        "trades": trades.iter().map(one).collect::<Vec<_>>(),
        "instructions": instructions.iter().map(one).collect::<Vec<_>>(),
        "parties": parties,
        "matched": trade.is_some()
            && !instructions.is_empty()
            && instructions.iter().all(|i| matches!(
                (&i.read, trade),
                (Ok(s), Some(t)) if settle::differences(t, s).is_empty()
            )),
    }))
}

/// The summary for people.
pub fn summary(
    t: &blockpost_client::LedgerTransaction,
    contents: &[EnvelopeContent],
    names: &HashMap<String, Named>,
) {
    let (trades, instructions) = items(t, contents);
    if trades.is_empty() && instructions.is_empty() {
        return;
    }
    let who = |a: &str| match names.get(a) {
        Some(n) => {
            let lei = n
                .lei
                .as_ref()
                .map(|l| format!(", LEI {l}"))
                .unwrap_or_default();
            let unverified = if n.verified { "" } else { ", name unverified" };
            format!("{} <{a}>{lei}{unverified}", n.real_name)
        }
        None => format!("<{a}>"),
    };
    say!("  settlement");
    let trade = trades.iter().rev().find_map(|i| i.read.as_ref().ok());
    for i in &trades {
        match &i.read {
            Ok(s) => {
                say!(
                    "    trade        {} {} from {}",
                    s.format,
                    s.reference,
                    who(i.sender)
                );
                say!(
                    "    instrument   ISIN {}{}",
                    s.isin,
                    s.market
                        .as_ref()
                        .map(|m| format!(" on {m}"))
                        .unwrap_or_default()
                );
                let price = s.price.map(|p| format!(" at {p}")).unwrap_or_default();
                say!("    quantity     {}{price}", s.quantity);
                if let Some(a) = &s.amount {
                    say!("    amount       {} {}", a.value, a.currency);
                }
                say!(
                    "    dates        trade {}, settlement {}",
                    s.trade_date
                        .map(|d| d.to_string())
                        .unwrap_or_else(|| "-".into()),
                    s.settlement_date
                );
            }
            Err(why) => say!("    trade        from {}: {why}", who(i.sender)),
        }
    }
    for i in &instructions {
        match &i.read {
            Ok(s) => {
                let pay = match s.against_payment {
                    Some(true) => " against payment",
                    Some(false) => " free of payment",
                    None => "",
                };
                let amount = s
                    .amount
                    .as_ref()
                    .map(|a| format!(", {} {}", a.value, a.currency))
                    .unwrap_or_default();
                let agrees = match trade.map(|t| settle::differences(t, s)) {
                    Some(d) if d.is_empty() => "; agrees with the trade".to_owned(),
                    Some(d) => format!("; DIFFERS from the trade in {}", d.join(", ")),
                    None => String::new(),
                };
                say!(
                    "    instruction  {}: {}{pay}, {} {} from account {}{amount}, settles {}{agrees}",
                    who(i.sender),
                    s.side.as_str(),
                    s.quantity,
                    s.isin,
                    s.account.as_deref().unwrap_or("-"),
                    s.settlement_date
                );
            }
            Err(why) => say!("    instruction  {}: {why}", who(i.sender)),
        }
        if let Some((ledger, id)) = &i.delivery {
            say!(
                "                 carries a {ledger} transaction {id}, sealed; the node delivers it once every party has finished"
            );
        }
    }
}
