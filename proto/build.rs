fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/dfs.proto");
    tonic_prost_build::configure()
        .codec_path("crate::codec::ReservingCodec")
        // Shard payloads as `Bytes`: the client hands one chunk's shards to
        // an upload (and keeps them for a retry) without copying them, and
        // a decoder slices them out of the received buffer instead of
        // copying each into a vector of its own.
        .bytes(".dfs.v1.Shard.data")
        .bytes(".dfs.v1.ShardRead.data")
        .bytes(".dfs.v1.GetShardReply.data")
        .compile_protos(&["proto/dfs.proto"], &["proto"])?;
    Ok(())
}
