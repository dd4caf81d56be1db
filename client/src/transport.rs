//! How the client reaches a node: HTTP/2 in plaintext (`http://`, what a node on loopback
//! serves) or over TLS (`https://`, required off loopback).
//!
//! Over TLS the node's certificate is verified in one of two ways:
//! - against CA certificates the caller gives ([`ConnectOptions::tls_ca`], for instance the
//!   node's `keys/ca.pem` or the operator's CA): chain, validity and host name, as any
//!   WebPKI client checks them;
//! - otherwise by its key, like the log key and like SSH: the SHA-256 of the certificate's
//!   SubjectPublicKeyInfo must equal the pin given ([`ConnectOptions::tls_pin`]) or, without
//!   one, the pin recorded on first contact in `STATE/tls/ENDPOINT.pin`. A node that later
//!   presents another key is refused with [`Error::PinnedTlsKeyChanged`]. The handshake
//!   signature is checked in both ways, so only the holder of the pinned key gets through.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest as _, Sha256};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Uri};

use crate::{Error, Result};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach a node beyond its endpoint: how to verify its TLS certificate.
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    /// A PEM file of CA certificates: verify the node's certificate chain and host name
    /// against them, instead of pinning its key.
    pub tls_ca: Option<PathBuf>,
    /// `sha256:HEX` (or `HEX`) of the node's certificate key (SubjectPublicKeyInfo), as
    /// the node logs it at start: required from the first contact on, instead of trusting
    /// the key the node presents first.
    pub tls_pin: Option<String>,
    /// Witnesses (auditors) the client trusts: verifier keys in signed-note form,
    /// `name+id+base64(0x04 || key)`.
    pub witnesses: Vec<String>,
    /// How many of `witnesses` must have cosigned a checkpoint before the client relies on
    /// it (0: none). With it, look-ups are proved against the node's newest witnessed
    /// checkpoint, waiting up to [`WITNESS_WAIT`] for witnesses to catch up.
    pub min_witnesses: usize,
}

/// How long a client that requires witnesses waits for a checkpoint they cosigned that
/// covers what it looks up.
pub const WITNESS_WAIT: Duration = Duration::from_secs(15);

/// `sha256:HEX` of a certificate's SubjectPublicKeyInfo: what the client pins.
pub fn tls_pin_of(cert_der: &[u8]) -> Result<String> {
    Ok(format_pin(&spki_sha256(cert_der)?))
}

fn spki_sha256(cert_der: &[u8]) -> Result<[u8; 32]> {
    let spki = blockpost_core::leaf_spki(&[cert_der.to_vec()])?;
    Ok(Sha256::digest(&spki).into())
}

fn format_pin(h: &[u8; 32]) -> String {
    format!("sha256:{}", hex::encode(h))
}

fn parse_pin(s: &str) -> Option<[u8; 32]> {
    let h = s.trim();
    let h = h.strip_prefix("sha256:").unwrap_or(h);
    hex::decode(h).ok()?.try_into().ok()
}

/// A connected channel and the endpoint URL it was made from.
pub(crate) struct Connection {
    pub channel: Channel,
    pub url: String,
}

/// Connects to `endpoint` (`HOST:PORT`, `http://HOST:PORT` or `https://HOST:PORT`).
pub(crate) async fn connect(
    endpoint: &str,
    state_dir: &Path,
    opts: &ConnectOptions,
) -> Result<Connection> {
    let url = if endpoint.contains("://") {
        endpoint.to_owned()
    } else {
        format!("http://{endpoint}")
    };
    let bad = |why: String| Error::BadEndpoint {
        endpoint: endpoint.to_owned(),
        why,
    };
    let uri: Uri = url.parse().map_err(|e| bad(format!("{e}")))?;
    let host = uri
        .host()
        .ok_or_else(|| bad("no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    if opts.tls_ca.is_some() && opts.tls_pin.is_some() {
        return Err(bad(
            "give a TLS CA or a TLS pin, not both: the CA verifies chain and name, the pin the key"
                .into(),
        ));
    }
    match uri.scheme_str() {
        Some("http") if opts.tls_ca.is_some() || opts.tls_pin.is_some() => Err(bad(
            "TLS options were given for a plaintext http:// endpoint; use https://".into(),
        )),
        Some("http") => {
            let channel = Channel::from_shared(url.clone())
                .map_err(|e| bad(e.to_string()))?
                .connect_timeout(CONNECT_TIMEOUT)
                .connect()
                .await
                .map_err(|e| Error::Unreachable {
                    why: unreachable_why(&url, &e),
                    endpoint: url.clone(),
                })?;
            Ok(Connection { channel, url })
        }
        Some("https") => {
            let port = uri.port_u16().unwrap_or(443);
            let server_name = ServerName::try_from(host.clone())
                .map_err(|e| bad(format!("host {host:?}: {e}")))?;
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let pin_file = state_dir
                .join("tls")
                .join(format!("{}.pin", pin_file_name(&host, port)));
            let tls_err = |why: String| Error::Tls {
                endpoint: url.clone(),
                why,
            };
            let mut pins = None;
            let verifier: Arc<dyn ServerCertVerifier> = match (&opts.tls_ca, &opts.tls_pin) {
                (Some(ca), _) => {
                    let pem = std::fs::read(ca)
                        .map_err(|e| tls_err(format!("CA file {}: {e}", ca.display())))?;
                    let mut roots = RootCertStore::empty();
                    for c in CertificateDer::pem_slice_iter(&pem) {
                        let c = c.map_err(|e| tls_err(format!("CA file {}: {e}", ca.display())))?;
                        roots
                            .add(c)
                            .map_err(|e| tls_err(format!("CA file {}: {e}", ca.display())))?;
                    }
                    if roots.is_empty() {
                        return Err(tls_err(format!(
                            "CA file {} holds no certificate",
                            ca.display()
                        )));
                    }
                    rustls::client::WebPkiServerVerifier::builder_with_provider(
                        Arc::new(roots),
                        provider.clone(),
                    )
                    .build()
                    .map_err(|e| tls_err(e.to_string()))?
                }
                (None, given) => {
                    let expected = match given {
                        Some(p) => Some(parse_pin(p).ok_or_else(|| {
                            tls_err(format!(
                                "pin {p:?} is not sha256:HEX of 32 bytes, as the node logs it"
                            ))
                        })?),
                        None => read_pin(&pin_file)?,
                    };
                    let p = Arc::new(PinVerifier {
                        provider: provider.clone(),
                        pinned: Mutex::new(expected),
                        candidate: Mutex::new(None),
                        presented_other: Mutex::new(None),
                    });
                    // Record the pin after this connection when it is new, or given now.
                    let record = expected.is_none() || given.is_some();
                    pins = Some((p.clone(), record));
                    p
                }
            };
            let mut config = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| tls_err(e.to_string()))?
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth();
            config.alpn_protocols = vec![b"h2".to_vec()];
            let connector = TlsConnect {
                tls: TlsConnector::from(Arc::new(config)),
                server_name,
                host: host.clone(),
                port,
            };
            // The URI tonic sees is plaintext: the connector does the TLS.
            let inner = format!("http://{}", uri.authority().map_or("", |a| a.as_str()));
            let connected = Channel::from_shared(inner)
                .map_err(|e| bad(e.to_string()))?
                .connect_timeout(CONNECT_TIMEOUT)
                .connect_with_connector(connector)
                .await;
            let channel = match connected {
                Ok(c) => c,
                Err(e) => {
                    if let Some((p, _)) = &pins {
                        let other = *p.presented_other.lock().unwrap_or_else(|e| e.into_inner());
                        let pinned = *p.pinned.lock().unwrap_or_else(|e| e.into_inner());
                        if let (Some(other), Some(pinned)) = (other, pinned) {
                            return Err(Error::PinnedTlsKeyChanged {
                                endpoint: url,
                                presented: format_pin(&other),
                                pinned: format_pin(&pinned),
                                pin_file: if opts.tls_pin.is_some() {
                                    "--tls-pin".into()
                                } else {
                                    pin_file.display().to_string()
                                },
                            });
                        }
                    }
                    let mut why = chain(&e);
                    if why.contains("InvalidContentType") {
                        why.push_str(
                            " (the port answered in plaintext: a node on loopback speaks http://)",
                        );
                    }
                    return Err(Error::Unreachable { endpoint: url, why });
                }
            };
            if let Some((p, true)) = &pins {
                // First contact (or a pin given now): remember the key the node proved it
                // holds.
                if let Some(seen) = *p.pinned.lock().unwrap_or_else(|e| e.into_inner()) {
                    write_pin(&pin_file, &seen)?;
                }
            }
            Ok(Connection { channel, url })
        }
        _ => Err(bad("the scheme must be http:// or https://".into())),
    }
}

/// Why a node could not be reached, with a hint for plaintext to a TLS port.
pub(crate) fn unreachable_why(url: &str, e: &dyn std::error::Error) -> String {
    let why = chain(e);
    if url.starts_with("http://") {
        format!("{why} (if the node speaks TLS, as it must off loopback, use https://)")
    } else {
        why
    }
}

/// The whole error chain in one line: tonic's own message is only "transport error".
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// `HOST_PORT` with the host in lower case and every byte other than `[a-z0-9.-]`
/// percent-encoded: one file per endpoint however it is spelled, and never two endpoints
/// in one file.
fn pin_file_name(host: &str, port: u16) -> String {
    let mut s = String::new();
    for b in host.to_ascii_lowercase().bytes() {
        if b.is_ascii_alphanumeric() || b == b'.' || b == b'-' {
            s.push(char::from(b));
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{s}_{port}")
}

fn read_pin(path: &Path) -> Result<Option<[u8; 32]>> {
    match std::fs::read_to_string(path) {
        Ok(t) => parse_pin(&t).map(Some).ok_or_else(|| Error::State {
            path: path.display().to_string(),
            why: "damaged TLS pin; delete it to trust the node's key anew".into(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::State {
            path: path.display().to_string(),
            why: e.to_string(),
        }),
    }
}

fn write_pin(path: &Path, pin: &[u8; 32]) -> Result<()> {
    let err = |e: std::io::Error| Error::State {
        path: path.display().to_string(),
        why: e.to_string(),
    };
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(err)?;
    }
    blockpost_files::write_atomic(path, format!("{}\n", format_pin(pin)).as_bytes()).map_err(err)
}

/// Accepts the server certificate whose key hashes to the pin, and checks the handshake
/// signature with that key. Without a pin yet, the first key is only a candidate until the
/// handshake signature proves the peer holds it; then it becomes the pin.
#[derive(Debug)]
struct PinVerifier {
    provider: Arc<CryptoProvider>,
    pinned: Mutex<Option<[u8; 32]>>,
    candidate: Mutex<Option<[u8; 32]>>,
    /// The key a node presented instead of the pinned one.
    presented_other: Mutex<Option<[u8; 32]>>,
}

impl PinVerifier {
    /// Passes on a handshake signature check; when it held (the peer signed with `cert`'s
    /// key), a candidate with that key becomes the pin.
    fn proved(
        &self,
        cert: &CertificateDer<'_>,
        checked: std::result::Result<HandshakeSignatureValid, rustls::Error>,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        let ok = checked?;
        let Ok(h) = spki_sha256(cert) else {
            return Ok(ok);
        };
        let mut candidate = self.candidate.lock().unwrap_or_else(|e| e.into_inner());
        if *candidate == Some(h) {
            let mut pinned = self.pinned.lock().unwrap_or_else(|e| e.into_inner());
            if pinned.is_none() {
                *pinned = Some(h);
            }
            *candidate = None;
        }
        Ok(ok)
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let h = spki_sha256(end_entity).map_err(|e| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(e),
            )))
        })?;
        let pinned = self.pinned.lock().unwrap_or_else(|e| e.into_inner());
        match *pinned {
            Some(p) if p != h => {
                *self
                    .presented_other
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(h);
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ))
            }
            Some(_) => Ok(ServerCertVerified::assertion()),
            None => {
                *self.candidate.lock().unwrap_or_else(|e| e.into_inner()) = Some(h);
                Ok(ServerCertVerified::assertion())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.proved(
            cert,
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            ),
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.proved(
            cert,
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            ),
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Opens TCP to the node and runs the TLS handshake, for tonic's channel.
#[derive(Clone)]
struct TlsConnect {
    tls: TlsConnector,
    server_name: ServerName<'static>,
    host: String,
    port: u16,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for TlsConnect {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = BoxError;
    type Future =
        Pin<Box<dyn Future<Output = std::result::Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::result::Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect((this.host.as_str(), this.port)).await?;
            tcp.set_nodelay(true)?;
            let tls = this.tls.connect(this.server_name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pin_file_per_endpoint() {
        assert_eq!(
            pin_file_name("Node.Example.org", 7700),
            "node.example.org_7700"
        );
        assert_ne!(pin_file_name("a-b.x", 1), pin_file_name("a.b.x", 1));
        assert_eq!(pin_file_name("::1", 7700), "%3A%3A1_7700");
        assert_ne!(pin_file_name("a", 1), pin_file_name("a", 2));
    }

    #[test]
    fn pins_parse_with_or_without_prefix() {
        let h = [7u8; 32];
        assert_eq!(parse_pin(&format_pin(&h)), Some(h));
        assert_eq!(parse_pin(&hex::encode(h)), Some(h));
        assert_eq!(parse_pin(&format!(" {}\n", format_pin(&h))), Some(h));
        assert_eq!(parse_pin("sha256:abcd"), None);
        assert_eq!(parse_pin("sha256:zz"), None);
    }
}
