//! The messaging side of the client: send (optionally end-to-end encrypted) envelopes and
//! check their receipts, read the inbox checking every envelope with the core rules and
//! every sender signature against the directory, and follow the firehose.

use std::collections::HashMap;

use blockpost_core::{
    EnvelopeLimits, Identity, ParsedEnvelope, SealTo, body_aad, inbox_message, message_id, now_ms,
    open_body, seal_body, sign_envelope, verify_receipt,
};
use blockpost_proto::v1::envelope_content::Body;
use blockpost_proto::v1::inbox_client_message::Msg as ClientMsg;
use blockpost_proto::v1::inbox_server_message::Msg as ServerMsg;
use blockpost_proto::v1::messaging_client::MessagingClient;
use blockpost_proto::v1::{
    Envelope, EnvelopeContent, FirehoseRequest, GetGatewayInfoRequest, InboxClientMessage,
    InboxHello, MessageKind, Receipt, ReceiptBody,
};
use ed25519_dalek::{Signer as _, VerifyingKey};
use prost::Message as _;
use tonic::transport::Channel;
use x25519_dalek::StaticSecret;

use crate::{Client, Error, Result, VerifiedEntry};
use blockpost_core::settle;

/// What to send.
pub struct Outgoing<'a> {
    /// Sender address.
    pub from: &'a str,
    /// Recipient addresses.
    pub to: &'a [String],
    /// Transaction id.
    pub transaction_id: &'a str,
    /// Kind.
    pub kind: MessageKind,
    /// MIME type of the body.
    pub content_type: &'a str,
    /// The body.
    pub body: Vec<u8>,
    /// Seal the body to each recipient's x25519 key.
    pub encrypt: bool,
    /// On a transaction's first message: time it out at this time (ms since the Unix
    /// epoch) if it is not finished, instead of after the ledger's default timeout.
    pub transaction_deadline_ms: Option<i64>,
    /// Only with a settlement instruction: a signed ledger transaction for the node to
    /// deliver once the transaction is finished, sealed to the recipients and the node.
    pub delivery: Option<Delivery<'a>>,
}

/// A signed transaction for an external ledger, carried by a settlement instruction.
pub struct Delivery<'a> {
    /// The ledger, which reads the transaction and computes its commitment
    /// (`blockpost_core::delivery::Bitcoin` with core's `bitcoin` feature).
    pub ledger: &'a dyn blockpost_core::delivery::TargetLedger,
    /// The raw signed transaction.
    pub raw: Vec<u8>,
}

/// A message read from an inbox or the firehose, after every check.
#[derive(Debug)]
pub struct Received {
    /// Inbox or firehose sequence.
    pub sequence: u64,
    /// Firehose sequence (in its partition).
    pub firehose_sequence: u64,
    /// Firehose partition (that of the sender).
    pub firehose_partition: u32,
    /// SHA-256 of the envelope.
    pub message_id: [u8; 32],
    /// The signed content.
    pub content: EnvelopeContent,
    /// The sender's real name, from a verified look-up.
    pub sender_name: String,
    /// Each recipient's real name (empty when it could not be looked up), in order.
    pub recipient_names: Vec<String>,
    /// Plaintext body (decrypted when it was addressed to us), if readable.
    pub body: Option<Vec<u8>>,
    /// Whether the body was end-to-end encrypted.
    pub encrypted: bool,
    /// Of a sealed body opened: the leaf index of the reader's directory entry whose key
    /// it was sealed to.
    pub opened_with: Option<u64>,
    /// Of a sealed body not opened, with keys given: why (not sealed to the reader, or
    /// sealed to a key generation the reader's keys lack).
    pub unopened: Option<String>,
}

/// Keys that open bodies sealed to one participant: a key file's keys (the one
/// generation it holds), or a [`crate::Keyring`] (every generation, chosen by the key
/// index each ciphertext names).
pub trait BodyKeys: Sync {
    /// The participant.
    fn reader(&self) -> &str;
    /// The x25519 secret of the generation bound at directory leaf `key_index`, or why
    /// there is none.
    fn body_key(&self, key_index: u64) -> std::result::Result<&StaticSecret, String>;
}

impl BodyKeys for (&str, &Identity) {
    fn reader(&self) -> &str {
        self.0
    }
    fn body_key(&self, _: u64) -> std::result::Result<&StaticSecret, String> {
        Ok(&self.1.encryption)
    }
}

impl BodyKeys for crate::Keyring {
    fn reader(&self) -> &str {
        self.address().unwrap_or("")
    }
    fn body_key(&self, key_index: u64) -> std::result::Result<&StaticSecret, String> {
        crate::Keyring::body_key(self, key_index).map_err(|e| e.to_string())
    }
}

/// Opens a sealed body for `me`: (the plaintext, the key index it was sealed to), or why
/// not.
pub fn open_sealed(
    e: &blockpost_proto::v1::EncryptedBody,
    c: &EnvelopeContent,
    me: &dyn BodyKeys,
) -> std::result::Result<(Vec<u8>, u64), String> {
    let reader = me.reader();
    let Some(ct) = e.ciphertexts.iter().find(|t| t.recipient == reader) else {
        let to: Vec<&str> = e.ciphertexts.iter().map(|t| t.recipient.as_str()).collect();
        let to = if to.is_empty() {
            "nobody".into()
        } else {
            to.join(", ")
        };
        return Err(if c.sender == reader {
            format!("sealed to {to}; a sender keeps no copy of what it seals")
        } else {
            format!("sealed to {to}, not to {reader}")
        });
    };
    let key = me.body_key(ct.recipient_key_index)?;
    open_body(e, reader, key, &body_aad(&c.sender, &c.transaction_id))
        .map(|b| (b, ct.recipient_key_index))
        .map_err(|err| {
            format!(
                "does not open with {reader}'s key of directory entry {}: {err}",
                ct.recipient_key_index
            )
        })
}

/// A messaging client on top of a verifying directory client.
pub struct Messenger {
    /// The directory client (verifies everything it receives).
    pub directory: Client,
    grpc: MessagingClient<Channel>,
    gateway_key: VerifyingKey,
    history: HashMap<String, Vec<VerifiedEntry>>,
    /// Signing keys of `history` parsed (a point decompression each), by address and
    /// leaf index; dropped with the address's history when it is looked up again.
    keys: HashMap<String, HashMap<u64, VerifyingKey>>,
    resend_for: std::time::Duration,
}

/// How long [`Messenger::send`] sends an envelope again while the gateway answers
/// UNAVAILABLE, by default.
pub const RESEND_FOR: std::time::Duration = std::time::Duration::from_secs(15);

impl Messenger {
    /// Connects to a node.
    pub async fn connect(endpoint: &str, state_dir: &std::path::Path) -> Result<Self> {
        Self::connect_with(endpoint, state_dir, &crate::ConnectOptions::default()).await
    }

    /// [`Messenger::connect`] with TLS options.
    pub async fn connect_with(
        endpoint: &str,
        state_dir: &std::path::Path,
        opts: &crate::ConnectOptions,
    ) -> Result<Self> {
        let directory = Client::connect_with(endpoint, state_dir, opts).await?;
        let mut grpc =
            MessagingClient::new(directory.channel()).max_decoding_message_size(64 << 20);
        let info = grpc
            .get_gateway_info(GetGatewayInfoRequest {})
            .await?
            .into_inner();
        let gateway_key = blockpost_core::ed25519_key(&info.receipt_key).map_err(Error::Receipt)?;
        Ok(Self {
            directory,
            grpc,
            gateway_key,
            history: HashMap::new(),
            keys: HashMap::new(),
            resend_for: RESEND_FOR,
        })
    }

    /// How long a send is tried again, with the same envelope, while the gateway answers
    /// UNAVAILABLE (a bus that is away, a JetStream election on a cluster, a stalled
    /// builder); zero: not at all. The envelope keeps its nonce, so the gateway takes it
    /// once however often it comes.
    pub fn resend_for(mut self, d: std::time::Duration) -> Self {
        self.resend_for = d;
        self
    }

    /// The raw gRPC client.
    pub fn grpc(&self) -> MessagingClient<Channel> {
        self.grpc.clone()
    }

    /// Builds, signs and submits an envelope; checks the receipt.
    pub async fn send(
        &mut self,
        id: &Identity,
        out: Outgoing<'_>,
    ) -> Result<(Envelope, ReceiptBody)> {
        let (env, _, body) = self.send_receipted(id, out).await?;
        Ok((env, body))
    }

    /// The node's delivery key (its `LedgerInfo`, over this connection).
    pub async fn delivery_key(&mut self) -> Result<[u8; 32]> {
        let info = blockpost_proto::v1::ledger_client::LedgerClient::new(self.directory.channel())
            .get_ledger_info(blockpost_proto::v1::GetLedgerInfoRequest {})
            .await?
            .into_inner();
        info.delivery_key.as_slice().try_into().map_err(|_| {
            Error::Refused(
                "this node delivers no ledger transactions (it has no delivery key)".into(),
            )
        })
    }

    async fn seal_delivery(
        &mut self,
        d: &Delivery<'_>,
        out: &Outgoing<'_>,
        seal: &[SealTo<'_>],
    ) -> Result<blockpost_proto::v1::LedgerDelivery> {
        if out.kind != MessageKind::SettlementInstruction {
            return Err(Error::Refused(
                "only a settlement instruction carries a ledger transaction".into(),
            ));
        }
        let node = self.delivery_key().await?;
        Ok(blockpost_core::delivery::seal_delivery(
            d.ledger,
            &d.raw,
            seal,
            node,
            out.from,
            out.transaction_id,
        )?)
    }

    /// [`Messenger::send`], also returning the signed receipt (to keep, or to hand to an
    /// auditor).
    pub async fn send_receipted(
        &mut self,
        id: &Identity,
        out: Outgoing<'_>,
    ) -> Result<(Envelope, Receipt, ReceiptBody)> {
        let me = self.directory.current(out.from).await?;
        if me.binding.signing_key != id.signing_public() {
            return Err(Error::Refused(format!(
                "the key file's key is not {}'s current key in the directory",
                out.from
            )));
        }
        // The recipients' current entries, looked up once for whatever needs them.
        let settles = blockpost_core::settle_expect(out.kind);
        let mut others = Vec::new();
        if settles.is_some() || out.encrypt || out.delivery.is_some() {
            for r in out.to {
                others.push(self.directory.current(r).await?);
            }
        }
        if let Some((expect, kind)) = settles {
            // A sealed body is checked by no gateway: check it here, as the gateway checks
            // a plaintext one.
            let s = settle::parse(expect, &out.body).map_err(|error| {
                blockpost_core::Error::from(blockpost_core::EnvelopeError::Settlement {
                    kind,
                    error: Box::new(error),
                })
            })?;
            settle::check_bindings(&s, &me.binding, others.iter().map(|e| &e.binding)).map_err(
                |error| Error::Parties {
                    kind,
                    error: Box::new(error),
                },
            )?;
        }
        let seal = if out.encrypt || out.delivery.is_some() {
            seal_to(out.to, &others)?
        } else {
            Vec::new()
        };
        let delivery = match &out.delivery {
            Some(d) => Some(self.seal_delivery(d, &out, &seal).await?),
            None => None,
        };
        let body = if out.encrypt {
            Body::Encrypted(seal_body(
                &seal,
                &out.body,
                &body_aad(out.from, out.transaction_id),
            )?)
        } else {
            Body::Plaintext(out.body)
        };
        let content = EnvelopeContent {
            delivery,
            transaction_deadline_ms: out.transaction_deadline_ms,
            sender: out.from.into(),
            sender_key_index: me.leaf_index,
            recipients: out.to.to_vec(),
            transaction_id: out.transaction_id.into(),
            kind: out.kind as i32,
            content_type: out.content_type.into(),
            timestamp_ms: now_ms(),
            nonce: rand::random(),
            body: Some(body),
        };
        let env = sign_envelope(&id.signing, content.encode_to_vec());
        let until = std::time::Instant::now() + self.resend_for;
        let mut pause = std::time::Duration::from_millis(100);
        let receipt = loop {
            match self.grpc.submit(env.clone()).await {
                Ok(r) => break r.into_inner(),
                Err(s)
                    if s.code() == tonic::Code::Unavailable
                        && std::time::Instant::now() + pause < until =>
                {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_secs(1));
                }
                Err(s) => return Err(s.into()),
            }
        };
        let r = verify_receipt(&self.gateway_key, &receipt).map_err(Error::Receipt)?;
        if r.message_id != message_id(&env) {
            return Err(Error::Receipt(blockpost_core::Error::SignatureInvalid(
                "the receipt is for another message",
            )));
        }
        Ok((env, receipt, r))
    }

    /// The verified history of `address`, looked up once and cached; `refresh` looks it up
    /// again (a rotation since).
    async fn history(&mut self, address: &str, refresh: bool) -> Result<&[VerifiedEntry]> {
        if refresh || !self.history.contains_key(address) {
            let h = self.directory.lookup(address).await?;
            self.keys.remove(address);
            self.history.insert(address.to_owned(), h);
        }
        Ok(self.history.get(address).map_or(&[], Vec::as_slice))
    }

    /// The real name of `address`, from its verified (cached) history; empty when it cannot
    /// be looked up.
    pub async fn real_name(&mut self, address: &str) -> String {
        match self.history(address, false).await {
            Ok(h) => h
                .last()
                .map(|e| e.binding.real_name.clone())
                .unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    async fn sender_key(&mut self, sender: &str, index: u64) -> Result<VerifyingKey> {
        if let Some(k) = self.keys.get(sender).and_then(|ks| ks.get(&index)) {
            return Ok(*k);
        }
        let key = self.find_sender_key(sender, index).await?;
        self.keys
            .entry(sender.to_owned())
            .or_default()
            .insert(index, key);
        Ok(key)
    }

    async fn find_sender_key(&mut self, sender: &str, index: u64) -> Result<VerifyingKey> {
        for refresh in [false, true] {
            let found = self
                .history(sender, refresh)
                .await?
                .iter()
                .find(|e| e.leaf_index == index && !e.binding.revoked())
                .map(|e| e.binding.signing_key);
            if let Some(k) = found {
                return Ok(blockpost_core::ed25519_key(&k)?);
            }
        }
        Err(Error::BadEnvelope {
            sender: sender.to_owned(),
            source: blockpost_core::Error::WrongPredecessor {
                address: sender.to_owned(),
                why: format!("the envelope names key {index}, which is not one of its keys"),
            },
        })
    }

    /// The parties of a plaintext trade or instruction on the record against the bindings
    /// of its sender and recipients, as the gateway checked them on admission. A binding's
    /// real name and LEI never change (rotations and revocations carry them over), so its
    /// newest entry stands for the one in force then.
    async fn recorded_parties(&mut self, p: &ParsedEnvelope) -> Result<()> {
        let (Some(s), Some((_, kind))) = (p.settlement(), blockpost_core::settle_expect(p.kind()))
        else {
            return Ok(());
        };
        let mut bindings = Vec::with_capacity(p.recipients().len() + 1);
        for a in std::iter::once(p.sender()).chain(p.recipients()) {
            let newest = self
                .history(a.as_str(), false)
                .await?
                .last()
                .map(|e| e.binding.clone());
            match newest {
                Some(b) => bindings.push(b),
                None => return Err(Error::Refused(format!("{a} has no directory entry"))),
            }
        }
        settle::check_bindings(s, &bindings[0], &bindings[1..]).map_err(|error| Error::Parties {
            kind,
            error: Box::new(error),
        })
    }

    /// Checks envelopes with the core rules and their senders' signatures against the
    /// directory (sender histories verified and cached), the signatures in batches split
    /// over the cores: what [`Messenger::open`] checks, for many envelopes at once and
    /// without opening bodies or looking up names. Per envelope: its message id, or why it
    /// is not valid ([`Error::BadEnvelope`], or the node's NOT_FOUND for an unknown
    /// sender). Any other error (the node cannot be reached) fails the whole call.
    pub async fn check_batch(
        &mut self,
        envs: Vec<Envelope>,
    ) -> Result<Vec<std::result::Result<[u8; 32], Error>>> {
        let prepared = self.prepare_batch(envs).await?;
        // Split over the cores (core's one parallel batch check), off the async workers.
        tokio::task::spawn_blocking(move || prepared.verify())
            .await
            .map_err(|e| Error::UnexpectedAnswer(format!("checking signatures: {e}")))
    }

    /// The first half of [`Messenger::check_batch`]: each envelope checked with the core
    /// rules and its sender's key found in the verified directory (the only part that
    /// needs the messenger). The signatures are checked by [`PreparedBatch::verify`],
    /// which needs nothing else, so a reader can find the keys of its next batch while
    /// the signatures of this one are being checked.
    pub async fn prepare_batch(&mut self, envs: Vec<Envelope>) -> Result<PreparedBatch> {
        let limits = EnvelopeLimits {
            max_body_len: usize::MAX / 4,
            max_recipients: usize::MAX / 4,
        };
        let mut verdicts: Vec<std::result::Result<[u8; 32], Error>> =
            Vec::with_capacity(envs.len());
        let mut batch = Vec::new();
        let mut slots = Vec::new();
        for env in envs {
            let p = match ParsedEnvelope::parse(env, &limits) {
                Ok(p) => p,
                Err(source) => {
                    verdicts.push(Err(Error::BadEnvelope {
                        sender: "an unknown sender".into(),
                        source,
                    }));
                    continue;
                }
            };
            let sender = p.sender().to_string();
            if p.settlement().is_some() {
                match self.recorded_parties(&p).await {
                    Ok(()) => {}
                    Err(e @ Error::Parties { .. }) => {
                        verdicts.push(Err(e));
                        continue;
                    }
                    Err(e) if e.code() == Some(tonic::Code::NotFound) => {
                        verdicts.push(Err(e));
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            match self.sender_key(&sender, p.content().sender_key_index).await {
                Ok(key) => {
                    slots.push(verdicts.len());
                    verdicts.push(Ok([0; 32]));
                    batch.push((p, key));
                }
                Err(e @ Error::BadEnvelope { .. }) => verdicts.push(Err(e)),
                Err(e) if e.code() == Some(tonic::Code::NotFound) => verdicts.push(Err(e)),
                Err(e) => return Err(e),
            }
        }
        Ok(PreparedBatch {
            verdicts,
            batch,
            slots,
        })
    }

    /// Checks an envelope with the core rules and its signature against the directory,
    /// and opens its body.
    pub async fn open(&mut self, env: &Envelope, me: Option<&dyn BodyKeys>) -> Result<Received> {
        // Limits are the gateway's to enforce; a reader accepts what is on the record.
        let limits = EnvelopeLimits {
            max_body_len: usize::MAX / 4,
            max_recipients: usize::MAX / 4,
        };
        let p =
            ParsedEnvelope::parse(env.clone(), &limits).map_err(|source| Error::BadEnvelope {
                sender: "an unknown sender".into(),
                source,
            })?;
        let sender = p.sender().to_string();
        let key = self
            .sender_key(&sender, p.content().sender_key_index)
            .await?;
        let v = p.verify(&key).map_err(|source| Error::BadEnvelope {
            sender: sender.clone(),
            source,
        })?;
        let c = v.content().clone();
        let (mut body, mut encrypted, mut opened_with, mut unopened) = (None, false, None, None);
        match &c.body {
            Some(Body::Plaintext(b)) => body = Some(b.clone()),
            Some(Body::Encrypted(e)) => {
                encrypted = true;
                match me.map(|me| open_sealed(e, &c, me)) {
                    Some(Ok((b, index))) => {
                        body = Some(b);
                        opened_with = Some(index);
                    }
                    Some(Err(why)) => unopened = Some(why),
                    None => {}
                }
            }
            None => {}
        }
        let sender_name = self.real_name(&sender).await;
        let mut recipient_names = Vec::with_capacity(c.recipients.len());
        for r in &c.recipients {
            recipient_names.push(self.real_name(r).await);
        }
        Ok(Received {
            sequence: 0,
            firehose_sequence: 0,
            firehose_partition: 0,
            message_id: v.id(),
            content: c,
            sender_name,
            recipient_names,
            body,
            encrypted,
            opened_with,
            unopened,
        })
    }

    /// Reads the inbox of `me`, calling `each` for every verified message, acknowledging
    /// it after `each` returns. Without `follow` it returns when the inbox is empty.
    pub async fn inbox(
        &mut self,
        id: &Identity,
        me: &str,
        follow: bool,
        each: impl FnMut(&Received) -> std::io::Result<()>,
    ) -> Result<usize> {
        self.inbox_with(id, me, &(me, id), follow, each).await
    }

    /// [`Messenger::inbox`] signing in with `id` and opening bodies with `keys` (a
    /// keyring opens those sealed to earlier generations too).
    pub async fn inbox_with(
        &mut self,
        id: &Identity,
        me: &str,
        keys: &dyn BodyKeys,
        follow: bool,
        mut each: impl FnMut(&Received) -> std::io::Result<()>,
    ) -> Result<usize> {
        let (tx, rx) = tokio::sync::mpsc::channel::<InboxClientMessage>(1024);
        let mut responses = self
            .grpc
            .inbox(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let first = responses.message().await?;
        let Some(ServerMsg::Challenge(challenge)) = first.and_then(|m| m.msg) else {
            return Err(Error::UnexpectedAnswer(
                "the gateway did not send an inbox challenge".into(),
            ));
        };
        let signature = id
            .signing
            .sign(&inbox_message(&challenge, me))
            .to_bytes()
            .to_vec();
        let gone = |_| Error::UnexpectedAnswer("the inbox stream closed".into());
        tx.send(InboxClientMessage {
            msg: Some(ClientMsg::Hello(InboxHello {
                address: me.into(),
                signature,
                follow,
            })),
        })
        .await
        .map_err(gone)?;
        let mut n = 0;
        while let Some(m) = responses.message().await? {
            let Some(ServerMsg::Delivery(d)) = m.msg else {
                continue;
            };
            let env = d
                .envelope
                .ok_or_else(|| Error::UnexpectedAnswer("a delivery without an envelope".into()))?;
            let mut r = self.open(&env, Some(keys)).await?;
            r.sequence = d.sequence;
            r.firehose_sequence = d.firehose_sequence;
            r.firehose_partition = d.firehose_partition;
            each(&r).map_err(Error::Output)?;
            tx.send(InboxClientMessage {
                msg: Some(ClientMsg::Ack(d.sequence)),
            })
            .await
            .map_err(gone)?;
            n += 1;
        }
        Ok(n)
    }

    /// Reads partition `partition` of the firehose from `from`, checking every envelope
    /// and sender signature.
    pub async fn firehose(
        &mut self,
        partition: u32,
        from: u64,
        follow: bool,
        mut each: impl FnMut(&Received) -> std::io::Result<()>,
    ) -> Result<usize> {
        let mut s = self
            .grpc
            .firehose(FirehoseRequest {
                from_sequence: from,
                follow,
                partition,
            })
            .await?
            .into_inner();
        let mut n = 0;
        while let Some(m) = s.message().await? {
            if m.partition != partition {
                return Err(Error::UnexpectedAnswer(format!(
                    "asked for firehose partition {partition}, got a message of partition {}",
                    m.partition
                )));
            }
            let env = m.envelope.ok_or_else(|| {
                Error::UnexpectedAnswer("a firehose message without an envelope".into())
            })?;
            let mut r = self.open(&env, None).await?;
            r.sequence = m.sequence;
            r.firehose_sequence = m.sequence;
            r.firehose_partition = m.partition;
            each(&r).map_err(Error::Output)?;
            n += 1;
        }
        Ok(n)
    }
}

/// Envelopes that follow the core rules, each with its sender's key from the verified
/// directory, waiting for their signatures to be checked ([`Messenger::prepare_batch`]).
#[derive(Debug)]
pub struct PreparedBatch {
    verdicts: Vec<std::result::Result<[u8; 32], Error>>,
    batch: Vec<(ParsedEnvelope, VerifyingKey)>,
    slots: Vec<usize>,
}

impl PreparedBatch {
    /// Checks the signatures (core's batch check, split over the cores; it blocks, so
    /// call it where blocking is allowed). Per envelope, in the order given: its message
    /// id, or why it is not valid.
    pub fn verify(self) -> Vec<std::result::Result<[u8; 32], Error>> {
        let Self {
            mut verdicts,
            batch,
            slots,
        } = self;
        let results = blockpost_core::verify_batch_parallel(batch);
        for (slot, r) in slots.into_iter().zip(results) {
            verdicts[slot] = match r {
                Ok(v) => Ok(v.id()),
                Err(source) => Err(Error::BadEnvelope {
                    sender: "its sender".into(),
                    source,
                }),
            };
        }
        verdicts
    }
}

/// The recipients `to`, with their current entries `entries`, as HPKE recipients; a
/// revoked one is refused.
fn seal_to<'a>(to: &'a [String], entries: &[VerifiedEntry]) -> Result<Vec<SealTo<'a>>> {
    to.iter()
        .zip(entries)
        .map(|(r, e)| {
            if e.binding.revoked() {
                return Err(Error::Refused(format!("recipient {r} is revoked")));
            }
            Ok(SealTo {
                address: r,
                key_index: e.leaf_index,
                key: e.binding.encryption_key,
            })
        })
        .collect()
}
