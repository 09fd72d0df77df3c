//! Generates the gRPC code with protox (pure Rust): no system `protoc` is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/raftlite/v1/sql.proto", "proto/raftlite/v1/admin.proto", "proto/raftlite/v1/peer.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_imports(true).include_source_info(true).open_files(files)?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    // `compile_fds` does not write `file_descriptor_set_path` itself (only the protoc path
    // does), so the reflection descriptor is written here.
    std::fs::write(out.join("raftlite_descriptor.bin"), compiler.encode_file_descriptor_set())?;
    tonic_prost_build::configure().compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
