//! A FIX 4.4 tag=value reader for the two trade messages Blockpost takes: ExecutionReport
//! (35=8) with ExecType F (trade) and AllocationInstruction (35=J).
//!
//! Framing as the FIX session layer defines it: `8=FIX.4.4` first, `9` BodyLength second
//! (the bytes after it up to and including the separator before `10`), `35` MsgType
//! third, `10` CheckSum last (the byte sum of everything before it, modulo 256, three
//! digits). Fields are separated by SOH (0x01); a message written with `|` instead, as in
//! logs and files, is read as if it had SOH, and its length and checksum are those of the
//! SOH form. Repeating groups read: Parties (453: 448, 447, 452) and, on 35=J, NoAllocs
//! (78: 79, 80). Any other field is allowed once and otherwise ignored.

use super::ids::{Date, Decimal, check_currency, check_isin, check_lei, check_mic};
use super::{Amount, Format, Party, PartyId, Problem, SettleError, Settlement, Side};

const SOH: char = '\u{1}';

/// FIX prices and quantities: digits after the point allowed.
const MAX_FRACTION: u32 = 8;

/// The FIX name of a tag this reader uses, for errors.
fn name(tag: u32) -> &'static str {
    match tag {
        6 => "AvgPx",
        8 => "BeginString",
        9 => "BodyLength",
        10 => "CheckSum",
        14 => "CumQty",
        15 => "Currency",
        17 => "ExecID",
        22 => "SecurityIDSource",
        30 => "LastMkt",
        31 => "LastPx",
        32 => "LastQty",
        34 => "MsgSeqNum",
        35 => "MsgType",
        37 => "OrderID",
        39 => "OrdStatus",
        48 => "SecurityID",
        49 => "SenderCompID",
        52 => "SendingTime",
        53 => "Quantity",
        54 => "Side",
        55 => "Symbol",
        56 => "TargetCompID",
        64 => "SettlDate",
        70 => "AllocID",
        71 => "AllocTransType",
        75 => "TradeDate",
        78 => "NoAllocs",
        79 => "AllocAccount",
        80 => "AllocQty",
        150 => "ExecType",
        151 => "LeavesQty",
        381 => "GrossTradeAmt",
        447 => "PartyIDSource",
        448 => "PartyID",
        452 => "PartyRole",
        453 => "NoPartyIDs",
        626 => "AllocType",
        857 => "AllocNoOrdersType",
        _ => "",
    }
}

fn field(tag: u32) -> String {
    match name(tag) {
        "" => format!("tag {tag}"),
        n => format!("tag {tag} ({n})"),
    }
}

fn err(tag: u32, p: Problem) -> SettleError {
    SettleError::new(field(tag), p)
}

/// The role a FIX PartyRole (452) number stands for, for display.
fn role(code: &str) -> String {
    let n = match code {
        "1" => "executing firm",
        "3" => "client",
        "4" => "clearing firm",
        "7" => "entering firm",
        "11" => "order origination trader",
        "12" => "executing trader",
        "13" => "order origination firm",
        "17" => "contra firm",
        "21" => "clearing organization",
        "22" => "exchange",
        "24" => "customer account",
        "27" => "buyer/seller",
        "38" => "position account",
        _ => "",
    };
    if n.is_empty() {
        format!("party (role {code})")
    } else {
        n.to_owned()
    }
}

/// One `tag=value` field.
#[derive(Clone, Copy, Debug)]
struct Field<'a> {
    tag: u32,
    value: &'a str,
}

/// Splits and frames a message; returns its fields without 8, 9 and 10.
fn frame(text: &str) -> Result<Vec<Field<'_>>, SettleError> {
    let text = text.trim_end_matches(['\r', '\n']);
    let sep = if text.contains(SOH) { SOH } else { '|' };
    let body = text.strip_suffix(sep).unwrap_or(text);
    let mut fields = Vec::new();
    // Byte offsets (in `text`) of each field's start, to measure BodyLength and CheckSum.
    let mut starts = Vec::new();
    let mut at = 0usize;
    for raw in body.split(sep) {
        starts.push(at);
        at += raw.len() + 1;
        let (t, v) = raw.split_once('=').ok_or_else(|| {
            SettleError::new(
                format!("field {}", fields.len() + 1),
                Problem::Shape("a FIX field is tag=value"),
            )
        })?;
        let tag: u32 = match t.parse() {
            Ok(n) if n > 0 && !t.starts_with('0') && t.bytes().all(|c| c.is_ascii_digit()) => n,
            _ => {
                return Err(SettleError::new(
                    format!("field {}", fields.len() + 1),
                    Problem::Shape("a FIX tag is a positive number"),
                ));
            }
        };
        if v.is_empty() {
            return Err(err(tag, Problem::Missing));
        }
        if v.chars().any(char::is_control) {
            return Err(err(
                tag,
                Problem::Shape("a FIX value has no control characters"),
            ));
        }
        fields.push(Field { tag, value: v });
    }
    let tags: Vec<u32> = fields.iter().map(|f| f.tag).collect();
    if tags.first() != Some(&8) {
        return Err(err(8, Problem::Shape("a FIX message starts with 8=")));
    }
    if fields[0].value != "FIX.4.4" {
        return Err(err(
            8,
            Problem::Value {
                expected: "FIX.4.4",
                got: fields[0].value.to_owned(),
            },
        ));
    }
    if tags.get(1) != Some(&9) {
        return Err(err(9, Problem::Shape("BodyLength is the second field")));
    }
    if tags.get(2) != Some(&35) {
        return Err(err(35, Problem::Shape("MsgType is the third field")));
    }
    let last = fields.len() - 1;
    if tags[last] != 10 || last < 3 {
        return Err(err(10, Problem::Shape("CheckSum is the last field")));
    }
    // BodyLength: from the field after 9 up to and including the separator before 10.
    let length = starts[last] - starts[2];
    let said: usize = fields[1]
        .value
        .parse()
        .map_err(|_| err(9, Problem::Shape("a length is digits")))?;
    if said != length {
        return Err(err(
            9,
            Problem::Disagrees(format!("says {said}, the body is {length} bytes")),
        ));
    }
    // CheckSum: every byte before `10=`, separators counted as SOH.
    let sum = text.as_bytes()[..starts[last]]
        .iter()
        .map(|&b| {
            if b == b'|' && sep == '|' {
                1u32
            } else {
                u32::from(b)
            }
        })
        .sum::<u32>()
        % 256;
    let given = fields[last].value;
    if given.len() != 3 || !given.bytes().all(|c| c.is_ascii_digit()) {
        return Err(err(10, Problem::Shape("a checksum is three digits")));
    }
    if given.parse::<u32>().ok() != Some(sum) {
        return Err(err(
            10,
            Problem::Disagrees(format!("says {given}, the bytes sum to {sum:03}")),
        ));
    }
    Ok(fields[2..last].to_vec())
}

/// The fields of a message: those outside groups, once each, and the groups.
struct Message<'a> {
    single: Vec<Field<'a>>,
    parties: Vec<Vec<Field<'a>>>,
    allocs: Vec<Vec<Field<'a>>>,
}

impl<'a> Message<'a> {
    fn read(fields: &[Field<'a>]) -> Result<Self, SettleError> {
        let mut m = Message {
            single: Vec::new(),
            parties: Vec::new(),
            allocs: Vec::new(),
        };
        let mut i = 0;
        while i < fields.len() {
            let f = fields[i];
            i += 1;
            let (members, first, out) = match f.tag {
                453 => (&[448u32, 447, 452][..], 448, &mut m.parties),
                78 => (&[79u32, 80][..], 79, &mut m.allocs),
                _ => {
                    if m.single.iter().any(|s| s.tag == f.tag) {
                        return Err(err(f.tag, Problem::Repeated));
                    }
                    m.single.push(f);
                    continue;
                }
            };
            if !out.is_empty() {
                return Err(err(f.tag, Problem::Repeated));
            }
            let count: usize = f
                .value
                .parse()
                .map_err(|_| err(f.tag, Problem::Shape("a group count is a number")))?;
            if count == 0 || count > 64 {
                return Err(err(
                    f.tag,
                    Problem::Value {
                        expected: "1 to 64 entries",
                        got: f.value.to_owned(),
                    },
                ));
            }
            while i < fields.len() && members.contains(&fields[i].tag) {
                if fields[i].tag == first {
                    out.push(Vec::new());
                } else if out.is_empty() {
                    return Err(err(
                        fields[i].tag,
                        Problem::Shape("a group entry starts with its first field"),
                    ));
                }
                let entry = out.last_mut().ok_or_else(|| err(f.tag, Problem::Missing))?;
                if entry.iter().any(|e: &Field<'_>| e.tag == fields[i].tag) {
                    return Err(err(fields[i].tag, Problem::Repeated));
                }
                entry.push(fields[i]);
                i += 1;
            }
            if out.len() != count {
                return Err(err(
                    f.tag,
                    Problem::Disagrees(format!("says {count} entries, {} follow", out.len())),
                ));
            }
        }
        Ok(m)
    }

    fn get(&self, tag: u32) -> Option<&'a str> {
        self.single.iter().find(|f| f.tag == tag).map(|f| f.value)
    }

    fn need(&self, tag: u32) -> Result<&'a str, SettleError> {
        self.get(tag).ok_or_else(|| err(tag, Problem::Missing))
    }
}

fn positive(tag: u32, v: &str) -> Result<Decimal, SettleError> {
    Decimal::positive(v, MAX_FRACTION).map_err(|p| err(tag, p))
}

fn non_negative(tag: u32, v: &str) -> Result<Decimal, SettleError> {
    Decimal::parse(v, MAX_FRACTION).map_err(|p| err(tag, p))
}

fn one_of(
    tag: u32,
    v: &str,
    allowed: &'static [&'static str],
    expected: &'static str,
) -> Result<(), SettleError> {
    if allowed.contains(&v) {
        Ok(())
    } else {
        Err(err(
            tag,
            Problem::Value {
                expected,
                got: v.to_owned(),
            },
        ))
    }
}

/// Reads and checks a FIX 4.4 trade.
pub fn parse(text: &str) -> Result<Settlement, SettleError> {
    let fields = frame(text)?;
    let m = Message::read(&fields)?;
    let msg_type = m.need(35)?;
    let format = match msg_type {
        "8" => Format::FixExecutionReport,
        "J" => Format::FixAllocationInstruction,
        other => {
            return Err(err(
                35,
                Problem::Value {
                    expected: "8 (ExecutionReport) or J (AllocationInstruction)",
                    got: other.to_owned(),
                },
            ));
        }
    };
    for tag in [49, 56, 34, 52, 55] {
        m.need(tag)?;
    }
    let side = match m.need(54)? {
        "1" => Side::Buy,
        "2" => Side::Sell,
        other => {
            return Err(err(
                54,
                Problem::Value {
                    expected: "1 (buy) or 2 (sell)",
                    got: other.to_owned(),
                },
            ));
        }
    };
    one_of(22, m.need(22)?, &["4"], "4 (ISIN)")?;
    let isin = m.need(48)?;
    check_isin(isin).map_err(|p| err(48, p))?;
    let currency = m.need(15)?;
    check_currency(currency).map_err(|p| err(15, p))?;
    let trade_date = Date::fix(m.need(75)?).map_err(|p| err(75, p))?;
    let settlement_date = Date::fix(m.need(64)?).map_err(|p| err(64, p))?;
    if settlement_date < trade_date {
        return Err(err(
            64,
            Problem::Disagrees(format!(
                "settlement date {settlement_date} is before trade date {trade_date}"
            )),
        ));
    }
    let (reference, quantity, price) = match format {
        Format::FixExecutionReport => {
            for tag in [37, 39, 151] {
                m.need(tag)?;
            }
            one_of(150, m.need(150)?, &["F"], "F (trade)")?;
            non_negative(14, m.need(14)?)?;
            non_negative(6, m.need(6)?)?;
            non_negative(151, m.need(151)?)?;
            (
                m.need(17)?,
                positive(32, m.need(32)?)?,
                positive(31, m.need(31)?)?,
            )
        }
        _ => {
            m.need(71)?;
            m.need(626)?;
            m.need(857)?;
            let quantity = positive(53, m.need(53)?)?;
            if m.allocs.is_empty() {
                return Err(err(78, Problem::Missing));
            }
            let mut total: Option<Decimal> = Decimal::parse("0", 0).ok();
            for (k, a) in m.allocs.iter().enumerate() {
                let at =
                    |tag: u32| format!("78[{}].{}", k + 1, field(tag).trim_start_matches("tag "));
                let qty = a
                    .iter()
                    .find(|f| f.tag == 80)
                    .ok_or_else(|| SettleError::new(at(80), Problem::Missing))?;
                let q = Decimal::positive(qty.value, MAX_FRACTION)
                    .map_err(|p| SettleError::new(at(80), p))?;
                total = total.and_then(|t| t.checked_add(q));
            }
            if total != Some(quantity) {
                return Err(err(
                    78,
                    Problem::Disagrees(format!(
                        "the allocations' AllocQty (80) do not add up to Quantity (53) {quantity}"
                    )),
                ));
            }
            (m.need(70)?, quantity, positive(6, m.need(6)?)?)
        }
    };
    let market = match m.get(30) {
        Some(mic) => {
            check_mic(mic).map_err(|p| err(30, p))?;
            Some(mic.to_owned())
        }
        None => None,
    };
    let amount = match m.get(381) {
        Some(v) => positive(381, v)?,
        None => quantity
            .checked_mul(price)
            .ok_or_else(|| err(381, Problem::Shape("quantity × price is too large")))?,
    };
    let mut parties = Vec::with_capacity(m.parties.len());
    for (k, entry) in m.parties.iter().enumerate() {
        let at = |tag: u32| format!("453[{}].{}", k + 1, field(tag).trim_start_matches("tag "));
        let get = |tag: u32| entry.iter().find(|f| f.tag == tag).map(|f| f.value);
        let id = get(448).ok_or_else(|| SettleError::new(at(448), Problem::Missing))?;
        let source = get(447).ok_or_else(|| SettleError::new(at(447), Problem::Missing))?;
        let role_code = get(452).ok_or_else(|| SettleError::new(at(452), Problem::Missing))?;
        let id = match source {
            "N" => {
                check_lei(id).map_err(|p| SettleError::new(at(448), p))?;
                PartyId::Lei(id.to_owned())
            }
            "D" => PartyId::Proprietary(id.to_owned()),
            "B" => PartyId::Bic(id.to_owned()),
            other => PartyId::Other {
                scheme: format!("447={other}"),
                value: id.to_owned(),
            },
        };
        parties.push(Party {
            role: role(role_code),
            id,
            field: at(448),
            may_send: true,
        });
    }
    if parties.is_empty() {
        return Err(err(453, Problem::Missing));
    }
    Ok(Settlement {
        format,
        reference: reference.to_owned(),
        isin: isin.to_owned(),
        quantity,
        price: Some(price),
        amount: Some(Amount {
            value: amount,
            currency: currency.to_owned(),
        }),
        trade_date: Some(trade_date),
        settlement_date,
        market,
        side,
        against_payment: None,
        account: None,
        parties,
    })
}

/// Builds a FIX 4.4 message from its fields after `35`: puts `8`, `9` and `10` around
/// them, with `|` as the separator. For samples, tests and the CLI's examples.
pub fn compose(msg_type: &str, fields: &[(u32, &str)]) -> String {
    let mut body = format!("35={msg_type}{SOH}");
    for (t, v) in fields {
        body.push_str(&format!("{t}={v}{SOH}"));
    }
    let head = format!("8=FIX.4.4{SOH}9={}{SOH}", body.len());
    let sum = head.bytes().chain(body.bytes()).map(u32::from).sum::<u32>() % 256;
    format!("{head}{body}10={sum:03}{SOH}").replace(SOH, "|")
}
