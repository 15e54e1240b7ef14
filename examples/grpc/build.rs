//! Generates the `hello` gRPC client and server from `proto/hello.proto`
//! with the same `tonic-prost-build` etcd-client uses.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/hello.proto");
    tonic_prost_build::configure()
        .compile_protos(&["proto/hello.proto"], &["proto"])
        .map_err(|error| {
            format!(
                "cannot generate the gRPC code from proto/hello.proto: {error}; \
                 protoc comes with `protobuf-compiler` (scripts/install-deps.sh), \
                 or point PROTOC at it"
            )
        })?;
    Ok(())
}
