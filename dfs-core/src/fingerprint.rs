//! Content fingerprints: the identity of a chunk.
//!
//! A chunk is named by the SHA-256 of its *raw* (uncompressed) bytes, so the
//! same content written by any client, compressed with any codec, lands on
//! the same dedup index entry. SHA-256 rather than a faster non-cryptographic
//! hash because dedup trusts equal fingerprints to mean equal content: a
//! collision would silently hand one file's bytes to another.

use std::fmt;

use sha2::{Digest, Sha256};

/// Why bytes could not be taken as a fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FingerprintError {
    /// Fingerprints are exactly 32 bytes; anything else is a protocol or
    /// storage corruption bug, not something to pad or truncate.
    #[error("fingerprint must be 32 bytes, got {0}")]
    BadLength(usize),
}

/// SHA-256 of a chunk's raw bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// Number of bytes in a fingerprint.
    pub const LEN: usize = 32;

    /// Fingerprint of `data`.
    pub fn of(data: &[u8]) -> Self {
        Fingerprint(Sha256::digest(data).into())
    }

    /// Takes a fingerprint as it travels on the wire (`bytes` fields) or sits
    /// in a store key; rejects anything that is not exactly 32 bytes.
    pub fn from_slice(b: &[u8]) -> Result<Self, FingerprintError> {
        <[u8; 32]>::try_from(b)
            .map(Fingerprint)
            .map_err(|_| FingerprintError::BadLength(b.len()))
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The digest as an owned vector, the form protobuf `bytes` fields take.
    pub fn to_vec(&self) -> Vec<u8> {
        self.0.to_vec()
    }

    /// Full lowercase hex, as used in logs and on-disk file names.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Shortened to 12 hex characters (48 bits): enough to tell chunks apart in
/// debug output without drowning it.
impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.to_hex();
        write!(f, "Fingerprint({})", &hex[..12])
    }
}

impl AsRef<[u8]> for Fingerprint {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl TryFrom<&[u8]> for Fingerprint {
    type Error = FingerprintError;
    fn try_from(b: &[u8]) -> Result<Self, Self::Error> {
        Fingerprint::from_slice(b)
    }
}

impl From<Fingerprint> for Vec<u8> {
    fn from(f: Fingerprint) -> Self {
        f.to_vec()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        let f = Fingerprint::of(b"abc");
        assert_eq!(
            f.to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(format!("{f:?}"), "Fingerprint(ba7816bf8f01)");
    }

    #[test]
    fn slice_round_trip() {
        let f = Fingerprint::of(b"hello");
        let v = f.to_vec();
        assert_eq!(Fingerprint::from_slice(&v).unwrap(), f);
        assert_eq!(f.as_bytes().as_slice(), v.as_slice());
        assert_eq!(Fingerprint::try_from(v.as_slice()).unwrap(), f);
    }

    #[test]
    fn bad_lengths_rejected() {
        assert_eq!(
            Fingerprint::from_slice(&[0u8; 31]),
            Err(FingerprintError::BadLength(31))
        );
        assert_eq!(
            Fingerprint::from_slice(&[0u8; 33]),
            Err(FingerprintError::BadLength(33))
        );
        assert_eq!(
            Fingerprint::from_slice(&[]),
            Err(FingerprintError::BadLength(0))
        );
    }

    #[test]
    fn ordering_is_bytewise() {
        let a = Fingerprint([0u8; 32]);
        let mut b = [0u8; 32];
        b[0] = 1;
        assert!(a < Fingerprint(b));
    }
}
