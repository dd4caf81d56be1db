//! A full disk: the directory answers RESOURCE_EXHAUSTED, nothing half-written stays, and
//! writes resume by themselves when space returns. The disk is made full with the file
//! size limit (RLIMIT_FSIZE) of this test process, which runs the node in process: writes
//! beyond it fail as they do on a full file system (EFBIG instead of ENOSPC), without root.
//! This test has its own binary because the limit is per process.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use blockpost_core::Identity;
use blockpost_proto::v1::SignedRequest;
use blockpost_tests::{Sandbox, register_body, sign_register};
use rlimit::Resource;
use tonic::Code;

fn signed(address: &str) -> SignedRequest {
    let id = Identity::generate();
    sign_register(&id, &register_body(&id, address, &format!("{address} AG")))
}

#[tokio::test]
async fn a_full_disk_is_resource_exhausted_and_writes_resume_when_space_returns() {
    // Writing past the limit raises SIGXFSZ, which would end the process: catch it.
    signal_hook::flag::register(
        signal_hook::consts::SIGXFSZ,
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap();
    let sb = Sandbox::start().await.unwrap();
    let mut g = sb.grpc().await.unwrap();
    for i in 0..3 {
        g.register(signed(&format!("before-{i}"))).await.unwrap();
    }
    let entries = sb.data_dir.join("log").join("entries");
    let len = std::fs::metadata(&entries).unwrap().len();
    let (soft, hard) = rlimit::getrlimit(Resource::FSIZE).unwrap();
    // Room for a few hundred bytes: less than one more entry.
    rlimit::setrlimit(Resource::FSIZE, len + 200, hard).unwrap();
    for i in 0..3 {
        let st = g.register(signed(&format!("full-{i}"))).await.unwrap_err();
        assert_eq!(st.code(), Code::ResourceExhausted, "{}", st.message());
    }
    assert_eq!(sb.directory.size(), 3, "nothing refused reached the log");
    assert_eq!(
        std::fs::metadata(&entries).unwrap().len(),
        len,
        "no half-written batch stays behind"
    );
    // Space returns: writes resume, with no restart.
    rlimit::setrlimit(Resource::FSIZE, soft, hard).unwrap();
    g.register(signed("after")).await.unwrap();
    assert_eq!(sb.directory.size(), 4);
    let mut c = sb.client().await.unwrap();
    assert_eq!(c.lookup("after").await.unwrap()[0].leaf_index, 3);
    assert_eq!(c.checkpoint().await.unwrap().size, 4);
}
