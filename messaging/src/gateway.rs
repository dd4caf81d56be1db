//! The gateway's logic: check an envelope against the directory replica, publish it to
//! the firehose and to each recipient's inbox, and sign a receipt.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use blockpost_core::{Address, envelope_message, message_id, now_ms, sign_receipt};
use blockpost_proto::v1::envelope_content::Body;
use blockpost_proto::v1::{
    Envelope, EnvelopeContent, GatewayInfo, MessageKind, Receipt, ReceiptBody,
};
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use prost::Message as _;

use crate::error::bus;
use crate::replica::Replica;
use crate::verify::BatchVerifier;
use crate::{Error, Result};

/// Subject of the firehose.
pub const FIREHOSE_SUBJECT: &str = "blockpost.firehose";
/// Header with the hex message id.
pub const MESSAGE_ID_HEADER: &str = "Blockpost-Message-Id";
/// Header with the firehose sequence of an inbox copy.
pub const FIREHOSE_SEQ_HEADER: &str = "Blockpost-Firehose-Seq";

/// Gateway settings.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Where the receipt key lives (`keys/gateway.key`).
    pub data_dir: PathBuf,
    /// Largest body (plaintext, or each ciphertext).
    pub max_body_len: usize,
    /// Most recipients per envelope.
    pub max_recipients: usize,
    /// Greatest distance between an envelope's timestamp and the gateway's clock; must
    /// be below the firehose's de-duplication window, which enforces nonce uniqueness.
    pub max_clock_skew_ms: i64,
    /// The promise in every receipt.
    pub max_block_delay_ms: u64,
    /// Firehose stream name.
    pub firehose_stream: String,
    /// Inbox stream name.
    pub inbox_stream: String,
}

impl GatewayConfig {
    /// Defaults on a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            max_body_len: 256 * 1024,
            max_recipients: 32,
            max_clock_skew_ms: 5 * 60 * 1000,
            max_block_delay_ms: 10_000,
            firehose_stream: "BLOCKPOST_FIREHOSE".into(),
            inbox_stream: "BLOCKPOST_INBOX".into(),
        }
    }
}

/// A running gateway. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) js: jetstream::Context,
    pub(crate) replica: Arc<Replica>,
    pub(crate) config: GatewayConfig,
    verifier: BatchVerifier,
    key: SigningKey,
    /// One inbox session per address on this gateway, so that a new reader starts only
    /// after the previous one has handed back what it did not acknowledge (order per sender).
    pub(crate) sessions:
        std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// An envelope that passed every check.
struct Checked {
    content: EnvelopeContent,
    bytes: Vec<u8>,
    id: [u8; 32],
}

impl Gateway {
    /// Loads (or creates) the receipt key, makes sure the streams exist and starts
    /// following the directory.
    pub async fn start(config: GatewayConfig, nats: async_nats::Client) -> Result<Self> {
        let key = load_or_create_key(&config.data_dir.join("keys"))?;
        let mut js = jetstream::new(nats);
        js.set_timeout(Duration::from_secs(10));
        let window =
            Duration::from_millis(u64::try_from(config.max_clock_skew_ms).unwrap_or(300_000) * 2);
        js.get_or_create_stream(stream::Config {
            name: config.firehose_stream.clone(),
            subjects: vec![FIREHOSE_SUBJECT.into()],
            storage: stream::StorageType::File,
            duplicate_window: window,
            ..Default::default()
        })
        .await
        .map_err(bus)?;
        js.get_or_create_stream(stream::Config {
            name: config.inbox_stream.clone(),
            subjects: vec!["blockpost.inbox.*".into()],
            storage: stream::StorageType::File,
            duplicate_window: window,
            ..Default::default()
        })
        .await
        .map_err(bus)?;
        let replica = Replica::start(js.clone());
        Ok(Self {
            inner: Arc::new(Inner {
                js,
                replica,
                config,
                verifier: BatchVerifier::start(),
                key,
                sessions: Default::default(),
            }),
        })
    }

    /// The receipt key and the promised delay.
    pub fn info(&self) -> GatewayInfo {
        GatewayInfo {
            receipt_key: self.inner.key.verifying_key().to_bytes().to_vec(),
            max_block_delay_ms: self.inner.config.max_block_delay_ms,
        }
    }

    /// The directory replica.
    pub fn replica(&self) -> &Replica {
        &self.inner.replica
    }

    /// Checks, routes and receipts one envelope. Returns only after JetStream stored it
    /// in the firehose and in every recipient's inbox.
    pub async fn submit(&self, env: Envelope) -> Result<Receipt> {
        let c = self.check(env).await?;
        self.publish(c).await
    }

    async fn check(&self, env: Envelope) -> Result<Checked> {
        let cfg = &self.inner.config;
        let limit = cfg.max_body_len * (cfg.max_recipients + 1) + 16 * 1024;
        if env.content.len() > limit {
            return Err(Error::TooLarge {
                field: "envelope",
                len: env.content.len(),
                limit,
            });
        }
        let c = EnvelopeContent::decode(env.content.as_slice())
            .map_err(|e| Error::Invalid(format!("content is not an EnvelopeContent: {e}")))?;
        let sender = Address::parse(&c.sender)?;
        if c.recipients.is_empty() {
            return Err(Error::Invalid("no recipients".into()));
        }
        if c.recipients.len() > cfg.max_recipients {
            return Err(Error::Invalid(format!(
                "{} recipients, limit {}",
                c.recipients.len(),
                cfg.max_recipients
            )));
        }
        let mut seen = HashSet::new();
        for r in &c.recipients {
            Address::parse(r)?;
            if !seen.insert(r.as_str()) {
                return Err(Error::Invalid(format!("recipient {r} listed twice")));
            }
        }
        check_text("transaction_id", &c.transaction_id, 1, 128)?;
        check_text("content_type", &c.content_type, 0, 128)?;
        if MessageKind::try_from(c.kind).map_or(true, |k| k == MessageKind::Unspecified) {
            return Err(Error::Invalid(format!("unknown message kind {}", c.kind)));
        }
        let now = now_ms();
        if (c.timestamp_ms - now).abs() > cfg.max_clock_skew_ms {
            return Err(Error::ClockSkew {
                got_ms: c.timestamp_ms,
                now_ms: now,
                skew_ms: cfg.max_clock_skew_ms,
            });
        }
        match &c.body {
            None => return Err(Error::Invalid("no body".into())),
            Some(Body::Plaintext(p)) => {
                if p.len() > cfg.max_body_len {
                    return Err(Error::TooLarge {
                        field: "body",
                        len: p.len(),
                        limit: cfg.max_body_len,
                    });
                }
            }
            Some(Body::Encrypted(e)) => {
                let named: HashSet<&str> =
                    e.ciphertexts.iter().map(|c| c.recipient.as_str()).collect();
                if named.len() != e.ciphertexts.len() || named != seen {
                    return Err(Error::Invalid(
                        "the ciphertexts are not addressed to exactly the listed recipients".into(),
                    ));
                }
                for ct in &e.ciphertexts {
                    if ct.ciphertext.len() > cfg.max_body_len + 16 {
                        return Err(Error::TooLarge {
                            field: "ciphertext",
                            len: ct.ciphertext.len(),
                            limit: cfg.max_body_len,
                        });
                    }
                    if ct.encapsulated_key.len() != 32 {
                        return Err(Error::Invalid(format!(
                            "encapsulated key for {} is not 32 bytes",
                            ct.recipient
                        )));
                    }
                }
            }
        }
        // Directory checks, in memory.
        let patience = Duration::from_millis(500);
        let replica = &self.inner.replica;
        let s = replica
            .participant(sender.as_str(), patience)
            .await
            .ok_or_else(|| Error::UnknownSender(sender.to_string()))?;
        if s.revoked {
            return Err(Error::Revoked {
                role: "sender",
                address: sender.to_string(),
            });
        }
        if s.current != c.sender_key_index {
            return Err(Error::StaleKey {
                role: "sender",
                address: sender.to_string(),
                named: c.sender_key_index,
                current: s.current,
            });
        }
        for r in &c.recipients {
            let p = replica
                .participant(r, patience)
                .await
                .ok_or_else(|| Error::UnknownRecipient(r.clone()))?;
            if p.revoked {
                return Err(Error::Revoked {
                    role: "recipient",
                    address: r.clone(),
                });
            }
            if let Some(Body::Encrypted(e)) = &c.body
                && let Some(ct) = e.ciphertexts.iter().find(|ct| &ct.recipient == r)
                && ct.recipient_key_index != p.current
            {
                return Err(Error::StaleKey {
                    role: "recipient",
                    address: r.clone(),
                    named: ct.recipient_key_index,
                    current: p.current,
                });
            }
        }
        if !self
            .inner
            .verifier
            .verify(
                s.signing_key,
                envelope_message(&env.content),
                &env.signature,
            )
            .await
        {
            return Err(Error::SignatureInvalid(format!(
                "envelope is not signed by {}'s current key",
                c.sender
            )));
        }
        let id = message_id(&env);
        Ok(Checked {
            content: c,
            bytes: env.encode_to_vec(),
            id,
        })
    }

    async fn publish(&self, c: Checked) -> Result<Receipt> {
        let js = &self.inner.js;
        let id_hex = hex::encode(c.id);
        let mut h = HeaderMap::new();
        // The firehose de-duplicates on (sender, nonce): a nonce is accepted once, by any
        // gateway, also after restarts, within the window; the clock-skew bound covers the
        // time beyond it.
        h.insert(
            "Nats-Msg-Id",
            format!("nonce:{}:{}", c.content.sender, c.content.nonce).as_str(),
        );
        h.insert(MESSAGE_ID_HEADER, id_hex.as_str());
        let ack = js
            .publish_with_headers(FIREHOSE_SUBJECT, h, c.bytes.clone().into())
            .await
            .map_err(bus)?
            .await
            .map_err(bus)?;
        if ack.duplicate {
            // The same envelope again (a retry) is fine; another one with that nonce is a replay.
            let stream = js
                .get_stream(&self.inner.config.firehose_stream)
                .await
                .map_err(bus)?;
            let original = stream.get_raw_message(ack.sequence).await.map_err(bus)?;
            if original.payload.as_ref() != c.bytes.as_slice() {
                return Err(Error::Replay {
                    sender: c.content.sender,
                    nonce: c.content.nonce,
                });
            }
        }
        let mut acks = Vec::with_capacity(c.content.recipients.len());
        for r in &c.content.recipients {
            let mut h = HeaderMap::new();
            h.insert("Nats-Msg-Id", format!("{id_hex}:{r}").as_str());
            h.insert(MESSAGE_ID_HEADER, id_hex.as_str());
            h.insert(FIREHOSE_SEQ_HEADER, ack.sequence.to_string().as_str());
            acks.push(
                js.publish_with_headers(format!("blockpost.inbox.{r}"), h, c.bytes.clone().into())
                    .await
                    .map_err(bus)?,
            );
        }
        for a in acks {
            a.await.map_err(bus)?;
        }
        let accepted = now_ms();
        let body = ReceiptBody {
            message_id: c.id.to_vec(),
            accepted_at_ms: accepted,
            firehose_sequence: ack.sequence,
            block_deadline_ms: accepted
                + i64::try_from(self.inner.config.max_block_delay_ms).unwrap_or(i64::MAX / 2),
            gateway_key: self.inner.key.verifying_key().to_bytes().to_vec(),
        };
        Ok(sign_receipt(&self.inner.key, &body))
    }
}

fn check_text(field: &str, s: &str, min: usize, max: usize) -> Result<()> {
    if s.len() < min || s.len() > max || s.chars().any(char::is_control) {
        return Err(Error::Invalid(format!(
            "{field} must be {min} to {max} bytes without control characters"
        )));
    }
    Ok(())
}

fn load_or_create_key(dir: &std::path::Path) -> Result<SigningKey> {
    let path = dir.join("gateway.key");
    let ierr = |e: &dyn std::fmt::Display| Error::Internal(format!("{}: {e}", path.display()));
    if path.exists() {
        let pem = std::fs::read_to_string(&path).map_err(|e| ierr(&e))?;
        return SigningKey::from_pkcs8_pem(&pem).map_err(|e| ierr(&e));
    }
    std::fs::create_dir_all(dir).map_err(|e| ierr(&e))?;
    let k = SigningKey::generate(&mut rand::rngs::OsRng);
    let pem = k
        .to_pkcs8_pem(pkcs8::LineEnding::LF)
        .map_err(|e| ierr(&e))?;
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| ierr(&e))?;
    f.write_all(pem.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| ierr(&e))?;
    Ok(k)
}
