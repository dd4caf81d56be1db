//! The stateless envelope rules: sizes, addresses, recipients, kinds, text fields,
//! ciphertext addressing, and the sender's signature. The gateway adds only what needs live
//! state (directory look-ups, its clock, nonce de-duplication); an auditor re-runs these
//! rules on every firehose message.

use std::collections::HashSet;

use blockpost_proto::v1::envelope_content::Body;
use blockpost_proto::v1::{Envelope, EnvelopeContent, MessageKind};
use ed25519_dalek::{Signature, VerifyingKey};
use prost::Message as _;
use sha2::Digest as _;

use crate::delivery::DeliveryError;
use crate::settle::{self, Settlement};
use crate::{Address, EnvelopeError, Error, Result, decode_canonical, envelope_message};

/// Size limits of an envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnvelopeLimits {
    /// Largest body: plaintext, or each ciphertext's plaintext.
    pub max_body_len: usize,
    /// Most recipients.
    pub max_recipients: usize,
}

impl Default for EnvelopeLimits {
    fn default() -> Self {
        Self {
            max_body_len: 256 * 1024,
            max_recipients: 32,
        }
    }
}

impl EnvelopeLimits {
    /// Largest encoded content: every recipient's ciphertext at the body limit, plus room
    /// for the other fields.
    pub fn max_content_len(&self) -> usize {
        self.max_body_len
            .saturating_add(16)
            .saturating_mul(self.max_recipients.saturating_add(1))
            .saturating_add(16 * 1024)
    }
}

/// A kind's name as shown and indexed: `message`, `document`, `finish`, `trade`,
/// `settlement-instruction` (`unknown` for one this version does not know).
pub fn kind_name(kind: i32) -> &'static str {
    match MessageKind::try_from(kind) {
        Ok(MessageKind::Message) => "message",
        Ok(MessageKind::Document) => "document",
        Ok(MessageKind::Finish) => "finish",
        Ok(MessageKind::Trade) => "trade",
        Ok(MessageKind::SettlementInstruction) => "settlement-instruction",
        Ok(MessageKind::Unspecified) | Err(_) => "unknown",
    }
}

/// A transaction status's name as shown: `open`, `finished`, `timed out` (`unknown` for
/// one this version does not know).
pub fn status_name(status: i32) -> &'static str {
    match blockpost_proto::v1::TransactionStatus::try_from(status) {
        Ok(blockpost_proto::v1::TransactionStatus::Open) => "open",
        Ok(blockpost_proto::v1::TransactionStatus::Finished) => "finished",
        Ok(blockpost_proto::v1::TransactionStatus::TimedOut) => "timed out",
        _ => "unknown",
    }
}

/// Whether a kind's body is a trade or an instruction, and its name for errors.
pub fn settle_expect(kind: MessageKind) -> Option<(settle::Expect, &'static str)> {
    match kind {
        MessageKind::Trade => Some((settle::Expect::Trade, "trade")),
        MessageKind::SettlementInstruction => {
            Some((settle::Expect::Instruction, "settlement instruction"))
        }
        _ => None,
    }
}

/// Longest transaction id and content type, in bytes.
pub const MAX_TEXT_LEN: usize = 128;
/// HPKE X25519 encapsulated key length.
const ENCAPSULATED_KEY_LEN: usize = 32;
/// ChaCha20-Poly1305 tag length.
const AEAD_TAG_LEN: usize = 16;

/// What is wrong with the ciphertexts of something sealed with HPKE ([`check_sealed`]).
pub(crate) enum Sealed {
    /// Not addressed to exactly the names wanted, once each.
    Addressing,
    /// A ciphertext longer than its plaintext limit allows.
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// An encapsulated key of the wrong length.
    EncapsulatedKey {
        /// Whose.
        recipient: String,
    },
}

/// The rules for a sealed body or a sealed delivery: addressed to exactly `want`, once
/// each, every ciphertext within `max_plain` bytes of plaintext (plus the AEAD tag) and
/// every encapsulated key of the KEM's length.
pub(crate) fn check_sealed(
    e: &blockpost_proto::v1::EncryptedBody,
    want: &HashSet<&str>,
    max_plain: usize,
) -> std::result::Result<(), Sealed> {
    let named: HashSet<&str> = e.ciphertexts.iter().map(|c| c.recipient.as_str()).collect();
    if named.len() != e.ciphertexts.len() || named != *want {
        return Err(Sealed::Addressing);
    }
    let limit = max_plain.saturating_add(AEAD_TAG_LEN);
    for ct in &e.ciphertexts {
        if ct.ciphertext.len() > limit {
            return Err(Sealed::TooLarge {
                len: ct.ciphertext.len(),
                limit,
            });
        }
        if ct.encapsulated_key.len() != ENCAPSULATED_KEY_LEN {
            return Err(Sealed::EncapsulatedKey {
                recipient: ct.recipient.clone(),
            });
        }
    }
    Ok(())
}

/// An envelope whose content follows every stateless rule; its signature is not checked
/// yet.
#[derive(Clone, Debug)]
pub struct ParsedEnvelope {
    envelope: Envelope,
    content: EnvelopeContent,
    sender: Address,
    recipients: Vec<Address>,
    kind: MessageKind,
    id: [u8; 32],
    settlement: Option<Box<Settlement>>,
}

impl ParsedEnvelope {
    /// Decodes `envelope` and checks every rule but the signature.
    pub fn parse(envelope: Envelope, limits: &EnvelopeLimits) -> Result<Self> {
        let limit = limits.max_content_len();
        if envelope.content.len() > limit {
            return Err(Error::TooLarge {
                field: "envelope",
                len: envelope.content.len(),
                limit,
            });
        }
        // The signed content is stored forever: only its canonical encoding is accepted.
        let c: EnvelopeContent =
            decode_canonical(&envelope.content, "envelope content").map_err(|e| match e {
                Error::Malformed { why, .. } => EnvelopeError::Content { why }.into(),
                other => other,
            })?;
        let sender = Address::parse(&c.sender)?;
        if c.recipients.is_empty() {
            return Err(EnvelopeError::NoRecipients.into());
        }
        if c.recipients.len() > limits.max_recipients {
            return Err(EnvelopeError::TooManyRecipients {
                count: c.recipients.len(),
                limit: limits.max_recipients,
            }
            .into());
        }
        let mut recipients = Vec::with_capacity(c.recipients.len());
        let mut seen = HashSet::with_capacity(c.recipients.len());
        for r in &c.recipients {
            let a = Address::parse(r)?;
            if !seen.insert(r.as_str()) {
                return Err(EnvelopeError::DuplicateRecipient(r.clone()).into());
            }
            recipients.push(a);
        }
        check_text("transaction_id", &c.transaction_id, 1, MAX_TEXT_LEN)?;
        check_text("content_type", &c.content_type, 0, MAX_TEXT_LEN)?;
        if let Some(d) = c.transaction_deadline_ms
            && d <= c.timestamp_ms
        {
            return Err(EnvelopeError::Deadline {
                deadline_ms: d,
                timestamp_ms: c.timestamp_ms,
            }
            .into());
        }
        let kind = MessageKind::try_from(c.kind)
            .ok()
            .filter(|k| *k != MessageKind::Unspecified)
            .ok_or(EnvelopeError::UnknownKind(c.kind))?;
        match &c.body {
            None => return Err(EnvelopeError::NoBody.into()),
            Some(Body::Plaintext(p)) => {
                if p.len() > limits.max_body_len {
                    return Err(Error::TooLarge {
                        field: "body",
                        len: p.len(),
                        limit: limits.max_body_len,
                    });
                }
            }
            Some(Body::Encrypted(e)) => {
                check_sealed(e, &seen, limits.max_body_len).map_err(|p| match p {
                    Sealed::Addressing => EnvelopeError::Ciphertexts.into(),
                    Sealed::TooLarge { len, limit } => Error::TooLarge {
                        field: "ciphertext",
                        len,
                        limit,
                    },
                    Sealed::EncapsulatedKey { recipient } => EnvelopeError::EncapsulatedKey {
                        recipient,
                        expected: ENCAPSULATED_KEY_LEN,
                    }
                    .into(),
                })?;
            }
        }
        if let Some(d) = &c.delivery {
            if kind != MessageKind::SettlementInstruction {
                return Err(EnvelopeError::Delivery(DeliveryError::NotAnInstruction).into());
            }
            crate::delivery::check_shape(d, &seen).map_err(EnvelopeError::Delivery)?;
        }
        let settlement = match (settle_expect(kind), &c.body) {
            (Some((expect, name)), Some(Body::Plaintext(p))) => {
                Some(Box::new(settle::parse(expect, p).map_err(|error| {
                    EnvelopeError::Settlement {
                        kind: name,
                        error: Box::new(error),
                    }
                })?))
            }
            _ => None,
        };
        let id = sha2::Sha256::digest(envelope.encode_to_vec()).into();
        Ok(Self {
            envelope,
            content: c,
            sender,
            recipients,
            kind,
            id,
            settlement,
        })
    }

    /// The sender.
    pub fn sender(&self) -> &Address {
        &self.sender
    }

    /// The recipients, in the envelope's order.
    pub fn recipients(&self) -> &[Address] {
        &self.recipients
    }

    /// The decoded content.
    pub fn content(&self) -> &EnvelopeContent {
        &self.content
    }

    /// The kind.
    pub fn kind(&self) -> MessageKind {
        self.kind
    }

    /// The message id: SHA-256 of the encoded envelope.
    pub fn id(&self) -> [u8; 32] {
        self.id
    }

    /// What a plaintext `trade` or `settlement-instruction` says, read and checked; `None`
    /// for other kinds and for sealed bodies (checked by whoever opens them).
    pub fn settlement(&self) -> Option<&Settlement> {
        self.settlement.as_deref()
    }

    /// The envelope as received.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The directory entry whose x25519 key the ciphertext for `recipient` was sealed to;
    /// `None` for a plaintext body or an unknown recipient.
    pub fn recipient_key_index(&self, recipient: &str) -> Option<u64> {
        match &self.content.body {
            Some(Body::Encrypted(e)) => e
                .ciphertexts
                .iter()
                .find(|c| c.recipient == recipient)
                .map(|c| c.recipient_key_index),
            _ => None,
        }
    }

    /// Checks the signature with the sender's key (the one at `sender_key_index`).
    pub fn verify(self, sender_key: &VerifyingKey) -> Result<VerifiedEnvelope> {
        let sig = Signature::from_slice(&self.envelope.signature)
            .map_err(|_| Error::SignatureInvalid("not a 64-byte ed25519 signature"))?;
        sender_key
            .verify_strict(&envelope_message(&self.envelope.content), &sig)
            .map_err(|_| Error::SignatureInvalid("envelope signature does not verify"))?;
        Ok(VerifiedEnvelope(self))
    }
}

/// An envelope that follows every stateless rule and is signed by the key it was checked
/// with. Only [`ParsedEnvelope::verify`] and [`verify_batch`] make one.
#[derive(Clone, Debug)]
pub struct VerifiedEnvelope(ParsedEnvelope);

impl VerifiedEnvelope {
    /// The checked envelope.
    pub fn parsed(&self) -> &ParsedEnvelope {
        &self.0
    }

    /// The envelope's encoding, as stored on the firehose.
    pub fn encode(&self) -> Vec<u8> {
        self.0.envelope.encode_to_vec()
    }
}

impl std::ops::Deref for VerifiedEnvelope {
    type Target = ParsedEnvelope;

    fn deref(&self) -> &ParsedEnvelope {
        &self.0
    }
}

/// Verifies many envelopes at once with ed25519 batch verification, falling back to
/// single checks to find the bad ones when the batch fails. Results are in input order.
///
/// For checking again what was admitted, never for admitting: a batch never refuses a
/// signature [`ParsedEnvelope::verify`] takes, but it can take one that the strict check
/// (and Go's `ed25519.Verify`) refuses: an `R` with a torsion component, which only the
/// key's owner can make, passes whenever its coefficient (derived from the batch's
/// contents) kills the torsion, half the time for an order-2 point. Refusing those exactly
/// costs a scalar multiplication a signature, which makes a batch no cheaper than the
/// strict checks (criterion: `cargo bench -p blockpost-core --bench pop`). So the gateway
/// admits with the strict check, and the builder and the auditor batch.
pub fn verify_batch(items: Vec<(ParsedEnvelope, VerifyingKey)>) -> Vec<Result<VerifiedEnvelope>> {
    if items.len() < 2 {
        return items.into_iter().map(|(p, k)| p.verify(&k)).collect();
    }
    let mut sigs = Vec::with_capacity(items.len());
    for (p, _) in &items {
        match Signature::from_slice(&p.envelope.signature) {
            Ok(s) => sigs.push(s),
            // One malformed signature: check one by one.
            Err(_) => return items.into_iter().map(|(p, k)| p.verify(&k)).collect(),
        }
    }
    let msgs: Vec<Vec<u8>> = items
        .iter()
        .map(|(p, _)| envelope_message(&p.envelope.content))
        .collect();
    let msg_refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
    let keys: Vec<VerifyingKey> = items.iter().map(|(_, k)| *k).collect();
    // Batch verification is not strict about small-order keys; the strict single check stays
    // authoritative for those, which a directory never admits anyway.
    let all_strong = keys.iter().all(|k| !k.is_weak());
    if all_strong && ed25519_dalek::verify_batch(&msg_refs, &sigs, &keys).is_ok() {
        return items
            .into_iter()
            .map(|(p, _)| Ok(VerifiedEnvelope(p)))
            .collect();
    }
    items.into_iter().map(|(p, k)| p.verify(&k)).collect()
}

/// Fewest signatures worth a thread of their own in [`verify_batch_parallel`].
pub const VERIFY_CHUNK_MIN: usize = 64;

/// [`verify_batch`] split over the machine's cores: one batch per thread (scoped threads
/// of the caller, which blocks until all are done; call it where blocking is allowed).
/// Chunks are at least [`VERIFY_CHUNK_MIN`] signatures, so a small batch stays on the
/// calling thread. Results are in input order.
pub fn verify_batch_parallel(
    items: Vec<(ParsedEnvelope, VerifyingKey)>,
) -> Vec<Result<VerifiedEnvelope>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = items.len().div_ceil(threads).max(VERIFY_CHUNK_MIN);
    if items.len() <= per {
        return verify_batch(items);
    }
    let mut chunks = Vec::new();
    let mut rest = items.into_iter();
    loop {
        let chunk: Vec<_> = rest.by_ref().take(per).collect();
        if chunk.is_empty() {
            break;
        }
        chunks.push(chunk);
    }
    let mut last = chunks.pop().unwrap_or_default();
    std::thread::scope(|scope| {
        let running: Vec<_> = chunks
            .into_iter()
            .map(|c| scope.spawn(move || verify_batch(c)))
            .collect();
        // The last chunk on this thread, while the others run.
        let mine = verify_batch(std::mem::take(&mut last));
        let mut out = Vec::new();
        for r in running {
            match r.join() {
                Ok(v) => out.extend(v),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out.extend(mine);
        out
    })
}

fn check_text(field: &str, s: &str, min: usize, max: usize) -> Result<()> {
    if s.len() < min || s.len() > max || s.chars().any(char::is_control) {
        return Err(EnvelopeError::Text {
            field: field.to_owned(),
            min,
            max,
        }
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use blockpost_proto::v1::{EncryptedBody, RecipientCiphertext};

    use super::*;
    use crate::{Identity, sign_envelope};

    fn content(body: Body) -> EnvelopeContent {
        EnvelopeContent {
            delivery: None,
            sender: "alice".into(),
            sender_key_index: 0,
            recipients: vec!["bob".into(), "carol".into()],
            transaction_id: "settle-1".into(),
            transaction_deadline_ms: None,
            kind: MessageKind::Message as i32,
            content_type: "text/plain".into(),
            timestamp_ms: 1,
            nonce: 7,
            body: Some(body),
        }
    }

    fn plain() -> EnvelopeContent {
        content(Body::Plaintext(b"hello".to_vec()))
    }

    fn parse(id: &Identity, c: &EnvelopeContent) -> Result<ParsedEnvelope> {
        ParsedEnvelope::parse(
            sign_envelope(&id.signing, c.encode_to_vec()),
            &EnvelopeLimits::default(),
        )
    }

    fn ct(to: &str) -> RecipientCiphertext {
        RecipientCiphertext {
            recipient: to.into(),
            recipient_key_index: 3,
            encapsulated_key: vec![1; 32],
            ciphertext: vec![2; 40],
        }
    }

    #[test]
    fn a_good_envelope_parses_and_verifies() {
        let id = Identity::generate();
        let p = parse(&id, &plain()).unwrap();
        assert_eq!(p.sender().as_str(), "alice");
        assert_eq!(p.recipients().len(), 2);
        assert_eq!(p.kind(), MessageKind::Message);
        assert_eq!(p.id(), crate::message_id(p.envelope()));
        let v = p.verify(&id.signing.verifying_key()).unwrap();
        assert_eq!(v.encode(), v.envelope().encode_to_vec());
        let enc = content(Body::Encrypted(EncryptedBody {
            ciphertexts: vec![ct("carol"), ct("bob")],
        }));
        let p = parse(&id, &enc).unwrap();
        assert_eq!(p.recipient_key_index("bob"), Some(3));
        assert_eq!(p.recipient_key_index("dave"), None);
    }

    #[test]
    fn every_stateless_rule_is_enforced() {
        let id = Identity::generate();
        let limits = EnvelopeLimits::default();
        let cases: Vec<(&str, EnvelopeContent)> = vec![
            (
                "bad sender",
                EnvelopeContent {
                    sender: "alice.x".into(),
                    ..plain()
                },
            ),
            (
                "no recipients",
                EnvelopeContent {
                    recipients: vec![],
                    ..plain()
                },
            ),
            (
                "wildcard",
                EnvelopeContent {
                    recipients: vec!["*".into()],
                    ..plain()
                },
            ),
            (
                "twice",
                EnvelopeContent {
                    recipients: vec!["bob".into(), "bob".into()],
                    ..plain()
                },
            ),
            (
                "too many",
                EnvelopeContent {
                    recipients: (0..33).map(|i| format!("r{i}")).collect(),
                    ..plain()
                },
            ),
            (
                "no tx",
                EnvelopeContent {
                    transaction_id: String::new(),
                    ..plain()
                },
            ),
            (
                "long tx",
                EnvelopeContent {
                    transaction_id: "t".repeat(129),
                    ..plain()
                },
            ),
            (
                "control",
                EnvelopeContent {
                    content_type: "a\nb".into(),
                    ..plain()
                },
            ),
            ("kind 0", EnvelopeContent { kind: 0, ..plain() }),
            (
                "transaction deadline",
                EnvelopeContent {
                    transaction_deadline_ms: Some(1),
                    ..plain()
                },
            ),
            (
                "kind 99",
                EnvelopeContent {
                    kind: 99,
                    ..plain()
                },
            ),
            (
                "no body",
                EnvelopeContent {
                    body: None,
                    ..plain()
                },
            ),
            (
                "big body",
                content(Body::Plaintext(vec![0; limits.max_body_len + 1])),
            ),
            (
                "ciphertext for someone else",
                content(Body::Encrypted(EncryptedBody {
                    ciphertexts: vec![ct("bob"), ct("dave")],
                })),
            ),
            (
                "a recipient without ciphertext",
                content(Body::Encrypted(EncryptedBody {
                    ciphertexts: vec![ct("bob")],
                })),
            ),
            (
                "two ciphertexts for one",
                content(Body::Encrypted(EncryptedBody {
                    ciphertexts: vec![ct("bob"), ct("bob"), ct("carol")],
                })),
            ),
            (
                "short encapsulated key",
                content(Body::Encrypted(EncryptedBody {
                    ciphertexts: vec![
                        ct("bob"),
                        RecipientCiphertext {
                            encapsulated_key: vec![1; 31],
                            ..ct("carol")
                        },
                    ],
                })),
            ),
            (
                "big ciphertext",
                content(Body::Encrypted(EncryptedBody {
                    ciphertexts: vec![
                        ct("bob"),
                        RecipientCiphertext {
                            ciphertext: vec![0; limits.max_body_len + 17],
                            ..ct("carol")
                        },
                    ],
                })),
            ),
        ];
        for (what, c) in cases {
            assert!(parse(&id, &c).is_err(), "{what} was accepted");
        }
        let garbage = Envelope {
            content: vec![0xff; 10],
            signature: vec![],
        };
        assert!(matches!(
            ParsedEnvelope::parse(garbage, &limits),
            Err(Error::InvalidEnvelope(EnvelopeError::Content { .. }))
        ));
        let huge = Envelope {
            content: vec![0; limits.max_content_len() + 1],
            signature: vec![],
        };
        assert!(matches!(
            ParsedEnvelope::parse(huge, &limits),
            Err(Error::TooLarge {
                field: "envelope",
                ..
            })
        ));
    }

    #[test]
    fn signatures_are_checked_with_the_given_key() {
        let (id, other) = (Identity::generate(), Identity::generate());
        let p = parse(&id, &plain()).unwrap();
        assert!(matches!(
            p.clone().verify(&other.signing.verifying_key()),
            Err(Error::SignatureInvalid(_))
        ));
        let mut env = p.envelope().clone();
        env.content[3] ^= 1;
        // The flipped byte may or may not still decode; either way it never verifies.
        if let Ok(p2) = ParsedEnvelope::parse(env, &EnvelopeLimits::default()) {
            assert!(p2.verify(&id.signing.verifying_key()).is_err());
        }
        let mut env = p.envelope().clone();
        env.signature.truncate(63);
        let p3 = ParsedEnvelope::parse(env, &EnvelopeLimits::default()).unwrap();
        assert!(p3.verify(&id.signing.verifying_key()).is_err());
        // The wrong context string: an envelope signature must not be a receipt signature.
        let mut env = p.envelope().clone();
        env.signature = ed25519_dalek::Signer::sign(
            &id.signing,
            &[b"blockpost/v1 receipt\n".as_slice(), &env.content].concat(),
        )
        .to_bytes()
        .to_vec();
        let p4 = ParsedEnvelope::parse(env, &EnvelopeLimits::default()).unwrap();
        assert!(p4.verify(&id.signing.verifying_key()).is_err());
    }

    #[test]
    fn batches_find_the_bad_ones() {
        let ids: Vec<Identity> = (0..20).map(|_| Identity::generate()).collect();
        let mut items = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let p = parse(id, &plain()).unwrap();
            // Every seventh is checked against the wrong key.
            let key = if i % 7 == 3 { &ids[(i + 1) % 20] } else { id };
            items.push((p, key.signing.verifying_key()));
        }
        let out = verify_batch(items);
        for (i, r) in out.iter().enumerate() {
            assert_eq!(r.is_ok(), i % 7 != 3, "envelope {i}");
        }
        assert!(verify_batch(Vec::new()).is_empty());
    }

    #[test]
    fn parallel_batches_keep_the_order_and_find_the_bad_ones() {
        let ids: Vec<Identity> = (0..8).map(|_| Identity::generate()).collect();
        let n = VERIFY_CHUNK_MIN * 5 + 3;
        let mut items = Vec::new();
        let mut nonces = Vec::new();
        for i in 0..n {
            let id = &ids[i % ids.len()];
            let mut c = plain();
            c.nonce = i as u64;
            nonces.push(c.nonce);
            // One in 50, spread over the chunks, against the wrong key.
            let key = if i % 50 == 17 {
                &ids[(i + 1) % ids.len()]
            } else {
                id
            };
            items.push((parse(id, &c).unwrap(), key.signing.verifying_key()));
        }
        let out = verify_batch_parallel(items);
        assert_eq!(out.len(), n);
        for (i, r) in out.iter().enumerate() {
            match r {
                Ok(v) => {
                    assert_ne!(i % 50, 17, "envelope {i}");
                    assert_eq!(v.parsed().content().nonce, nonces[i], "in input order");
                }
                Err(_) => assert_eq!(i % 50, 17, "envelope {i}"),
            }
        }
        assert!(verify_batch_parallel(Vec::new()).is_empty());
    }
}
