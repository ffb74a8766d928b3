//! Series handles registered once and kept, for hot paths.
//!
//! Each `metrics::counter!(NAME, "label" => value)` builds a key, hashes
//! it and looks it up in the recorder's registry; a path taken for every
//! kernel request or RPC keeps the handle instead, found here by its label
//! values, so that recording is one atomic add. Label values are bounded
//! sets (operation and method names, errno names), so the handles, leaked
//! once each, are too.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{OnceLock, PoisonError, RwLock};

/// Handles of type `V` by label values `K`.
pub struct Series<K, V: 'static> {
    map: OnceLock<RwLock<HashMap<K, &'static V>>>,
}

impl<K: Eq + Hash + Copy, V: Send + Sync + 'static> Series<K, V> {
    pub const fn new() -> Self {
        Series {
            map: OnceLock::new(),
        }
    }

    /// The handle for `key`, registered by `register` the first time.
    /// Call only while metrics are on ([`super::enabled`]): a handle
    /// registered before the recorder exists records nothing, for ever.
    pub fn get(&self, key: K, register: impl FnOnce(K) -> V) -> &'static V {
        let map = self.map.get_or_init(Default::default);
        if let Some(found) = map.read().unwrap_or_else(PoisonError::into_inner).get(&key) {
            return found;
        }
        let mut map = map.write().unwrap_or_else(PoisonError::into_inner);
        map.entry(key)
            .or_insert_with(|| Box::leak(Box::new(register(key))))
    }
}

impl<K: Eq + Hash + Copy, V: Send + Sync + 'static> Default for Series<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_once_per_key() {
        static SEEN: Series<&'static str, usize> = Series::new();
        let mut calls = 0;
        let a = SEEN.get("a", |_| {
            calls += 1;
            1
        });
        let again = SEEN.get("a", |_| {
            calls += 1;
            2
        });
        let b = SEEN.get("b", |_| 3);
        assert_eq!((*a, *again, *b, calls), (1, 1, 3, 1));
        assert!(std::ptr::eq(a, again));
    }
}
