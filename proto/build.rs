fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/dfs.proto");
    tonic_prost_build::configure().compile_protos(&["proto/dfs.proto"], &["proto"])?;
    Ok(())
}
