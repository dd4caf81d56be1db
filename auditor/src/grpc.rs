//! The `blockpost.v1.Audit` service: a thin adapter over [`Auditor`].

use blockpost_proto::v1::audit_server::{Audit, AuditServer};
use blockpost_proto::v1::check_receipt_response::Verdict;
use blockpost_proto::v1::{
    AlertsRequest, AuditAlert, AuditStatus as PbStatus, CheckReceiptRequest, CheckReceiptResponse,
    CosignRequest, CosignResponse, GetAuditStatusRequest, GetWitnessRequest, ReceiptBody,
    SearchHit, SearchRequest, SearchResponse, WitnessInfo,
};
use prost::Message as _;
use tonic::{Request, Response, Status};

use crate::AuditError;
use crate::alert::Alert;
use crate::auditor::{Auditor, ReceiptVerdict};

fn alert(index: u64, a: &Alert) -> AuditAlert {
    AuditAlert {
        index,
        kind: a.kind.as_str().to_owned(),
        subject: a.subject.clone(),
        time_ms: a.time_ms,
        detail: a.detail.clone(),
        evidence_json: a.evidence.to_string(),
    }
}

impl Auditor {
    /// The auditor as a tonic service.
    pub fn into_service(self) -> AuditServer<Self> {
        AuditServer::new(self).max_decoding_message_size(64 * 1024)
    }
}

#[tonic::async_trait]
impl Audit for Auditor {
    async fn cosign(&self, r: Request<CosignRequest>) -> Result<Response<CosignResponse>, Status> {
        let note = r.into_inner().checkpoint;
        let line = Auditor::cosign(self, &note).await?;
        Ok(Response::new(CosignResponse {
            cosignature: line,
            witness_key: self.witness_key(),
        }))
    }

    async fn get_witness(
        &self,
        _: Request<GetWitnessRequest>,
    ) -> Result<Response<WitnessInfo>, Status> {
        let (directory, ledger) = self.cosigned();
        Ok(Response::new(WitnessInfo {
            witness_key: self.witness_key(),
            directory_checkpoint: directory.unwrap_or_default(),
            ledger_checkpoint: ledger.unwrap_or_default(),
        }))
    }

    async fn get_audit_status(
        &self,
        _: Request<GetAuditStatusRequest>,
    ) -> Result<Response<PbStatus>, Status> {
        let s = self.status();
        Ok(Response::new(PbStatus {
            blocks_verified: s.blocks_verified,
            firehose_checked: s.firehose_checked,
            waiting: s.waiting as u64,
            alerts: s.alerts as u64,
            blocks_current: s.blocks_current,
            ledger: s.ledger,
            receipts_waiting: s.receipts_waiting as u64,
            directory_entries: s.directory_entries,
            directory_checkpoint: s.directory_checkpoint,
            ledger_checkpoint: s.ledger_checkpoint,
            firehose_lag: s.firehose_lag,
            blocks_lag: s.blocks_lag,
            seconds_since_progress: s.seconds_since_progress,
            firehose_read: s.firehose_read,
            checked_until_ms: s.checked_until_ms,
            stalled: s.stalled(),
        }))
    }

    type AlertsStream = tokio_stream::wrappers::ReceiverStream<Result<AuditAlert, Status>>;

    async fn alerts(
        &self,
        request: Request<AlertsRequest>,
    ) -> Result<Response<Self::AlertsStream>, Status> {
        let r = request.into_inner();
        // Subscribe before reading the file, so that no alert falls between the two.
        let mut live = self.subscribe();
        let all = self.alerts();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let auditor = self.clone();
        tokio::spawn(async move {
            let mut next = r.from;
            for (i, a) in all
                .iter()
                .enumerate()
                .skip(usize::try_from(r.from).unwrap_or(usize::MAX))
            {
                if tx.send(Ok(alert(i as u64, a))).await.is_err() {
                    return;
                }
                next = i as u64 + 1;
            }
            if !r.follow {
                return;
            }
            loop {
                match live.recv().await {
                    Ok((i, a)) if i >= next => {
                        if tx.send(Ok(alert(i, &a))).await.is_err() {
                            return;
                        }
                        next = i + 1;
                    }
                    Ok(_) => {}
                    // Fell behind: read what was missed from the file.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let all = auditor.alerts();
                        for (i, a) in all
                            .iter()
                            .enumerate()
                            .skip(usize::try_from(next).unwrap_or(usize::MAX))
                        {
                            if tx.send(Ok(alert(i as u64, a))).await.is_err() {
                                return;
                            }
                            next = i as u64 + 1;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn search(
        &self,
        request: Request<SearchRequest>,
    ) -> Result<Response<SearchResponse>, Status> {
        let r = request.into_inner();
        let limit = if r.limit == 0 { 10 } else { r.limit as usize };
        // The index is read on disk: on a blocking thread, not a gRPC worker.
        let this = self.clone();
        let hits = tokio::task::spawn_blocking(move || {
            this.search(&r.query, limit, r.offset as usize, r.by_time)
        })
        .await
        .map_err(|e| AuditError::Task(e.to_string()))?
        .map_err(AuditError::from)?
        .map_err(AuditError::BadQuery)?;
        let mut out = Vec::with_capacity(hits.len());
        for h in hits {
            let id =
                <[u8; 32]>::try_from(hex::decode(&h.message_id).unwrap_or_default().as_slice())
                    .map_err(|_| AuditError::IndexDamaged(h.message_id.clone()))?;
            let mut hit = SearchHit {
                message_id: id.to_vec(),
                height: h.height,
                leaf_index: h.leaf,
                time_ms: h.time_ms,
                score: h.score,
                sender_name: h.sender_name.clone(),
                recipient_names: h.recipient_names.clone(),
                ..Default::default()
            };
            match self.proved(id).await {
                Some(Ok(m)) => {
                    hit.envelope = m.envelope_bytes;
                    hit.inclusion_proof = m.inclusion_proof;
                    hit.header_hash = m.header.id.to_vec();
                    // The signed header (header and builder signature), so the hit
                    // verifies on its own, as the API says.
                    hit.header = blockpost_proto::v1::SignedBlockHeader {
                        header: m.header.bytes.clone(),
                        signature: m.header.signature.clone(),
                    }
                    .encode_to_vec();
                    hit.ledger_proof = m.ledger_proof;
                    hit.ledger_checkpoint = m.checkpoint.note.clone();
                }
                Some(Err(source)) => {
                    return Err(AuditError::ProofsUnavailable {
                        id: h.message_id,
                        source,
                    }
                    .into());
                }
                None => {}
            }
            out.push(hit);
        }
        Ok(Response::new(SearchResponse { hits: out }))
    }

    async fn check_receipt(
        &self,
        request: Request<CheckReceiptRequest>,
    ) -> Result<Response<CheckReceiptResponse>, Status> {
        let receipt = request.into_inner().receipt.ok_or(AuditError::NoReceipt)?;
        let verdict = Auditor::check_receipt(self, &receipt)
            .await
            .map_err(AuditError::from)?;
        // It verified, so it decodes.
        let body = ReceiptBody::decode(receipt.body.as_slice()).unwrap_or_default();
        let (v, height) = match verdict {
            ReceiptVerdict::InBlock { height } => (Verdict::InBlock, height),
            ReceiptVerdict::Pending { .. } => (Verdict::Pending, 0),
            ReceiptVerdict::Omitted { .. } => (Verdict::Omitted, 0),
        };
        Ok(Response::new(CheckReceiptResponse {
            verdict: v as i32,
            message_id: body.message_id,
            height,
            block_deadline_ms: body.block_deadline_ms,
        }))
    }
}
