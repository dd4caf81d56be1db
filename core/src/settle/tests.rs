use super::*;

const TRADE: &str = include_str!("../../../examples/settlement/trade.fix");
const ALLOCATION: &str = include_str!("../../../examples/settlement/allocation.fix");
const DELIVER: &str = include_str!("../../../examples/settlement/instruction-deliver.xml");
const RECEIVE: &str = include_str!("../../../examples/settlement/instruction-receive.xml");
const LEI_A: &str = "5299000BANKA0AG00068";
const LEI_B: &str = "5493000BANKB0LTD0083";

fn trade(body: &str) -> Result<Settlement, SettleError> {
    parse(Expect::Trade, body.as_bytes())
}

fn instruction(body: &str) -> Result<Settlement, SettleError> {
    parse(Expect::Instruction, body.as_bytes())
}

/// A FIX message with BodyLength and CheckSum computed again (after an edit).
fn recompose(text: &str) -> String {
    let fields: Vec<(u32, String)> = text
        .trim_end()
        .trim_end_matches('|')
        .split('|')
        .filter_map(|f| {
            let (t, v) = f.split_once('=')?;
            Some((t.parse().ok()?, v.to_owned()))
        })
        .filter(|(t, _)| ![8, 9, 10].contains(t))
        .collect();
    let refs: Vec<(u32, &str)> = fields[1..].iter().map(|(t, v)| (*t, v.as_str())).collect();
    fix::compose(&fields[0].1, &refs)
}

/// The FIX sample with the first `tag`'s value replaced (or the field removed with
/// `None`), BodyLength and CheckSum computed again.
fn fix_with(sample: &str, tag: u32, value: Option<&str>) -> String {
    let mut done = false;
    let edited: Vec<String> = sample
        .trim_end()
        .trim_end_matches('|')
        .split('|')
        .filter_map(|f| {
            let t: Option<u32> = f.split_once('=').and_then(|(t, _)| t.parse().ok());
            if t == Some(tag) && !done {
                done = true;
                return value.map(|v| format!("{tag}={v}"));
            }
            Some(f.to_owned())
        })
        .collect();
    assert!(done, "the sample has no tag {tag}");
    recompose(&edited.join("|"))
}

#[test]
fn the_samples_read_as_they_say() {
    let t = trade(TRADE).unwrap();
    assert_eq!(t.format, Format::FixExecutionReport);
    assert_eq!(t.reference, "EXEC-20261204-0001");
    assert_eq!(t.isin, "US0378331005");
    assert_eq!(t.quantity.to_string(), "400");
    assert_eq!(t.price.unwrap().to_string(), "189.25");
    let a = t.amount.clone().unwrap();
    assert_eq!(
        (a.value.to_string(), a.currency.as_str()),
        ("75700".into(), "USD")
    );
    assert_eq!(t.trade_date.unwrap().to_string(), "2026-12-04");
    assert_eq!(t.settlement_date.to_string(), "2026-12-07");
    assert_eq!(t.market.as_deref(), Some("XNYS"));
    assert_eq!(t.side, Side::Sell);
    assert_eq!(t.parties.len(), 3);
    assert_eq!(t.parties[0].id, PartyId::Lei(LEI_A.into()));
    assert_eq!(t.parties[1].role, "contra firm");
    assert_eq!(t.parties[2].id, PartyId::Lei("5493000EXCHANGE00016".into()));
    assert_eq!(t.parties[2].role, "exchange");

    let j = trade(ALLOCATION).unwrap();
    assert_eq!(j.format, Format::FixAllocationInstruction);
    assert_eq!(j.side, Side::Buy);
    assert_eq!(j.amount.unwrap().value.to_string(), "75700");

    let d = instruction(DELIVER).unwrap();
    assert_eq!(d.format, Format::Sese023 { version: 12 });
    assert_eq!(d.reference, "BANKA-SSI-20261204-01");
    assert_eq!(d.side, Side::Deliver);
    assert_eq!(d.against_payment, Some(true));
    assert_eq!(d.isin, "US0378331005");
    assert_eq!(d.quantity.to_string(), "400");
    assert_eq!(d.amount.clone().unwrap().value.to_string(), "75700");
    assert_eq!(d.account.as_deref(), Some("BANKA-SAFE-001"));
    assert_eq!(d.market.as_deref(), Some("XNYS"));
    let roles: Vec<&str> = d.parties.iter().map(|p| p.role.as_str()).collect();
    assert_eq!(
        roles,
        [
            "account owner",
            "delivering depository",
            "delivering agent",
            "receiving depository",
            "receiving agent"
        ]
    );
    let r = instruction(RECEIVE).unwrap();
    assert_eq!(r.side, Side::Receive);
    // The same trade seen from both sides.
    assert_eq!((r.isin.as_str(), r.quantity), (d.isin.as_str(), d.quantity));
    assert_eq!(r.settlement_date, d.settlement_date);
}

#[test]
fn each_broken_fix_field_is_named() {
    let cases: &[(u32, Option<&str>, &str)] = &[
        (
            48,
            Some("US0378331006"),
            "tag 48 (SecurityID) has wrong ISIN check digits",
        ),
        (48, None, "tag 48 (SecurityID) is required"),
        (22, Some("1"), "tag 22 (SecurityIDSource)"),
        (
            15,
            Some("XXY"),
            "tag 15 (Currency) is not an ISO 4217 currency",
        ),
        (32, Some("0"), "tag 32 (LastQty) must be above zero"),
        (32, Some("-5"), "tag 32 (LastQty) is malformed"),
        (31, Some("abc"), "tag 31 (LastPx) is malformed"),
        (75, Some("20261304"), "tag 75 (TradeDate) is malformed"),
        (64, Some("20261203"), "tag 64 (SettlDate) does not agree"),
        (30, Some("XN"), "tag 30 (LastMkt) is malformed"),
        (150, Some("0"), "tag 150 (ExecType)"),
        (54, Some("7"), "tag 54 (Side)"),
        (17, None, "tag 17 (ExecID) is required"),
        (
            381,
            Some("0.00"),
            "tag 381 (GrossTradeAmt) must be above zero",
        ),
        (
            448,
            Some("5299000BANKA0AG00069"),
            "453[1].448 (PartyID) has wrong LEI check digits",
        ),
        (447, None, "453[1].447 (PartyIDSource) is required"),
        (453, Some("2"), "tag 453 (NoPartyIDs) does not agree"),
        (49, None, "tag 49 (SenderCompID) is required"),
    ];
    for (tag, value, want) in cases {
        let body = fix_with(TRADE, *tag, *value);
        let e = trade(&body).expect_err(want);
        assert!(e.to_string().contains(want), "{tag}: {e} (want {want})");
    }
    let cases: &[(u32, Option<&str>, &str)] = &[
        (53, Some("401"), "tag 78 (NoAllocs) does not agree"),
        (80, Some("0"), "78[1].80 (AllocQty) must be above zero"),
        (70, None, "tag 70 (AllocID) is required"),
    ];
    for (tag, value, want) in cases {
        let body = fix_with(ALLOCATION, *tag, *value);
        let e = trade(&body).expect_err(want);
        assert!(e.to_string().contains(want), "{tag}: {e} (want {want})");
    }
}

#[test]
fn fix_framing_is_checked() {
    // A checksum off by one.
    let (head, sum) = TRADE
        .trim_end()
        .trim_end_matches('|')
        .rsplit_once("|10=")
        .unwrap();
    let off = (sum.parse::<u32>().unwrap() + 1) % 256;
    let bad = format!("{head}|10={off:03}|");
    let e = trade(&bad).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("tag 10 (CheckSum) does not agree"),
        "{e}"
    );
    // A body length off by one.
    let bad = TRADE.replacen("9=370", "9=369", 1);
    assert!(
        trade(&bad)
            .unwrap_err()
            .to_string()
            .starts_with("tag 9 (BodyLength)")
    );
    // Another version.
    let bad = TRADE.replacen("8=FIX.4.4", "8=FIX.4.2", 1);
    assert!(trade(&bad).unwrap_err().to_string().contains("FIX.4.4"));
    // SOH separators read the same as `|`.
    let soh = TRADE.replace('|', "\u{1}");
    assert_eq!(trade(&soh).unwrap(), trade(TRADE).unwrap());
    // A field twice.
    let twice = fix_with(TRADE, 55, Some("AAPL\u{1}55=MSFT"));
    assert_eq!(
        trade(&twice).unwrap_err().to_string(),
        "tag 55 (Symbol) is given more than once"
    );
    // Another message type.
    let e = trade(&fix::compose("D", &[(49, "A")])).unwrap_err();
    assert!(e.to_string().starts_with("tag 35 (MsgType)"), "{e}");
    // XML is no trade, FIX no instruction.
    assert_eq!(trade(DELIVER).unwrap_err().field, "body");
    assert_eq!(instruction(TRADE).unwrap_err().field, "body");
}

#[test]
fn each_broken_sese_field_is_named() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "<ISIN>US0378331005</ISIN>",
            "<ISIN>US0378331006</ISIN>",
            "SctiesSttlmTxInstr/FinInstrmId/ISIN has wrong ISIN check digits",
        ),
        (
            "<ISIN>US0378331005</ISIN>",
            "",
            "SctiesSttlmTxInstr/FinInstrmId/ISIN is required",
        ),
        (
            "Ccy=\"USD\"",
            "Ccy=\"USX\"",
            "SctiesSttlmTxInstr/SttlmAmt/Amt/@Ccy is not an ISO 4217 currency",
        ),
        (
            "75700.00</Amt>",
            "75700.000001</Amt>",
            "SctiesSttlmTxInstr/SttlmAmt/Amt has more than 5 digits",
        ),
        (
            "75700.00</Amt>",
            "0</Amt>",
            "SctiesSttlmTxInstr/SttlmAmt/Amt must be above zero",
        ),
        (
            "<Unit>400</Unit>",
            "<Unit>0</Unit>",
            "SctiesSttlmTxInstr/QtyAndAcctDtls/SttlmQty/Qty/Unit must be above zero",
        ),
        (
            "<Dt>2026-12-07</Dt>",
            "<Dt>2026-02-30</Dt>",
            "SctiesSttlmTxInstr/TradDtls/SttlmDt/Dt/Dt is malformed",
        ),
        (
            "<Dt>2026-12-07</Dt>",
            "<Dt>2026-12-01</Dt>",
            "SctiesSttlmTxInstr/TradDtls/SttlmDt does not agree",
        ),
        (
            "<SctiesMvmntTp>DELI</SctiesMvmntTp>",
            "<SctiesMvmntTp>SEND</SctiesMvmntTp>",
            "SctiesSttlmTxInstr/SttlmTpAndAddtlParams/SctiesMvmntTp is \"SEND\"",
        ),
        (
            "<Pmt>APMT</Pmt>",
            "",
            "SctiesSttlmTxInstr/SttlmTpAndAddtlParams/Pmt is required",
        ),
        (
            "<MktIdrCd>XNYS</MktIdrCd>",
            "<MktIdrCd>xnys</MktIdrCd>",
            "MktIdrCd is malformed",
        ),
        (
            "<LEI>5299000BANKA0AG00068</LEI>",
            "<LEI>5299000BANKA0AG00086</LEI>",
            "SctiesSttlmTxInstr/QtyAndAcctDtls/AcctOwnr/LEI has wrong LEI check digits",
        ),
        (
            "<Id>BANKA-SAFE-001</Id>",
            "",
            "SctiesSttlmTxInstr/QtyAndAcctDtls/SfkpgAcct/Id is required",
        ),
        (
            "<CdtDbtInd>CRDT</CdtDbtInd>",
            "<CdtDbtInd>PLUS</CdtDbtInd>",
            "SctiesSttlmTxInstr/SttlmAmt/CdtDbtInd",
        ),
        (
            "<TxId>BANKA-SSI-20261204-01</TxId>",
            "",
            "SctiesSttlmTxInstr/TxId is required",
        ),
        (
            "xsd:sese.023.001.12",
            "xsd:sese.023.001.02",
            "Document/@xmlns",
        ),
        (
            "xsd:sese.023.001.12",
            "xsd:pacs.008.001.12",
            "Document/@xmlns",
        ),
        (
            "<Cd>TRAD</Cd>",
            "",
            "SctiesSttlmTxInstr/SttlmParams/SctiesTxTp/Cd is required",
        ),
    ];
    for (from, to, want) in cases {
        assert!(DELIVER.contains(from), "{from}");
        let body = DELIVER.replacen(from, to, 1);
        let e = instruction(&body).expect_err(want);
        assert!(
            e.to_string().contains(want),
            "{from} -> {to}: {e} (want {want})"
        );
    }
    // Against payment without an amount; free of payment without one is fine.
    let start = DELIVER.find("<SttlmAmt>").unwrap();
    let end = DELIVER.find("</SttlmAmt>").unwrap() + "</SttlmAmt>".len();
    let no_amount = format!("{}{}", &DELIVER[..start], &DELIVER[end..]);
    let e = instruction(&no_amount).unwrap_err();
    assert_eq!(e.field, "SctiesSttlmTxInstr/SttlmAmt");
    let free = no_amount.replace("<Pmt>APMT</Pmt>", "<Pmt>FREE</Pmt>");
    assert_eq!(instruction(&free).unwrap().against_payment, Some(false));
}

#[test]
fn hostile_xml_is_refused() {
    let doctype = DELIVER.replacen(
        "<Document",
        "<!DOCTYPE Document [<!ENTITY x \"boom\">]>\n<Document",
        1,
    );
    assert!(
        instruction(&doctype)
            .unwrap_err()
            .to_string()
            .contains("DOCTYPE")
    );
    let entity = DELIVER.replacen("BANKA-SAFE-001", "&x;", 1);
    assert!(
        instruction(&entity)
            .unwrap_err()
            .to_string()
            .contains("unknown entity")
    );
    let escaped = DELIVER.replacen("BANKA-SAFE-001", "BANKA&amp;SAFE&#45;001", 1);
    assert_eq!(
        instruction(&escaped).unwrap().account.as_deref(),
        Some("BANKA&SAFE-001")
    );
    let unclosed = DELIVER.replacen("</TxId>", "", 1);
    assert!(
        instruction(&unclosed)
            .unwrap_err()
            .to_string()
            .contains("well-formed")
    );
    let deep = format!(
        "<Document xmlns=\"urn:iso:std:iso:20022:tech:xsd:sese.023.001.12\">{}{}</Document>",
        "<a>".repeat(100),
        "</a>".repeat(100)
    );
    assert!(
        instruction(&deep)
            .unwrap_err()
            .to_string()
            .contains("too deep")
    );
    let big = vec![b' '; MAX_SETTLEMENT_LEN + 1];
    assert!(parse(Expect::Instruction, &big).is_err());
    let pi = DELIVER.replacen("<Document", "<?php x ?><Document", 1);
    assert!(
        instruction(&pi)
            .unwrap_err()
            .to_string()
            .contains("processing instruction")
    );
}

fn who<'a>(address: &'a str, real_name: &'a str, lei: Option<&'a str>) -> Participant<'a> {
    Participant {
        address,
        real_name,
        lei,
    }
}

#[test]
fn parties_are_the_envelopes_sender_and_recipients() {
    let exchange = who(
        "exchange",
        "Example Exchange Inc",
        Some("5493000EXCHANGE00016"),
    );
    let a = who("bank-a", "Bank A AG", Some(LEI_A));
    let b = who("bank-b", "Bank B Ltd", Some(LEI_B));
    let t = trade(TRADE).unwrap();
    check_parties(&t, exchange, &[a, b]).unwrap();
    // A recipient missing: bank-b's LEI names no one in the envelope.
    let e = check_parties(&t, exchange, &[a]).unwrap_err();
    assert_eq!(e.field, "453[2].448 (PartyID)");
    assert!(e.to_string().contains(LEI_B), "{e}");
    // bank-b's binding without its LEI: the same.
    let b_no_lei = who("bank-b", "Bank B Ltd", None);
    assert!(check_parties(&t, exchange, &[a, b_no_lei]).is_err());
    // The sender must be named: a trade bank-c sends about others is refused.
    let c = who("bank-c", "Bank C", None);
    let e = check_parties(&t, c, &[a, b, exchange]).unwrap_err();
    assert_eq!(e.field, "parties");
    let d = instruction(DELIVER).unwrap();
    check_parties(&d, a, &[b]).unwrap();
    // bank-b cannot send bank-a's instruction.
    assert!(check_parties(&d, b, &[a]).is_err());
    // A name must be a real name of the envelope.
    let named = DELIVER.replacen(
        "<AnyBIC>DTCYUS33XXX</AnyBIC>",
        "<NmAndAdr><Nm>Bank Z plc</Nm></NmAndAdr>",
        1,
    );
    let n = instruction(&named).unwrap();
    let e = check_parties(&n, a, &[b]).unwrap_err();
    assert!(e.field.ends_with("Dpstry/Id/NmAndAdr/Nm"), "{}", e.field);
    let z = who("bank-z", "Bank Z plc", None);
    check_parties(&n, a, &[b, z]).unwrap();
    // A proprietary code (447=D) that is the sender's address names the sender.
    let by_address =
        recompose(&TRADE.replace("448=5493000EXCHANGE00016|447=N", "448=exchange|447=D"));
    let t = trade(&by_address).unwrap();
    assert_eq!(t.parties[2].id, PartyId::Proprietary("exchange".into()));
    let exchange_no_lei = who("exchange", "Example Exchange Inc", None);
    check_parties(&t, exchange_no_lei, &[a, b]).unwrap();
    // One that is no one's address is not checked, and names no sender.
    check_parties(&t, c, &[a, b]).unwrap_err();
    let other = recompose(&by_address.replace("448=exchange|", "448=XNYS-MEMBER-7|"));
    let e = check_parties(&trade(&other).unwrap(), exchange_no_lei, &[a, b]).unwrap_err();
    assert_eq!(e.field, "parties");
}

#[test]
fn a_trade_and_both_instructions_agree_and_a_changed_one_does_not() {
    let t = trade(TRADE).unwrap();
    let d = instruction(DELIVER).unwrap();
    let r = instruction(RECEIVE).unwrap();
    assert!(differences(&t, &d).is_empty());
    assert!(differences(&d, &r).is_empty());
    let off = instruction(&RECEIVE.replace("<Unit>400</Unit>", "<Unit>399</Unit>")).unwrap();
    assert_eq!(differences(&d, &off), ["quantity"]);
    let late = instruction(&RECEIVE.replace("2026-12-07", "2026-12-08")).unwrap();
    assert_eq!(differences(&t, &late), ["settlement_date"]);
}
