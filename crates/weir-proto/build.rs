//! Generates the gRPC code from `proto/` with protox (pure Rust), so no system `protoc` is
//! needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "weir/v1/record.proto",
        "weir/v1/controller.proto",
        "weir/v1/subscription.proto",
        "weir/v1/broker.proto",
        "google/pubsub/v1/pubsub.proto",
        "weir/internal/v1/replication.proto",
        "weir/internal/v1/cluster.proto",
    ];
    let fds = protox::compile(files, [&root])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("weir_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .bytes(".weir")
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}
