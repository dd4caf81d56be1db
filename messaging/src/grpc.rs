//! The `blockpost.v1.Messaging` gRPC service: a thin adapter over [`Gateway`], plus the
//! inbox and firehose streams.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::{AckKind, Message};
use blockpost_core::{Address, inbox_message, wire};
use blockpost_proto::v1::inbox_client_message::Msg as ClientMsg;
use blockpost_proto::v1::inbox_server_message::Msg as ServerMsg;
use blockpost_proto::v1::messaging_server::{self, MessagingServer};
use blockpost_proto::v1::submit_result::Result as SubmitOutcome;
use blockpost_proto::v1::{
    Envelope, FirehoseMessage, FirehoseRequest, GatewayInfo, GetGatewayInfoRequest,
    InboxClientMessage, InboxDelivery, InboxServerMessage, Receipt, SubmitError, SubmitResult,
};
use futures::{Stream, StreamExt as _};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::bus;
use crate::gateway::Gateway;
use crate::{BusError, Error, InboxDenial, Result};

mod follow;
mod inbox;

use self::follow::*;
use self::inbox::*;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Envelopes in flight per submission stream.
const STREAM_WINDOW: usize = 256;

impl Gateway {
    /// The tonic service for this gateway.
    pub fn into_service(self) -> MessagingServer<Self> {
        // The largest envelope that is valid and fits in one NATS message, with its
        // framing; anything larger is refused by tonic from its length prefix, before a
        // byte of it is buffered.
        let limit = self
            .inner
            .config
            .limits()
            .max_content_len()
            .saturating_add(4096)
            .min(self.inner.max_envelope);
        MessagingServer::new(self).max_decoding_message_size(limit)
    }
}

#[tonic::async_trait]
impl messaging_server::Messaging for Gateway {
    async fn get_gateway_info(
        &self,
        _: Request<GetGatewayInfoRequest>,
    ) -> Result<Response<GatewayInfo>, Status> {
        Ok(Response::new(self.info()))
    }

    async fn submit(&self, r: Request<Envelope>) -> Result<Response<Receipt>, Status> {
        Ok(Response::new(Gateway::submit(self, r.into_inner()).await?))
    }

    type SubmitStreamStream = BoxStream<SubmitResult>;

    async fn submit_stream(
        &self,
        r: Request<Streaming<Envelope>>,
    ) -> Result<Response<Self::SubmitStreamStream>, Status> {
        let gw = self.clone();
        // A frame that does not decode gets one error result, and the stream ends there:
        // results stay one to one with the frames before it, and a broken stream is never
        // read again (it would only repeat the decoder's error).
        let out = r
            .into_inner()
            .scan(false, |broken, frame| {
                if *broken {
                    return futures::future::ready(None);
                }
                *broken = frame.is_err();
                futures::future::ready(Some(frame))
            })
            .map(move |env| {
                let gw = gw.clone();
                async move {
                    let outcome = match env {
                        Ok(env) => match gw.submit(env).await {
                            Ok(r) => SubmitOutcome::Receipt(r),
                            Err(e) => SubmitOutcome::Error(SubmitError {
                                code: e.code() as i32,
                                message: e.to_string(),
                            }),
                        },
                        Err(s) => SubmitOutcome::Error(SubmitError {
                            code: tonic::Code::InvalidArgument as i32,
                            message: format!(
                                "malformed frame, the stream ends here: {}",
                                s.message()
                            ),
                        }),
                    };
                    Ok(SubmitResult {
                        result: Some(outcome),
                    })
                }
            })
            .buffered(STREAM_WINDOW);
        Ok(Response::new(Box::pin(out)))
    }

    type InboxStream = BoxStream<InboxServerMessage>;

    async fn inbox(
        &self,
        r: Request<Streaming<InboxClientMessage>>,
    ) -> Result<Response<Self::InboxStream>, Status> {
        let (tx, rx) = mpsc::channel(256);
        let gw = self.clone();
        let incoming = r.into_inner();
        tokio::spawn(async move {
            if let Err(e) = serve_inbox(gw, incoming, tx.clone()).await {
                let _ = tx.send(Err(e.into())).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type FirehoseStream = BoxStream<FirehoseMessage>;

    async fn firehose(
        &self,
        r: Request<FirehoseRequest>,
    ) -> Result<Response<Self::FirehoseStream>, Status> {
        let peer = r.remote_addr().map(|a| a.ip());
        let r = r.into_inner();
        let gw = self.clone();
        let config = &gw.inner.config;
        let slot = FollowerSlot::take(&gw, peer)?;
        let js = gw
            .inner
            .followers_nats
            .get()
            .cloned()
            .unwrap_or_else(|| gw.inner.js.clone());
        let partitions = gw.inner.firehose.partitions();
        if r.partition >= partitions {
            return Err(Error::NoPartition {
                asked: r.partition,
                partitions,
            }
            .into());
        }
        let partition = r.partition;
        let mut stream = js
            .get_stream(gw.inner.firehose.stream(partition))
            .await
            .map_err(|e| Status::from(bus(e)))?;
        let last = stream
            .info()
            .await
            .map_err(|e| Status::from(bus(e)))?
            .state
            .last_sequence;
        let from = r.from_sequence.max(1);
        let (tx, rx) = mpsc::channel(FOLLOWER_QUEUE);
        let (fail, failed) = mpsc::channel(1);
        if !r.follow && from > last {
            return Ok(Response::new(follower_stream(rx, failed)));
        }
        // An ephemeral pull consumer that delivers only what this follower asks for, in
        // batches it has room for; removed as soon as the follower ends.
        let consumer = stream
            .create_consumer(pull::Config {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                },
                ack_policy: AckPolicy::None,
                // Outlives the longest wait of a follower that does not read.
                inactive_threshold: Duration::from_millis(config.slow_follower_ms)
                    + FOLLOWER_PULL_WAIT
                    + Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .map_err(|e| Status::from(bus(e)))?;
        let name = consumer.cached_info().name.clone();
        let buffer = Arc::new(tokio::sync::Semaphore::new(config.follower_buffer_bytes));
        let (room, slow) = (
            config.follower_buffer_bytes,
            Duration::from_millis(config.slow_follower_ms),
        );
        let max_payload = js.client().server_info().max_payload;
        tokio::spawn(async move {
            let _slot = slot;
            let outcome = tokio::select! {
                // The client went away: end at once, not at the next message.
                () = tx.closed() => Ok(()),
                r = feed(&consumer, &tx, &buffer, room, slow, max_payload, r.follow, last, partition) => r,
            };
            if let Err(status) = outcome {
                if status.code() == tonic::Code::ResourceExhausted {
                    gw.inner
                        .followers
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .dropped += 1;
                }
                let _ = fail.try_send(status);
            }
            let _ = stream.delete_consumer(&name).await;
        });
        Ok(Response::new(follower_stream(rx, failed)))
    }
}
