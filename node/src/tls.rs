//! TLS on the gRPC port (rustls through tonic): required when the node listens anywhere
//! but loopback, off by default on loopback.
//!
//! The certificate is the operator's (`[tls] cert` and `key`, PEM), or one the node issues
//! itself from its directory CA for its own TLS key (`keys/tls.key`, kept across restarts
//! so that a client's pin survives a reissue), written to `keys/tls.pem` with the CA
//! certificate after it. Clients verify it against a CA they are given, or pin the SHA-256
//! of its public key (SubjectPublicKeyInfo) on first contact; the node logs that pin at
//! start so an operator can hand it out.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use blockpost_directory::Directory;
use blockpost_storage::{DataDir, load_or_create_key, write_atomic};
use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tonic::transport::{Identity, ServerTlsConfig};

use crate::{Error, Result};

/// When the gRPC port speaks TLS.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// TLS unless the listen address is a loopback address.
    #[default]
    Auto,
    /// Always TLS.
    On,
    /// Never TLS: allowed only on a loopback address.
    Off,
}

/// The `[tls]` table of the node config.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// `auto` (the default), `on` or `off`.
    pub mode: TlsMode,
    /// The operator's certificate chain (PEM, the server certificate first); with `key`.
    /// Without both, the node issues its own certificate from its directory CA.
    pub cert: Option<PathBuf>,
    /// The operator's private key (PEM, PKCS#8, SEC1 or PKCS#1).
    pub key: Option<PathBuf>,
    /// Names (DNS names or IP addresses) the self-issued certificate holds, besides
    /// `localhost`, the loopback addresses, the listen address and the host name.
    pub names: Vec<String>,
}

impl TlsConfig {
    /// Whether a node listening on `listen` speaks TLS: in `auto` mode, off loopback or
    /// when the operator gave a certificate.
    pub fn enabled_for(&self, listen: &SocketAddr) -> bool {
        match self.mode {
            TlsMode::On => true,
            TlsMode::Off => false,
            TlsMode::Auto => !listen.ip().is_loopback() || self.cert.is_some(),
        }
    }

    pub(crate) fn validate(&self, listen: &SocketAddr) -> Result<()> {
        if self.mode == TlsMode::Off && !listen.ip().is_loopback() {
            return Err(Error::Config(format!(
                "tls.mode = \"off\" is allowed only on a loopback address, and listen is {listen}: \
                 off loopback the gRPC port requires TLS (leave tls.mode at \"auto\", and give \
                 tls.cert and tls.key or let the node issue its own certificate)"
            )));
        }
        if self.mode == TlsMode::Off && self.cert.is_some() {
            return Err(Error::Config(
                "tls.cert is given but tls.mode = \"off\": remove one of them".into(),
            ));
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err(Error::Config(
                "tls.cert and tls.key go together: give both, or neither for a self-issued certificate"
                    .into(),
            ));
        }
        for n in &self.names {
            if n.is_empty() || n.parse::<IpAddr>().is_err() && !is_dns_name(n) {
                return Err(Error::Config(format!(
                    "tls.names: {n:?} is neither a DNS name nor an IP address"
                )));
            }
        }
        Ok(())
    }
}

fn is_dns_name(n: &str) -> bool {
    n.len() <= 253
        && n.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'*')
        })
}

/// The TLS the node serves with.
#[derive(Clone)]
pub struct ServerTls {
    /// For tonic.
    pub config: ServerTlsConfig,
    /// The certificate chain, PEM.
    pub chain_pem: String,
    /// `sha256:HEX` of the server certificate's SubjectPublicKeyInfo: what clients pin.
    pub pin: String,
    /// Whether the node issued the certificate itself.
    pub self_issued: bool,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("pin", &self.pin)
            .field("self_issued", &self.self_issued)
            .finish_non_exhaustive()
    }
}

/// `sha256:HEX` of the SubjectPublicKeyInfo of the first certificate in `chain_pem`.
pub fn certificate_pin(chain_pem: &[u8]) -> Result<String> {
    let leaf = CertificateDer::pem_slice_iter(chain_pem)
        .next()
        .ok_or_else(|| Error::Config("no certificate in the PEM".into()))?
        .map_err(|e| Error::Config(format!("certificate PEM: {e}")))?;
    let spki = blockpost_core::leaf_spki(&[leaf.to_vec()])
        .map_err(|e| Error::Config(format!("server certificate: {e}")))?;
    Ok(format!("sha256:{}", hex::encode(Sha256::digest(&spki))))
}

/// The TLS for a node on `listen` under `config`, or `None` when it serves plaintext.
pub(crate) fn server_tls(
    config: &TlsConfig,
    listen: &SocketAddr,
    handshake_timeout: Duration,
    data: &DataDir,
    directory: Option<&Directory>,
) -> Result<Option<ServerTls>> {
    if !config.enabled_for(listen) {
        return Ok(None);
    }
    let (chain_pem, key_pem, self_issued) = match (&config.cert, &config.key) {
        (Some(cert), Some(key)) => {
            let read = |p: &PathBuf| {
                std::fs::read_to_string(p)
                    .map_err(|e| Error::Config(format!("tls: reading {}: {e}", p.display())))
            };
            (read(cert)?, read(key)?, false)
        }
        _ => {
            let key = load_or_create_key(&data.tls_key())?;
            let names = self_issued_names(listen, &config.names);
            let Some(directory) = directory else {
                return Err(Error::Config(format!(
                    "tls: {listen} is off loopback and this process does not run the directory, \
                     whose CA issues the node's own certificates: give --tls-cert and --tls-key"
                )));
            };
            let chain = directory
                .issue_server_certificate(key.verifying_key().to_bytes(), &names)
                .map_err(|e| Error::Config(format!("tls: issuing the node's certificate: {e}")))?;
            write_atomic(&data.tls_cert(), chain.as_bytes())?;
            let key_pem = key
                .to_pkcs8_pem(Default::default())
                .map_err(|e| Error::Config(format!("tls: encoding the node's key: {e}")))?;
            (chain, key_pem.to_string(), true)
        }
    };
    let pin = certificate_pin(chain_pem.as_bytes())?;
    let config = ServerTlsConfig::new()
        .identity(Identity::from_pem(&chain_pem, &key_pem))
        .timeout(handshake_timeout);
    // Build the acceptor once now, so that a key that does not match the certificate (or
    // an unusable one) stops the start, not the server later.
    tonic::transport::Server::builder()
        .tls_config(config.clone())
        .map_err(|e| {
            Error::Config(format!(
                "tls: the certificate and key are not usable: {}",
                chain(&e)
            ))
        })?;
    Ok(Some(ServerTls {
        config,
        chain_pem,
        pin,
        self_issued,
    }))
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// `localhost`, the loopback addresses, the listen address (unless unspecified), the host
/// name and `extra`, without repeats.
fn self_issued_names(listen: &SocketAddr, extra: &[String]) -> Vec<String> {
    let mut names: Vec<String> = extra.to_vec();
    names.extend(["localhost".into(), "127.0.0.1".into(), "::1".into()]);
    if !listen.ip().is_unspecified() {
        names.push(listen.ip().to_string());
    }
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() && is_dns_name(h) {
            names.push(h.to_owned());
        }
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn tls_is_required_off_loopback() {
        let auto = TlsConfig::default();
        assert!(!auto.enabled_for(&addr("127.0.0.1:1")));
        assert!(!auto.enabled_for(&addr("[::1]:1")));
        assert!(auto.enabled_for(&addr("0.0.0.0:1")));
        assert!(auto.enabled_for(&addr("10.1.2.3:1")));
        let off = TlsConfig {
            mode: TlsMode::Off,
            ..TlsConfig::default()
        };
        off.validate(&addr("127.0.0.1:1")).unwrap();
        let e = off.validate(&addr("0.0.0.0:1")).unwrap_err().to_string();
        assert!(e.contains("only on a loopback address"), "{e}");
        let half = TlsConfig {
            cert: Some("c.pem".into()),
            ..TlsConfig::default()
        };
        assert!(half.validate(&addr("0.0.0.0:1")).is_err());
        let bad_name = TlsConfig {
            names: vec!["no spaces please".into()],
            ..TlsConfig::default()
        };
        assert!(bad_name.validate(&addr("0.0.0.0:1")).is_err());
    }

    #[test]
    fn self_issued_names_cover_loopback_and_listen_address() {
        let n = self_issued_names(&addr("10.0.0.5:7700"), &["node.example.org".into()]);
        for want in [
            "node.example.org",
            "localhost",
            "127.0.0.1",
            "::1",
            "10.0.0.5",
        ] {
            assert!(n.iter().any(|x| x == want), "{want} missing from {n:?}");
        }
        let n = self_issued_names(&addr("0.0.0.0:7700"), &["localhost".into()]);
        assert!(!n.iter().any(|x| x == "0.0.0.0"));
        assert_eq!(n.iter().filter(|x| *x == "localhost").count(), 1);
    }
}
