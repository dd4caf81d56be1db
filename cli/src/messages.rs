//! The messaging side of the client: send (optionally end-to-end encrypted) envelopes and
//! check their receipts, read the inbox verifying every sender signature against the
//! directory, and follow the firehose.

use std::collections::HashMap;

use anyhow::{Context as _, anyhow, bail};
use blockpost_core::{
    Identity, SealTo, body_aad, inbox_message, message_id, now_ms, open_body, seal_body,
    sign_envelope, verify_envelope, verify_receipt,
};
use blockpost_proto::v1::envelope_content::Body;
use blockpost_proto::v1::inbox_client_message::Msg as ClientMsg;
use blockpost_proto::v1::inbox_server_message::Msg as ServerMsg;
use blockpost_proto::v1::messaging_client::MessagingClient;
use blockpost_proto::v1::{
    Envelope, EnvelopeContent, FirehoseRequest, GetGatewayInfoRequest, InboxClientMessage,
    InboxHello, MessageKind, ReceiptBody,
};
use ed25519_dalek::{Signer as _, VerifyingKey};
use prost::Message as _;
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::{Client, VerifiedEntry, status};

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
}

/// A message read from an inbox or the firehose, after every check.
#[derive(Debug)]
pub struct Received {
    /// Inbox or firehose sequence.
    pub sequence: u64,
    /// Firehose sequence.
    pub firehose_sequence: u64,
    /// SHA-256 of the envelope.
    pub message_id: [u8; 32],
    /// The signed content.
    pub content: EnvelopeContent,
    /// Plaintext body (decrypted when it was addressed to us), if readable.
    pub body: Option<Vec<u8>>,
    /// Whether the body was end-to-end encrypted.
    pub encrypted: bool,
}

/// A messaging client on top of a verifying directory client.
pub struct Messenger {
    /// The directory client (verifies everything it receives).
    pub directory: Client,
    grpc: MessagingClient<Channel>,
    gateway_key: VerifyingKey,
    history: HashMap<String, Vec<VerifiedEntry>>,
}

fn kind_name(k: i32) -> &'static str {
    match MessageKind::try_from(k) {
        Ok(MessageKind::Message) => "message",
        Ok(MessageKind::Document) => "document",
        Ok(MessageKind::Finish) => "finish",
        _ => "unknown",
    }
}

impl Messenger {
    /// Connects to a node.
    pub async fn connect(endpoint: &str, state_dir: &std::path::Path) -> anyhow::Result<Self> {
        let directory = Client::connect(endpoint, state_dir).await?;
        let mut grpc =
            MessagingClient::new(directory.channel()).max_decoding_message_size(64 << 20);
        let info = grpc
            .get_gateway_info(GetGatewayInfoRequest {})
            .await
            .map_err(status)?
            .into_inner();
        let key: [u8; 32] = info
            .receipt_key
            .as_slice()
            .try_into()
            .map_err(|_| anyhow!("gateway sent a malformed receipt key"))?;
        let gateway_key = VerifyingKey::from_bytes(&key).context("gateway receipt key")?;
        Ok(Self {
            directory,
            grpc,
            gateway_key,
            history: HashMap::new(),
        })
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
    ) -> anyhow::Result<(Envelope, ReceiptBody)> {
        let me = self.directory.current(out.from).await?;
        if me.binding.signing_key != id.signing_public() {
            bail!(
                "the key file's key is not {}'s current key in the directory",
                out.from
            );
        }
        let body = if out.encrypt {
            let mut to = Vec::with_capacity(out.to.len());
            for r in out.to {
                let e = self.directory.current(r).await?;
                if e.binding.revoked() {
                    bail!("recipient {r} is revoked");
                }
                to.push((r.as_str(), e.leaf_index, e.binding.encryption_key));
            }
            let seal: Vec<SealTo<'_>> = to
                .iter()
                .map(|(a, i, k)| SealTo {
                    address: a,
                    key_index: *i,
                    key: *k,
                })
                .collect();
            Body::Encrypted(seal_body(
                &seal,
                &out.body,
                &body_aad(out.from, out.transaction_id),
            )?)
        } else {
            Body::Plaintext(out.body)
        };
        let content = EnvelopeContent {
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
        let receipt = self
            .grpc
            .submit(env.clone())
            .await
            .map_err(status)?
            .into_inner();
        let r = verify_receipt(&self.gateway_key, &receipt).context("receipt from the gateway")?;
        if r.message_id != message_id(&env) {
            bail!("the gateway's receipt is for another message");
        }
        Ok((env, r))
    }

    async fn sender_key(&mut self, sender: &str, index: u64) -> anyhow::Result<VerifyingKey> {
        for attempt in 0..2 {
            if attempt == 1 || !self.history.contains_key(sender) {
                let h = self.directory.lookup(sender).await?;
                self.history.insert(sender.to_owned(), h);
            }
            let found = self.history[sender]
                .iter()
                .find(|e| e.leaf_index == index && !e.binding.revoked());
            if let Some(e) = found {
                return Ok(VerifyingKey::from_bytes(&e.binding.signing_key)?);
            }
        }
        bail!("{sender} has no directory entry {index}")
    }

    /// Checks an envelope's signature against the directory and opens its body.
    pub async fn open(
        &mut self,
        env: &Envelope,
        me: Option<(&str, &Identity)>,
    ) -> anyhow::Result<(EnvelopeContent, Option<Vec<u8>>, bool)> {
        let c = EnvelopeContent::decode(env.content.as_slice()).context("envelope content")?;
        let key = self.sender_key(&c.sender, c.sender_key_index).await?;
        verify_envelope(&key, env).with_context(|| format!("envelope from {}", c.sender))?;
        let (body, encrypted) = match &c.body {
            Some(Body::Plaintext(p)) => (Some(p.clone()), false),
            Some(Body::Encrypted(e)) => {
                let opened = me.and_then(|(addr, id)| {
                    open_body(
                        e,
                        addr,
                        &id.encryption,
                        &body_aad(&c.sender, &c.transaction_id),
                    )
                    .ok()
                });
                (opened, true)
            }
            None => (None, false),
        };
        Ok((c, body, encrypted))
    }

    /// Reads the inbox of `me`, calling `each` for every verified message, acknowledging
    /// it after `each` returns. Without `follow` it returns when the inbox is empty.
    pub async fn inbox(
        &mut self,
        id: &Identity,
        me: &str,
        follow: bool,
        mut each: impl FnMut(&Received) -> anyhow::Result<()>,
    ) -> anyhow::Result<usize> {
        let (tx, rx) = tokio::sync::mpsc::channel::<InboxClientMessage>(1024);
        let mut responses = self
            .grpc
            .inbox(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(status)?
            .into_inner();
        let first = responses.message().await.map_err(status)?;
        let Some(ServerMsg::Challenge(challenge)) = first.and_then(|m| m.msg) else {
            bail!("the gateway did not send an inbox challenge");
        };
        let signature = id
            .signing
            .sign(&inbox_message(&challenge, me))
            .to_bytes()
            .to_vec();
        tx.send(InboxClientMessage {
            msg: Some(ClientMsg::Hello(InboxHello {
                address: me.into(),
                signature,
                follow,
            })),
        })
        .await?;
        let mut n = 0;
        while let Some(m) = responses.message().await.map_err(status)? {
            let Some(ServerMsg::Delivery(d)) = m.msg else {
                continue;
            };
            let env = d
                .envelope
                .ok_or_else(|| anyhow!("delivery without an envelope"))?;
            let (content, body, encrypted) = self.open(&env, Some((me, id))).await?;
            let r = Received {
                sequence: d.sequence,
                firehose_sequence: d.firehose_sequence,
                message_id: message_id(&env),
                content,
                body,
                encrypted,
            };
            each(&r)?;
            tx.send(InboxClientMessage {
                msg: Some(ClientMsg::Ack(d.sequence)),
            })
            .await?;
            n += 1;
        }
        Ok(n)
    }

    /// Reads the firehose from `from`, verifying every sender signature.
    pub async fn firehose(
        &mut self,
        from: u64,
        follow: bool,
        mut each: impl FnMut(&Received) -> anyhow::Result<()>,
    ) -> anyhow::Result<usize> {
        let mut s = self
            .grpc
            .firehose(FirehoseRequest {
                from_sequence: from,
                follow,
            })
            .await
            .map_err(status)?
            .into_inner();
        let mut n = 0;
        while let Some(m) = s.message().await.map_err(status)? {
            let env = m
                .envelope
                .ok_or_else(|| anyhow!("firehose message without an envelope"))?;
            let (content, body, encrypted) = self.open(&env, None).await?;
            each(&Received {
                sequence: m.sequence,
                firehose_sequence: m.sequence,
                message_id: message_id(&env),
                content,
                body,
                encrypted,
            })?;
            n += 1;
        }
        Ok(n)
    }
}

/// JSON form of a received message.
pub fn received_json(r: &Received) -> Value {
    let c = &r.content;
    json!({
        "sequence": r.sequence,
        "firehose_sequence": r.firehose_sequence,
        "message_id": hex::encode(r.message_id),
        "sender": c.sender,
        "sender_key_index": c.sender_key_index,
        "recipients": c.recipients,
        "transaction_id": c.transaction_id,
        "kind": kind_name(c.kind),
        "content_type": c.content_type,
        "timestamp_ms": c.timestamp_ms,
        "nonce": c.nonce,
        "encrypted": r.encrypted,
        "signature_verified": true,
        "body": r.body.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()),
    })
}

/// One line for people.
pub fn received_line(r: &Received) -> String {
    let c = &r.content;
    let body = match (&r.body, r.encrypted) {
        (Some(b), _) if c.content_type.starts_with("text/") || c.content_type.is_empty() => {
            String::from_utf8_lossy(b).into_owned()
        }
        (Some(b), _) => format!("<{} bytes of {}>", b.len(), c.content_type),
        (None, true) => "<encrypted for other recipients>".into(),
        (None, false) => "<no body>".into(),
    };
    format!(
        "#{} [{}] {} -> {} ({}{}): {}",
        r.firehose_sequence,
        c.transaction_id,
        c.sender,
        c.recipients.join(","),
        kind_name(c.kind),
        if r.encrypted {
            ", end-to-end encrypted"
        } else {
            ""
        },
        body
    )
}
