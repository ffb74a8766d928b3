//! The volume's compression dictionaries (`dfs_core::dictionary`), kept
//! under `Z id`: trained by the tiering worker from a sample of the
//! volume's inline chunks (the small ones, where a dictionary pays), used
//! when it recompresses small chunks for the warm tier, fetched by mounts
//! (`Meta/GetDictionary`) to decode them.
//!
//! A dictionary is never changed or deleted once written: chunks name it
//! by id, and at most one is trained every [`RETRAIN_AFTER`] (64 KiB each),
//! so keeping them all costs less than tracking which are still named.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use dfs_core::codec::{compress, CodecPolicy};
use dfs_core::dictionary::{self, Dictionary};
use dfs_core::fingerprint::Fingerprint;
use dfs_core::inline::{self, InlineError};
use dfs_proto::{ChunkRecord, DictionaryRecord, MappedChunk};
use prost::Message;

use crate::error::{MetaError, Result};
use crate::keys;
use crate::store::{get_record, put_record, read_only, transact, KvTxn, MetaStore};

/// A newer dictionary is trained when the newest is this old: what a
/// volume's small files look like drifts slowly.
pub const RETRAIN_AFTER: Duration = Duration::from_secs(30 * 86_400);

/// Chunks sampled for training, at most.
const SAMPLE_TARGET: usize = 2_000;

/// The sample is read from this many random points of the dedup index
/// (fingerprints are uniform, so a random key is a random chunk), each a
/// short range: a bounded number of small reads whatever the volume's size.
const SAMPLE_PROBES: usize = 64;
const ROWS_PER_PROBE: usize = 64;

/// Dictionary `id`'s record, if written.
pub fn get(txn: &mut dyn KvTxn, id: u64) -> Result<Option<DictionaryRecord>> {
    get_record(txn, &keys::dictionary(id))
}

/// The newest dictionary's record, if any was trained.
pub fn latest(txn: &mut dyn KvTxn) -> Result<Option<DictionaryRecord>> {
    let (begin, end) = keys::tag_range(keys::DICTIONARY);
    let rows = txn.range(&begin, &end, 1, true)?;
    match rows.first() {
        Some((_, value)) => Ok(Some(DictionaryRecord::decode(value.as_slice())?)),
        None => Ok(None),
    }
}

/// Dictionary `id` for a client. One confined to a subtree may not have
/// any: a dictionary holds fragments of the whole volume's small files.
/// Its chunk maps come without dictionary-compressed bytes instead
/// ([`confine`]).
pub fn for_client(txn: &mut dyn KvTxn, id: u64, confined: bool) -> Result<DictionaryRecord> {
    if confined {
        return Err(MetaError::AccessDenied(
            "a client confined to a subtree cannot read the volume's compression dictionaries"
                .into(),
        ));
    }
    get(txn, id)?.ok_or(MetaError::NotFound)
}

/// For a client confined to a subtree (`confined`): the inline chunks of
/// `chunks` compressed with a dictionary are decoded here and sent LZ4
/// compressed, so that it never needs a dictionary.
pub fn confine(txn: &mut dyn KvTxn, chunks: &mut [MappedChunk], confined: bool) -> Result<()> {
    if !confined {
        return Ok(());
    }
    let mut loaded: HashMap<u64, Dictionary> = HashMap::new();
    for c in chunks {
        let Some(rec) = c.chunk.as_mut().filter(|r| r.dictionary != 0) else {
            continue;
        };
        let id = rec.dictionary;
        let dictionary = match loaded.entry(id) {
            std::collections::hash_map::Entry::Occupied(known) => known.into_mut(),
            std::collections::hash_map::Entry::Vacant(slot) => {
                let d = get(txn, id)?.ok_or_else(|| {
                    MetaError::Invalid(format!("compression dictionary {id} is missing"))
                })?;
                slot.insert(Dictionary::new(id, d.data))
            }
        };
        let bad =
            |e: String| MetaError::Invalid(format!("chunk {}: {e}", hex::encode(&c.fingerprint)));
        let fp = Fingerprint::from_slice(&c.fingerprint).map_err(|e| bad(e.to_string()))?;
        let raw = inline::decode(&fp, rec, Some(dictionary)).map_err(|e| bad(e.to_string()))?;
        let (codec, stored) = compress(CodecPolicy::Lz4, &raw);
        rec.set_codec(codec);
        rec.stored_len = stored.len() as u32;
        rec.inline_data = stored;
        rec.dictionary = 0;
    }
    Ok(())
}

/// Every dictionary, ready to decode with (there are few: one a month at
/// most), for async callers that cannot read the store on demand.
pub fn load_all(txn: &mut dyn KvTxn) -> Result<HashMap<u64, Arc<Dictionary>>> {
    let (begin, end) = keys::tag_range(keys::DICTIONARY);
    let mut out = HashMap::new();
    for (_, value) in txn.range(&begin, &end, 0, false)? {
        let rec = DictionaryRecord::decode(value.as_slice())?;
        out.insert(rec.id, Arc::new(Dictionary::new(rec.id, rec.data)));
    }
    Ok(out)
}

/// Dictionaries read from the store, kept for the length of a pass (they
/// never change, so any copy is current).
pub struct Dictionaries<'a> {
    store: &'a dyn MetaStore,
    loaded: HashMap<u64, Arc<Dictionary>>,
}

impl<'a> Dictionaries<'a> {
    pub fn new(store: &'a dyn MetaStore) -> Self {
        Self {
            store,
            loaded: HashMap::new(),
        }
    }

    /// Dictionary `id`; an error when it is not in the store (a record
    /// naming it is then unreadable: fsck reports it).
    pub fn get(&mut self, id: u64) -> Result<Arc<Dictionary>> {
        if let Some(d) = self.loaded.get(&id) {
            return Ok(d.clone());
        }
        let rec = read_only(self.store, |t| get(t, id))?
            .ok_or_else(|| MetaError::Invalid(format!("compression dictionary {id} is missing")))?;
        let d = Arc::new(Dictionary::new(id, rec.data));
        self.loaded.insert(id, d.clone());
        Ok(d)
    }

    /// The raw bytes of inline chunk `fp`, with the dictionary it names.
    pub fn decode_inline(
        &mut self,
        fp: &Fingerprint,
        rec: &ChunkRecord,
    ) -> std::result::Result<Vec<u8>, InlineError> {
        let dict = match rec.dictionary {
            0 => None,
            id => Some(
                self.get(id)
                    .map_err(|e| InlineError::Malformed(e.to_string()))?,
            ),
        };
        inline::decode(fp, rec, dict.as_deref())
    }
}

/// Trains a new dictionary when none exists or the newest is older than
/// [`RETRAIN_AFTER`], from a sample of the volume's inline chunks; `None`
/// when none was due or the volume has too few small chunks yet.
pub fn train_if_due(store: &dyn MetaStore, now_ns: i64) -> Result<Option<DictionaryRecord>> {
    let newest = read_only(store, latest)?;
    if let Some(d) = &newest {
        let age = now_ns.saturating_sub(d.created_ns);
        if u128::try_from(age).unwrap_or(0) < RETRAIN_AFTER.as_nanos() {
            return Ok(None);
        }
    }
    let samples = sample(store, now_ns)?;
    let sample_bytes: usize = samples.iter().map(Vec::len).sum();
    let data = match dictionary::train(&samples) {
        Ok(data) => data,
        Err(e @ dictionary::DictionaryError::TooFewSamples { .. }) => {
            tracing::debug!(error = %e, "no compression dictionary yet");
            return Ok(None);
        }
        Err(e) => {
            tracing::warn!(error = %e, "training a compression dictionary failed; next pass");
            return Ok(None);
        }
    };
    let id = newest.map_or(1, |d| d.id + 1);
    let record = DictionaryRecord {
        id,
        data,
        created_ns: now_ns,
        samples: samples.len() as u32,
        sample_bytes: sample_bytes as u64,
    };
    let written = transact(store, |t| {
        // Another pass got there first: keep its dictionary.
        if get(t, id)?.is_some() {
            return Ok::<_, MetaError>(false);
        }
        put_record(t, &keys::dictionary(id), &record);
        Ok(true)
    })?;
    if !written {
        return Ok(None);
    }
    tracing::info!(
        dictionary = id,
        bytes = record.data.len(),
        samples = record.samples,
        sample_bytes = record.sample_bytes,
        "trained a compression dictionary"
    );
    Ok(Some(record))
}

/// Up to [`SAMPLE_TARGET`] raw inline chunks, read around random points of
/// the dedup index.
fn sample(store: &dyn MetaStore, seed: i64) -> Result<Vec<Vec<u8>>> {
    let mut rng = dfs_core::xorshift::XorShift(seed as u64 | 1);
    let (_, end) = keys::tag_range(keys::HASH);
    let mut seen = HashSet::new();
    let mut samples = Vec::new();
    let mut dictionaries = Dictionaries::new(store);
    for _ in 0..SAMPLE_PROBES {
        if samples.len() >= SAMPLE_TARGET {
            break;
        }
        let start = keys::hash(&rng.bytes(32));
        let rows = read_only(store, |t| {
            t.range(&start, &end, ROWS_PER_PROBE, false)
                .map_err(MetaError::from)
        })?;
        for (key, value) in rows {
            if samples.len() >= SAMPLE_TARGET || !seen.insert(key.clone()) {
                continue;
            }
            let Ok(rec) = ChunkRecord::decode(value.as_slice()) else {
                continue;
            };
            let Ok(fp) = Fingerprint::from_slice(&key[1..]) else {
                continue;
            };
            if rec.is_inline() {
                // Unreadable entries are fsck's business, not the sample's.
                if let Ok(raw) = dictionaries.decode_inline(&fp, &rec) {
                    samples.push(raw);
                }
            }
        }
    }
    Ok(samples)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    fn put_inline(store: &dyn MetaStore, raw: &[u8]) -> Fingerprint {
        let fp = Fingerprint::of(raw);
        let (codec, stored) = compress(CodecPolicy::Lz4, raw);
        let rec = inline::record(raw.len() as u32, codec, stored);
        transact(store, |t| {
            put_record(t, &keys::hash(fp.as_ref()), &rec);
            Ok::<_, MetaError>(())
        })
        .unwrap();
        fp
    }

    fn source(i: usize) -> Vec<u8> {
        let mut s = String::from("#include <stdio.h>\n#include \"dfs.h\"\n\n");
        for j in 0..(40 + i % 20) {
            s.push_str(&format!(
                "static int dfs_handle_{i}_{j}(struct request *req) {{ return reply(req, {j}); }}\n"
            ));
        }
        s.into_bytes()
    }

    #[test]
    fn a_confined_client_gets_no_dictionary_and_maps_it_can_decode_without() {
        let store = MemStore::default();
        for i in 0..600 {
            put_inline(&store, &source(i));
        }
        let trained = train_if_due(&store, 1).unwrap().expect("trained");
        let dict = Dictionary::new(trained.id, trained.data.clone());
        let raw = source(7);
        let fp = Fingerprint::of(&raw);
        let stored = dict
            .compressor(3)
            .unwrap()
            .compress(&raw, usize::MAX)
            .unwrap();
        let mut rec = inline::record(raw.len() as u32, dfs_proto::Codec::Zstd, stored);
        rec.dictionary = trained.id;
        let mut chunks = vec![MappedChunk {
            fingerprint: fp.to_vec(),
            chunk: Some(rec.clone()),
            ..MappedChunk::default()
        }];
        read_only(&store, |t| {
            assert!(for_client(t, trained.id, false).is_ok());
            assert!(matches!(
                for_client(t, trained.id, true),
                Err(MetaError::AccessDenied(_))
            ));
            // Unconfined: the map as it is.
            confine(t, &mut chunks, false)?;
            assert_eq!(chunks[0].chunk.as_ref(), Some(&rec));
            confine(t, &mut chunks, true)
        })
        .unwrap();
        let sent = chunks[0].chunk.as_ref().unwrap();
        assert_eq!(sent.dictionary, 0);
        assert_eq!(inline::decode(&fp, sent, None).unwrap(), raw);
    }

    #[test]
    fn trains_once_from_inline_chunks_and_then_waits() {
        let store = MemStore::default();
        let now = 1_000_000_000_000_000_000;
        // Too few small chunks: nothing trained.
        for i in 0..20 {
            put_inline(&store, &source(i));
        }
        assert!(train_if_due(&store, now).unwrap().is_none());
        for i in 20..600 {
            put_inline(&store, &source(i));
        }
        let first = train_if_due(&store, now).unwrap().expect("trained");
        assert_eq!(first.id, 1);
        assert!(first.samples as usize >= dictionary::MIN_SAMPLES);
        assert!(!first.data.is_empty() && first.data.len() <= dictionary::MAX_DICTIONARY_BYTES);
        // Not due again until RETRAIN_AFTER.
        assert!(train_if_due(&store, now + 1).unwrap().is_none());
        let later = now + RETRAIN_AFTER.as_nanos() as i64;
        let second = train_if_due(&store, later).unwrap().expect("retrained");
        assert_eq!(second.id, 2);
        assert_eq!(read_only(&store, latest).unwrap().unwrap().id, 2);
        // Both stay readable by id.
        let mut dicts = Dictionaries::new(&store);
        assert_eq!(dicts.get(1).unwrap().id(), 1);
        assert_eq!(dicts.get(2).unwrap().bytes(), second.data.as_slice());
        assert!(dicts.get(3).is_err());
    }
}
