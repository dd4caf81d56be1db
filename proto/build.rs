//! Compiles `proto/` with protox (pure Rust), so nobody has to install `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/blockpost/v1/directory.proto",
        "proto/blockpost/v1/messaging.proto",
        "proto/blockpost/v1/ledger.proto",
        "proto/blockpost/v1/audit.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    // The encoded descriptors, for gRPC server reflection (grpcurl without .proto files).
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("blockpost_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    // Clients and servers only with the `grpc` feature: verifiers need the messages alone.
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    tonic_prost_build::configure()
        .build_client(grpc)
        .build_server(grpc)
        .codec_path("crate::codec::Codec")
        .compile_fds(fds)?;
    Ok(())
}
