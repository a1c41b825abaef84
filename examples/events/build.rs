//! Generates the gRPC server and client of `proto/events.proto` (needs `protoc`, which
//! `scripts/ensure-tools` installs).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/events.proto");
    tonic_prost_build::configure()
        .build_transport(false)
        .compile_protos(&["proto/events.proto"], &["proto"])?;
    Ok(())
}
