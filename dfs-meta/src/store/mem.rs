//! In-memory backend: the reference for the conformance suite and the
//! store behind fast unit tests. Nothing survives the process.

use std::collections::BTreeMap;
use std::ops::Bound;

use parking_lot::{Mutex, MutexGuard};

use super::overlay::{Base, Overlay, OverlayTxn, Pending};
use super::{KeyValues, MetaStore, StoreError, Transaction};

#[derive(Default)]
pub struct MemStore {
    data: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
}

pub struct MemBase<'a>(MutexGuard<'a, BTreeMap<Vec<u8>, Vec<u8>>>);

impl Base for MemBase<'_> {
    fn base_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.0.get(key).cloned())
    }

    fn base_range(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
        skip: &dyn Fn(&[u8]) -> bool,
    ) -> Result<KeyValues, StoreError> {
        let bounds = (
            Bound::Included(begin.to_vec()),
            Bound::Excluded(end.to_vec()),
        );
        let iter = self.0.range(bounds).filter(|(k, _)| !skip(k));
        let take = if limit == 0 { usize::MAX } else { limit };
        let out = if reverse {
            iter.rev()
                .take(take)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        } else {
            iter.take(take)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        Ok(out)
    }
}

pub type MemTxn<'a> = OverlayTxn<MemBase<'a>>;

impl Transaction for MemTxn<'_> {
    fn commit(self: Box<Self>) -> Result<(), StoreError> {
        let OverlayTxn { mut base, overlay } = *self;
        overlay.check_limits()?;
        for (b, e) in &overlay.cleared {
            let doomed: Vec<Vec<u8>> = base
                .0
                .range((Bound::Included(b.clone()), Bound::Excluded(e.clone())))
                .map(|(k, _)| k.clone())
                .collect();
            for k in doomed {
                base.0.remove(&k);
            }
        }
        for (k, p) in overlay.writes {
            match p {
                Pending::Set(v) => {
                    base.0.insert(k, v);
                }
                Pending::Clear => {
                    base.0.remove(&k);
                }
            }
        }
        Ok(())
    }
}

impl MetaStore for MemStore {
    fn begin(&self) -> Result<Box<dyn Transaction + '_>, StoreError> {
        Ok(Box::new(OverlayTxn {
            base: MemBase(self.data.lock()),
            overlay: Overlay::default(),
        }))
    }
    fn name(&self) -> &'static str {
        "memory"
    }
}
