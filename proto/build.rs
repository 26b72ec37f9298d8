//! Generates the gRPC code with a vendored `protoc`, so no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto/aerodb/v1/aerodb.proto");
    println!("cargo:rerun-if-changed=proto/etcd/etcd.proto");
    println!("cargo:rerun-if-changed=proto/etcd/election.proto");
    tonic_prost_build::configure().compile_protos(&["proto/aerodb/v1/aerodb.proto"], &["proto"])?;
    // etcd's v3 API, client side only (the etcd authority talks to a real etcd).
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(
            &["proto/etcd/etcd.proto", "proto/etcd/election.proto"],
            &["proto"],
        )?;
    Ok(())
}
