//! An ISO 20022 `sese.023` (SecuritiesSettlementTransactionInstruction) reader: the subset
//! of the message that says what settles, between whom and when, checked against the
//! schema's required elements and code lists.
//!
//! Read: the root `Document` in namespace `urn:iso:std:iso:20022:tech:xsd:sese.023.001.VV`
//! (VV from 09 to 13), then under `SctiesSttlmTxInstr`:
//!
//! | element | rule |
//! |---|---|
//! | `TxId` | required, 1 to 35 characters |
//! | `SttlmTpAndAddtlParams/SctiesMvmntTp` | required, `DELI` or `RECE` |
//! | `SttlmTpAndAddtlParams/Pmt` | required, `APMT` or `FREE` |
//! | `TradDtls/TradDt` | optional date (`Dt/Dt`, or the date of `Dt/DtTm`) |
//! | `TradDtls/SttlmDt` | required date, not before the trade date |
//! | `TradDtls/PlcOfTrad//MktIdrCd` | optional ISO 10383 MIC |
//! | `FinInstrmId/ISIN` | required, ISO 6166 check digit |
//! | `QtyAndAcctDtls/SttlmQty/Qty/(Unit\|FaceAmt\|AmtsdVal)` | required, above zero |
//! | `QtyAndAcctDtls/SfkpgAcct/Id` | required |
//! | `QtyAndAcctDtls/AcctOwnr` | optional party |
//! | `SttlmParams/SctiesTxTp/Cd` (or `Prtry`) | required |
//! | `DlvrgSttlmPties`, `RcvgSttlmPties`: `Dpstry`, `Pty1` … `Pty5` | optional parties: `Id/AnyBIC`, `Id/PrtryId/Id`, `Id/NmAndAdr/Nm`, `LEI` (ISO 17442 check digits) |
//! | `SttlmAmt/Amt` with `Ccy`, `SttlmAmt/CdtDbtInd` | required when `Pmt` is `APMT`; ISO 4217, above zero, at most 5 digits after the point; `CRDT` or `DBIT` |
//!
//! Other elements are allowed and not read; their order is not checked. Refused outright: a
//! DOCTYPE (so no entity can be declared), entity references other than XML's five and
//! character references, processing instructions, more than 1,000 namespace bindings or
//! 64 levels, and anything that is not well-formed.

use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;

use super::ids::{Date, Decimal, check_currency, check_isin, check_lei, check_mic};
use super::{Amount, Format, Party, PartyId, Problem, SettleError, Settlement, Side};

const NS_PREFIX: &str = "urn:iso:std:iso:20022:tech:xsd:sese.023.001.";
/// Versions whose layout of the elements read here is the one above.
const VERSIONS: std::ops::RangeInclusive<u8> = 9..=13;
const MAX_DEPTH: usize = 64;
const MAX_ELEMENTS: usize = 4096;
/// ISO 20022 `ActiveCurrencyAndAmount`: 5 digits after the point.
const AMOUNT_FRACTION: u32 = 5;
/// `DecimalNumber` quantities: 17 digits after the point.
const QUANTITY_FRACTION: u32 = 17;

/// An element: its local name, attributes, text and children.
#[derive(Debug, Default)]
struct Element {
    name: String,
    attrs: Vec<(String, String)>,
    text: String,
    children: Vec<Element>,
}

impl Element {
    fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// The element at `path` (names separated by `/`) below this one.
    fn at(&self, path: &str) -> Option<&Element> {
        path.split('/').try_fold(self, |e, n| e.child(n))
    }

    /// The first element called `name` anywhere below, depth first.
    fn find(&self, name: &str) -> Option<&Element> {
        self.children.iter().find_map(|c| {
            if c.name == name {
                Some(c)
            } else {
                c.find(name)
            }
        })
    }

    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn xml_err(why: impl std::fmt::Display) -> SettleError {
    SettleError::new(
        "body",
        Problem::Unreadable(format!("is not well-formed XML: {why}")),
    )
}

/// Parses `text` into a tree; returns the root and its namespace.
fn tree(text: &str) -> Result<(Element, String), SettleError> {
    let mut r = NsReader::from_str(text);
    r.config_mut().trim_text(true);
    r.config_mut().check_end_names = true;
    r.config_mut().expand_empty_elements = true;
    r.resolver_mut().set_max_namespace_bindings(1000);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<(Element, String)> = None;
    let mut root_ns = String::new();
    let mut count = 0usize;
    loop {
        let (ns, ev) = r.read_resolved_event().map_err(xml_err)?;
        match ev {
            Event::Start(s) => {
                if root.is_some() {
                    return Err(xml_err("content after the root element"));
                }
                count += 1;
                if stack.len() >= MAX_DEPTH || count > MAX_ELEMENTS {
                    return Err(SettleError::new(
                        "body",
                        Problem::Unreadable(format!(
                            "is too deep or too large (limits: {MAX_DEPTH} levels, \
                             {MAX_ELEMENTS} elements)"
                        )),
                    ));
                }
                if stack.is_empty() {
                    root_ns = match ns {
                        ResolveResult::Bound(n) => n.0.to_owned(),
                        _ => String::new(),
                    };
                }
                let name = s.local_name().into_inner().to_owned();
                let mut attrs = Vec::new();
                for a in s.attributes() {
                    let a = a.map_err(xml_err)?;
                    let key = a.key.local_name().into_inner().to_owned();
                    if a.key.0.starts_with("xmlns") {
                        continue;
                    }
                    let v = a
                        .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                        .map_err(xml_err)?
                        .into_owned();
                    attrs.push((key, v));
                }
                stack.push(Element {
                    name,
                    attrs,
                    ..Element::default()
                });
            }
            Event::End(_) => {
                let done = stack
                    .pop()
                    .ok_or_else(|| xml_err("an end tag without a start"))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(done),
                    None => root = Some((done, root_ns.clone())),
                }
            }
            Event::Text(t) => {
                let top = stack
                    .last_mut()
                    .ok_or_else(|| xml_err("text outside the root element"))?;
                top.text.push_str(&t.xml10_content());
            }
            Event::CData(c) => {
                let top = stack
                    .last_mut()
                    .ok_or_else(|| xml_err("CDATA outside the root element"))?;
                top.text.push_str(&c.into_inner());
            }
            Event::GeneralRef(g) => {
                let resolved = if g.is_char_ref() {
                    g.resolve_char_ref().map_err(xml_err)?.map(String::from)
                } else {
                    quick_xml::escape::resolve_predefined_entity(&g).map(str::to_owned)
                };
                let resolved =
                    resolved.ok_or_else(|| xml_err(format!("unknown entity &{};", &*g)))?;
                let top = stack
                    .last_mut()
                    .ok_or_else(|| xml_err("a reference outside the root element"))?;
                top.text.push_str(&resolved);
            }
            Event::DocType(_) => {
                return Err(SettleError::new(
                    "body",
                    Problem::Unreadable("has a DOCTYPE, which is not taken".into()),
                ));
            }
            Event::PI(_) => {
                return Err(SettleError::new(
                    "body",
                    Problem::Unreadable("has a processing instruction, which is not taken".into()),
                ));
            }
            Event::Decl(_) | Event::Comment(_) => {}
            Event::Empty(_) => return Err(xml_err("unexpected empty element")),
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(xml_err("the document ends inside an element"));
    }
    root.ok_or_else(|| xml_err("no root element"))
}

/// A path under `SctiesSttlmTxInstr`, for errors.
fn path(p: &str) -> String {
    format!("SctiesSttlmTxInstr/{p}")
}

/// The text of a required element.
fn need<'a>(at: &'a Element, p: &str) -> Result<&'a str, SettleError> {
    match at.at(p) {
        Some(e) if !e.text.is_empty() => Ok(e.text.as_str()),
        _ => Err(SettleError::new(path(p), Problem::Missing)),
    }
}

/// A date choice: `Dt/Dt`, or the date part of `Dt/DtTm`.
fn date(at: &Element, p: &str) -> Result<Option<Date>, SettleError> {
    let Some(e) = at.at(p) else {
        return Ok(None);
    };
    let (sub, text) = if let Some(d) = e.at("Dt/Dt") {
        ("Dt/Dt", d.text.as_str())
    } else if let Some(d) = e.at("Dt/DtTm") {
        ("Dt/DtTm", d.text.get(..10).unwrap_or(&d.text))
    } else {
        return Err(SettleError::new(
            path(&format!("{p}/Dt/Dt")),
            Problem::Missing,
        ));
    };
    Date::iso(text)
        .map(Some)
        .map_err(|pr| SettleError::new(path(&format!("{p}/{sub}")), pr))
}

fn code<'a>(
    at: &'a Element,
    p: &str,
    allowed: &'static [&'static str],
    expected: &'static str,
) -> Result<&'a str, SettleError> {
    let v = need(at, p)?;
    if allowed.contains(&v) {
        Ok(v)
    } else {
        Err(SettleError::new(
            path(p),
            Problem::Value {
                expected,
                got: v.to_owned(),
            },
        ))
    }
}

/// The identifiers of a party block (`Pty1`, `Dpstry`, `AcctOwnr`...) at `p`.
fn parties_of(
    block: &Element,
    p: &str,
    role: &str,
    may_send: bool,
    out: &mut Vec<Party>,
) -> Result<(), SettleError> {
    let mut push = |sub: &str, id: PartyId| {
        out.push(Party {
            role: role.to_owned(),
            id,
            field: path(&format!("{p}/{sub}")),
            may_send,
        });
    };
    if let Some(lei) = block.child("LEI") {
        check_lei(&lei.text).map_err(|pr| SettleError::new(path(&format!("{p}/LEI")), pr))?;
        push("LEI", PartyId::Lei(lei.text.clone()));
    }
    if let Some(id) = block.child("Id") {
        if let Some(b) = id.child("AnyBIC") {
            push("Id/AnyBIC", PartyId::Bic(b.text.clone()));
        }
        if let Some(l) = id.child("LEI") {
            check_lei(&l.text).map_err(|pr| SettleError::new(path(&format!("{p}/Id/LEI")), pr))?;
            push("Id/LEI", PartyId::Lei(l.text.clone()));
        }
        if let Some(pr) = id.at("PrtryId/Id") {
            push("Id/PrtryId/Id", PartyId::Proprietary(pr.text.clone()));
        }
        if let Some(n) = id.at("NmAndAdr/Nm") {
            push("Id/NmAndAdr/Nm", PartyId::Name(n.text.clone()));
        }
    }
    Ok(())
}

/// Reads and checks a sese.023 instruction.
pub fn parse(text: &str) -> Result<Settlement, SettleError> {
    let (doc, ns) = tree(text)?;
    if doc.name != "Document" {
        return Err(SettleError::new(
            "Document",
            Problem::Value {
                expected: "the root element Document",
                got: doc.name,
            },
        ));
    }
    let version = ns
        .strip_prefix(NS_PREFIX)
        .and_then(|v| (v.len() == 2).then(|| v.parse::<u8>().ok()).flatten())
        .filter(|v| VERSIONS.contains(v))
        .ok_or_else(|| {
            SettleError::new(
                "Document/@xmlns",
                Problem::Value {
                    expected: "urn:iso:std:iso:20022:tech:xsd:sese.023.001.09 to .13",
                    got: ns.clone(),
                },
            )
        })?;
    let tx = doc
        .child("SctiesSttlmTxInstr")
        .ok_or_else(|| SettleError::new("Document/SctiesSttlmTxInstr", Problem::Missing))?;
    let reference = need(tx, "TxId")?;
    if reference.chars().count() > 35 {
        return Err(SettleError::new(
            path("TxId"),
            Problem::Shape("Max35Text is 1 to 35 characters"),
        ));
    }
    let side = match code(
        tx,
        "SttlmTpAndAddtlParams/SctiesMvmntTp",
        &["DELI", "RECE"],
        "DELI or RECE",
    )? {
        "DELI" => Side::Deliver,
        _ => Side::Receive,
    };
    let against_payment = code(
        tx,
        "SttlmTpAndAddtlParams/Pmt",
        &["APMT", "FREE"],
        "APMT or FREE",
    )? == "APMT";
    let trade_date = date(tx, "TradDtls/TradDt")?;
    let settlement_date = date(tx, "TradDtls/SttlmDt")?
        .ok_or_else(|| SettleError::new(path("TradDtls/SttlmDt"), Problem::Missing))?;
    if let Some(t) = trade_date
        && settlement_date < t
    {
        return Err(SettleError::new(
            path("TradDtls/SttlmDt"),
            Problem::Disagrees(format!(
                "settlement date {settlement_date} is before trade date {t}"
            )),
        ));
    }
    let market = match tx.at("TradDtls/PlcOfTrad").and_then(|p| p.find("MktIdrCd")) {
        Some(m) => {
            check_mic(&m.text)
                .map_err(|pr| SettleError::new(path("TradDtls/PlcOfTrad/.../MktIdrCd"), pr))?;
            Some(m.text.clone())
        }
        None => None,
    };
    let isin = need(tx, "FinInstrmId/ISIN")?;
    check_isin(isin).map_err(|pr| SettleError::new(path("FinInstrmId/ISIN"), pr))?;
    let qty = tx
        .at("QtyAndAcctDtls/SttlmQty/Qty")
        .ok_or_else(|| SettleError::new(path("QtyAndAcctDtls/SttlmQty/Qty"), Problem::Missing))?;
    let (qp, q) = ["Unit", "FaceAmt", "AmtsdVal"]
        .iter()
        .find_map(|n| qty.child(n).map(|e| (*n, e.text.as_str())))
        .ok_or_else(|| {
            SettleError::new(path("QtyAndAcctDtls/SttlmQty/Qty/Unit"), Problem::Missing)
        })?;
    let quantity = Decimal::positive(q, QUANTITY_FRACTION)
        .map_err(|pr| SettleError::new(path(&format!("QtyAndAcctDtls/SttlmQty/Qty/{qp}")), pr))?;
    let account = need(tx, "QtyAndAcctDtls/SfkpgAcct/Id")?.to_owned();
    if tx.at("SttlmParams/SctiesTxTp/Cd").is_none()
        && tx.at("SttlmParams/SctiesTxTp/Prtry").is_none()
    {
        return Err(SettleError::new(
            path("SttlmParams/SctiesTxTp/Cd"),
            Problem::Missing,
        ));
    }
    let amount = match tx.child("SttlmAmt") {
        Some(a) => {
            let amt = need(tx, "SttlmAmt/Amt")?;
            let ccy = a
                .at("Amt")
                .and_then(|e| e.attr("Ccy"))
                .ok_or_else(|| SettleError::new(path("SttlmAmt/Amt/@Ccy"), Problem::Missing))?;
            check_currency(ccy).map_err(|pr| SettleError::new(path("SttlmAmt/Amt/@Ccy"), pr))?;
            let value = Decimal::positive(amt, AMOUNT_FRACTION)
                .map_err(|pr| SettleError::new(path("SttlmAmt/Amt"), pr))?;
            code(tx, "SttlmAmt/CdtDbtInd", &["CRDT", "DBIT"], "CRDT or DBIT")?;
            Some(Amount {
                value,
                currency: ccy.to_owned(),
            })
        }
        None if against_payment => {
            return Err(SettleError::new(
                path("SttlmAmt"),
                Problem::Disagrees("settlement against payment (Pmt APMT) needs an amount".into()),
            ));
        }
        None => None,
    };
    let mut parties = Vec::new();
    if let Some(o) = tx.at("QtyAndAcctDtls/AcctOwnr") {
        parties_of(
            o,
            "QtyAndAcctDtls/AcctOwnr",
            "account owner",
            true,
            &mut parties,
        )?;
    }
    for (block, side_name, own) in [
        ("DlvrgSttlmPties", "delivering", side == Side::Deliver),
        ("RcvgSttlmPties", "receiving", side == Side::Receive),
    ] {
        let Some(b) = tx.child(block) else { continue };
        if let Some(d) = b.child("Dpstry") {
            let role = format!("{side_name} depository");
            parties_of(d, &format!("{block}/Dpstry"), &role, false, &mut parties)?;
        }
        for k in 1..=5 {
            let name = format!("Pty{k}");
            if let Some(p) = b.child(&name) {
                let role = if k == 1 {
                    format!("{side_name} agent")
                } else {
                    format!("{side_name} party {k}")
                };
                parties_of(p, &format!("{block}/{name}"), &role, own, &mut parties)?;
            }
        }
    }
    Ok(Settlement {
        format: Format::Sese023 { version },
        reference: reference.to_owned(),
        isin: isin.to_owned(),
        quantity,
        price: None,
        amount,
        trade_date,
        settlement_date,
        market,
        side,
        against_payment: Some(against_payment),
        account: Some(account),
        parties,
    })
}
