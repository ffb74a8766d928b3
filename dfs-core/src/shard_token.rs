//! Shard access tokens: dfs-meta signs, chunk servers check (issue 19).
//!
//! A client certificate lets a client talk to chunk servers, not read or
//! write any shard it can name. dfs-meta hands out, with each chunk map,
//! a token per shard to read it, and with each dedup lookup that tells a
//! client to upload, a token per server to store that chunk there. A token
//! is an HMAC-SHA256 over (operation, fingerprint, expiry) under a key that
//! only dfs-meta and one chunk server know: the server's key, derived from
//! the volume's token secret and the server id, and given to the server
//! when it registers (over mutual TLS, to the certificate its id is bound
//! to). A token for one server is worthless on another, a token for one
//! chunk worthless for the next, and every token expires.
//!
//! Wire form: the expiry (dfs-meta's clock, ns since the epoch, big-endian
//! i64) then the first 16 bytes of the HMAC. A put token for a chunk whose
//! index entry is dead carries, between the two, the time before which
//! that chunk's leftover shards were written (dfs-meta's clock less the
//! allowed skew, as garbage collection deletes them): a client's put may
//! replace those with other bytes, and nothing else (`PUT_OVER_TOKEN_LEN`).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use ring::hmac;

/// Bytes of a token on the wire.
pub const TOKEN_LEN: usize = 8 + TAG_LEN;
/// Bytes of a put token that may replace a dead chunk's leftovers.
pub const PUT_OVER_TOKEN_LEN: usize = 8 + 8 + TAG_LEN;
/// Bytes of the HMAC kept: forging one is a 2^128 guess.
const TAG_LEN: usize = 16;
/// Bytes of a server's key and of the volume's secret.
pub const KEY_LEN: usize = 32;

/// What a token allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardOp {
    /// Store the chunk's shards (`PutShards`).
    Put,
    /// Read one shard (`GetShard`, `GetShards`).
    Get,
}

impl ShardOp {
    fn label(self) -> &'static [u8] {
        match self {
            ShardOp::Put => b"put",
            ShardOp::Get => b"get",
        }
    }
}

/// Why a chunk server refused a request's token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no shard token: ask dfs-meta (chunk map or dedup lookup) for one")]
    Missing,
    #[error("malformed shard token ({0} bytes)")]
    Malformed(usize),
    #[error("shard token expired {0} ms ago")]
    Expired(i64),
    #[error("shard token not signed for this shard on this server")]
    Forged,
    #[error("this chunk server has not registered with dfs-meta yet: no key to check tokens")]
    NoKey,
}

impl TokenError {
    /// EKEYEXPIRED for a token that was good once (a client refetches its
    /// chunk map and retries), EAGAIN before the server has its key, EACCES
    /// otherwise.
    pub fn errno(&self) -> i32 {
        match self {
            TokenError::Expired(_) => libc::EKEYEXPIRED,
            TokenError::NoKey => libc::EAGAIN,
            _ => libc::EACCES,
        }
    }
}

/// One chunk server's key: signs (in dfs-meta) and checks (in the server).
pub struct ServerKey(hmac::Key);

impl ServerKey {
    pub fn new(bytes: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, bytes))
    }

    fn tag(
        &self,
        op: ShardOp,
        fingerprint: &[u8],
        expires_ns: i64,
        over: Option<i64>,
    ) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(b"dfs shard token v1\0");
        ctx.update(op.label());
        if let Some(before) = over {
            ctx.update(b"-over");
            ctx.update(&before.to_be_bytes());
        }
        ctx.update(&(fingerprint.len() as u32).to_be_bytes());
        ctx.update(fingerprint);
        ctx.update(&expires_ns.to_be_bytes());
        ctx.sign()
    }

    pub fn sign(&self, op: ShardOp, fingerprint: &[u8], expires_ns: i64) -> Vec<u8> {
        let mut token = Vec::with_capacity(TOKEN_LEN);
        token.extend_from_slice(&expires_ns.to_be_bytes());
        token.extend_from_slice(&self.tag(op, fingerprint, expires_ns, None).as_ref()[..TAG_LEN]);
        token
    }

    /// A put token; with `replace_before_ns` > 0, one that may also replace
    /// shards of the chunk written before then (a dead chunk's leftovers).
    pub fn sign_put(&self, fingerprint: &[u8], expires_ns: i64, replace_before_ns: i64) -> Vec<u8> {
        if replace_before_ns <= 0 {
            return self.sign(ShardOp::Put, fingerprint, expires_ns);
        }
        let tag = self.tag(
            ShardOp::Put,
            fingerprint,
            expires_ns,
            Some(replace_before_ns),
        );
        let mut token = Vec::with_capacity(PUT_OVER_TOKEN_LEN);
        token.extend_from_slice(&expires_ns.to_be_bytes());
        token.extend_from_slice(&replace_before_ns.to_be_bytes());
        token.extend_from_slice(&tag.as_ref()[..TAG_LEN]);
        token
    }

    /// Checks a put token (either form): the time before which it lets
    /// the holder replace the chunk's shards with other bytes (0: none).
    pub fn check_put(
        &self,
        fingerprint: &[u8],
        token: &[u8],
        now_ns: i64,
        skew_ns: i64,
    ) -> Result<i64, TokenError> {
        if token.len() != PUT_OVER_TOKEN_LEN {
            return self
                .check(ShardOp::Put, fingerprint, token, now_ns, skew_ns)
                .map(|()| 0);
        }
        let (expiry, rest) = token.split_at(8);
        let (before, tag) = rest.split_at(8);
        let expires_ns = i64::from_be_bytes(expiry.try_into().map_err(|_| TokenError::Forged)?);
        let before_ns = i64::from_be_bytes(before.try_into().map_err(|_| TokenError::Forged)?);
        let want = self.tag(ShardOp::Put, fingerprint, expires_ns, Some(before_ns));
        verify_tag(&want, tag, expires_ns, now_ns, skew_ns)?;
        Ok(before_ns)
    }

    /// Checks `token` for `op` on `fingerprint` at `now_ns` (this server's
    /// clock), allowing `skew_ns` of difference from dfs-meta's.
    pub fn check(
        &self,
        op: ShardOp,
        fingerprint: &[u8],
        token: &[u8],
        now_ns: i64,
        skew_ns: i64,
    ) -> Result<(), TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token.len() != TOKEN_LEN {
            return Err(TokenError::Malformed(token.len()));
        }
        let (expiry, tag) = token.split_at(8);
        let expires_ns = i64::from_be_bytes(expiry.try_into().map_err(|_| TokenError::Forged)?);
        let want = self.tag(op, fingerprint, expires_ns, None);
        verify_tag(&want, tag, expires_ns, now_ns, skew_ns)
    }
}

/// Compares a token's tag with the one it must carry, then its expiry.
fn verify_tag(
    want: &hmac::Tag,
    tag: &[u8],
    expires_ns: i64,
    now_ns: i64,
    skew_ns: i64,
) -> Result<(), TokenError> {
    // Constant time: no timing tells how much of a guess was right.
    let diff = want.as_ref()[..TAG_LEN]
        .iter()
        .zip(tag)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if diff != 0 || tag.len() != TAG_LEN {
        return Err(TokenError::Forged);
    }
    let late = now_ns.saturating_sub(expires_ns.saturating_add(skew_ns));
    if late > 0 {
        return Err(TokenError::Expired(late / 1_000_000));
    }
    Ok(())
}

/// A new volume token secret, from the system's random source.
pub fn new_secret() -> Result<[u8; KEY_LEN], TokenError> {
    use ring::rand::SecureRandom;
    let mut secret = [0u8; KEY_LEN];
    ring::rand::SystemRandom::new()
        .fill(&mut secret)
        .map_err(|_| TokenError::NoKey)?;
    Ok(secret)
}

/// Derives server `server_id`'s key from the volume's token secret.
pub fn server_key_bytes(secret: &[u8], server_id: u32) -> [u8; KEY_LEN] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(b"dfs shard server key v1\0");
    ctx.update(&server_id.to_be_bytes());
    let mut out = [0u8; KEY_LEN];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// dfs-meta's side: signs for any server, each server's key derived once.
pub struct Signer {
    secret: Vec<u8>,
    keys: Mutex<HashMap<u32, Arc<ServerKey>>>,
}

impl Signer {
    pub fn new(secret: &[u8]) -> Self {
        Self {
            secret: secret.to_vec(),
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// The key server `server_id` checks tokens with (sent at registration).
    pub fn key_bytes(&self, server_id: u32) -> [u8; KEY_LEN] {
        server_key_bytes(&self.secret, server_id)
    }

    fn key(&self, server_id: u32) -> Arc<ServerKey> {
        self.keys
            .lock()
            .entry(server_id)
            .or_insert_with(|| Arc::new(ServerKey::new(&server_key_bytes(&self.secret, server_id))))
            .clone()
    }

    pub fn sign(
        &self,
        server_id: u32,
        op: ShardOp,
        fingerprint: &[u8],
        expires_ns: i64,
    ) -> Vec<u8> {
        self.key(server_id).sign(op, fingerprint, expires_ns)
    }

    /// Checks a token signed for `server_id` (dfs-meta checks the ones it
    /// signs for itself: cold-chunk reads).
    pub fn check(
        &self,
        server_id: u32,
        op: ShardOp,
        fingerprint: &[u8],
        token: &[u8],
        now_ns: i64,
    ) -> Result<(), TokenError> {
        self.key(server_id).check(op, fingerprint, token, now_ns, 0)
    }

    /// See [`ServerKey::sign_put`].
    pub fn sign_put(
        &self,
        server_id: u32,
        fingerprint: &[u8],
        expires_ns: i64,
        replace_before_ns: i64,
    ) -> Vec<u8> {
        self.key(server_id)
            .sign_put(fingerprint, expires_ns, replace_before_ns)
    }
}

/// A chunk server's side: the key it learned at its last registration
/// (`None` before the first).
#[derive(Clone, Default)]
pub struct Gate(Arc<RwLock<Option<Arc<ServerKey>>>>);

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself.
        f.debug_struct("Gate")
            .field("has_key", &self.0.read().is_some())
            .finish()
    }
}

impl Gate {
    pub fn set(&self, key: &[u8]) {
        *self.0.write() = Some(Arc::new(ServerKey::new(key)));
    }

    pub fn key(&self) -> Option<Arc<ServerKey>> {
        self.0.read().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SKEW: i64 = 1_000_000_000;

    #[test]
    fn a_token_opens_one_shard_op_on_one_server_until_it_expires() {
        let signer = Signer::new(&[7u8; 32]);
        let server_3 = ServerKey::new(&signer.key_bytes(3));
        let fp = [1u8; 32];
        let token = signer.sign(3, ShardOp::Get, &fp, 10_000_000_000);
        assert_eq!(token.len(), TOKEN_LEN);
        assert_eq!(
            server_3.check(ShardOp::Get, &fp, &token, 5_000_000_000, SKEW),
            Ok(())
        );
        // Within the allowed clock skew after expiry, then not.
        assert_eq!(
            server_3.check(ShardOp::Get, &fp, &token, 10_500_000_000, SKEW),
            Ok(())
        );
        assert_eq!(
            server_3.check(ShardOp::Get, &fp, &token, 13_000_000_000, SKEW),
            Err(TokenError::Expired(2000))
        );
        // Another operation, chunk or server: refused.
        assert_eq!(
            server_3.check(ShardOp::Put, &fp, &token, 0, SKEW),
            Err(TokenError::Forged)
        );
        assert_eq!(
            server_3.check(ShardOp::Get, &[2u8; 32], &token, 0, SKEW),
            Err(TokenError::Forged)
        );
        let server_4 = ServerKey::new(&signer.key_bytes(4));
        assert_eq!(
            server_4.check(ShardOp::Get, &fp, &token, 0, SKEW),
            Err(TokenError::Forged)
        );
        // A later expiry pasted onto a good tag: refused.
        let mut stretched = token.clone();
        stretched[..8].copy_from_slice(&i64::MAX.to_be_bytes());
        assert_eq!(
            server_3.check(ShardOp::Get, &fp, &stretched, 0, SKEW),
            Err(TokenError::Forged)
        );
        assert_eq!(
            server_3.check(ShardOp::Get, &fp, &[], 0, SKEW),
            Err(TokenError::Missing)
        );
        assert_eq!(
            server_3.check(ShardOp::Get, &fp, &token[..10], 0, SKEW),
            Err(TokenError::Malformed(10))
        );
        // Another volume's secret signs nothing here.
        let other = Signer::new(&[8u8; 32]);
        assert_eq!(
            server_3.check(
                ShardOp::Get,
                &fp,
                &other.sign(3, ShardOp::Get, &fp, i64::MAX),
                0,
                SKEW
            ),
            Err(TokenError::Forged)
        );
    }

    #[test]
    fn a_put_over_token_names_what_it_may_replace_and_nothing_else() {
        let signer = Signer::new(&[7u8; 32]);
        let server_3 = ServerKey::new(&signer.key_bytes(3));
        let fp = [1u8; 32];
        let plain = signer.sign_put(3, &fp, 10_000_000_000, 0);
        assert_eq!(plain.len(), TOKEN_LEN);
        assert_eq!(server_3.check_put(&fp, &plain, 0, SKEW), Ok(0));
        let over = signer.sign_put(3, &fp, 10_000_000_000, 4_000);
        assert_eq!(over.len(), PUT_OVER_TOKEN_LEN);
        assert_eq!(server_3.check_put(&fp, &over, 0, SKEW), Ok(4_000));
        // A later time pasted in, another chunk, a read: refused.
        let mut later = over.clone();
        later[8..16].copy_from_slice(&i64::MAX.to_be_bytes());
        assert_eq!(
            server_3.check_put(&fp, &later, 0, SKEW),
            Err(TokenError::Forged)
        );
        assert_eq!(
            server_3.check_put(&[2u8; 32], &over, 0, SKEW),
            Err(TokenError::Forged)
        );
        assert_eq!(
            server_3.check(ShardOp::Get, &fp, &over, 0, SKEW),
            Err(TokenError::Malformed(PUT_OVER_TOKEN_LEN))
        );
        assert_eq!(
            server_3.check_put(&fp, &over, 13_000_000_000, SKEW),
            Err(TokenError::Expired(2000))
        );
    }
}
