//! The key a chunk server stores a shard under: fingerprint ‖ shard index
//! (one byte). It is also the order and the cursor of `ListShards`, so the
//! metadata server builds the same keys to match listings against the
//! index. Part of the chunk servers' on-disk format: never change it.

use crate::fingerprint::Fingerprint;

/// Length of a key: fingerprint + shard index.
pub const KEY_LEN: usize = Fingerprint::LEN + 1;

/// The key of shard `index` of chunk `fp`.
pub fn shard_key(fp: &Fingerprint, index: u8) -> [u8; KEY_LEN] {
    let mut key = [0u8; KEY_LEN];
    key[..Fingerprint::LEN].copy_from_slice(&fp.0);
    key[Fingerprint::LEN] = index;
    key
}

/// The fingerprint and shard index a key names.
pub fn split_key(key: &[u8; KEY_LEN]) -> (Fingerprint, u8) {
    let mut fp = [0u8; Fingerprint::LEN];
    fp.copy_from_slice(&key[..Fingerprint::LEN]);
    (Fingerprint(fp), key[Fingerprint::LEN])
}

/// The key for a fingerprint and index as they travel on the wire
/// (`ShardKey`, `ShardInfo`): the same bytes as [`shard_key`] for a
/// well-formed pair; a malformed one yields a key that matches nothing.
pub fn wire_shard_key(fingerprint: &[u8], index: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(fingerprint.len() + 1);
    key.extend_from_slice(fingerprint);
    key.push(index as u8);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_are_the_same_bytes() {
        let fp = Fingerprint::of(b"chunk");
        let key = shard_key(&fp, 7);
        assert_eq!(key[..], wire_shard_key(&fp.to_vec(), 7)[..]);
        assert_eq!(split_key(&key), (fp, 7));
    }
}
