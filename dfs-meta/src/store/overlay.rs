//! A transaction's pending writes, layered over a base that does not change
//! while the transaction runs (both embedded backends hold a store-wide lock
//! for the transaction's lifetime, which makes them trivially serializable).

use std::collections::BTreeMap;
use std::ops::Bound;

use super::{decode_counter, KeyValues, KvTxn, StoreError};

/// What a key read from the base should be replaced with.
#[derive(Clone, Debug)]
pub enum Pending {
    Set(Vec<u8>),
    Clear,
}

#[derive(Default, Debug)]
pub struct Overlay {
    /// Ranges cleared by this transaction, in the order they were cleared.
    /// Writes made after a clear are in `writes` and take precedence.
    pub cleared: Vec<(Vec<u8>, Vec<u8>)>,
    pub writes: BTreeMap<Vec<u8>, Pending>,
    /// The body asked for [`KvTxn::defer_sync`].
    pub deferred: bool,
}

/// Read access to the state the transaction started from.
pub trait Base {
    fn base_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    fn base_range(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
        skip: &dyn Fn(&[u8]) -> bool,
    ) -> Result<KeyValues, StoreError>;
}

impl Overlay {
    /// Refuses what FoundationDB would refuse: a key over 10 kB, a value
    /// over 100 kB, more than 10 MB of mutations (keys and values written,
    /// keys and range bounds cleared) in one transaction.
    pub fn check_limits(&self) -> Result<(), StoreError> {
        let mut total = 0usize;
        for (b, e) in &self.cleared {
            total += b.len() + e.len();
        }
        for (k, p) in &self.writes {
            if k.len() > super::MAX_KEY_BYTES {
                return Err(StoreError::TooLarge(format!("a key of {} bytes", k.len())));
            }
            total += k.len();
            if let Pending::Set(v) = p {
                if v.len() > super::MAX_VALUE_BYTES {
                    return Err(StoreError::TooLarge(format!(
                        "a value of {} bytes",
                        v.len()
                    )));
                }
                total += v.len();
            }
        }
        if total > super::MAX_TRANSACTION_BYTES {
            return Err(StoreError::TooLarge(format!("{total} bytes of mutations")));
        }
        Ok(())
    }

    fn is_cleared(&self, key: &[u8]) -> bool {
        self.cleared
            .iter()
            .any(|(b, e)| key >= b.as_slice() && key < e.as_slice())
    }

    pub fn get(&self, base: &dyn Base, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.writes.get(key) {
            Some(Pending::Set(v)) => Ok(Some(v.clone())),
            Some(Pending::Clear) => Ok(None),
            None if self.is_cleared(key) => Ok(None),
            None => base.base_get(key),
        }
    }

    pub fn range(
        &self,
        base: &dyn Base,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<KeyValues, StoreError> {
        if begin >= end {
            return Ok(Vec::new());
        }
        // Keys shadowed by this transaction are skipped in the base scan,
        // so the base never returns more than `limit` entries we must drop.
        let skip = |k: &[u8]| self.writes.contains_key(k) || self.is_cleared(k);
        let from_base = base.base_range(begin, end, limit, reverse, &skip)?;
        let bounds = (
            Bound::Included(begin.to_vec()),
            Bound::Excluded(end.to_vec()),
        );
        let mut own: Vec<(Vec<u8>, Vec<u8>)> = self
            .writes
            .range(bounds)
            .filter_map(|(k, p)| match p {
                Pending::Set(v) => Some((k.clone(), v.clone())),
                Pending::Clear => None,
            })
            .collect();
        if reverse {
            own.reverse();
        }
        let mut merged = Vec::with_capacity(from_base.len() + own.len());
        let (mut a, mut b) = (from_base.into_iter().peekable(), own.into_iter().peekable());
        loop {
            if limit != 0 && merged.len() == limit {
                break;
            }
            let take_a = match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((ka, _)), Some((kb, _))) => (ka < kb) != reverse,
            };
            let next = if take_a { a.next() } else { b.next() };
            if let Some(kv) = next {
                merged.push(kv);
            }
        }
        Ok(merged)
    }

    pub fn set(&mut self, key: &[u8], value: &[u8]) {
        self.writes
            .insert(key.to_vec(), Pending::Set(value.to_vec()));
    }

    pub fn clear(&mut self, key: &[u8]) {
        self.writes.insert(key.to_vec(), Pending::Clear);
    }

    pub fn clear_range(&mut self, begin: &[u8], end: &[u8]) {
        if begin >= end {
            return;
        }
        let doomed: Vec<Vec<u8>> = self
            .writes
            .range((
                Bound::Included(begin.to_vec()),
                Bound::Excluded(end.to_vec()),
            ))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.writes.remove(&k);
        }
        self.cleared.push((begin.to_vec(), end.to_vec()));
    }

    pub fn atomic_add(
        &mut self,
        base: &dyn Base,
        key: &[u8],
        delta: i64,
    ) -> Result<(), StoreError> {
        let current = decode_counter(self.get(base, key)?.as_deref());
        self.set(key, &current.wrapping_add(delta).to_le_bytes());
        Ok(())
    }
}

/// A transaction of a backend that serializes transactions with a lock:
/// reads go to `base` (which nobody else changes meanwhile) overlaid with
/// the transaction's own writes. Backends add only their commit.
pub struct OverlayTxn<B: Base> {
    pub base: B,
    pub overlay: Overlay,
}

impl<B: Base> KvTxn for OverlayTxn<B> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.overlay.get(&self.base, key)
    }
    fn range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<KeyValues, StoreError> {
        self.overlay.range(&self.base, begin, end, limit, reverse)
    }
    fn set(&mut self, key: &[u8], value: &[u8]) {
        self.overlay.set(key, value);
    }
    fn clear(&mut self, key: &[u8]) {
        self.overlay.clear(key);
    }
    fn clear_range(&mut self, begin: &[u8], end: &[u8]) {
        self.overlay.clear_range(begin, end);
    }
    fn atomic_add(&mut self, key: &[u8], delta: i64) -> Result<(), StoreError> {
        self.overlay.atomic_add(&self.base, key, delta)
    }
    fn defer_sync(&mut self) {
        self.overlay.deferred = true;
    }
}
