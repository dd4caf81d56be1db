//! Inbox sessions: a challenge signed with the address's current key, then deliveries,
//! each verified against the directory before it is sent, and acknowledgements.

use super::*;

/// Why an inbox message is not handed out.
pub(super) enum Undeliverable {
    /// It can never be: dropped for good (Term) and counted.
    Never(&'static str),
    /// Not now (the bus is away, the replica has not learned the sender yet): handed back
    /// (Nak) in order, to come again.
    NotYet(&'static str),
}

/// Checks one inbox message against the firehose and the directory replica.
pub(super) async fn verified_delivery(
    gw: &Gateway,
    firehose: &[async_nats::jetstream::stream::Stream],
    m: &Message,
    address: &Address,
    (partition, firehose_sequence): (u32, u64),
) -> Result<Envelope, Undeliverable> {
    use Undeliverable::{Never, NotYet};
    let firehose = firehose
        .get(partition as usize)
        .ok_or(Never("names a firehose partition that does not exist"))?;
    let on_firehose = match firehose.get_raw_message(firehose_sequence).await {
        Ok(m) => m,
        Err(e) => {
            use async_nats::jetstream::stream::RawMessageErrorKind as K;
            return Err(match e.kind() {
                K::NoMessageFound | K::InvalidSubject => Never("not on the firehose"),
                _ => NotYet("the firehose cannot be read right now"),
            });
        }
    };
    // An inbox entry points at its firehose message (sequence and id); one written by an
    // older gateway carries a copy, which must be that message.
    let bytes: &[u8] = if m.payload.is_empty() {
        let named = header(m, wire::MESSAGE_ID_HEADER).unwrap_or_default();
        if named != hex::encode(blockpost_core::message_id_of_encoded(&on_firehose.payload)) {
            return Err(Never(
                "names another message than the firehose holds at its sequence",
            ));
        }
        on_firehose.payload.as_ref()
    } else if on_firehose.payload.as_ref() != m.payload.as_ref() {
        return Err(Never("differs from the firehose message at its sequence"));
    } else {
        m.payload.as_ref()
    };
    let envelope = Envelope::decode(bytes).map_err(|_| Never("not an envelope"))?;
    let parsed = blockpost_core::ParsedEnvelope::parse(envelope.clone(), &gw.inner.limits)
        .map_err(|_| Never("breaks the envelope rules"))?;
    if !parsed.recipients().contains(address) {
        return Err(Never("not addressed to this inbox"));
    }
    if gw.inner.firehose.partition_of(parsed.sender()) != partition {
        return Err(Never("on another firehose partition than its sender's"));
    }
    // The replica may be a moment behind the directory (after a restart, say).
    let sender = gw
        .replica()
        .participant(
            parsed.sender().as_str(),
            Some(parsed.content().sender_key_index),
            Duration::from_millis(500),
        )
        .await
        .ok()
        .flatten()
        .ok_or(NotYet("the replica does not know the sender yet"))?;
    let key = sender
        .key_at(parsed.content().sender_key_index)
        .ok_or(NotYet(
            "the replica does not know that key of the sender yet",
        ))?;
    parsed
        .verify(&key)
        .map_err(|_| Never("not signed by its sender"))?;
    Ok(envelope)
}

pub(super) fn header(m: &async_nats::Message, name: &str) -> Option<String> {
    m.headers.as_ref()?.get(name).map(|v| v.as_str().to_owned())
}

pub(super) async fn serve_inbox(
    gw: Gateway,
    mut incoming: Streaming<InboxClientMessage>,
    tx: mpsc::Sender<Result<InboxServerMessage, Status>>,
) -> Result<()> {
    let challenge: [u8; 32] = rand::random();
    let closed = |_| Error::ClientGone;
    tx.send(Ok(InboxServerMessage {
        msg: Some(ServerMsg::Challenge(challenge.to_vec())),
    }))
    .await
    .map_err(closed)?;
    let hello = match tokio::time::timeout(Duration::from_secs(30), incoming.message()).await {
        Ok(Ok(Some(InboxClientMessage {
            msg: Some(ClientMsg::Hello(h)),
        }))) => h,
        Ok(Ok(_)) => {
            return Err(Error::InboxDenied(InboxDenial::NoHello));
        }
        Ok(Err(s)) => return Err(Error::Stream(Box::new(s))),
        Err(_) => return Err(Error::InboxDenied(InboxDenial::HelloTimeout(30))),
    };
    let address = Address::parse(&hello.address)?;
    let p = gw
        .replica()
        .participant(address.as_str(), None, Duration::from_millis(500))
        .await
        .map_err(|_| BusError::ReplicaBusy {
            waiters: blockpost_replica::MAX_WAITERS,
            mib: blockpost_replica::MAX_WAITING_BYTES >> 20,
        })?
        .ok_or_else(|| Error::InboxDenied(InboxDenial::Unregistered(address.to_string())))?;
    if p.revoked() {
        return Err(Error::InboxDenied(InboxDenial::Revoked(
            address.to_string(),
        )));
    }
    let sig = ed25519_dalek::Signature::from_slice(&hello.signature)
        .map_err(|_| Error::InboxDenied(InboxDenial::MalformedSignature))?;
    p.signing_key
        .verify_strict(&inbox_message(&challenge, address.as_str()), &sig)
        .map_err(|_| Error::InboxDenied(InboxDenial::WrongKey(address.to_string())))?;

    // One session per inbox on this gateway: wait briefly for a previous one to finish.
    let slot = gw
        .inner
        .sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(address.to_string())
        .or_default()
        .clone();
    let _session = tokio::time::timeout(Duration::from_secs(5), slot.lock_owned())
        .await
        .map_err(|_| Error::InboxBusy(address.to_string()))?;
    let stream = gw
        .inner
        .js
        .get_stream(gw.inner.ns.inbox_stream())
        .await
        .map_err(bus)?;
    let mut firehose = Vec::new();
    for k in gw.inner.firehose.all() {
        firehose.push(
            gw.inner
                .js
                .get_stream(gw.inner.firehose.stream(k))
                .await
                .map_err(bus)?,
        );
    }
    let consumer = stream
        .get_or_create_consumer(
            &format!("inbox-{address}"),
            pull::Config {
                durable_name: Some(format!("inbox-{address}")),
                filter_subject: gw.inner.ns.inbox_subject(&address),
                ack_policy: AckPolicy::Explicit,
                ack_wait: Duration::from_secs(10),
                ..Default::default()
            },
        )
        .await
        .map_err(bus)?;

    // Delivered but not yet acknowledged by the client.
    let pending: Arc<Mutex<HashMap<u64, Message>>> = Arc::default();
    let (done_tx, mut done) = tokio::sync::watch::channel(false);
    let acker = {
        let pending = pending.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = incoming.message().await {
                if let Some(ClientMsg::Ack(seq)) = m.msg {
                    let msg = pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&seq);
                    if let Some(msg) = msg {
                        let _ = msg.double_ack().await;
                    }
                }
            }
            let _ = done_tx.send(true);
        })
    };
    loop {
        // The client is gone when it closes its side or drops our responses.
        if *done.borrow() || tx.is_closed() {
            break;
        }
        let in_flight = pending.lock().unwrap_or_else(|e| e.into_inner()).len();
        if in_flight >= 512 {
            let _ = tokio::time::timeout(Duration::from_millis(50), done.changed()).await;
            continue;
        }
        let expires = if hello.follow {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(250)
        };
        let fetch = consumer
            .fetch()
            .max_messages(128)
            .expires(expires)
            .messages();
        let mut batch = tokio::select! {
            b = fetch => b.map_err(bus)?,
            _ = tx.closed() => break,
        };
        let mut got = 0;
        let mut gone = false;
        let mut held_back = false;
        while let Some(m) = batch.next().await {
            let Ok(m) = m else { break };
            if gone || tx.is_closed() {
                // The client went away mid-batch: the rest is handed back with what it did
                // not acknowledge, in sequence order, rather than after the ack wait.
                gone = true;
                if let Ok(info) = m.info() {
                    let seq = info.stream_sequence;
                    pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(seq, m);
                }
                continue;
            }
            let Ok(info) = m.info() else { continue };
            let seq = info.stream_sequence;
            let firehose_sequence = header(&m, wire::FIREHOSE_SEQ_HEADER)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let firehose_partition: u32 = header(&m, wire::FIREHOSE_PARTITION_HEADER)
                .map_or(Some(0), |s| s.parse().ok())
                .unwrap_or(u32::MAX);
            // Nothing read from NATS is handed out unverified: the delivery must be an
            // envelope for this address, on the firehose at the sequence it names, signed by
            // its sender's key. Anything else is dropped for good and counted.
            let envelope = match verified_delivery(
                &gw,
                &firehose,
                &m,
                &address,
                (firehose_partition, firehose_sequence),
            )
            .await
            {
                Ok(e) => e,
                Err(Undeliverable::Never(why)) => {
                    gw.inner
                        .refused_deliveries
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(%address, seq, why, "inbox message refused");
                    let _ = m.ack_with(AckKind::Term).await;
                    continue;
                }
                Err(Undeliverable::NotYet(why)) => {
                    // Keep the order: this one and the rest of the batch go back.
                    tracing::info!(%address, seq, why, "inbox message held back");
                    let mut back = vec![m];
                    while let Some(Ok(rest)) = batch.next().await {
                        back.push(rest);
                    }
                    for m in back {
                        let _ = m.ack_with(AckKind::Nak(None)).await;
                    }
                    held_back = true;
                    break;
                }
            };
            pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(seq, m);
            let d = InboxDelivery {
                sequence: seq,
                envelope: Some(envelope),
                firehose_sequence,
                firehose_partition,
            };
            if tx
                .send(Ok(InboxServerMessage {
                    msg: Some(ServerMsg::Delivery(d)),
                }))
                .await
                .is_err()
            {
                gone = true;
                continue;
            }
            got += 1;
        }
        if gone {
            break;
        }
        if held_back {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        if got == 0 && !hello.follow {
            // Everything was delivered: wait for the client's acknowledgements, then end.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while !pending.lock().unwrap_or_else(|e| e.into_inner()).is_empty() && !*done.borrow() {
                tokio::select! {
                    _ = done.changed() => {}
                    _ = tx.closed() => break,
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
            break;
        }
    }
    acker.abort();
    // Whatever the client did not acknowledge comes again on its next read.
    // In sequence order, so that they come again in order.
    let mut left: Vec<(u64, Message)> = pending
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain()
        .collect();
    left.sort_by_key(|(seq, _)| *seq);
    let left = left.into_iter().map(|(_, m)| m);
    for m in left {
        let _ = m.ack_with(AckKind::Nak(None)).await;
    }
    Ok(())
}
