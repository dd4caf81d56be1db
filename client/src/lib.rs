//! The verifying Blockpost client. It depends on `blockpost-core`, `blockpost-proto` and
//! tonic, never on server code, so an auditor, a wallet or a bank's back office can embed
//! it; `blockpost` (the CLI) and the end-to-end tests use it.
//!
//! Everything it receives is verified before it is returned: checkpoint signatures against
//! the log key pinned on first contact, consistency with the newest checkpoint it verified
//! before (kept in a state directory), every inclusion proof, every entry's authorisation
//! and every history chain (with the core rules the directory ran), every receipt and every
//! sender signature. Failures are typed ([`Error`]), so callers match variants.
//!
//! # Layout
//! - `directory`: [`Client`], the directory: register, rotate, revoke, look up,
//!   checkpoints.
//! - `messaging`: [`Messenger`], send (optionally HPKE-encrypted) and check receipts, read
//!   the inbox and the firehose.
//! - `transport`: [`ConnectOptions`]: plaintext on loopback, TLS verified against a CA
//!   or a key pinned on first contact.
//! - `ledger`: [`Ledger`], blocks and messages from the builder, each verified (header
//!   signature, chain link, Merkle root or inclusion proof, ledger proof), keys pinned.
//! - `keyfile`: [`read_key_file`], [`write_key_file`]: encrypted PKCS#8 key files, 0600.
//! - `error`: [`Error`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), blockpost_client::Error> {
//! use blockpost_client::{Client, config_dir};
//! let mut c = Client::connect("127.0.0.1:7700", &config_dir()).await?;
//! let cp = c.checkpoint().await?; // signature and consistency verified
//! println!("{} entries", cp.size);
//! # Ok(()) }
//! ```

pub mod backup;
pub mod bundle;
mod directory;
mod error;
mod keyfile;
pub mod keyring;
mod ledger;
mod messaging;
mod transport;

pub use directory::{Client, EvidenceSigner, VerifiedEntry, config_dir};
pub use error::{Error, PinnedKeyChanged, Result};
pub use keyfile::{read_key_file, read_keyring, write_key_file, write_keyring};
pub use keyring::Keyring;
pub use ledger::{Ledger, LedgerBlock, LedgerMessage, LedgerProofs, LedgerTransaction};
pub use messaging::{
    BodyKeys, Delivery, Messenger, Outgoing, PreparedBatch, Received, open_sealed,
};
pub use transport::{ConnectOptions, WITNESS_WAIT, tls_pin_of};
