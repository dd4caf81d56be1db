//! Trades and settlement instructions: the bodies of the `trade` and
//! `settlement-instruction` message kinds, read from the standard messages banks exchange
//! and checked field by field before a gateway admits them.
//!
//! - A **trade** is a FIX 4.4 `ExecutionReport` (35=8, ExecType 150=F) or
//!   `AllocationInstruction` (35=J) in tag=value form, as an exchange or a broker system
//!   sends it: [`fix`].
//! - A **settlement instruction** is an ISO 20022 `sese.023` securities settlement
//!   transaction instruction in XML: [`sese`].
//!
//! Both are read into one [`Settlement`]: instrument (ISIN), quantity, price and amount
//! with currency, trade and settlement dates, market, side, and the parties as the message
//! names them. Every identifier is checked by its standard ([`check_isin`], [`check_lei`],
//! [`check_currency`], [`check_mic`]); an error names the field (a FIX tag, or an XML path)
//! and what is wrong with it.
//!
//! What needs the directory, the parties against the envelope's sender and recipients, is
//! [`check_parties`]: the gateway runs it with its replica for a plaintext body, a client
//! before it seals one, and an auditor or a recipient once it has opened one.

use std::fmt;

pub mod fix;
mod ids;
pub mod sese;

pub use ids::{Date, Decimal, MIC_REGISTRY_DATE, check_currency, check_isin, check_lei, check_mic};

/// The largest body read as a trade or an instruction. Real ones are a few KiB.
pub const MAX_SETTLEMENT_LEN: usize = 64 * 1024;

/// What is wrong with one field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// A required field is absent.
    #[error("is required")]
    Missing,
    /// The field is given more than once.
    #[error("is given more than once")]
    Repeated,
    /// The value does not have the shape its standard gives it.
    #[error("is malformed: {0}")]
    Shape(&'static str),
    /// The check digits of an identifier are wrong.
    #[error("has wrong {0} check digits")]
    CheckDigit(&'static str),
    /// Not an ISO 4217 currency.
    #[error("is not an ISO 4217 currency: {0:?}")]
    UnknownCurrency(String),
    /// A quantity, price or amount that is zero.
    #[error("must be above zero")]
    NotPositive,
    /// More digits after the point than allowed.
    #[error("has more than {0} digits after the point")]
    Fraction(u32),
    /// A value outside the ones this reader takes.
    #[error("is {got:?}; expected {expected}")]
    Value {
        /// What it may be.
        expected: &'static str,
        /// What it is.
        got: String,
    },
    /// The values of several fields do not agree.
    #[error("does not agree: {0}")]
    Disagrees(String),
    /// The body is not a document this reader takes.
    #[error("{0}")]
    Unreadable(String),
    /// A party the envelope's sender and recipients do not include.
    #[error("{0}")]
    NotAParty(String),
}

/// A field of a trade or an instruction and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field} {problem}")]
pub struct SettleError {
    /// The field: a FIX tag with its name (`48 SecurityID`, `453[2].448 PartyID`) or an
    /// XML path under the document (`SctiesSttlmTxInstr/FinInstrmId/ISIN`).
    pub field: String,
    /// What is wrong.
    pub problem: Problem,
}

impl SettleError {
    pub(crate) fn new(field: impl Into<String>, problem: Problem) -> Self {
        Self {
            field: field.into(),
            problem,
        }
    }
}

/// Which message a [`Settlement`] was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// FIX 4.4 ExecutionReport (35=8), a trade.
    FixExecutionReport,
    /// FIX 4.4 AllocationInstruction (35=J).
    FixAllocationInstruction,
    /// ISO 20022 sese.023.001, of this version.
    Sese023 {
        /// The message version (`sese.023.001.VV`).
        version: u8,
    },
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Format::FixExecutionReport => f.write_str("FIX 4.4 ExecutionReport"),
            Format::FixAllocationInstruction => f.write_str("FIX 4.4 AllocationInstruction"),
            Format::Sese023 { version } => write!(f, "ISO 20022 sese.023.001.{version:02}"),
        }
    }
}

/// Which way the instrument moves for the one who sent the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// FIX Side 1.
    Buy,
    /// FIX Side 2.
    Sell,
    /// sese.023 `DELI`: the sender delivers the securities.
    Deliver,
    /// sese.023 `RECE`: the sender receives them.
    Receive,
}

impl Side {
    /// Lower-case name, as indexed and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Buy => "buy",
            Side::Sell => "sell",
            Side::Deliver => "deliver",
            Side::Receive => "receive",
        }
    }
}

/// An amount of money.
#[derive(Clone, Debug, PartialEq)]
pub struct Amount {
    /// The value, exact.
    pub value: Decimal,
    /// ISO 4217 code.
    pub currency: String,
}

/// How a message identifies a party.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PartyId {
    /// An ISO 17442 LEI (check digits verified).
    Lei(String),
    /// A name (sese.023 `NmAndAdr/Nm`).
    Name(String),
    /// A BIC (ISO 9362); not matched against the directory.
    Bic(String),
    /// A proprietary code (FIX PartyIDSource D, sese.023 `PrtryId`): matched against
    /// Blockpost addresses, and not checked when it is none.
    Proprietary(String),
    /// Any other scheme (FIX PartyIDSource other than N, D or B); not checked.
    Other {
        /// The scheme (the FIX PartyIDSource).
        scheme: String,
        /// The identifier.
        value: String,
    },
}

impl fmt::Display for PartyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PartyId::Lei(v) => write!(f, "LEI {v}"),
            PartyId::Name(v) => write!(f, "name {v:?}"),
            PartyId::Bic(v) => write!(f, "BIC {v}"),
            PartyId::Proprietary(v) => write!(f, "code {v}"),
            PartyId::Other { scheme, value } => write!(f, "{scheme}:{value}"),
        }
    }
}

/// A party as the message names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Party {
    /// Its role (`executing firm`, `contra firm`, `delivering agent`, ...).
    pub role: String,
    /// How it is identified.
    pub id: PartyId,
    /// Where in the message (for errors).
    pub field: String,
    /// Whether this party may be the message's sender: any party of a FIX trade; in a
    /// sese.023, the account owner and the agents of the sender's own side (delivering
    /// for `DELI`, receiving for `RECE`).
    pub may_send: bool,
}

/// What a trade or an instruction says, read and checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Settlement {
    /// The message it came from.
    pub format: Format,
    /// Its reference: ExecID (17), AllocID (70) or `TxId`.
    pub reference: String,
    /// The instrument's ISIN.
    pub isin: String,
    /// Units or face amount of the instrument.
    pub quantity: Decimal,
    /// Price a unit, if given.
    pub price: Option<Decimal>,
    /// The cash amount: given (GrossTradeAmt 381, `SttlmAmt`) or quantity × price.
    pub amount: Option<Amount>,
    /// The trade date, if given.
    pub trade_date: Option<Date>,
    /// The intended settlement date.
    pub settlement_date: Date,
    /// The market (ISO 10383 MIC), if given.
    pub market: Option<String>,
    /// The sender's side.
    pub side: Side,
    /// sese.023: settled against payment (`APMT`) or free of payment (`FREE`).
    pub against_payment: Option<bool>,
    /// Safekeeping account (sese.023 `SfkpgAcct`), if given.
    pub account: Option<String>,
    /// The parties named.
    pub parties: Vec<Party>,
}

/// Which kind of body is expected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// A `trade`: FIX 4.4 35=8 or 35=J.
    Trade,
    /// A `settlement-instruction`: ISO 20022 sese.023.
    Instruction,
}

/// Reads and checks a trade or an instruction. A FIX message is told by its first field
/// `8=FIX`, an XML document by its first `<`.
pub fn parse(expect: Expect, body: &[u8]) -> Result<Settlement, SettleError> {
    if body.len() > MAX_SETTLEMENT_LEN {
        return Err(SettleError::new(
            "body",
            Problem::Unreadable(format!(
                "is {} bytes; a trade or instruction is at most {MAX_SETTLEMENT_LEN}",
                body.len()
            )),
        ));
    }
    let text = std::str::from_utf8(body)
        .map_err(|e| SettleError::new("body", Problem::Unreadable(format!("is not UTF-8: {e}"))))?;
    let text = text.trim_start_matches('\u{feff}').trim_start();
    match (expect, detect(text)) {
        (Expect::Trade, Some(Detected::Fix)) => fix::parse(text),
        (Expect::Instruction, Some(Detected::Xml)) => sese::parse(text),
        (Expect::Trade, _) => Err(SettleError::new(
            "body",
            Problem::Unreadable(
                "is not a trade: a trade is a FIX 4.4 ExecutionReport or AllocationInstruction \
                 in tag=value form (8=FIX.4.4|9=...)"
                    .into(),
            ),
        )),
        (Expect::Instruction, _) => Err(SettleError::new(
            "body",
            Problem::Unreadable(
                "is not a settlement instruction: an instruction is an ISO 20022 sese.023 XML \
                 document"
                    .into(),
            ),
        )),
    }
}

/// What a body looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detected {
    /// FIX tag=value.
    Fix,
    /// XML.
    Xml,
}

/// Tells FIX from XML by the first bytes (after a byte-order mark and white space).
pub fn detect(text: &str) -> Option<Detected> {
    let t = text.trim_start_matches('\u{feff}').trim_start();
    if t.starts_with("8=FIX") {
        Some(Detected::Fix)
    } else if t.starts_with('<') {
        Some(Detected::Xml)
    } else {
        None
    }
}

/// A sender or a recipient of the envelope, as its directory binding states it.
#[derive(Clone, Copy, Debug)]
pub struct Participant<'a> {
    /// Its Blockpost address.
    pub address: &'a str,
    /// Its real name.
    pub real_name: &'a str,
    /// Its LEI, if its binding has one.
    pub lei: Option<&'a str>,
}

impl<'a> Participant<'a> {
    /// A participant as its directory binding states it.
    pub fn of(b: &'a crate::Binding) -> Self {
        Self {
            address: b.address.as_str(),
            real_name: &b.real_name,
            lei: b.lei.as_deref(),
        }
    }

    fn is(&self, id: &PartyId) -> Option<bool> {
        match id {
            PartyId::Lei(l) => Some(self.lei == Some(l.as_str())),
            PartyId::Name(n) => Some(self.real_name == n),
            PartyId::Proprietary(p) => Some(self.address == p),
            PartyId::Bic(_) | PartyId::Other { .. } => None,
        }
    }
}

/// The parties a trade or an instruction names against the envelope it came in:
/// - a party named by LEI or by name must be the sender or a recipient (the LEI on its
///   binding, or its real name);
/// - a party named by a proprietary code that is a sender's or a recipient's address
///   counts as that participant; other codes, BICs and other schemes are not checked
///   (depositories and custodians need not be on Blockpost);
/// - the sender must be one of the parties named, in a role it may send from (see
///   [`Party::may_send`]): one says what one is party to, and instructs for one's own side.
pub fn check_parties(
    s: &Settlement,
    sender: Participant<'_>,
    recipients: &[Participant<'_>],
) -> Result<(), SettleError> {
    let mut sender_named = false;
    for p in &s.parties {
        if sender.is(&p.id) == Some(true) {
            sender_named |= p.may_send;
            continue;
        }
        let by_recipient = recipients.iter().any(|r| r.is(&p.id) == Some(true));
        let must_match = matches!(p.id, PartyId::Lei(_) | PartyId::Name(_));
        if must_match && !by_recipient {
            return Err(SettleError::new(
                p.field.clone(),
                Problem::NotAParty(format!(
                    "names the {} by {}, which is neither the sender's ({}) nor a recipient's \
                     directory binding",
                    p.role, p.id, sender.address
                )),
            ));
        }
    }
    if !sender_named {
        return Err(SettleError::new(
            "parties",
            Problem::NotAParty(format!(
                "do not name the sender {} (by the LEI of its binding, its real name {:?} or \
                 its address) in a role it may send from",
                sender.address, sender.real_name
            )),
        ));
    }
    Ok(())
}

/// The fields on which two descriptions of one settlement disagree (a trade and an
/// instruction, or the two sides' instructions): instrument, quantity, settlement date,
/// and, where both give them, trade date and amount. Empty when they match.
pub fn differences(a: &Settlement, b: &Settlement) -> Vec<&'static str> {
    let mut d = Vec::new();
    if a.isin != b.isin {
        d.push("isin");
    }
    if a.quantity != b.quantity {
        d.push("quantity");
    }
    if a.settlement_date != b.settlement_date {
        d.push("settlement_date");
    }
    if let (Some(x), Some(y)) = (a.trade_date, b.trade_date)
        && x != y
    {
        d.push("trade_date");
    }
    if let (Some(x), Some(y)) = (&a.amount, &b.amount)
        && x != y
    {
        d.push("amount");
    }
    d
}

/// [`check_parties`] with the sender's and recipients' directory bindings.
pub fn check_bindings<'a>(
    s: &Settlement,
    sender: &crate::Binding,
    recipients: impl IntoIterator<Item = &'a crate::Binding>,
) -> Result<(), SettleError> {
    let recipients: Vec<Participant<'_>> = recipients.into_iter().map(Participant::of).collect();
    check_parties(s, Participant::of(sender), &recipients)
}

#[cfg(test)]
mod tests;
