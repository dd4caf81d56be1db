//! The directory's certificate authority: an ed25519 key and a self-signed CA certificate,
//! which issue one X.509 certificate per binding.

use std::path::Path;
use std::time::Duration;

use blockpost_storage::write_atomic;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ED25519, PublicKeyData, SanType, SerialNumber,
};
use time::OffsetDateTime;

use crate::{CertificateError, Error, Result};

/// How long an issued certificate is valid.
pub const CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// The directory CA.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

/// What an issued certificate binds.
pub struct Subject<'a> {
    /// Real name: the subject CN.
    pub real_name: &'a str,
    /// Address: a `blockpost:ADDRESS` URI subject alternative name.
    pub address: &'a str,
    /// ed25519 key: the certificate's subject key.
    pub signing_key: [u8; 32],
    /// x25519 key: carried in the extension [`blockpost_core::X25519_EXTENSION_OID`].
    pub encryption_key: [u8; 32],
}

struct Ed25519Public([u8; 32]);

impl PublicKeyData for Ed25519Public {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &PKCS_ED25519
    }
}

impl Ca {
    /// The CA with `key` (a node key from the data directory), its self-signed certificate
    /// read from `cert_path`, or created there on first start.
    pub fn load_or_create(key: &SigningKey, cert_path: &Path, name: &str) -> Result<Self> {
        let cerr = |e: rcgen::Error| Error::certificate("the CA certificate")(e.into());
        let der = key
            .to_pkcs8_der()
            .map_err(|e| Error::certificate("the CA key")(e.into()))?;
        let key = KeyPair::try_from(der.as_bytes()).map_err(cerr)?;
        match std::fs::read_to_string(cert_path) {
            Ok(cert_pem) => {
                let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
                    .map_err(|e| Error::Config(format!("{}: {e}", cert_path.display())))?;
                let issuer = Issuer::from_ca_cert_der(&pem.contents.into(), key).map_err(cerr)?;
                return Ok(Self { issuer, cert_pem });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::Config(format!("{}: {e}", cert_path.display()))),
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} directory CA"));
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Blockpost");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(3650);
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key).map_err(cerr)?;
        let cert_pem = cert.pem();
        write_atomic(cert_path, cert_pem.as_bytes())?;
        let issuer = Issuer::new(params, key);
        Ok(Self { issuer, cert_pem })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a certificate for a binding, valid from `not_before` for [`CERT_VALIDITY`].
    pub fn issue(&self, s: &Subject<'_>, not_before: OffsetDateTime) -> Result<Vec<u8>> {
        let cerr = |e: rcgen::Error| Error::certificate("a binding's certificate")(e.into());
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, s.real_name);
        params.subject_alt_names = vec![SanType::URI(
            format!("blockpost:{}", s.address)
                .try_into()
                .map_err(cerr)?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = not_before;
        params.not_after = not_before + CERT_VALIDITY;
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        params.custom_extensions = vec![CustomExtension::from_oid_content(
            &x25519_oid(),
            x25519_spki(&s.encryption_key),
        )];
        let cert = params
            .signed_by(&Ed25519Public(s.signing_key), &self.issuer)
            .map_err(cerr)?;
        Ok(cert.der().to_vec())
    }
}

impl Ca {
    /// Issues a TLS server certificate for the node's own gRPC port: subject key `key` (an
    /// ed25519 key), `names` as DNS or IP subject alternative names, extended key usage
    /// serverAuth, valid from `not_before` for [`CERT_VALIDITY`]. Returns the chain as PEM,
    /// the certificate and then the CA certificate, as a TLS server hands it out.
    pub fn issue_server(
        &self,
        key: [u8; 32],
        names: &[String],
        not_before: OffsetDateTime,
    ) -> Result<String> {
        let cerr = |e: rcgen::Error| Error::certificate("the TLS server certificate")(e.into());
        let first = names.first().ok_or_else(|| {
            Error::certificate("the TLS server certificate")(CertificateError::NoName)
        })?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, first);
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => n.as_str().try_into().map(SanType::DnsName),
            })
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::certificate("the TLS server certificate's names")(e.into()))?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = not_before;
        params.not_after = not_before + CERT_VALIDITY;
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&Ed25519Public(key), &self.issuer)
            .map_err(cerr)?;
        Ok(format!("{}{}", cert.pem(), self.cert_pem))
    }
}

fn random_serial() -> SerialNumber {
    let mut b: [u8; 16] = rand::random();
    // A positive INTEGER of 16 bytes with no leading zero byte.
    b[0] = (b[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&b)
}

fn x25519_oid() -> Vec<u64> {
    blockpost_core::X25519_EXTENSION_OID
        .split('.')
        .filter_map(|a| a.parse().ok())
        .collect()
}

/// DER SubjectPublicKeyInfo of an x25519 key (RFC 8410, OID 1.3.101.110).
pub fn x25519_spki(key: &[u8; 32]) -> Vec<u8> {
    let mut v = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x03, 0x21, 0x00,
    ];
    v.extend_from_slice(key);
    v
}

#[cfg(test)]
mod tests {
    use blockpost_core::{Identity, authorize_entry};
    use blockpost_proto::v1::{EntryKind, LogEntry, RegisterBody, SignedRequest};
    use prost::Message as _;

    use super::*;

    #[test]
    fn a_ca_key_from_an_older_data_dir_loads_and_issues_what_core_accepts() {
        let dir = tempfile::tempdir().unwrap();
        // Data dirs before the node crate held a CA key written by rcgen itself.
        let old = KeyPair::generate_for(&PKCS_ED25519).unwrap();
        let key_path = dir.path().join("ca.key");
        std::fs::write(&key_path, old.serialize_pem()).unwrap();
        let key = blockpost_storage::load_or_create_key(&key_path).unwrap();
        let cert_path = dir.path().join("ca.pem");
        let ca = Ca::load_or_create(&key, &cert_path, "test").unwrap();
        // Reopening reads the same certificate.
        let again = Ca::load_or_create(&key, &cert_path, "test").unwrap();
        assert_eq!(again.cert_pem(), ca.cert_pem());

        // A certificate it issues passes the core's certificate checks.
        let id = Identity::generate();
        let body = RegisterBody {
            lei: Default::default(),
            address: "alice".into(),
            real_name: "Alice AG".into(),
            signing_key: id.signing_public().to_vec(),
            encryption_key: id.encryption_public().to_vec(),
            evidence_chain: vec![],
            timestamp_ms: 1,
        }
        .encode_to_vec();
        let certificate = ca
            .issue(
                &Subject {
                    real_name: "Alice AG",
                    address: "alice",
                    signing_key: id.signing_public(),
                    encryption_key: id.encryption_public(),
                },
                OffsetDateTime::now_utc(),
            )
            .unwrap();
        let entry = LogEntry {
            kind: EntryKind::Register as i32,
            address: "alice".into(),
            real_name: "Alice AG".into(),
            signing_key: id.signing_public().to_vec(),
            encryption_key: id.encryption_public().to_vec(),
            certificate,
            request: Some(SignedRequest {
                signature: blockpost_core::Operation::Register.sign(&id.signing, &body),
                body,
                second_signature: vec![],
            }),
            ..Default::default()
        };
        authorize_entry(&entry, None).unwrap();
    }
}
