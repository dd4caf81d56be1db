//! The directory over gRPC, in process: registration, rotation, revocation, evidence,
//! proofs, bad input, concurrency and NATS publishing.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use blockpost_core::{Identity, Operation, decode_entry, now_ms, wire};
use blockpost_proto::v1::{
    ConsistencyProofRequest, GetEntriesRequest, InclusionProofRequest, LookupRequest, RegisterBody,
    RevokeBody, RotateBody, SignedRequest,
};
use blockpost_tests::{Sandbox, reason, register_body, sign_register, wait_for};
use prost::Message as _;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tonic::Code;

/// A CA chain: root -> intermediate -> leaf whose O is `org`, with the given key algorithm.
struct Evidence {
    root_pem: String,
    chain: Vec<Vec<u8>>,
    leaf_key: KeyPair,
}

fn evidence(org: &str, alg: &'static rcgen::SignatureAlgorithm, leaf_expired: bool) -> Evidence {
    let now = time::OffsetDateTime::now_utc();
    let ca_params = |cn: &str| {
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.not_before = now - time::Duration::days(1);
        p.not_after = now + time::Duration::days(365);
        p
    };
    let root_key = KeyPair::generate_for(alg).unwrap();
    let root_params = ca_params("Bank Consortium Root CA");
    let root = root_params.self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(root_params, root_key);
    let int_key = KeyPair::generate_for(alg).unwrap();
    let int_params = ca_params("Bank Consortium Issuing CA");
    let int = int_params.signed_by(&int_key, &root_issuer).unwrap();
    let int_issuer = Issuer::new(int_params, int_key);
    let leaf_key = KeyPair::generate_for(alg).unwrap();
    let mut lp = CertificateParams::default();
    lp.distinguished_name = rcgen::DistinguishedName::new();
    lp.distinguished_name.push(DnType::OrganizationName, org);
    lp.distinguished_name
        .push(DnType::CommonName, "registration officer");
    lp.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if leaf_expired {
        lp.not_before = now - time::Duration::days(30);
        lp.not_after = now - time::Duration::days(1);
    } else {
        lp.not_before = now - time::Duration::days(1);
        lp.not_after = now + time::Duration::days(30);
    }
    let leaf = lp.signed_by(&leaf_key, &int_issuer).unwrap();
    Evidence {
        root_pem: root.pem(),
        chain: vec![leaf.der().to_vec(), int.der().to_vec()],
        leaf_key,
    }
}

async fn sandbox_with_anchor(root_pem: &str, require: bool) -> (Sandbox, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let anchor = tmp.path().join("anchor.pem");
    std::fs::write(&anchor, root_pem).unwrap();
    let sb = Sandbox::start_with(|c| {
        c.directory.trust_anchors = vec![anchor.clone()];
        c.directory.require_verified = require;
    })
    .await
    .unwrap();
    (sb, tmp)
}

fn with_evidence(id: &Identity, ev: &Evidence, address: &str, name: &str) -> SignedRequest {
    let mut body = register_body(id, address, name);
    body.evidence_chain = ev.chain.clone();
    let bytes = body.encode_to_vec();
    let second =
        rcgen::SigningKey::sign(&ev.leaf_key, &Operation::Register.message(&bytes)).unwrap();
    SignedRequest {
        signature: Operation::Register.sign(&id.signing, &bytes),
        body: bytes,
        second_signature: second,
    }
}

#[tokio::test]
async fn register_rotate_revoke_with_verified_proofs() {
    let sb = Sandbox::start().await.unwrap();
    let mut c = sb.client().await.unwrap();
    let alice = Identity::generate();
    let e = c
        .register(&alice, "alice", "Alice Bank AG", None)
        .await
        .unwrap();
    assert_eq!(e.leaf_index, 0);
    assert!(!e.binding.verified);
    assert_eq!(e.binding.real_name, "Alice Bank AG");
    // The certificate binds name, address and both keys, and chains to the directory CA.
    let (_, cert) = x509_parser::parse_x509_certificate(&e.binding.certificate).unwrap();
    assert_eq!(
        cert.subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap(),
        "Alice Bank AG"
    );
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        &alice.signing_public()
    );
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert!(format!("{:?}", san.value.general_names).contains("blockpost:alice"));
    let ext = cert
        .extensions()
        .iter()
        .find(|x| x.oid.to_id_string() == blockpost_core::X25519_EXTENSION_OID)
        .expect("x25519 extension");
    assert!(ext.value.ends_with(&alice.encryption_public()));
    let ca_pem = c.info().ca_certificate_pem.clone();
    let (_, ca) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes()).unwrap();
    let ca = ca.parse_x509().unwrap();
    cert.verify_signature(Some(ca.public_key())).unwrap();

    let bob = Identity::generate();
    c.register(&bob, "bob", "Bob Broker Ltd", None)
        .await
        .unwrap();
    let alice2 = Identity::generate();
    let r = c.rotate(&alice, &alice2, "alice").await.unwrap();
    assert_eq!(r.binding.previous_index, Some(0));
    assert_eq!(r.binding.signing_key, alice2.signing_public());
    let v = c
        .revoke("alice", "merged", Some(&alice2), None)
        .await
        .unwrap();
    assert!(v.binding.revoked());
    let history = c.lookup("alice").await.unwrap();
    assert_eq!(
        history.iter().map(|e| e.leaf_index).collect::<Vec<_>>(),
        vec![0, 2, 3]
    );
    assert!(history.last().unwrap().binding.revoked());
    // Every look-up proof is against the newest checkpoint.
    assert_eq!(history[0].checkpoint.size, 4);

    // A revoked binding cannot rotate or revoke again, and the address is not reusable.
    let mut g = sb.grpc().await.unwrap();
    let err = c
        .rotate(&alice2, &Identity::generate(), "alice")
        .await
        .unwrap_err();
    assert!(err.code() == Some(Code::FailedPrecondition), "{err}");
    let fresh = Identity::generate();
    let st = g
        .register(sign_register(
            &fresh,
            &register_body(&fresh, "alice", "Mallory"),
        ))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::AlreadyExists);
    assert_eq!(sb.directory.size(), 4);
}

#[tokio::test]
async fn bad_registrations_are_refused_and_nothing_is_logged() {
    let sb = Sandbox::start().await.unwrap();
    let mut g = sb.grpc().await.unwrap();
    let id = Identity::generate();
    let good = register_body(&id, "carol", "Carol Custody SA");

    let mut cases: Vec<(&str, SignedRequest, Code, &str)> = Vec::new();
    let mut r = sign_register(&id, &good);
    r.signature[5] ^= 1;
    cases.push((
        "forged signature",
        r,
        Code::PermissionDenied,
        "SIGNATURE_INVALID",
    ));
    let mut r = sign_register(&id, &good);
    r.signature.clear();
    cases.push((
        "missing signature",
        r,
        Code::PermissionDenied,
        "SIGNATURE_INVALID",
    ));
    let other = Identity::generate();
    let r = SignedRequest {
        body: good.encode_to_vec(),
        signature: Operation::Register.sign(&other.signing, &good.encode_to_vec()),
        second_signature: vec![],
    };
    cases.push((
        "signed by another key",
        r,
        Code::PermissionDenied,
        "SIGNATURE_INVALID",
    ));
    let b = RegisterBody {
        address: "carol.x".into(),
        ..good.clone()
    };
    cases.push((
        "subject characters",
        sign_register(&id, &b),
        Code::InvalidArgument,
        "INVALID_ADDRESS",
    ));
    let b = RegisterBody {
        address: "car*".into(),
        ..good.clone()
    };
    cases.push((
        "wildcard",
        sign_register(&id, &b),
        Code::InvalidArgument,
        "INVALID_ADDRESS",
    ));
    let b = RegisterBody {
        address: "Carol".into(),
        ..good.clone()
    };
    cases.push((
        "upper case",
        sign_register(&id, &b),
        Code::InvalidArgument,
        "INVALID_ADDRESS",
    ));
    let b = RegisterBody {
        real_name: "x".repeat(300),
        ..good.clone()
    };
    cases.push((
        "long name",
        sign_register(&id, &b),
        Code::InvalidArgument,
        "INVALID_REAL_NAME",
    ));
    let b = RegisterBody {
        real_name: "".into(),
        ..good.clone()
    };
    cases.push((
        "empty name",
        sign_register(&id, &b),
        Code::InvalidArgument,
        "INVALID_REAL_NAME",
    ));
    let b = RegisterBody {
        encryption_key: vec![1; 31],
        ..good.clone()
    };
    cases.push((
        "short x25519 key",
        sign_register(&id, &b),
        Code::InvalidArgument,
        "INVALID_KEY",
    ));
    let b = RegisterBody {
        timestamp_ms: now_ms() - 3_600_000,
        ..good.clone()
    };
    cases.push((
        "old timestamp",
        sign_register(&id, &b),
        Code::InvalidArgument,
        "CLOCK_SKEW",
    ));
    let b = RegisterBody {
        timestamp_ms: now_ms() + 3_600_000,
        ..good.clone()
    };
    cases.push((
        "future timestamp",
        sign_register(&id, &b),
        Code::InvalidArgument,
        "CLOCK_SKEW",
    ));
    let r = SignedRequest {
        body: vec![0xff; 40],
        signature: vec![0; 64],
        second_signature: vec![],
    };
    cases.push(("garbage body", r, Code::InvalidArgument, "INVALID_REQUEST"));
    let r = SignedRequest {
        body: vec![0; 100 * 1024],
        signature: vec![0; 64],
        second_signature: vec![],
    };
    cases.push(("oversized body", r, Code::InvalidArgument, "TOO_LARGE"));
    let b = RegisterBody {
        evidence_chain: vec![b"not a certificate".to_vec()],
        ..good.clone()
    };
    cases.push((
        "evidence without anchors",
        sign_register(&id, &b),
        Code::PermissionDenied,
        "EVIDENCE_REJECTED",
    ));

    for (what, req, code, want) in cases {
        let st = g.register(req).await.expect_err(what);
        assert_eq!(st.code(), code, "{what}: {}", st.message());
        assert_eq!(reason(&st), want, "{what}: {}", st.message());
    }
    // Past the gRPC message limit.
    let huge = SignedRequest {
        body: vec![0; 1 << 20],
        signature: vec![],
        second_signature: vec![],
    };
    assert_eq!(g.register(huge).await.unwrap_err().code(), Code::OutOfRange);
    assert_eq!(sb.directory.size(), 0, "nothing refused may reach the log");

    // The good request still works, once.
    g.register(sign_register(&id, &good)).await.unwrap();
    let st = g.register(sign_register(&id, &good)).await.unwrap_err();
    assert_eq!(st.code(), Code::AlreadyExists);
    assert_eq!(sb.directory.size(), 1);
    // Look-ups of bad or unknown addresses.
    assert_eq!(
        g.lookup(LookupRequest {
            address: "a.b".into()
        })
        .await
        .unwrap_err()
        .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        g.lookup(LookupRequest {
            address: "nobody".into()
        })
        .await
        .unwrap_err()
        .code(),
        Code::NotFound
    );
}

#[tokio::test]
async fn rotate_and_revoke_refuse_bad_signatures_and_stale_indexes() {
    let sb = Sandbox::start().await.unwrap();
    let mut c = sb.client().await.unwrap();
    let mut g = sb.grpc().await.unwrap();
    let id = Identity::generate();
    c.register(&id, "dave", "Dave Depositary", None)
        .await
        .unwrap();
    let new = Identity::generate();
    let rotate = |current_index: u64, signer: &Identity, pop: &Identity| {
        let body = RotateBody {
            address: "dave".into(),
            current_index,
            new_signing_key: new.signing_public().to_vec(),
            new_encryption_key: new.encryption_public().to_vec(),
            timestamp_ms: now_ms(),
        }
        .encode_to_vec();
        SignedRequest {
            signature: Operation::Rotate.sign(&signer.signing, &body),
            second_signature: Operation::Rotate.sign(&pop.signing, &body),
            body,
        }
    };
    let st = g.rotate(rotate(0, &new, &new)).await.unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied, "{}", st.message());
    let st = g.rotate(rotate(0, &id, &id)).await.unwrap_err();
    assert_eq!(
        st.code(),
        Code::PermissionDenied,
        "no proof of possession of the new key: {}",
        st.message()
    );
    let st = g.rotate(rotate(7, &id, &new)).await.unwrap_err();
    assert_eq!(st.code(), Code::FailedPrecondition, "{}", st.message());
    let revoke = |signer: &Identity| {
        let body = RevokeBody {
            address: "dave".into(),
            current_index: 0,
            reason: "x".into(),
            timestamp_ms: now_ms(),
        }
        .encode_to_vec();
        SignedRequest {
            signature: Operation::Revoke.sign(&signer.signing, &body),
            body,
            second_signature: vec![],
        }
    };
    assert_eq!(
        g.revoke(revoke(&new)).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let unsigned = SignedRequest {
        signature: vec![],
        ..revoke(&id)
    };
    assert_eq!(
        g.revoke(unsigned).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    // A signature made for a revocation does not rotate.
    let mut cross = rotate(0, &id, &new);
    cross.signature = Operation::Revoke.sign(&id.signing, &cross.body);
    assert_eq!(
        g.rotate(cross).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    assert_eq!(sb.directory.size(), 1);
    g.rotate(rotate(0, &id, &new)).await.unwrap();
    // Replaying the same rotation is stale now.
    assert_eq!(
        g.rotate(rotate(0, &id, &new)).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    assert_eq!(sb.directory.size(), 2);
}

#[tokio::test]
async fn evidence_chains_are_checked() {
    let ev = evidence("Megacorp Bank AG", &rcgen::PKCS_ECDSA_P256_SHA256, false);
    let (sb, _tmp) = sandbox_with_anchor(&ev.root_pem, true).await;
    let mut g = sb.grpc().await.unwrap();

    // Without evidence: refused, as the operator requires verified names.
    let id = Identity::generate();
    let st = g
        .register(sign_register(
            &id,
            &register_body(&id, "megacorp", "Megacorp Bank AG"),
        ))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::FailedPrecondition, "{}", st.message());

    // Name that the evidence does not carry.
    let st = g
        .register(with_evidence(&id, &ev, "megacorp", "Other Bank AG"))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied);
    assert_eq!(reason(&st), "EVIDENCE_REJECTED", "{}", st.message());

    // Evidence key did not sign.
    let mut r = with_evidence(&id, &ev, "megacorp", "Megacorp Bank AG");
    r.second_signature.clear();
    assert_eq!(
        g.register(r).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    // Evidence signature over other bytes.
    let mut r = with_evidence(&id, &ev, "megacorp", "Megacorp Bank AG");
    let last = r.second_signature.len() - 1;
    r.second_signature[last] ^= 1;
    assert_eq!(
        g.register(r).await.unwrap_err().code(),
        Code::PermissionDenied
    );

    // A chain that leads to another root.
    let stranger = evidence("Megacorp Bank AG", &rcgen::PKCS_ECDSA_P256_SHA256, false);
    let st = g
        .register(with_evidence(
            &id,
            &stranger,
            "megacorp",
            "Megacorp Bank AG",
        ))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied);
    assert_eq!(reason(&st), "EVIDENCE_REJECTED", "{}", st.message());

    // Missing intermediate.
    let mut partial = with_evidence(&id, &ev, "megacorp", "Megacorp Bank AG");
    let mut body = RegisterBody::decode(partial.body.as_slice()).unwrap();
    body.evidence_chain.truncate(1);
    partial.body = body.encode_to_vec();
    partial.signature = Operation::Register.sign(&id.signing, &partial.body);
    partial.second_signature =
        rcgen::SigningKey::sign(&ev.leaf_key, &Operation::Register.message(&partial.body)).unwrap();
    assert_eq!(
        g.register(partial).await.unwrap_err().code(),
        Code::PermissionDenied
    );

    assert_eq!(sb.directory.size(), 0);

    // Valid evidence: recorded as verified.
    let mut c = sb.client().await.unwrap();
    let resp = g
        .register(with_evidence(&id, &ev, "megacorp", "Megacorp Bank AG"))
        .await
        .unwrap()
        .into_inner();
    let e = c.accept_entry(resp.proof.unwrap()).await.unwrap();
    assert!(e.binding.verified);

    // The evidence key may revoke the binding.
    let ek = &ev.leaf_key;
    let sign = |m: &[u8]| rcgen::SigningKey::sign(ek, m).map_err(|e| e.to_string());
    let v = c
        .revoke("megacorp", "key compromised", None, Some(&sign))
        .await
        .unwrap();
    assert!(v.binding.revoked());
}

#[tokio::test]
async fn expired_evidence_and_ed25519_evidence() {
    let expired = evidence("Old Bank", &rcgen::PKCS_ED25519, true);
    let (sb, _tmp) = sandbox_with_anchor(&expired.root_pem, false).await;
    let mut g = sb.grpc().await.unwrap();
    let id = Identity::generate();
    let st = g
        .register(with_evidence(&id, &expired, "oldbank", "Old Bank"))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied);
    assert_eq!(reason(&st), "EVIDENCE_REJECTED", "{}", st.message());
    assert_eq!(sb.directory.size(), 0);
    // Unverified names are allowed on this directory.
    g.register(sign_register(
        &id,
        &register_body(&id, "oldbank", "Old Bank"),
    ))
    .await
    .unwrap();
    let (_, b) = decode_entry(&sb.directory.entries(0, 1).unwrap()[0]).unwrap();
    assert!(!b.verified);
}

#[tokio::test]
async fn proofs_ranges_and_concurrent_sequencing() {
    let sb = Sandbox::start().await.unwrap();
    let mut g = sb.grpc().await.unwrap();
    // 200 concurrent registrations, and 20 racing for one address.
    let mut set = tokio::task::JoinSet::new();
    for i in 0..200 {
        let mut g = g.clone();
        set.spawn(async move {
            let id = Identity::generate();
            g.register(sign_register(
                &id,
                &register_body(&id, &format!("p{i}"), "P AG"),
            ))
            .await
            .is_ok()
        });
    }
    for _ in 0..20 {
        let mut g = g.clone();
        set.spawn(async move {
            let id = Identity::generate();
            g.register(sign_register(&id, &register_body(&id, "contested", "C AG")))
                .await
                .is_ok()
        });
    }
    let mut ok = 0;
    while let Some(r) = set.join_next().await {
        ok += usize::from(r.unwrap());
    }
    assert_eq!(ok, 201);
    assert_eq!(sb.directory.size(), 201);

    let mut c = sb.client().await.unwrap();
    let cp = c.checkpoint().await.unwrap();
    assert_eq!(cp.size, 201);
    // Entries, inclusion proofs against the checkpoint.
    let entries = g
        .get_entries(GetEntriesRequest {
            start: 0,
            end: 5000,
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(entries.len(), 201);
    for i in [0u64, 1, 99, 200] {
        let p = g
            .get_inclusion_proof(InclusionProofRequest {
                leaf_index: i,
                tree_size: 0,
            })
            .await
            .unwrap()
            .into_inner();
        cp.verify_inclusion(i, &entries[i as usize], &p.hashes)
            .unwrap();
        assert!(
            cp.verify_inclusion(i, &entries[(i as usize + 1) % 201], &p.hashes)
                .is_err()
        );
    }
    // Consistency between sizes, via the verifying client's own checks.
    for old in [1u64, 64, 200] {
        let p = g
            .get_consistency_proof(ConsistencyProofRequest {
                from_size: old,
                to_size: 201,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!p.hashes.is_empty());
    }
    // Out of range.
    let st = g
        .get_inclusion_proof(InclusionProofRequest {
            leaf_index: 201,
            tree_size: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::OutOfRange);
    let st = g
        .get_consistency_proof(ConsistencyProofRequest {
            from_size: 5,
            to_size: 900,
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::OutOfRange);
    let st = g
        .get_entries(GetEntriesRequest {
            start: 500,
            end: 600,
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::OutOfRange);
    assert_eq!(reason(&st), "OUT_OF_RANGE");
    assert!(
        st.message()
            .contains("start 500 is beyond the newest checkpoint"),
        "{}",
        st.message()
    );
    let st = g
        .get_consistency_proof(ConsistencyProofRequest {
            from_size: 9,
            to_size: 5,
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::OutOfRange);
    assert!(
        st.message()
            .contains("from size 9 is larger than to size 5"),
        "{}",
        st.message()
    );
    let st = g
        .get_entries(GetEntriesRequest { start: 7, end: 7 })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);
    assert_eq!(reason(&st), "INVALID_REQUEST");
    assert!(
        st.message().contains("empty range [7, 7)"),
        "{}",
        st.message()
    );
}

#[tokio::test]
async fn entries_and_checkpoints_reach_jetstream_across_a_nats_restart() {
    let mut sb = Sandbox::start().await.unwrap();
    let mut c = sb.client().await.unwrap();
    for i in 0..5 {
        c.register(&Identity::generate(), &format!("n{i}"), "N AG", None)
            .await
            .unwrap();
    }
    let stream = sb.directory.namespace().directory_stream();
    let auth = sb.nats.node_auth();
    let count = move |url: String| {
        let stream = stream.clone();
        let auth = auth.clone();
        async move {
            let client = blockpost_node::connect(&url, Some(&auth)).await.ok()?;
            let js = async_nats::jetstream::new(client);
            let mut st = js.get_stream(stream).await.ok()?;
            let info = st.info().await.ok()?;
            Some(info.state.messages)
        }
    };
    let url = sb.nats.url();
    // 5 entries, and at least one checkpoint.
    wait_for(Duration::from_secs(10), "5 entries in JetStream", || {
        let count = count.clone();
        let url = url.clone();
        async move { count(url).await.filter(|&n| n >= 6) }
    })
    .await
    .unwrap();

    sb.nats.kill();
    // The directory keeps working while NATS is down.
    for i in 5..8 {
        c.register(&Identity::generate(), &format!("n{i}"), "N AG", None)
            .await
            .unwrap();
    }
    sb.nats.restart().unwrap();
    let js = async_nats::jetstream::new(sb.nats.connect().await.unwrap());
    let ns = sb.directory.namespace();
    wait_for(
        Duration::from_secs(20),
        "publisher to catch up after the restart",
        || {
            let js = js.clone();
            let ns = ns.clone();
            async move {
                let st = js.get_stream(ns.directory_stream()).await.ok()?;
                let m = st
                    .get_last_raw_message_by_subject(&ns.entry_subject())
                    .await
                    .ok()?;
                let idx = m
                    .headers
                    .get(wire::LEAF_INDEX_HEADER)?
                    .as_str()
                    .parse::<u64>()
                    .ok()?;
                (idx == 7).then_some(())
            }
        },
    )
    .await
    .unwrap();
    // Every entry is there exactly once, in order.
    let st = js
        .get_stream(sb.directory.namespace().directory_stream())
        .await
        .unwrap();
    let consumer = st
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            filter_subject: sb.directory.namespace().entry_subject(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut batch = consumer
        .fetch()
        .max_messages(100)
        .expires(Duration::from_secs(1))
        .messages()
        .await
        .unwrap();
    let mut seen = Vec::new();
    use futures::StreamExt as _;
    while let Some(Ok(m)) = batch.next().await {
        seen.push(
            m.headers
                .as_ref()
                .unwrap()
                .get(wire::LEAF_INDEX_HEADER)
                .unwrap()
                .as_str()
                .to_owned(),
        );
        let (_, b) = decode_entry(&m.payload).unwrap();
        assert!(b.address.as_str().starts_with('n'));
    }
    assert_eq!(seen, (0..8).map(|i| i.to_string()).collect::<Vec<_>>());
}

#[tokio::test]
async fn unverified_registrations_are_rate_limited_per_peer_and_for_all() {
    use std::sync::Arc;

    use blockpost_core::FixedClock;
    use blockpost_proto::v1::directory_server::Directory as DirectoryService;
    use tonic::transport::server::TcpConnectInfo;

    let ev = evidence("Megacorp Bank AG", &rcgen::PKCS_ECDSA_P256_SHA256, false);
    let tmp = tempfile::tempdir().unwrap();
    let anchor = tmp.path().join("anchor.pem");
    std::fs::write(&anchor, &ev.root_pem).unwrap();
    let clock = Arc::new(FixedClock::new(now_ms()));
    let sb = Sandbox::start_with_clock(
        |c| {
            c.directory.trust_anchors = vec![anchor.clone()];
            c.directory.unverified_per_peer_per_minute = 3;
            c.directory.unverified_per_peer_burst = 3;
            c.directory.unverified_per_second = 1;
            c.directory.unverified_burst = 5;
        },
        clock.clone(),
    )
    .await
    .unwrap();
    let anon = |address: &str| {
        let id = Identity::generate();
        sign_register(&id, &register_body(&id, address, "Anonymous AG"))
    };
    // The sandbox listens on loopback, which has no per-peer bucket (it is the operator's
    // own tools, or a proxy): remote peers are called through the gRPC service with the
    // connection info its server attaches.
    let remote = |peer: &str, req: SignedRequest| {
        let mut r = tonic::Request::new(req);
        r.extensions_mut().insert(TcpConnectInfo {
            local_addr: None,
            remote_addr: Some(peer.parse().unwrap()),
        });
        DirectoryService::register(&sb.directory, r)
    };
    let pushback = |st: &tonic::Status| {
        st.metadata()
            .get("grpc-retry-pushback-ms")
            .map(|v| v.to_str().unwrap().to_owned())
    };

    // One peer: its burst of three, then RESOURCE_EXHAUSTED with a retry hint, and nothing
    // reaches the log.
    for i in 0..3 {
        remote("203.0.113.7:40000", anon(&format!("anon-{i}")))
            .await
            .unwrap();
    }
    assert_eq!(sb.directory.size(), 3);
    let st = remote("203.0.113.7:40001", anon("anon-3"))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::ResourceExhausted, "{}", st.message());
    assert!(
        st.message().contains(
            "from this peer are limited to 3 a minute; retry in 20.0 s, or register with evidence"
        ),
        "{}",
        st.message()
    );
    assert_eq!(pushback(&st).as_deref(), Some("20000"));
    assert_eq!(
        sb.directory.size(),
        3,
        "a refused registration is not logged"
    );
    // Checks come first: a forged or taken registration is refused for what it is.
    let mut forged = anon("anon-4");
    forged.signature[0] ^= 1;
    let st = remote("203.0.113.7:40001", forged).await.unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied, "{}", st.message());
    let st = remote("203.0.113.7:40001", anon("anon-0"))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::AlreadyExists, "{}", st.message());
    // A name backed by evidence is not limited.
    let id = Identity::generate();
    let r = remote(
        "203.0.113.7:40002",
        with_evidence(&id, &ev, "megacorp", "Megacorp Bank AG"),
    )
    .await
    .unwrap();
    let (_, b) = decode_entry(&r.into_inner().proof.unwrap().entry).unwrap();
    assert!(b.verified);
    assert_eq!(sb.directory.size(), 4);

    // Another peer has its own bucket; all together are held to five, then one a second.
    remote("203.0.113.8:40000", anon("other-0")).await.unwrap();
    let mut g = sb.grpc().await.unwrap();
    // Over the real transport from loopback, garbage drains nothing: the last token of the
    // global bucket goes to the valid request after it.
    let mut forged = anon("local-0");
    forged.signature[0] ^= 1;
    let st = g.register(forged).await.unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied, "{}", st.message());
    g.register(anon("local-0")).await.unwrap();
    assert_eq!(sb.directory.size(), 6);
    let st = g.register(anon("local-1")).await.unwrap_err();
    assert_eq!(st.code(), Code::ResourceExhausted, "{}", st.message());
    assert!(
        st.message()
            .contains("from all peers are limited to 1 a second; retry in 1.0 s"),
        "{}",
        st.message()
    );
    assert_eq!(
        pushback(&st).as_deref(),
        Some("1000"),
        "the hint reaches the client"
    );
    let st = remote("203.0.113.9:40000", anon("new-0"))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::ResourceExhausted, "{}", st.message());
    assert_eq!(sb.directory.size(), 6);

    // A second later: one more for all, but the first peer still waits for its own.
    clock.advance(1_000);
    let st = remote("203.0.113.7:40003", anon("anon-3"))
        .await
        .unwrap_err();
    assert_eq!(reason(&st), "RATE_LIMITED", "{}", st.message());
    assert!(st.message().contains("this peer"), "{}", st.message());
    assert_eq!(pushback(&st).as_deref(), Some("19000"));
    g.register(anon("local-1")).await.unwrap();
    // Twenty seconds after its burst, it may register again.
    clock.advance(19_000);
    remote("203.0.113.7:40004", anon("anon-3")).await.unwrap();
    assert_eq!(sb.directory.size(), 8);
    assert!(sb.directory.lookup("anon-3").is_ok());
}

#[tokio::test]
async fn client_detects_a_forked_log() {
    // One node, one client that has seen checkpoint 2.
    let sb = Sandbox::start().await.unwrap();
    let data = sb.data_dir.clone();
    let endpoint = sb.endpoint.clone();
    let client_dir = sb.client_dir.clone();
    let mut c = sb.client().await.unwrap();
    c.register(&Identity::generate(), "first", "F AG", None)
        .await
        .unwrap();
    // Snapshot the data dir after one entry: the fork point.
    let (nats, tmp) = {
        let fork = tmp_copy(&data);
        c.register(&Identity::generate(), "second", "S AG", None)
            .await
            .unwrap();
        assert_eq!(c.checkpoint().await.unwrap().size, 2);
        let (nats, tmp) = sb.stop().await;
        std::fs::remove_dir_all(&data).unwrap();
        copy_dir(&fork, &data);
        (nats, tmp)
    };
    // The same node, same keys, same address, but a different second entry.
    let mut cfg = blockpost_node::NodeConfig::for_test(&data, &nats.url());
    cfg.listen = endpoint.trim_start_matches("http://").to_owned();
    let sb2 = Sandbox::start_on(cfg, nats, tmp).await.unwrap();
    let mut g = sb2.grpc().await.unwrap();
    let id = Identity::generate();
    g.register(sign_register(&id, &register_body(&id, "other", "O AG")))
        .await
        .unwrap();
    let mut c2 = blockpost_client::Client::connect(&endpoint, &client_dir)
        .await
        .unwrap();
    let err = c2.checkpoint().await.unwrap_err();
    assert!(
        matches!(
            err,
            blockpost_client::Error::InconsistentCheckpoint(
                blockpost_core::Error::ConsistencyProofMismatch { from: 2, to: 2 }
            )
        ),
        "{err}"
    );
}

fn tmp_copy(src: &std::path::Path) -> std::path::PathBuf {
    let dst = src.with_file_name("fork");
    copy_dir(src, &dst);
    dst
}

fn copy_dir(src: &std::path::Path, dst: &std::path::Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// A verified name's evidence chain travels in an evidence bundle, checked against the
/// chain the entry's signed request carries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evidence_bundle_carries_the_evidence_chain_of_a_verified_name() {
    use blockpost_client::bundle::{Subject, export};
    let ev = evidence("Megacorp Bank AG", &rcgen::PKCS_ECDSA_P256_SHA256, false);
    let (sb, _tmp) = sandbox_with_anchor(&ev.root_pem, false).await;
    let mut g = sb.grpc().await.unwrap();
    let mega = Identity::generate();
    let entry = g
        .register(with_evidence(&mega, &ev, "megacorp", "Megacorp Bank AG"))
        .await
        .unwrap()
        .into_inner()
        .proof
        .unwrap()
        .leaf_index;
    let bob = Identity::generate();
    let mut c = sb.client().await.unwrap();
    c.register(&bob, "bob", "Bob Ltd", None).await.unwrap();
    let mut m = blockpost_client::Messenger::connect(&sb.endpoint, &sb.client_dir)
        .await
        .unwrap();
    let to = vec!["bob".to_owned()];
    let (_, receipt) = m
        .send(
            &mega,
            blockpost_client::Outgoing {
                delivery: None,
                from: "megacorp",
                to: &to,
                transaction_id: "verified-1",
                kind: blockpost_proto::v1::MessageKind::Message,
                content_type: "text/plain",
                body: b"from a verified name".to_vec(),
                encrypt: false,
                transaction_deadline_ms: None,
            },
        )
        .await
        .unwrap();
    let id: [u8; 32] = receipt.message_id.try_into().unwrap();
    let mut l = blockpost_client::Ledger::connect(&c, &sb.client_dir)
        .await
        .unwrap();
    let members = wait_for(
        Duration::from_secs(30),
        "the message in a block",
        async || {
            export(&mut c, &mut l, Subject::Message(id), &[], now_ms())
                .await
                .ok()
        },
    )
    .await
    .unwrap();
    let path = format!("directory/evidence/{entry}.pem");
    let pem = String::from_utf8(members[&path].clone()).unwrap();
    assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 2, "{pem}");
    let trust = blockpost_core::bundle::Trust::default();
    let r = blockpost_core::bundle::verify(&members, &trust).unwrap();
    assert!(r.messages[0].sender.verified);
    assert_eq!(r.messages[0].sender.real_name, "Megacorp Bank AG");
    assert!(
        r.not_proved
            .iter()
            .any(|n| n.contains("names marked verified"))
    );
    // Another chain in its place, listed anew in the manifest: refused, named.
    let other = evidence("Megacorp Bank AG", &rcgen::PKCS_ECDSA_P256_SHA256, false);
    let mut bad = members.clone();
    use base64::Engine as _;
    let text: String = other
        .chain
        .iter()
        .map(|d| {
            format!(
                "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                base64::engine::general_purpose::STANDARD.encode(d)
            )
        })
        .collect();
    bad.insert(path.clone(), text.into_bytes());
    let man = blockpost_core::bundle::manifest(&bad, 0);
    bad.insert(
        blockpost_core::bundle::MANIFEST.into(),
        serde_json::to_vec(&man).unwrap(),
    );
    let err = blockpost_core::bundle::verify(&bad, &trust).unwrap_err();
    assert_eq!(
        (err.member.as_str(), err.check),
        (path.as_str(), "evidence chain")
    );
}
