//! The node's data directory: every path in it, named once.
//!
//! ```text
//! DATA/
//!   LOCK                 one node per data directory (flock)
//!   origin               the directory log's origin line, fixed at first start
//!   keys/log.key         directory log key: signs checkpoints (PKCS#8, 0600)
//!   keys/ca.key          directory CA key: signs certificates (PKCS#8, 0600)
//!   keys/ca.pem          directory CA certificate
//!   keys/gateway.key     gateway key: signs receipts (PKCS#8, 0600)
//!   keys/builder.key     block builder key: signs block headers and ledger checkpoints
//!   keys/tls.key         the gRPC port's TLS key, when the node issues its own certificate
//!   keys/tls.pem         that certificate, then the CA certificate (reissued at each start)
//!   log/entries          directory log leaves (record file)
//!   log/checkpoint       newest directory checkpoint handed out
//!   log/LOCK             one writer per log
//!   nats/                the managed nats-server's JetStream store, pid file and log
//!   ledger/              the block builder's store (storage::BlockStore): blocks, and
//!                        ledger/ (the log of block ids with its checkpoint)
//! ```

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::{Error, Result, write_atomic};

/// The data directory of one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The data directory at `root` (nothing is created yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Creates the directory and takes its lock, held as long as the returned file lives.
    pub fn create_and_lock(&self) -> Result<File> {
        std::fs::create_dir_all(self.keys())?;
        let lock = File::create(self.root.join("LOCK"))?;
        if lock.try_lock().is_err() {
            return Err(Error::InUse(self.root.display().to_string()));
        }
        Ok(lock)
    }

    /// The root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `keys/`.
    pub fn keys(&self) -> PathBuf {
        self.root.join("keys")
    }

    /// `keys/log.key`.
    pub fn log_key(&self) -> PathBuf {
        self.keys().join("log.key")
    }

    /// `keys/ca.key`.
    pub fn ca_key(&self) -> PathBuf {
        self.keys().join("ca.key")
    }

    /// `keys/ca.pem`.
    pub fn ca_cert(&self) -> PathBuf {
        self.keys().join("ca.pem")
    }

    /// `keys/gateway.key`.
    pub fn gateway_key(&self) -> PathBuf {
        self.keys().join("gateway.key")
    }

    /// `keys/tls.key`: the TLS key of a self-issued server certificate.
    pub fn tls_key(&self) -> PathBuf {
        self.keys().join("tls.key")
    }

    /// `keys/tls.pem`: the self-issued server certificate chain.
    pub fn tls_cert(&self) -> PathBuf {
        self.keys().join("tls.pem")
    }

    /// `keys/builder.key`: the block builder's key (headers and ledger checkpoints).
    pub fn builder_key(&self) -> PathBuf {
        self.keys().join("builder.key")
    }

    /// `keys/delivery.key`: the x25519 key ledger transactions are sealed to.
    pub fn delivery_key(&self) -> PathBuf {
        self.keys().join("delivery.key")
    }

    /// `log/`: the directory's tree log.
    pub fn log(&self) -> PathBuf {
        self.root.join("log")
    }

    /// `ledger/`: the block builder's [`crate::BlockStore`].
    pub fn ledger(&self) -> PathBuf {
        self.root.join("ledger")
    }

    /// `nats/`: the managed nats-server's store.
    pub fn nats(&self) -> PathBuf {
        self.root.join("nats")
    }

    /// The log's origin: the one recorded at first start, else `configured`, else a fresh
    /// random one, which is then recorded. A configured origin that differs from the
    /// recorded one is an error: a log's origin never changes.
    pub fn origin(&self, configured: Option<&str>) -> Result<String> {
        let path = self.root.join("origin");
        match std::fs::read_to_string(&path) {
            Ok(o) => {
                let o = o.trim().to_owned();
                match configured {
                    Some(want) if want != o => Err(Error::OriginChanged {
                        dir: self.root.display().to_string(),
                        recorded: o,
                        configured: want.to_owned(),
                    }),
                    _ => Ok(o),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let o = configured.map(str::to_owned).unwrap_or_else(|| {
                    let r: [u8; 4] = rand::random();
                    format!(
                        "blockpost.local/directory/{:02x}{:02x}{:02x}{:02x}",
                        r[0], r[1], r[2], r[3]
                    )
                });
                std::fs::create_dir_all(&self.root)?;
                write_atomic(&path, o.as_bytes())?;
                Ok(o)
            }
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_node_per_data_dir_and_a_fixed_origin() {
        let tmp = tempfile::tempdir().unwrap();
        let d = DataDir::new(tmp.path().join("data"));
        let lock = d.create_and_lock().unwrap();
        assert!(matches!(d.create_and_lock(), Err(Error::InUse(_))));
        drop(lock);
        d.create_and_lock().unwrap();
        let o = d.origin(None).unwrap();
        assert!(o.starts_with("blockpost.local/directory/"));
        assert_eq!(d.origin(None).unwrap(), o);
        assert_eq!(d.origin(Some(&o)).unwrap(), o);
        assert!(matches!(
            d.origin(Some("other.example/log")),
            Err(Error::OriginChanged { .. })
        ));
        let d2 = DataDir::new(tmp.path().join("two"));
        assert_eq!(d2.origin(Some("x.example/log")).unwrap(), "x.example/log");
        assert!(d2.log_key().ends_with("keys/log.key"));
    }
}
