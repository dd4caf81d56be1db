//! The `blockpost` command: every Blockpost service and the client.
//!
//! # Layout
//! - `client`: [`Client`], a directory client that verifies every checkpoint, consistency
//!   proof and inclusion proof it receives, and pins the log key it first saw.
//! - `messages`: [`Messenger`]: send envelopes (optionally HPKE-encrypted) and check
//!   receipts, read the inbox and the firehose, verifying every signature.
//! - `nats`: [`LocalNats`], a managed `nats-server` child process.
//! - `node`: `blockpost up`: the node (directory over gRPC, NATS publishing).
//! - `bench`, `bench_messages`: `blockpost bench directory` and `blockpost bench messages`,
//!   load generators with a summary.
//! - `output`: human and `--json` rendering of verified entries.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use blockpost_cli::Client;
//! let mut c = Client::connect("127.0.0.1:7700", &blockpost_cli::config_dir()).await?;
//! let cp = c.checkpoint().await?; // signature and consistency verified
//! println!("{} entries", cp.size);
//! # Ok(()) }
//! ```

mod bench;
mod bench_messages;
mod client;
mod messages;
mod nats;
mod node;
mod output;

pub use bench::{BenchArgs, bench_directory};
pub use bench_messages::{BenchMessagesArgs, bench_messages};
pub use client::{Client, EvidenceSigner, VerifiedEntry, config_dir, status};
pub use messages::{Messenger, Outgoing, Received, received_json, received_line};
pub use nats::{LocalNats, free_port, reap_stale};
pub use node::{NodeArgs, run_node, serve_node};
pub use output::{entry_json, print_entry};

/// `println!` that exits quietly when stdout is a closed pipe (`blockpost ... | head`).
#[macro_export]
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($t)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}
