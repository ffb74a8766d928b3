//! Chunk compression.
//!
//! Each chunk is compressed on its own (so any chunk can be read without its
//! neighbours) and the codec used is recorded per chunk in its
//! `ChunkRecord`, so the policy can change at any time without rewriting
//! stored data: readers always decode by the recorded codec.
//!
//! Decompression treats stored bytes as untrusted: they come off disks and
//! networks. It never panics, never allocates more than the `raw_len`
//! recorded in metadata (sizes embedded in the compressed stream are not
//! trusted) and rejects output of any other length. None of the formats used
//! here carries a checksum we rely on: callers verify the chunk's
//! [`Fingerprint`](crate::Fingerprint) after decoding, which catches any
//! corruption that still happens to decode.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use dfs_proto::Codec;

/// Which compressor new chunks get, as configured by an operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum CodecPolicy {
    /// Fast, modest ratio: the default, because it costs less CPU than the
    /// network it saves.
    #[default]
    Lz4,
    /// Better ratio at level 3, still fast to decode.
    Zstd,
    /// Best ratio, slow: for cold, archival data.
    Lzma,
    /// Never compress (data known to be incompressible, or CPU-starved).
    None,
    /// The codec model (`codec_model`) picks per chunk, for the hot tier.
    Auto,
}

impl CodecPolicy {
    /// Every policy name [`FromStr`] accepts.
    pub const NAMES: [&'static str; 5] = ["lz4", "zstd", "lzma", "none", "auto"];

    /// The configuration name of this policy.
    pub fn name(self) -> &'static str {
        match self {
            CodecPolicy::Lz4 => "lz4",
            CodecPolicy::Zstd => "zstd",
            CodecPolicy::Lzma => "lzma",
            CodecPolicy::None => "none",
            CodecPolicy::Auto => "auto",
        }
    }
}

impl fmt::Display for CodecPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Serialised as its name, so configuration files say `"zstd"`.
impl serde::Serialize for CodecPolicy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// Accepts the same names as [`FromStr`].
impl<'de> serde::Deserialize<'de> for CodecPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// A codec name that is not one of [`CodecPolicy::NAMES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown codec {0:?}: expected one of lz4, zstd, lzma, none, auto")]
pub struct UnknownCodec(pub String);

impl FromStr for CodecPolicy {
    type Err = UnknownCodec;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "lz4" => Ok(CodecPolicy::Lz4),
            "zstd" => Ok(CodecPolicy::Zstd),
            "lzma" | "xz" => Ok(CodecPolicy::Lzma),
            "none" => Ok(CodecPolicy::None),
            "auto" => Ok(CodecPolicy::Auto),
            _ => Err(UnknownCodec(s.to_string())),
        }
    }
}

/// Why stored bytes could not be turned back into the raw chunk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The decoder rejected the input: corrupt or truncated stored bytes.
    #[error("{codec} data is corrupt: {reason}")]
    Corrupt {
        /// Codec name.
        codec: &'static str,
        /// What the decoder said.
        reason: String,
    },
    /// The input decoded, but not to the length recorded in metadata.
    #[error("{codec} data decoded to {got} bytes, expected {expected}")]
    WrongLength {
        /// Codec name.
        codec: &'static str,
        /// Bytes produced (for overlong output: at least this many).
        got: usize,
        /// The recorded raw length.
        expected: usize,
    },
    /// A codec value this build does not know (a newer writer?).
    #[error("unknown codec number {0}")]
    UnknownCodec(i32),
}

/// zstd level for [`CodecPolicy::Zstd`]: zstd's own default, a good
/// speed/ratio balance.
const ZSTD_LEVEL: i32 = 3;
/// xz preset for [`CodecPolicy::Lzma`].
const XZ_PRESET: u32 = 6;
/// Preset 6 asks for an 8 MiB dictionary and ~90 MiB of encoder state; a
/// chunk is at most 128 KiB, so a 256 KiB dictionary compresses identically
/// at a fraction of the memory and setup time.
const XZ_DICT_SIZE: u32 = 256 * 1024;
/// Decoder memory cap: far above what our own streams need (~0.3 MiB), low
/// enough that a corrupt header claiming a huge dictionary fails instead of
/// allocating it.
const XZ_DECODE_MEMLIMIT: u64 = 64 << 20;

/// Size of each sample slice for the compressibility probe.
const SAMPLE_SLICE: usize = 4096;
/// A sample must shrink to at most this fraction (in percent) of its size
/// for the chunk to be worth compressing.
const SAMPLE_MAX_PERCENT: usize = 97;

/// Compresses a chunk according to `policy`, returning the codec actually
/// used and the stored bytes.
///
/// Compression is skipped (stored with [`Codec::None`]) when a cheap LZ4
/// probe of three 4 KiB samples shows the data barely shrinks (already
/// compressed media, encrypted data), which saves the full compressor's CPU,
/// and whenever the compressed output would not be smaller than the input,
/// so stored bytes never exceed the raw ones.
pub fn compress(policy: CodecPolicy, raw: &[u8]) -> (Codec, Vec<u8>) {
    compress_unless_raw(policy, raw).unwrap_or_else(|| (Codec::None, raw.to_vec()))
}

/// As [`compress`], but `None` when `raw` is best stored as it is: a
/// caller that already holds the bytes (the mount's write buffer) then
/// stores them without the copy `compress` would make of them.
pub fn compress_unless_raw(policy: CodecPolicy, raw: &[u8]) -> Option<(Codec, Vec<u8>)> {
    if policy == CodecPolicy::Auto {
        let (codec, stored) = crate::codec_model::compress_auto(crate::tier::Tier::Hot, None, raw);
        return (codec != Codec::None).then_some((codec, stored));
    }
    if policy == CodecPolicy::None || raw.is_empty() || !looks_compressible(raw) {
        return None;
    }
    let level = match policy {
        CodecPolicy::Lzma => XZ_PRESET as i32,
        _ => ZSTD_LEVEL,
    };
    compress_at_unless_raw(policy, level, raw)
}

/// Compresses `raw` with `policy` at `level` (zstd: 1 to 19; xz: preset 0
/// to 9; ignored by LZ4) without the compressibility probe, for a caller
/// that already decided (the codec model). Stored raw when the result would
/// not be smaller. [`CodecPolicy::Auto`] ignores `level`: the model decides.
pub fn compress_at(policy: CodecPolicy, level: i32, raw: &[u8]) -> (Codec, Vec<u8>) {
    compress_at_unless_raw(policy, level, raw).unwrap_or_else(|| (Codec::None, raw.to_vec()))
}

fn compress_at_unless_raw(policy: CodecPolicy, level: i32, raw: &[u8]) -> Option<(Codec, Vec<u8>)> {
    if policy == CodecPolicy::None || raw.is_empty() {
        return None;
    }
    if policy == CodecPolicy::Auto {
        return compress_unless_raw(policy, raw);
    }
    let out = match policy {
        CodecPolicy::Lz4 => Some((Codec::Lz4, lz4_flex::block::compress(raw))),
        CodecPolicy::Zstd => zstd::bulk::compress(raw, level.clamp(1, 19))
            .ok()
            .map(|v| (Codec::Zstd, v)),
        CodecPolicy::Lzma => {
            let preset = u32::try_from(level.clamp(0, 9)).unwrap_or(XZ_PRESET);
            xz_compress(raw, preset, XZ_DICT_SIZE).map(|v| (Codec::Lzma, v))
        }
        CodecPolicy::None | CodecPolicy::Auto => None,
    };
    // Not smaller, or the compressor failed (it should not): storing raw
    // is always correct.
    out.filter(|(_, stored)| stored.len() < raw.len())
}

/// Estimates whether `raw` is worth compressing from up to three 4 KiB
/// samples (start, middle, end) compressed with LZ4.
fn looks_compressible(raw: &[u8]) -> bool {
    let (sample_len, packed_len) = if raw.len() <= 3 * SAMPLE_SLICE {
        (raw.len(), lz4_flex::block::compress(raw).len())
    } else {
        let mid = raw.len() / 2 - SAMPLE_SLICE / 2;
        let end = raw.len() - SAMPLE_SLICE;
        [0, mid, end].iter().fold((0, 0), |(s, p), &o| {
            let slice = &raw[o..o + SAMPLE_SLICE];
            (s + slice.len(), p + lz4_flex::block::compress(slice).len())
        })
    };
    packed_len * 100 <= sample_len * SAMPLE_MAX_PERCENT
}

/// Compresses a frame of many chunks stored together (a cold pack's):
/// xz with a dictionary as big as the frame, so a chunk finds what it
/// repeats anywhere before it in the frame. Raw when that does not shrink
/// it.
pub fn compress_frame(raw: &[u8]) -> (Codec, Vec<u8>) {
    let dict = u32::try_from(raw.len())
        .unwrap_or(u32::MAX)
        .clamp(XZ_DICT_SIZE, 8 * 1024 * 1024);
    match xz_compress(raw, XZ_PRESET, dict) {
        Some(stored) if stored.len() < raw.len() => (Codec::Lzma, stored),
        _ => (Codec::None, raw.to_vec()),
    }
}

/// xz with `preset` and a dictionary of `dict_size`. Output is capped at
/// the input's size: a result that large would be thrown away anyway.
fn xz_compress(raw: &[u8], preset: u32, dict_size: u32) -> Option<Vec<u8>> {
    use xz2::stream::{Action, Check, Filters, LzmaOptions, Status, Stream};
    let mut opts = LzmaOptions::new_preset(preset).ok()?;
    opts.dict_size(dict_size);
    let mut filters = Filters::new();
    filters.lzma2(&opts);
    // No xz check: the chunk fingerprint already verifies the raw bytes.
    let mut stream = Stream::new_stream_encoder(&filters, Check::None).ok()?;
    let mut out = Vec::with_capacity(raw.len());
    loop {
        let consumed = usize::try_from(stream.total_in()).ok()?;
        let input = raw.get(consumed..)?;
        let before = (stream.total_in(), out.len());
        match stream.process_vec(input, &mut out, Action::Finish).ok()? {
            Status::StreamEnd => return Some(out),
            _ if out.len() == out.capacity() => return None,
            _ if (stream.total_in(), out.len()) == before => return None,
            _ => {}
        }
    }
}

/// [`decompress`] of bytes as received: stored raw, they are the answer,
/// without a copy (incompressible data, read at hundreds of MiB/s).
pub fn decompress_shared(codec: Codec, stored: Bytes, raw_len: usize) -> Result<Bytes, CodecError> {
    match codec {
        Codec::None if stored.len() == raw_len => Ok(stored),
        _ => decompress(codec, &stored, raw_len).map(Bytes::from),
    }
}

/// Decodes stored bytes back into the raw chunk of length `raw_len`.
///
/// Never panics and never allocates more than `raw_len` (+1 for xz, to
/// detect overlong output) whatever `stored` contains.
pub fn decompress(codec: Codec, stored: &[u8], raw_len: usize) -> Result<Vec<u8>, CodecError> {
    let name = codec_name(codec);
    let check = |out: Vec<u8>| {
        if out.len() == raw_len {
            Ok(out)
        } else {
            Err(CodecError::WrongLength {
                codec: name,
                got: out.len(),
                expected: raw_len,
            })
        }
    };
    let corrupt = |reason: String| CodecError::Corrupt {
        codec: name,
        reason,
    };
    match codec {
        Codec::None => check(stored.to_vec()),
        Codec::Lz4 => {
            let mut out = vec![0u8; raw_len];
            let n = lz4_flex::block::decompress_into(stored, &mut out)
                .map_err(|e| corrupt(e.to_string()))?;
            out.truncate(n);
            check(out)
        }
        Codec::Zstd => {
            let mut out = Vec::with_capacity(raw_len);
            zstd::bulk::Decompressor::new()
                .and_then(|mut d| d.decompress_to_buffer(stored, &mut out))
                .map_err(|e| corrupt(e.to_string()))?;
            check(out)
        }
        Codec::Lzma => check(xz_decompress(stored, raw_len).map_err(corrupt)?),
    }
}

/// Like [`decompress`] for a codec number straight off the wire.
pub fn decompress_i32(codec: i32, stored: &[u8], raw_len: usize) -> Result<Vec<u8>, CodecError> {
    let codec = Codec::try_from(codec).map_err(|_| CodecError::UnknownCodec(codec))?;
    decompress(codec, stored, raw_len)
}

fn codec_name(codec: Codec) -> &'static str {
    match codec {
        Codec::None => "none",
        Codec::Lz4 => "lz4",
        Codec::Zstd => "zstd",
        Codec::Lzma => "lzma",
    }
}

fn xz_decompress(stored: &[u8], raw_len: usize) -> Result<Vec<u8>, String> {
    use xz2::stream::{Action, Status, Stream};
    let mut stream =
        Stream::new_stream_decoder(XZ_DECODE_MEMLIMIT, 0).map_err(|e| e.to_string())?;
    // One spare byte so that output longer than raw_len is seen as such
    // rather than as a full buffer.
    let mut out = Vec::with_capacity(raw_len.saturating_add(1));
    loop {
        let consumed = usize::try_from(stream.total_in()).map_err(|e| e.to_string())?;
        let input = stored.get(consumed..).ok_or("decoder overran input")?;
        let before = (consumed, out.len());
        let status = stream
            .process_vec(input, &mut out, Action::Finish)
            .map_err(|e| e.to_string())?;
        if status == Status::StreamEnd {
            let consumed = usize::try_from(stream.total_in()).map_err(|e| e.to_string())?;
            if consumed != stored.len() {
                return Err(format!(
                    "{} trailing bytes after xz stream",
                    stored.len() - consumed
                ));
            }
            return Ok(out);
        }
        if out.len() > raw_len {
            return Err(format!("output exceeds {raw_len} bytes"));
        }
        let after = (
            usize::try_from(stream.total_in()).map_err(|e| e.to_string())?,
            out.len(),
        );
        if after == before {
            return Err("truncated xz stream".to_string());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rand::{Rng, RngCore, SeedableRng};

    fn text_like(len: usize) -> Vec<u8> {
        let words = [
            "chunk ",
            "server ",
            "the ",
            "metadata ",
            "replica ",
            "of ",
            "a ",
            "file\n",
            "directory ",
            "fingerprint ",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut out = Vec::with_capacity(len + 16);
        while out.len() < len {
            out.extend_from_slice(words[rng.gen_range(0..words.len())].as_bytes());
        }
        out.truncate(len);
        out
    }

    fn random(len: usize, seed: u64) -> Vec<u8> {
        let mut v = vec![0u8; len];
        rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
        v
    }

    const POLICIES: [CodecPolicy; 4] = [
        CodecPolicy::Lz4,
        CodecPolicy::Zstd,
        CodecPolicy::Lzma,
        CodecPolicy::None,
    ];

    #[test]
    fn parse_names() {
        for p in POLICIES {
            assert_eq!(p.name().parse::<CodecPolicy>().unwrap(), p);
            assert_eq!(p.to_string().parse::<CodecPolicy>().unwrap(), p);
        }
        assert_eq!("ZSTD".parse::<CodecPolicy>().unwrap(), CodecPolicy::Zstd);
        use serde::de::{value::StrDeserializer, Deserialize};
        let de = StrDeserializer::<serde::de::value::Error>::new("lzma");
        assert_eq!(CodecPolicy::deserialize(de).unwrap(), CodecPolicy::Lzma);
        let de = StrDeserializer::<serde::de::value::Error>::new("gzip");
        assert!(CodecPolicy::deserialize(de).is_err());
        let err = "gzip".parse::<CodecPolicy>().unwrap_err().to_string();
        for name in CodecPolicy::NAMES {
            assert!(err.contains(name), "{err}");
        }
    }

    #[test]
    fn round_trip_text() {
        for len in [1, 100, 5000, 12 * 1024, 64 * 1024, 128 * 1024] {
            let raw = text_like(len);
            for p in POLICIES {
                let (codec, stored) = compress(p, &raw);
                let expected = match p {
                    CodecPolicy::Lz4 => Codec::Lz4,
                    CodecPolicy::Zstd => Codec::Zstd,
                    CodecPolicy::Lzma => Codec::Lzma,
                    CodecPolicy::None => Codec::None,
                    CodecPolicy::Auto => unreachable!("not in POLICIES"),
                };
                if len >= 5000 {
                    assert_eq!(codec, expected, "{p} {len}");
                    if p != CodecPolicy::None {
                        assert!(stored.len() < raw.len() / 2, "{p} {len}");
                    }
                }
                assert!(stored.len() <= raw.len());
                assert_eq!(decompress(codec, &stored, raw.len()).unwrap(), raw);
                assert_eq!(
                    decompress_i32(codec as i32, &stored, raw.len()).unwrap(),
                    raw
                );
            }
        }
    }

    #[test]
    fn auto_lets_the_model_choose() {
        assert_eq!("auto".parse::<CodecPolicy>().unwrap(), CodecPolicy::Auto);
        let text = text_like(64 * 1024);
        let (codec, stored) = compress(CodecPolicy::Auto, &text);
        assert_ne!(codec, Codec::None);
        assert!(stored.len() < text.len() / 2);
        assert_eq!(decompress(codec, &stored, text.len()).unwrap(), text);
        let noise = random(64 * 1024, 5);
        let (codec, stored) = compress(CodecPolicy::Auto, &noise);
        assert_eq!((codec, stored), (Codec::None, noise));
    }

    #[test]
    fn random_is_stored_raw() {
        for len in [10, 4096, 100_000, 128 * 1024] {
            let raw = random(len, len as u64);
            for p in POLICIES {
                let (codec, stored) = compress(p, &raw);
                assert_eq!(codec, Codec::None, "{p} {len}");
                assert_eq!(stored, raw);
                assert_eq!(decompress(codec, &stored, len).unwrap(), raw);
            }
        }
    }

    #[test]
    fn empty_input() {
        for p in POLICIES {
            let (codec, stored) = compress(p, &[]);
            assert_eq!(codec, Codec::None);
            assert!(stored.is_empty());
            assert!(decompress(codec, &stored, 0).unwrap().is_empty());
        }
    }

    #[test]
    fn zeros_compress_with_every_codec() {
        // Zeros everywhere: trivially compressible, all codecs must shrink it.
        let raw = vec![0u8; 128 * 1024];
        for p in [CodecPolicy::Lz4, CodecPolicy::Zstd, CodecPolicy::Lzma] {
            let (codec, stored) = compress(p, &raw);
            assert_ne!(codec, Codec::None);
            assert!(stored.len() < 2048, "{p}: {}", stored.len());
            assert_eq!(decompress(codec, &stored, raw.len()).unwrap(), raw);
        }
    }

    #[test]
    fn wrong_raw_len_is_an_error() {
        let raw = text_like(50_000);
        for p in POLICIES {
            let (codec, stored) = compress(p, &raw);
            assert!(
                decompress(codec, &stored, raw.len() - 1).is_err(),
                "{p} short"
            );
            assert!(
                decompress(codec, &stored, raw.len() + 1).is_err(),
                "{p} long"
            );
            assert!(decompress(codec, &stored, 0).is_err(), "{p} zero");
        }
    }

    #[test]
    fn corrupt_input_errors_without_panicking() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let raw = text_like(40_000);
        for p in [CodecPolicy::Lz4, CodecPolicy::Zstd, CodecPolicy::Lzma] {
            let (codec, stored) = compress(p, &raw);
            assert_ne!(codec, Codec::None);
            // Truncations.
            for cut in [0, 1, 5, stored.len() / 2, stored.len() - 1] {
                assert!(
                    decompress(codec, &stored[..cut], raw.len()).is_err(),
                    "{p} cut {cut}"
                );
            }
            // Trailing garbage (rejected or at least never the wrong length).
            let mut longer = stored.clone();
            longer.extend_from_slice(b"garbage!");
            if let Ok(out) = decompress(codec, &longer, raw.len()) {
                assert_eq!(out.len(), raw.len());
            }
            // Random bit flips and byte smears: any outcome but a panic or a
            // wrong-length Ok.
            for _ in 0..300 {
                let mut bad = stored.clone();
                for _ in 0..rng.gen_range(1..8) {
                    let i = rng.gen_range(0..bad.len());
                    bad[i] ^= 1 << rng.gen_range(0..8);
                }
                if let Ok(out) = decompress(codec, &bad, raw.len()) {
                    assert_eq!(out.len(), raw.len());
                }
            }
            // Pure noise.
            for len in [1, 16, 1000, 100_000] {
                let noise = random(len, len as u64 + 17);
                if let Ok(out) = decompress(codec, &noise, raw.len()) {
                    assert_eq!(out.len(), raw.len());
                }
            }
        }
        assert!(decompress(Codec::None, b"abc", 4).is_err());
        let abc = Bytes::from_static(b"abc");
        assert!(decompress_shared(Codec::None, abc.clone(), 4).is_err());
        assert_eq!(decompress_shared(Codec::None, abc, 3).unwrap(), &b"abc"[..]);
        let text = text_like(10_000);
        let (codec, packed) = compress(CodecPolicy::Auto, &text);
        assert_ne!(codec, Codec::None);
        let unpacked = decompress_shared(codec, packed.into(), text.len()).unwrap();
        assert_eq!(unpacked, text);
        assert!(matches!(
            decompress_i32(42, b"abc", 3),
            Err(CodecError::UnknownCodec(42))
        ));
    }

    #[test]
    fn huge_claimed_size_does_not_allocate() {
        // A zstd frame whose header claims a 1 GiB content size: the decoder
        // must fail against our small raw_len instead of allocating it.
        let raw = vec![0u8; 1 << 20];
        let big = zstd::bulk::compress(&raw, 1).unwrap();
        assert!(decompress(Codec::Zstd, &big, 1000).is_err());
        let big = xz_compress(&raw, XZ_PRESET, XZ_DICT_SIZE).unwrap();
        assert!(decompress(Codec::Lzma, &big, 1000).is_err());
        let big = lz4_flex::block::compress(&raw);
        assert!(decompress(Codec::Lz4, &big, 1000).is_err());
    }
}
