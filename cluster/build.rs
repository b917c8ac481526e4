//! Generates the Raft RPC and etcd-compatible KV code from proto/ with protox (no system `protoc` needed), and
//! the k8s-pb field table the API server's protobuf support is driven by.

#[path = "build/k8s_pb_table.rs"]
mod k8s_pb_table;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/raft.proto");
    println!("cargo:rerun-if-changed=proto/etcd_kv.proto");
    println!("cargo:rerun-if-changed=build/k8s_pb_table.rs");
    // A k8s-pb upgrade changes the lock file, not the old sources.
    println!("cargo:rerun-if-changed=../Cargo.lock");
    let descriptors = protox::compile(["proto/raft.proto", "proto/etcd_kv.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    k8s_pb_table::generate(&out_dir)?;
    Ok(())
}
