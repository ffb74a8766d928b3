//! Compression dictionaries (issue 21): a zstd dictionary trained on a
//! sample of a volume's small chunks, so that each small chunk, compressed
//! on its own, still finds what all the others repeat (a source file's
//! licence header, its language's keywords, common paths). zstd's own
//! figures for small records are 2-5x; a chunk compressed alone sees none of
//! its neighbours.
//!
//! A dictionary never changes once written: it is kept under its id in the
//! metadata store (`dfs_meta::dictionary`), every chunk compressed with one
//! records that id (`ChunkRecord.dictionary`), and a newer dictionary gets a
//! new id. Readers fetch a dictionary once by id and keep it.

use zstd::dict::DecoderDictionary;

use crate::codec::CodecError;

/// The largest dictionary trained: zstd's advice is about 100 KiB for
/// records of a few KiB; 64 KiB keeps the whole dictionary in one value of
/// the metadata store (FoundationDB refuses values over 100 kB) and still
/// holds what a volume's small files share.
pub const MAX_DICTIONARY_BYTES: usize = 64 * 1024;

/// Training wants about a hundred times the dictionary's size in samples;
/// with less than this it learns noise, so no dictionary is trained.
pub const MIN_SAMPLE_BYTES: usize = 256 * 1024;

/// Fewer samples than this: not trained (zstd's trainer needs several to
/// tell shared from unique content).
pub const MIN_SAMPLES: usize = 64;

/// Why a dictionary could not be trained.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DictionaryError {
    #[error("{samples} samples of {bytes} bytes are too few to train a dictionary (need {MIN_SAMPLES} and {MIN_SAMPLE_BYTES} bytes)")]
    TooFewSamples { samples: usize, bytes: usize },
    #[error("zstd could not train a dictionary: {0}")]
    Training(String),
}

/// Trains a dictionary of at most [`MAX_DICTIONARY_BYTES`] on `samples`
/// (raw chunks). Its size is a tenth of the samples' when that is less:
/// a dictionary bigger than what it learned from only repeats it.
pub fn train(samples: &[Vec<u8>]) -> Result<Vec<u8>, DictionaryError> {
    let bytes: usize = samples.iter().map(Vec::len).sum();
    if samples.len() < MIN_SAMPLES || bytes < MIN_SAMPLE_BYTES {
        return Err(DictionaryError::TooFewSamples {
            samples: samples.len(),
            bytes,
        });
    }
    let size = (bytes / 10).min(MAX_DICTIONARY_BYTES);
    zstd::dict::from_samples(samples, size).map_err(|e| DictionaryError::Training(e.to_string()))
}

/// One dictionary, ready to decode with.
pub struct Dictionary {
    id: u64,
    bytes: Vec<u8>,
    decoder: DecoderDictionary<'static>,
}

impl std::fmt::Debug for Dictionary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dictionary")
            .field("id", &self.id)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl Dictionary {
    pub fn new(id: u64, bytes: Vec<u8>) -> Self {
        let decoder = DecoderDictionary::copy(&bytes);
        Self { id, bytes, decoder }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Decodes zstd bytes compressed with this dictionary into exactly
    /// `raw_len` bytes. Like `codec::decompress`: never allocates more than
    /// `raw_len` and never panics on corrupt input.
    pub fn decompress(&self, stored: &[u8], raw_len: usize) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::with_capacity(raw_len);
        zstd::bulk::Decompressor::with_prepared_dictionary(&self.decoder)
            .and_then(|mut d| d.decompress_to_buffer(stored, &mut out))
            .map_err(|e| CodecError::Corrupt {
                codec: "zstd+dictionary",
                reason: e.to_string(),
            })?;
        if out.len() != raw_len {
            return Err(CodecError::WrongLength {
                codec: "zstd+dictionary",
                got: out.len(),
                expected: raw_len,
            });
        }
        Ok(out)
    }

    /// A compressor at zstd `level` with this dictionary, for many chunks
    /// in a row (preparing the dictionary costs more than a small chunk).
    pub fn compressor(&self, level: i32) -> Option<DictionaryCompressor> {
        let inner = zstd::bulk::Compressor::with_dictionary(level, &self.bytes).ok()?;
        Some(DictionaryCompressor { id: self.id, inner })
    }
}

/// Compresses chunks with one dictionary.
pub struct DictionaryCompressor {
    id: u64,
    inner: zstd::bulk::Compressor<'static>,
}

impl DictionaryCompressor {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The zstd bytes of `raw`, or `None` when they are not smaller than
    /// `smaller_than` (or zstd failed: storing otherwise is always right).
    pub fn compress(&mut self, raw: &[u8], smaller_than: usize) -> Option<Vec<u8>> {
        self.inner
            .compress(raw)
            .ok()
            .filter(|out| out.len() < smaller_than)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Small "source files" sharing a header and vocabulary, each unique.
    fn sources(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                let mut s = String::from(
                    "// Copyright the dfs authors. Licensed under the Apache License, Version 2.0.\n\
                     use std::collections::HashMap;\nuse std::sync::Arc;\n\n",
                );
                for j in 0..(20 + i % 30) {
                    s.push_str(&format!(
                        "pub fn handler_{i}_{j}(request: &Request) -> Result<Response, Error> {{\n    let value = request.get({j}).ok_or(Error::NotFound)?;\n    Ok(Response::new(value * {i}))\n}}\n"
                    ));
                }
                s.into_bytes()
            })
            .collect()
    }

    #[test]
    fn a_trained_dictionary_shrinks_small_chunks_and_decodes_them() {
        let samples = sources(400);
        let bytes = train(&samples).unwrap();
        assert!(bytes.len() <= MAX_DICTIONARY_BYTES);
        let dict = Dictionary::new(7, bytes);
        let mut compressor = dict.compressor(3).unwrap();
        assert_eq!(compressor.id(), 7);
        let (mut plain, mut with_dict) = (0, 0);
        for raw in sources(440).into_iter().skip(400) {
            let alone = zstd::bulk::compress(&raw, 3).unwrap();
            let stored = compressor.compress(&raw, raw.len()).unwrap();
            plain += alone.len();
            with_dict += stored.len();
            assert_eq!(dict.decompress(&stored, raw.len()).unwrap(), raw);
            assert!(dict.decompress(&stored, raw.len() - 1).is_err());
            // Without the dictionary the bytes do not decode.
            assert!(crate::codec::decompress(dfs_proto::Codec::Zstd, &stored, raw.len()).is_err());
        }
        assert!(
            with_dict * 10 < plain * 7,
            "dictionary {with_dict} bytes vs alone {plain}"
        );
    }

    #[test]
    fn too_few_samples_are_refused() {
        assert!(matches!(
            train(&sources(10)),
            Err(DictionaryError::TooFewSamples { samples: 10, .. })
        ));
    }

    #[test]
    fn corrupt_bytes_are_an_error_not_a_panic() {
        let dict = Dictionary::new(1, train(&sources(300)).unwrap());
        let raw = sources(1).remove(0);
        let mut stored = dict
            .compressor(3)
            .unwrap()
            .compress(&raw, usize::MAX)
            .unwrap();
        for i in (0..stored.len()).step_by(7) {
            stored[i] ^= 0x5a;
            if let Ok(out) = dict.decompress(&stored, raw.len()) {
                assert_eq!(out.len(), raw.len());
            }
        }
        assert!(dict.decompress(b"not zstd", 10).is_err());
    }
}
