//! All output of the `blockpost` command, human and `--json`, in one place. Human output
//! shows times as RFC 3339 dates (UTC) and parties as `Real Name <address>`; JSON keeps
//! milliseconds and raw fields.

use blockpost_proto::v1::EntryKind;

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

// After `say!`: the modules use it.
mod audit;
mod directory;
mod evidence;
mod keyring;
mod ledger;
mod messages;
mod settlement;

pub use audit::*;
pub use directory::*;
pub use evidence::*;
pub use keyring::*;
pub use ledger::*;
pub use messages::*;
pub use settlement::Named;

/// A Unix time in milliseconds as an RFC 3339 date in UTC, with milliseconds.
pub fn date(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        });
    t.unwrap_or_else(|| format!("{ms} ms"))
}

/// `Real Name <address>`, or the address alone when the name is unknown.
pub fn party(name: &str, address: &str) -> String {
    if name.is_empty() {
        address.to_owned()
    } else {
        format!("{name} <{address}>")
    }
}

/// PEM of a DER certificate (empty for none).
pub fn cert_pem(der: &[u8]) -> String {
    if der.is_empty() {
        return String::new();
    }
    blockpost_client::bundle::pem("CERTIFICATE", der)
}

fn entry_kind(k: EntryKind) -> &'static str {
    match k {
        EntryKind::Register => "register",
        EntryKind::Rotate => "rotate",
        EntryKind::Revoke => "revoke",
        EntryKind::Unspecified => "unspecified",
    }
}

fn message_kind(k: i32) -> &'static str {
    blockpost_core::kind_name(k)
}
