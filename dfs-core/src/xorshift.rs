//! A tiny deterministic generator (xorshift64) for tests and benchmarks:
//! its stream never changes with a dependency update (unlike `rand`'s), so
//! pinned snapshots stay meaningful and a failing seed replays.

/// xorshift64. The seed must not be 0 (the stream would stay 0).
#[derive(Clone, Debug)]
pub struct XorShift(pub u64);

impl XorShift {
    /// The next 64 bits of the stream.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// `len` bytes of the stream, each draw little-endian.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// `len` pseudo-random bytes from `seed` (not 0).
pub fn xorshift_bytes(seed: u64, len: usize) -> Vec<u8> {
    XorShift(seed).bytes(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_is_pinned() {
        let mut rng = XorShift(1);
        assert_eq!(rng.next_u64(), 1_082_269_761);
        assert_eq!(xorshift_bytes(1, 3), 1_082_269_761u64.to_le_bytes()[..3]);
        assert!(rng.below(10) < 10);
        assert_eq!(rng.below(0), 0);
    }
}
