//! Inline chunks: a chunk whose stored (compressed) bytes are small is kept
//! in its dedup index entry, in the metadata store, instead of as shards on
//! chunk servers. Writing a small file is then one metadata request carrying
//! its bytes (the commit creates the entry), and reading it needs no chunk
//! server (the chunk map carries the bytes). Lustre's data-on-MDT, ext4 and
//! btrfs inline extents and MinIO's inline objects are the precedents.
//!
//! The entry is reference-counted, deduplicated and collected like any
//! other; it is protected by the metadata store's own durability and
//! replication (a synced commit; FoundationDB's replicas). Its bytes are
//! verified against the fingerprint whenever they are decoded, so a bad
//! entry is an error, never silent bad data.

use dfs_proto::{ChunkRecord, Codec, Layout};

use crate::codec::{self, CodecError};
use crate::dictionary::Dictionary;
use crate::fingerprint::Fingerprint;

/// What a new volume keeps inline: chunks stored in at most 8 KiB. Chosen
/// from the files of a source tree (the crates this workspace builds, 13,184
/// files, LZ4): 78% store in 4 KiB or less, 89% in 8 KiB, 92% in 16 KiB.
/// An 8 KiB value plus its record stays under FoundationDB's advice of
/// values under 10 kB.
pub const DEFAULT_INLINE_MAX: u32 = 8 * 1024;

/// The largest inline chunk the metadata server accepts, whatever a volume
/// or client says: 96 KiB plus its record stays under FoundationDB's
/// 100 kB value limit. Chunks over the volume's `inline_max_bytes` are
/// only staged there: a small flush's chunks of up to
/// `stage_max_bytes` (this, on new volumes) ride in its commit, so closing
/// a small file waits for one synced metadata write instead of nine
/// chunk-server fsyncs, and dfs-meta moves them to the chunk servers
/// (Reed-Solomon, batched per server) once they have lived `--stage-delay`.
pub const MAX_INLINE_BYTES: usize = 96 * 1024;

/// A flush stages its new chunks only when they come to at most this many
/// raw bytes: small files. A big stream goes straight to the servers.
pub const STAGE_FLUSH_MAX: usize = 256 * 1024;

/// Inline bytes one chunk-map commit may carry: bounds the transaction
/// (FoundationDB: 10 MB) and the request. Clients aim at
/// [`CLIENT_INLINE_PER_COMMIT`] and store the rest as shards.
pub const MAX_INLINE_PER_COMMIT: usize = 4 * 1024 * 1024;

/// Inline bytes a client puts in one commit; past it, chunks go to the
/// chunk servers as usual (a very compressible big file should not move
/// into the metadata store).
pub const CLIENT_INLINE_PER_COMMIT: usize = 1024 * 1024;

/// Why an inline entry cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InlineError {
    /// The record does not describe an inline chunk.
    #[error("not an inline chunk")]
    NotInline,
    /// The record's fields contradict each other or the limits.
    #[error("malformed inline chunk: {0}")]
    Malformed(String),
    /// The stored bytes do not decode.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The decoded bytes are not the chunk the fingerprint names.
    #[error("inline bytes do not match the fingerprint")]
    Mismatch,
    /// The bytes were compressed with dictionary `.0`, which the caller
    /// did not give.
    #[error("compressed with dictionary {0}, which is not at hand")]
    NeedsDictionary(u64),
}

/// The layout of an inline chunk.
pub fn layout() -> Layout {
    Layout {
        data_shards: 0,
        parity_shards: 0,
        replicas: 0,
        inline: true,
        packed: false,
    }
}

/// The index entry of an inline chunk of `raw_len` raw bytes stored as
/// `stored` with `codec`.
pub fn record(raw_len: u32, codec: Codec, stored: Vec<u8>) -> ChunkRecord {
    ChunkRecord {
        raw_len,
        stored_len: stored.len() as u32,
        codec: codec as i32,
        layout: Some(layout()),
        inline_data: stored,
        ..ChunkRecord::default()
    }
}

/// Checks an inline record's shape without decoding it: no shards, the
/// stored length matches the bytes, at most `max_stored` of them.
pub fn check_shape(rec: &ChunkRecord, max_stored: usize) -> Result<(), InlineError> {
    if !rec.is_inline() {
        return Err(InlineError::NotInline);
    }
    let bad = |m: String| Err(InlineError::Malformed(m));
    let layout = rec.layout.unwrap_or_default();
    if layout.data_shards != 0 || layout.parity_shards != 0 || layout.replicas != 0 {
        return bad("an inline layout with shards".into());
    }
    if !rec.shard_servers.is_empty() || rec.shard_len != 0 {
        return bad("an inline chunk naming servers".into());
    }
    if rec.inline_data.is_empty() || rec.inline_data.len() != rec.stored_len as usize {
        return bad(format!(
            "{} inline bytes, stored length {}",
            rec.inline_data.len(),
            rec.stored_len
        ));
    }
    if rec.inline_data.len() > max_stored {
        return bad(format!(
            "{} inline bytes, more than the {max_stored} allowed",
            rec.inline_data.len()
        ));
    }
    Ok(())
}

/// The raw bytes of an inline chunk, decoded and verified against `fp`.
/// `dictionary`: the one the record names (`ChunkRecord.dictionary`), when
/// it names one.
pub fn decode(
    fp: &Fingerprint,
    rec: &ChunkRecord,
    dictionary: Option<&Dictionary>,
) -> Result<Vec<u8>, InlineError> {
    check_shape(rec, MAX_INLINE_BYTES)?;
    let raw_len = rec.raw_len as usize;
    let raw = match rec.dictionary {
        0 => codec::decompress_i32(rec.codec, &rec.inline_data, raw_len)?,
        id => match dictionary {
            Some(d) if d.id() == id && rec.codec == Codec::Zstd as i32 => {
                d.decompress(&rec.inline_data, raw_len)?
            }
            _ => return Err(InlineError::NeedsDictionary(id)),
        },
    };
    if Fingerprint::of(&raw) != *fp {
        return Err(InlineError::Mismatch);
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{compress, CodecPolicy};

    fn inline_of(raw: &[u8]) -> (Fingerprint, ChunkRecord) {
        let (codec, stored) = compress(CodecPolicy::Lz4, raw);
        (
            Fingerprint::of(raw),
            record(raw.len() as u32, codec, stored),
        )
    }

    #[test]
    fn decodes_what_it_encoded() {
        let raw = b"fn main() { println!(\"hello\"); }\n".repeat(40);
        let (fp, rec) = inline_of(&raw);
        assert!(rec.is_inline());
        assert!(rec.inline_data.len() < raw.len(), "compressed");
        assert_eq!(decode(&fp, &rec, None).expect("decodes"), raw);
    }

    #[test]
    fn refuses_bytes_of_another_chunk() {
        let (_, rec) = inline_of(b"one file's bytes");
        let other = Fingerprint::of(b"another file's bytes");
        assert_eq!(decode(&other, &rec, None), Err(InlineError::Mismatch));
    }

    #[test]
    fn refuses_malformed_records() {
        let (fp, good) = inline_of(&[7u8; 3000]);
        let mut short = good.clone();
        short.stored_len += 1;
        let mut with_servers = good.clone();
        with_servers.shard_servers = vec![1];
        let mut with_shards = good.clone();
        with_shards.layout = Some(Layout {
            replicas: 3,
            ..layout()
        });
        let mut empty = good.clone();
        empty.inline_data.clear();
        empty.stored_len = 0;
        for rec in [short, with_servers, with_shards, empty] {
            assert!(
                matches!(decode(&fp, &rec, None), Err(InlineError::Malformed(_))),
                "{rec:?}"
            );
        }
        let mut not_inline = good.clone();
        not_inline.layout = Some(Layout {
            data_shards: 1,
            replicas: 3,
            ..Layout::default()
        });
        assert_eq!(decode(&fp, &not_inline, None), Err(InlineError::NotInline));
        let big = vec![0u8; 100];
        let rec = record(100, Codec::None, big);
        assert!(matches!(
            check_shape(&rec, 99),
            Err(InlineError::Malformed(_))
        ));
        assert!(check_shape(&rec, 100).is_ok());
    }
}
