//! Why a page cannot be shown, and the HTTP status each reason is served with.

use axum::http::StatusCode;
use serde::Serialize;

/// A source that stopped answering: since when and why.
#[derive(Clone, Debug, Serialize)]
pub struct Away {
    /// "node" or "auditor".
    pub source: &'static str,
    /// Its endpoint.
    pub endpoint: String,
    /// Since when (Unix ms) it has not answered.
    pub since_ms: i64,
    /// The last failure.
    pub why: String,
}

/// Why a page cannot be shown.
#[derive(Debug)]
pub enum Fail {
    /// The request is malformed (400).
    BadInput(String),
    /// No such object (404).
    NotFound(String),
    /// The node or the auditor does not answer (503, unless the page was seen before).
    Away(Away),
    /// The page needs an auditor and none was given (404).
    NoAuditor,
    /// An answer that did not verify: what was asked, and the failed check (502).
    Unverified {
        /// What the page asked for.
        what: String,
        /// The failed check, with its causes.
        why: String,
    },
    /// The source refused for another reason (502).
    Refused(String),
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fail::BadInput(s) | Fail::NotFound(s) | Fail::Refused(s) => f.write_str(s),
            Fail::Away(a) => write!(f, "the {} at {} is away: {}", a.source, a.endpoint, a.why),
            Fail::NoAuditor => f.write_str(
                "this explorer has no auditor: start it with --auditor ENDPOINT for alerts and search",
            ),
            Fail::Unverified { what, why } => write!(f, "{what} did not verify: {why}"),
        }
    }
}

/// An error with its causes, one after another.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

impl Fail {
    /// A client error, sorted: transport failures are "away", the node's refusals keep
    /// their meaning, and everything else is an answer that did not verify.
    pub fn from_client(e: blockpost_client::Error, endpoint: &str) -> Self {
        use blockpost_client::Error as E;
        match &e {
            E::Unreachable { .. } | E::Tls { .. } => Fail::Away(Away {
                source: "node",
                endpoint: endpoint.to_owned(),
                since_ms: 0,
                why: chain(&e),
            }),
            E::Status(s) if is_transport(s) => Fail::Away(Away {
                source: "node",
                endpoint: endpoint.to_owned(),
                since_ms: 0,
                why: format!("cannot reach the node: {}", s.message()),
            }),
            E::Status(s) => Fail::from_status(s, "the node"),
            E::BadEndpoint { .. } | E::Refused(_) => Fail::BadInput(chain(&e)),
            _ => Fail::Unverified {
                what: format!("the answer of the node at {endpoint}"),
                why: chain(&e),
            },
        }
    }

    /// A source's refusal.
    pub fn from_status(s: &tonic::Status, who: &str) -> Self {
        use tonic::Code;
        match s.code() {
            Code::NotFound => Fail::NotFound(format!("{who} has no such thing: {}", s.message())),
            Code::InvalidArgument | Code::OutOfRange => {
                Fail::BadInput(format!("{who} refused: {}", s.message()))
            }
            _ => Fail::Refused(format!("{who} refused: {:?}: {}", s.code(), s.message())),
        }
    }

    /// What it is called on its page.
    pub fn title(&self) -> &'static str {
        match self {
            Fail::BadInput(_) => "Bad request",
            Fail::NotFound(_) | Fail::NoAuditor => "Not found",
            Fail::Away(_) => "Unavailable",
            Fail::Unverified { .. } => "Verification failed",
            Fail::Refused(_) => "Refused",
        }
    }
}

/// The status a failure is served with.
pub(crate) fn status_of(f: &Fail) -> StatusCode {
    match f {
        Fail::BadInput(_) => StatusCode::BAD_REQUEST,
        Fail::NotFound(_) => StatusCode::NOT_FOUND,
        Fail::Away(_) => StatusCode::SERVICE_UNAVAILABLE,
        Fail::NoAuditor => StatusCode::NOT_FOUND,
        Fail::Unverified { .. } | Fail::Refused(_) => StatusCode::BAD_GATEWAY,
    }
}

/// A status made from a transport failure, not an answer.
pub fn is_transport(s: &tonic::Status) -> bool {
    std::error::Error::source(s).is_some()
        || matches!(
            s.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        )
}
