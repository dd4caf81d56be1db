//! The explorer's sources: the node, through a verifying [`Client`] and [`Ledger`]
//! connected lazily and again after a transport failure, and the auditor, through a lazy
//! gRPC channel. Every call has a deadline; a source that does not answer is away from the
//! first failure until its next answer.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use blockpost_client::{Client, ConnectOptions, Ledger};
use blockpost_proto::v1::audit_client::AuditClient;
use tokio::sync::MappedMutexGuard;
use tonic::transport::{Channel, Endpoint};

use crate::fail::{Away, Fail, is_transport};

/// Tracks when a source went away.
struct Presence {
    source: &'static str,
    endpoint: String,
    away: Mutex<Option<Away>>,
}

impl Presence {
    fn new(source: &'static str, endpoint: &str) -> Self {
        Self {
            source,
            endpoint: endpoint.to_owned(),
            away: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Away>> {
        self.away
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn gone(&self, now_ms: i64, why: &str) -> Away {
        let mut g = self.lock();
        let a = g.get_or_insert_with(|| Away {
            source: self.source,
            endpoint: self.endpoint.clone(),
            since_ms: now_ms,
            why: String::new(),
        });
        a.why = why.to_owned();
        a.clone()
    }

    fn back(&self) {
        *self.lock() = None;
    }

    fn away(&self) -> Option<Away> {
        self.lock().clone()
    }
}

/// A connection to the node: its directory and ledger clients.
pub struct Conn {
    /// The verifying directory client.
    pub client: Client,
    /// The verifying ledger client.
    pub ledger: Ledger,
}

/// The node.
pub struct Node {
    endpoint: String,
    options: ConnectOptions,
    state_dir: PathBuf,
    timeout: Duration,
    conn: tokio::sync::Mutex<Option<Conn>>,
    /// The connection failed: make a new one for the next page.
    broken: std::sync::atomic::AtomicBool,
    presence: Presence,
}

/// The node's connection, held for one page: the clients, and the deadline and
/// bookkeeping every call goes through (`h.ctl.call(h.conn.ledger.block(..))`).
pub struct Held<'a> {
    /// The clients.
    pub conn: MappedMutexGuard<'a, Conn>,
    /// Calls with a deadline.
    pub ctl: Ctl<'a>,
}

/// Runs calls to the node with the deadline, and notes whether it answered.
pub struct Ctl<'a> {
    node: &'a Node,
    now_ms: i64,
}

impl Node {
    pub fn new(
        endpoint: &str,
        options: ConnectOptions,
        state_dir: PathBuf,
        timeout: Duration,
    ) -> Self {
        Self {
            endpoint: endpoint.to_owned(),
            options,
            state_dir,
            timeout,
            conn: tokio::sync::Mutex::new(None),
            broken: std::sync::atomic::AtomicBool::new(false),
            presence: Presence::new("node", endpoint),
        }
    }

    /// Since when the node is away, if it is.
    pub fn away(&self) -> Option<Away> {
        self.presence.away()
    }

    /// The connection, made (again) if there is none or the last one broke.
    pub async fn get(&self, now_ms: i64) -> Result<Held<'_>, Fail> {
        let mut g = self.conn.lock().await;
        if g.is_none() || self.broken.swap(false, std::sync::atomic::Ordering::SeqCst) {
            *g = None;
            let made = tokio::time::timeout(self.timeout, async {
                let client =
                    Client::connect_with(&self.endpoint, &self.state_dir, &self.options).await?;
                let ledger = Ledger::connect(&client, &self.state_dir).await?;
                Ok::<_, blockpost_client::Error>(Conn { client, ledger })
            })
            .await;
            match made {
                Ok(Ok(c)) => *g = Some(c),
                Ok(Err(e)) => {
                    return Err(match Fail::from_client(e, &self.endpoint) {
                        Fail::Away(a) => Fail::Away(self.presence.gone(now_ms, &a.why)),
                        f => f,
                    });
                }
                Err(_) => {
                    let why = format!("no answer within {} s", self.timeout.as_secs());
                    return Err(Fail::Away(self.presence.gone(now_ms, &why)));
                }
            }
        }
        let conn = tokio::sync::MutexGuard::try_map(g, Option::as_mut)
            .map_err(|_| Fail::Refused("the node's connection was lost".into()))?;
        Ok(Held {
            conn,
            ctl: Ctl { node: self, now_ms },
        })
    }
}

impl Ctl<'_> {
    /// Runs one call with the deadline, and notes whether the node answered.
    pub async fn call<T>(
        &self,
        fut: impl Future<Output = Result<T, blockpost_client::Error>>,
    ) -> Result<T, Fail> {
        let r = match tokio::time::timeout(self.node.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Fail::from_client(e, &self.node.endpoint)),
            Err(_) => Err(Fail::Away(Away {
                source: "node",
                endpoint: self.node.endpoint.clone(),
                since_ms: self.now_ms,
                why: format!("no answer within {} s", self.node.timeout.as_secs()),
            })),
        };
        match r {
            Err(Fail::Away(a)) => {
                self.node
                    .broken
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                Err(Fail::Away(self.node.presence.gone(self.now_ms, &a.why)))
            }
            r => {
                self.node.presence.back();
                r
            }
        }
    }
}

/// The auditor.
pub struct Auditor {
    endpoint: String,
    grpc: AuditClient<Channel>,
    timeout: Duration,
    presence: Presence,
}

impl Auditor {
    pub fn new(endpoint: &str, timeout: Duration) -> Result<Self, crate::config::Error> {
        let channel = Endpoint::from_shared(endpoint.to_owned())
            .map_err(|e| crate::config::Error::BadEndpoint {
                what: "auditor",
                endpoint: endpoint.to_owned(),
                why: e.to_string(),
            })?
            .connect_timeout(Duration::from_secs(3))
            .timeout(timeout)
            .connect_lazy();
        Ok(Self {
            endpoint: endpoint.to_owned(),
            grpc: AuditClient::new(channel).max_decoding_message_size(64 << 20),
            timeout,
            presence: Presence::new("auditor", endpoint),
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn away(&self) -> Option<Away> {
        self.presence.away()
    }

    /// A client for one call.
    pub fn grpc(&self) -> AuditClient<Channel> {
        self.grpc.clone()
    }

    /// Runs one call with the deadline, and notes whether the auditor answered. Its
    /// refusals (a query it cannot parse: 400) pass through as they are.
    pub async fn call<T>(
        &self,
        now_ms: i64,
        fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, Fail> {
        let why = match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(r)) => {
                self.presence.back();
                return Ok(r.into_inner());
            }
            Ok(Err(s)) if !is_transport(&s) => {
                self.presence.back();
                return Err(Fail::from_status(&s, "the auditor"));
            }
            Ok(Err(s)) => format!("cannot reach the auditor: {}", s.message()),
            Err(_) => format!("no answer within {} s", self.timeout.as_secs()),
        };
        Err(Fail::Away(self.presence.gone(now_ms, &why)))
    }
}
