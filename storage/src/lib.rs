//! What Blockpost services keep on disk, as reusable pieces: the append-only record file,
//! the Merkle tree log with its signed checkpoint on top of it, the node's data directory
//! layout, and node keys. The directory's address index sits on top of the tree log; the
//! block builder uses the record file and the tree log the same way.
//!
//! # Layout
//! - `record`: [`RecordFile`]: length, CRC, torn tail, `fdatasync` per batch, recovery.
//! - `tree`: [`TreeLog`]: a record file of leaves, its RFC 6962 tree and the newest signed
//!   checkpoint, which the tree must match at open.
//! - `blocks`: [`BlockStore`]: the ledger's blocks (a record file, one block per height)
//!   and the ledger log over their ids (a tree log); at open every block the ledger names
//!   must be intact and have its id, and a block that never reached the ledger is cut.
//! - `datadir`: [`DataDir`], every path of a node's data directory.
//! - `files`: atomic and private file writes, [`load_or_create_key`] for node keys.
//! - `error`: [`Error`].
//!
//! ```
//! use blockpost_storage::TreeLog;
//! let dir = tempfile::tempdir().unwrap();
//! let log = TreeLog::open(dir.path(), 1024, |_, _| Ok(())).unwrap();
//! // A real caller signs a C2SP checkpoint here.
//! let sign = |size, root: [u8; 32]| Ok(format!("{size} {root:?}").into_bytes());
//! let (first, head) = log.append(&[b"leaf".to_vec()], sign, |_| {}).unwrap();
//! assert_eq!((first, head.size), (0, 1));
//! assert_eq!(log.leaf(0).unwrap(), b"leaf");
//! ```

mod blocks;
mod datadir;
mod error;
mod files;
mod record;
mod tree;

pub use blocks::BlockStore;
pub use datadir::DataDir;
pub use error::{Error, Result};
pub use files::{load_or_create_key, write_atomic, write_private_atomic, write_private_file};
pub use record::RecordFile;
pub use tree::{Head, TreeLog, Witnessed};
