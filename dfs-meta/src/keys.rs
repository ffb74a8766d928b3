//! Key encoding of the metadata store. Every key starts with a one-byte tag.
//!
//! Inode numbers are little-endian so that consecutive inodes spread over
//! the key space (one hot directory does not land on one FoundationDB
//! shard); offsets and other fields scanned in order are big-endian.
//!
//! | key | value |
//! | --- | --- |
//! | `I ino(le64)` | `InodeRecord` |
//! | `D parent(le64) name` | `DirentRecord` |
//! | `B ino(le64) parent(le64) name` | empty: a non-directory's link, so its directories can be found (subtree caps) |
//! | `C ino(le64) offset(be64)` | `ChunkRefRecord` |
//! | `X ino(le64) name` | extended attribute value |
//! | `H fingerprint(32)` | `ChunkRecord` (dedup index) |
//! | `R fingerprint(32)` | reference count (le i64, only ever atomic adds) |
//! | `S server_id(be32)` | `ServerRecord` |
//! | `U uuid` | server id (be32) |
//! | `N name` | counter (le i64, atomic add) |
//! | `V` | `VolumeConfig` |
//! | `K` | the volume's shard token secret (32 bytes; `dfs_core::shard_token`) |
//! | `T ino(le64)` | empty: a removed file whose chunk map is still being purged |
//! | `O ino(le64)` | time (le i64 ns): an unlinked inode kept while a client has it open |
//! | `L ino(le64)` | `LockTableRecord`: the byte-range locks held on an inode |
//! | `Q session(be64)` | `LockSessionRecord`: a client's lock lease |
//! | `W session(be64) ino(le64)` | empty: the session holds locks on the inode |
//! | `A day(be32) ino(le64)` | empty: the file was last accessed on that day (`access`) |
//! | `P pack(be64)` | `PackRecord`: a pack object on the cold store (`cold`) |
//! | `Z id(be64)` | `DictionaryRecord`: a zstd dictionary (`dictionary`) |
//! | `Y access_key` | `AccessKeyRecord`: an S3 access key of the gateway (`access_keys`) |
//! | `M fingerprint(32)` | time (le i64 ns): the tiering worker is writing the chunk's shards anew (`tiering::sharded`) |
//! | `G fingerprint(32)` | time (le i64 ns): an inline chunk staged by a small flush, to move to the chunk servers (`maintenance::staged`) |
//!
//! Values are protobuf messages from `dfs-proto` (`*Record`), which only
//! change compatibly, so old stores stay readable.

pub const INODE: u8 = b'I';
pub const DIRENT: u8 = b'D';
pub const BACKREF: u8 = b'B';
pub const CHUNK: u8 = b'C';
pub const HASH: u8 = b'H';
pub const REFS: u8 = b'R';
pub const SERVER: u8 = b'S';
pub const SERVER_UUID: u8 = b'U';
pub const COUNTER: u8 = b'N';
pub const VOLUME: u8 = b'V';
pub const TOKEN_SECRET: u8 = b'K';
pub const TRASH: u8 = b'T';
pub const XATTR: u8 = b'X';
pub const UNLINKED_OPEN: u8 = b'O';
pub const LOCK_TABLE: u8 = b'L';
pub const LOCK_SESSION: u8 = b'Q';
pub const LOCK_HELD: u8 = b'W';
pub const ACCESS: u8 = b'A';
pub const PACK: u8 = b'P';
pub const DICTIONARY: u8 = b'Z';
pub const REWRITING: u8 = b'M';
pub const ACCESS_KEY: u8 = b'Y';
pub const STAGED: u8 = b'G';

pub fn inode(ino: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(INODE);
    k.extend_from_slice(&ino.to_le_bytes());
    k
}

pub fn dirent_prefix(parent: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(DIRENT);
    k.extend_from_slice(&parent.to_le_bytes());
    k
}

pub fn dirent(parent: u64, name: &[u8]) -> Vec<u8> {
    let mut k = dirent_prefix(parent);
    k.extend_from_slice(name);
    k
}

/// The name part of a dirent key.
pub fn dirent_name(key: &[u8]) -> &[u8] {
    key.get(9..).unwrap_or_default()
}

/// Where a non-directory's links are listed (`B ino`).
pub fn backref_prefix(ino: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(BACKREF);
    k.extend_from_slice(&ino.to_le_bytes());
    k
}

/// The back-reference of the link `name` in `parent` to `ino`.
pub fn backref(ino: u64, parent: u64, name: &[u8]) -> Vec<u8> {
    let mut k = backref_prefix(ino);
    k.extend_from_slice(&parent.to_le_bytes());
    k.extend_from_slice(name);
    k
}

/// The inode, parent directory and name of a back-reference key.
pub fn backref_parts(key: &[u8]) -> Option<(u64, u64, &[u8])> {
    let ino = u64::from_le_bytes(key.get(1..9)?.try_into().ok()?);
    let parent = u64::from_le_bytes(key.get(9..17)?.try_into().ok()?);
    Some((ino, parent, key.get(17..)?))
}

/// The parent of a dirent key.
pub fn dirent_parent(key: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(key.get(1..9)?.try_into().ok()?))
}

pub fn chunk_prefix(ino: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(CHUNK);
    k.extend_from_slice(&ino.to_le_bytes());
    k
}

pub fn chunk(ino: u64, offset: u64) -> Vec<u8> {
    let mut k = chunk_prefix(ino);
    k.extend_from_slice(&offset.to_be_bytes());
    k
}

/// The offset part of a chunk key, or `None` for a malformed key.
pub fn chunk_offset(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.get(9..17)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

pub fn hash(fingerprint: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + fingerprint.len());
    k.push(HASH);
    k.extend_from_slice(fingerprint);
    k
}

/// A chunk's reference count: apart from its `H` record so that writers
/// of the same chunk change it with atomic adds and never conflict.
pub fn refs(fingerprint: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + fingerprint.len());
    k.push(REFS);
    k.extend_from_slice(fingerprint);
    k
}

pub fn server(id: u32) -> Vec<u8> {
    let mut k = vec![SERVER];
    k.extend_from_slice(&id.to_be_bytes());
    k
}

pub fn server_uuid(uuid: &str) -> Vec<u8> {
    let mut k = vec![SERVER_UUID];
    k.extend_from_slice(uuid.as_bytes());
    k
}

pub fn trash(ino: u64) -> Vec<u8> {
    let mut k = vec![TRASH];
    k.extend_from_slice(&ino.to_le_bytes());
    k
}

/// The inode of a trash key, or `None` for a malformed key.
pub fn trash_ino(key: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(key.get(1..9)?.try_into().ok()?))
}

pub fn xattr_prefix(ino: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(XATTR);
    k.extend_from_slice(&ino.to_le_bytes());
    k
}

pub fn xattr(ino: u64, name: &[u8]) -> Vec<u8> {
    let mut k = xattr_prefix(ino);
    k.extend_from_slice(name);
    k
}

/// Marks an inode without links that a client keeps open.
pub fn unlinked_open(ino: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(UNLINKED_OPEN);
    k.extend_from_slice(&ino.to_le_bytes());
    k
}

/// The inode of an unlinked-open marker, or `None` for a malformed key.
pub fn unlinked_open_ino(key: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(key.get(1..9)?.try_into().ok()?))
}

pub fn lock_table(ino: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(LOCK_TABLE);
    k.extend_from_slice(&ino.to_le_bytes());
    k
}

pub fn lock_session(session: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(LOCK_SESSION);
    k.extend_from_slice(&session.to_be_bytes());
    k
}

/// The session of a `Q` key, or `None` for a malformed key.
pub fn lock_session_id(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(1..9)?.try_into().ok()?))
}

pub fn lock_held_prefix(session: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(LOCK_HELD);
    k.extend_from_slice(&session.to_be_bytes());
    k
}

pub fn lock_held(session: u64, ino: u64) -> Vec<u8> {
    let mut k = lock_held_prefix(session);
    k.extend_from_slice(&ino.to_le_bytes());
    k
}

/// The inode of a `W` key, or `None` for a malformed key.
pub fn lock_held_ino(key: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(key.get(9..17)?.try_into().ok()?))
}

pub fn counter(name: &str) -> Vec<u8> {
    let mut k = vec![COUNTER];
    k.extend_from_slice(name.as_bytes());
    k
}

pub fn volume() -> Vec<u8> {
    vec![VOLUME]
}

pub fn token_secret() -> Vec<u8> {
    vec![TOKEN_SECRET]
}

/// The first key after every key that starts with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (never the case for our tagged keys): sort after every key
    // within FoundationDB's 10 kB key limit.
    vec![0xff; 10_001]
}

/// All keys with one tag byte.
/// `A day ino`: the file `ino` was last accessed on `day` (days are
/// big-endian, so a range read yields the oldest first).
pub fn access(day: u32, ino: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(13);
    k.push(ACCESS);
    k.extend_from_slice(&day.to_be_bytes());
    k.extend_from_slice(&ino.to_le_bytes());
    k
}

/// The day and inode of an access key, or `None` for a malformed key.
pub fn access_parts(key: &[u8]) -> Option<(u32, u64)> {
    if key.len() != 13 || key[0] != ACCESS {
        return None;
    }
    let day = u32::from_be_bytes(key[1..5].try_into().ok()?);
    let ino = u64::from_le_bytes(key[5..13].try_into().ok()?);
    Some((day, ino))
}

/// `Z id(be64)`: a compression dictionary.
pub fn dictionary(id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(DICTIONARY);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// `M fingerprint`: a claim on rewriting the chunk's shards.
pub fn rewriting(fingerprint: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + fingerprint.len());
    k.push(REWRITING);
    k.extend_from_slice(fingerprint);
    k
}

/// `G fingerprint`: an inline chunk staged by a small flush, waiting to
/// move to the chunk servers.
pub fn staged(fingerprint: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + fingerprint.len());
    k.push(STAGED);
    k.extend_from_slice(fingerprint);
    k
}

/// `P pack(be64)`: a pack object on the cold store (`PackRecord`).
pub fn pack(id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(PACK);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// `P pack(be64) 'n'`: how many chunk records point into the pack.
pub fn pack_live(id: u64) -> Vec<u8> {
    let mut k = pack(id);
    k.push(b'n');
    k
}

/// The pack a `P` key (record or count) names.
pub fn pack_id(key: &[u8]) -> Option<u64> {
    match key {
        [PACK, id @ ..] if id.len() >= 8 => Some(u64::from_be_bytes(id[..8].try_into().ok()?)),
        _ => None,
    }
}

pub fn tag_range(tag: u8) -> (Vec<u8>, Vec<u8>) {
    (vec![tag], vec![tag + 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_numbers_spread_but_offsets_sort() {
        // Consecutive inodes differ in their first key byte after the tag.
        assert_ne!(inode(1)[1], inode(2)[1]);
        assert!(chunk(7, 1 << 20) < chunk(7, 2 << 20));
        assert!(chunk(7, 255) < chunk(7, 256), "offsets are big-endian");
        assert_eq!(chunk_offset(&chunk(7, 123_456)), Some(123_456));
        assert_eq!(chunk_offset(b"C"), None);
    }

    #[test]
    fn dirent_keys_of_one_directory_share_a_prefix() {
        let p = dirent_prefix(42);
        let end = prefix_end(&p);
        for name in [&b""[..], b"a", b"\xff\xff", b"zzz"] {
            let k = dirent(42, name);
            assert!(k >= p && k < end);
            assert_eq!(dirent_name(&k), name);
        }
        assert!(dirent(43, b"a") >= end || dirent(43, b"a") < p);
    }

    #[test]
    fn prefix_end_carries() {
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"ab"), b"ac".to_vec());
        assert!(prefix_end(b"\xff") > b"\xff\xff\xff".to_vec());
    }

    #[test]
    fn server_ids_sort_numerically() {
        assert!(server(2) < server(10));
        assert_eq!(tag_range(SERVER).0, vec![SERVER]);
    }
}
