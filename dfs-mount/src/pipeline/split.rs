//! Staging a chunk too big to stage whole.
//!
//! A small flush stages its chunks inline in the metadata store, each at
//! most the volume's `stage_max_bytes` stored (96 KiB: with its record,
//! under FoundationDB's 100 kB value limit). Content-defined chunking cuts
//! chunks of up to 128 KiB, and random or already-compressed bytes store
//! raw, so about a third of the chunks of small incompressible files stored
//! over the limit and their files paid a dedup lookup and nine chunk-server
//! uploads (~5 ms a file here) instead of one commit (~2 ms). Such a chunk
//! is committed as its two halves instead, each a chunk of its own (its own
//! fingerprint, entry and reference count) that stages whole.
//!
//! The cut is at the middle, so the same bytes staged again split the same
//! way and deduplicate against the halves. What it costs: the halves do not
//! deduplicate against the whole chunk written through the servers (by a
//! big stream), and the file's chunk map has one entry more.

use bytes::Bytes;
use dfs_core::codec::{self, CodecPolicy};
use dfs_core::fingerprint::Fingerprint;
use dfs_proto::Codec;

/// One half of a split chunk, ready to go inline.
pub struct Half {
    /// Where it starts inside the chunk it was cut from.
    pub start: usize,
    pub data: Bytes,
    pub fp: Fingerprint,
    pub codec: Codec,
    pub stored: Vec<u8>,
}

/// Cuts `data` (a chunk that stores in more than `limit`) at its middle
/// into two halves that each store in at most `limit`; `None` when one
/// would not (a chunk over twice `limit` raw, or too short to cut).
pub fn halves(policy: CodecPolicy, data: &Bytes, limit: usize) -> Option<[Half; 2]> {
    let limit = limit.min(dfs_core::inline::MAX_INLINE_BYTES);
    if data.len() < 2 || data.len() > 2 * limit {
        return None;
    }
    let mid = data.len() / 2;
    let half = |start: usize, end: usize| {
        let data = data.slice(start..end);
        let (codec, stored) = codec::compress(policy, &data);
        (stored.len() <= limit).then(|| Half {
            start,
            fp: Fingerprint::of(&data),
            data,
            codec,
            stored,
        })
    };
    Some([half(0, mid)?, half(mid, data.len())?])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use dfs_core::xorshift::XorShift;

    fn random(len: usize, seed: u64) -> Bytes {
        let mut rng = XorShift(seed);
        Bytes::from((0..len).map(|_| rng.below(256) as u8).collect::<Vec<_>>())
    }

    #[test]
    fn an_incompressible_chunk_splits_into_halves_that_fit_and_rejoin() {
        let data = random(128 * 1024, 7);
        let limit = 96 * 1024;
        let [a, b] = halves(CodecPolicy::Lz4, &data, limit).unwrap();
        assert_eq!((a.start, b.start), (0, 64 * 1024));
        assert!(a.stored.len() <= limit && b.stored.len() <= limit);
        let mut joined = a.data.to_vec();
        joined.extend_from_slice(&b.data);
        assert_eq!(joined, data);
        assert_eq!(a.fp, Fingerprint::of(&data[..64 * 1024]));
        assert_eq!(b.fp, Fingerprint::of(&data[64 * 1024..]));
        let raw = codec::decompress_i32(b.codec as i32, &b.stored, b.data.len()).unwrap();
        assert_eq!(raw, b.data);
    }

    #[test]
    fn the_same_bytes_split_the_same_way() {
        let data = random(100_001, 9);
        let first = halves(CodecPolicy::Lz4, &data, 96 * 1024).unwrap();
        let again = halves(CodecPolicy::Lz4, &data.clone(), 96 * 1024).unwrap();
        assert_eq!(first[0].fp, again[0].fp);
        assert_eq!(first[1].fp, again[1].fp);
        assert_eq!(first[1].start, 50_000);
    }

    #[test]
    fn a_chunk_over_twice_the_limit_is_not_split() {
        assert!(halves(CodecPolicy::Lz4, &random(20_000, 3), 8 * 1024).is_none());
        assert!(halves(CodecPolicy::Lz4, &Bytes::from_static(b"x"), 8).is_none());
    }
}
