//! Generates the `hello` gRPC client and server from `proto/hello.proto`
//! with the same `tonic-prost-build` etcd-client uses (protoc from
//! `scripts/install-deps.sh`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/hello.proto");
    tonic_prost_build::configure().compile_protos(&["proto/hello.proto"], &["proto"])?;
    Ok(())
}
