//! Test-only: a store wrapper that records how many bytes each committed
//! transaction wrote, as FoundationDB counts them (keys + values of sets,
//! keys of clears and range ends), to check the shared code stays under
//! FoundationDB's 10 MB per-transaction limit.

use std::sync::Arc;

use parking_lot::Mutex;

use super::{KeyValues, KvTxn, MetaStore, StoreError, Transaction};

pub struct Measured {
    inner: Arc<dyn MetaStore>,
    /// Bytes written by each committed transaction, in commit order.
    pub commits: Arc<Mutex<Vec<usize>>>,
}

impl Measured {
    pub fn new(inner: Arc<dyn MetaStore>) -> Self {
        Self {
            inner,
            commits: Arc::new(Mutex::new(Vec::new())),
        }
    }

    pub fn largest(&self) -> usize {
        self.commits.lock().iter().copied().max().unwrap_or(0)
    }
}

struct MeasuredTxn<'a> {
    inner: Box<dyn Transaction + 'a>,
    written: usize,
    commits: Arc<Mutex<Vec<usize>>>,
}

impl KvTxn for MeasuredTxn<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(key)
    }
    fn get_many(&mut self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        self.inner.get_many(keys)
    }
    fn range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<KeyValues, StoreError> {
        self.inner.range(begin, end, limit, reverse)
    }
    fn set(&mut self, key: &[u8], value: &[u8]) {
        self.written += key.len() + value.len();
        self.inner.set(key, value);
    }
    fn clear(&mut self, key: &[u8]) {
        self.written += key.len();
        self.inner.clear(key);
    }
    fn defer_sync(&mut self) {
        self.inner.defer_sync();
    }
    fn clear_range(&mut self, begin: &[u8], end: &[u8]) {
        self.written += begin.len() + end.len();
        self.inner.clear_range(begin, end);
    }
    fn atomic_add(&mut self, key: &[u8], delta: i64) -> Result<(), StoreError> {
        self.written += key.len() + 8;
        self.inner.atomic_add(key, delta)
    }
}

impl Transaction for MeasuredTxn<'_> {
    fn commit(self: Box<Self>) -> Result<(), StoreError> {
        let (written, commits) = (self.written, self.commits.clone());
        self.inner.commit()?;
        commits.lock().push(written);
        Ok(())
    }
}

impl MetaStore for Measured {
    fn begin(&self) -> Result<Box<dyn Transaction + '_>, StoreError> {
        Ok(Box::new(MeasuredTxn {
            inner: self.inner.begin()?,
            written: 0,
            commits: self.commits.clone(),
        }))
    }
    fn name(&self) -> &'static str {
        "measured"
    }
}
