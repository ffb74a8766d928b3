//! Choosing servers for a chunk's shards.
//!
//! Consistent hashing keeps placement stable as servers come and go: adding
//! or removing one server only changes the placements that involve it, so
//! rebalancing moves little data. Each server gets virtual nodes in
//! proportion to its capacity so that big disks fill at the same rate as
//! small ones. On top of the ring's preference order, shards are spread over
//! failure domains (zones, then racks, then servers) so that losing a whole
//! rack or zone costs as few shards of any one chunk as possible.
//!
//! The ring hash is SHA-256, which is stable across processes, platforms and
//! releases (std's `DefaultHasher` is not), because every client and server
//! must compute the same placement. Placements are recorded per chunk
//! (`ChunkRecord.shard_servers`), so a change here does not lose data; it
//! only makes new chunks go elsewhere.

use std::collections::{HashMap, HashSet};

use sha2::{Digest, Sha256};

/// A server that can hold shards, with its failure domains.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// Server id.
    pub id: u32,
    /// Failure zone (a data centre, a power feed...).
    pub zone: String,
    /// Rack within the zone.
    pub rack: String,
    /// Usable capacity: the weight of the server on the ring.
    pub capacity_bytes: u64,
}

/// Virtual nodes for a server of mean capacity.
const BASE_VNODES: u64 = 128;
/// Fewest virtual nodes any server gets: too few and its share is erratic.
const MIN_VNODES: u64 = 16;
/// Most virtual nodes any server gets: bounds ring size for huge servers.
const MAX_VNODES: u64 = 1024;

/// A consistent-hash ring over a set of candidate servers.
#[derive(Clone, Debug)]
pub struct Ring {
    /// (hash, server id), sorted.
    points: Vec<(u64, u32)>,
    /// Servers by id.
    servers: HashMap<u32, Candidate>,
}

/// First 8 bytes of SHA-256, big-endian: a stable 64-bit ring position.
fn hash64(parts: &[&[u8]]) -> u64 {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

impl Ring {
    /// Builds the ring. Servers with a duplicate id are ignored after the
    /// first. Virtual nodes per server: `BASE_VNODES * capacity / mean`,
    /// clamped to `MIN_VNODES..=MAX_VNODES` (all servers get the base
    /// count when no capacity is known).
    pub fn new(candidates: Vec<Candidate>) -> Ring {
        let mut servers = HashMap::with_capacity(candidates.len());
        for c in candidates {
            servers.entry(c.id).or_insert(c);
        }
        let total: u128 = servers.values().map(|c| c.capacity_bytes as u128).sum();
        let count = servers.len() as u128;
        let mut points = Vec::new();
        for c in servers.values() {
            // BASE * cap / mean = BASE * cap * count / total, in u128 so that
            // no capacity can overflow; all servers get the base count when
            // no capacity is known (total == 0).
            let vnodes = (BASE_VNODES as u128 * c.capacity_bytes as u128 * count)
                .checked_div(total)
                .map_or(BASE_VNODES, |v| {
                    (v.min(MAX_VNODES as u128) as u64).max(MIN_VNODES)
                });
            for v in 0..vnodes {
                let h = hash64(&[b"dfs-ring-v1", &c.id.to_le_bytes(), &v.to_le_bytes()]);
                points.push((h, c.id));
            }
        }
        // Sorting by (hash, id) makes the ring independent of input order,
        // even on the (astronomically unlikely) hash collision.
        points.sort_unstable();
        Ring { points, servers }
    }

    /// Number of distinct servers.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// True when there are no servers.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// The candidate with this id, if on the ring.
    pub fn server(&self, id: u32) -> Option<&Candidate> {
        self.servers.get(&id)
    }

    /// Every distinct server in ring order clockwise from the key's hash:
    /// the key's preference order.
    pub fn preference(&self, key: &[u8]) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.servers.len());
        if self.points.is_empty() {
            return out;
        }
        let h = hash64(&[b"dfs-key-v1", key]);
        let start = self.points.partition_point(|&(p, _)| p < h);
        let mut seen = HashSet::with_capacity(self.servers.len());
        for i in 0..self.points.len() {
            let (_, id) = self.points[(start + i) % self.points.len()];
            if seen.insert(id) {
                out.push(id);
                if out.len() == self.servers.len() {
                    break;
                }
            }
        }
        out
    }

    /// Servers for the `n` shards of the chunk `key`, by shard index.
    ///
    /// Walking the key's preference order, each pick takes the first server
    /// not picked yet that minimises, in order: how many shards its
    /// (zone, rack) already has, then how many its zone already has. So
    /// shards first go to unused zones, then to unused racks (keeping zones
    /// balanced), then to unused servers (keeping racks, then zones,
    /// balanced). Only when there are fewer servers than shards are
    /// servers reused, cycling through the picks so far, so every shard gets
    /// a server whenever at least one exists. Deterministic for equal inputs.
    pub fn place(&self, key: &[u8], n: usize) -> Vec<u32> {
        self.place_excluding(key, n, &[])
    }

    /// Like [`place`](Self::place) but never choosing an `excluded` server
    /// (e.g. ones already holding other shards of the chunk, or known to be
    /// down). Returns an empty vector when every server is excluded.
    pub fn place_excluding(&self, key: &[u8], n: usize, excluded: &[u32]) -> Vec<u32> {
        self.place_beside(key, n, &[], excluded)
    }

    /// Servers for `n` more shards of a chunk whose other shards stay on
    /// `kept` (a rebuild, or a re-upload after a server failed): the new
    /// shards avoid `kept` and `excluded` servers and the failure domains
    /// `kept` already uses, as far as the ring allows. Only when every
    /// allowed server is taken are servers reused (the least used domains
    /// first): a shard on a busy server protects more than no shard.
    pub fn place_beside(&self, key: &[u8], n: usize, kept: &[u32], excluded: &[u32]) -> Vec<u32> {
        let mut zone_use: HashMap<&str, usize> = HashMap::new();
        let mut rack_use: HashMap<(&str, &str), usize> = HashMap::new();
        for c in kept.iter().filter_map(|id| self.servers.get(id)) {
            *zone_use.entry(c.zone.as_str()).or_default() += 1;
            *rack_use
                .entry((c.zone.as_str(), c.rack.as_str()))
                .or_default() += 1;
        }
        let pref: Vec<&Candidate> = self
            .preference(key)
            .into_iter()
            .filter(|id| !excluded.contains(id) && !kept.contains(id))
            .filter_map(|id| self.servers.get(&id))
            .collect();
        let mut chosen: Vec<u32> = Vec::with_capacity(n);
        if pref.is_empty() {
            // Every allowed server already holds a shard: reuse those.
            let reusable: Vec<u32> = kept
                .iter()
                .copied()
                .filter(|id| !excluded.contains(id) && self.servers.contains_key(id))
                .collect();
            if reusable.is_empty() {
                return chosen;
            }
            for i in 0..n {
                chosen.push(reusable[i % reusable.len()]);
            }
            return chosen;
        }
        let mut used = vec![false; pref.len()];
        while chosen.len() < n.min(pref.len()) {
            let mut best: Option<(usize, (usize, usize))> = None;
            for (i, c) in pref.iter().enumerate() {
                if used[i] {
                    continue;
                }
                let score = (
                    rack_use
                        .get(&(c.zone.as_str(), c.rack.as_str()))
                        .copied()
                        .unwrap_or(0),
                    zone_use.get(c.zone.as_str()).copied().unwrap_or(0),
                );
                if best.is_none_or(|(_, b)| score < b) {
                    best = Some((i, score));
                    if score == (0, 0) {
                        break; // cannot do better; earliest in preference wins
                    }
                }
            }
            let Some((i, _)) = best else { break };
            let c = pref[i];
            used[i] = true;
            *zone_use.entry(c.zone.as_str()).or_default() += 1;
            *rack_use
                .entry((c.zone.as_str(), c.rack.as_str()))
                .or_default() += 1;
            chosen.push(c.id);
        }
        // Fewer servers than shards: reuse, spreading the extra shards
        // evenly in the same (domain-balanced) order.
        let distinct = chosen.len();
        for i in distinct..n {
            chosen.push(chosen[i % distinct]);
        }
        chosen
    }
}

/// A server with less free space than this is full for placement: 2% of
/// its capacity, at most 64 MiB (its own check refuses puts past its
/// limits anyway; this keeps new shards from being sent there at all).
pub fn is_full(capacity_bytes: u64, used_bytes: u64) -> bool {
    let margin = (capacity_bytes / 50).min(64 << 20);
    capacity_bytes > 0 && capacity_bytes.saturating_sub(used_bytes) <= margin
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cand(id: u32, zone: &str, rack: &str, cap: u64) -> Candidate {
        Candidate {
            id,
            zone: zone.to_string(),
            rack: rack.to_string(),
            capacity_bytes: cap,
        }
    }

    /// `zones` x `racks` x `per_rack` servers of equal capacity.
    fn grid(zones: u32, racks: u32, per_rack: u32) -> Vec<Candidate> {
        let mut out = Vec::new();
        for z in 0..zones {
            for r in 0..racks {
                for s in 0..per_rack {
                    let id = (z * racks + r) * per_rack + s + 1;
                    out.push(cand(id, &format!("z{z}"), &format!("r{r}"), 1 << 40));
                }
            }
        }
        out
    }

    fn count_by<F: Fn(&Candidate) -> String>(
        ring: &Ring,
        ids: &[u32],
        f: F,
    ) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for id in ids {
            *m.entry(f(ring.server(*id).expect("placed on ring")))
                .or_default() += 1;
        }
        m
    }

    #[test]
    fn nine_servers_three_zones() {
        let ring = Ring::new(grid(3, 3, 1));
        for k in 0..500u32 {
            let key = k.to_le_bytes();
            let p = ring.place(&key, 9);
            let distinct: HashSet<_> = p.iter().collect();
            assert_eq!(distinct.len(), 9);
            let zones = count_by(&ring, &p, |c| c.zone.clone());
            assert!(zones.values().all(|&n| n == 3), "{zones:?}");
            // Any prefix is as spread as it can be.
            for n in 1..=9 {
                let zones = count_by(&ring, &p[..n], |c| c.zone.clone());
                let (lo, hi) = (zones.values().min(), zones.values().max());
                assert!(hi.unwrap_or(&0) - lo.unwrap_or(&0) <= 1, "{n}: {zones:?}");
                if n >= 3 {
                    assert_eq!(zones.len(), 3);
                }
            }
            assert_eq!(ring.place(&key, 9), p, "deterministic");
        }
    }

    #[test]
    fn distinct_racks_when_enough_racks() {
        // 2 zones, unequal rack counts, several servers per rack.
        let mut cands = grid(1, 4, 3);
        for c in grid(1, 2, 3) {
            cands.push(Candidate {
                id: c.id + 100,
                zone: "other".into(),
                ..c
            });
        }
        let ring = Ring::new(cands);
        for k in 0..500u32 {
            for n in 1..=6 {
                let p = ring.place(&k.to_be_bytes(), n);
                assert_eq!(p.len(), n);
                let racks = count_by(&ring, &p, |c| format!("{}/{}", c.zone, c.rack));
                assert_eq!(racks.len(), n, "n {n}: {racks:?}");
                let zones = count_by(&ring, &p, |c| c.zone.clone());
                assert_eq!(zones.len(), n.min(2));
            }
        }
    }

    #[test]
    fn weighted_by_capacity() {
        let mut cands: Vec<_> = (1..=4)
            .map(|i| cand(i, "z", &format!("r{i}"), 1000))
            .collect();
        cands.push(cand(5, "z", "r5", 2000));
        let ring = Ring::new(cands);
        let mut hits = HashMap::<u32, usize>::new();
        for k in 0..10_000u32 {
            *hits.entry(ring.place(&k.to_le_bytes(), 1)[0]).or_default() += 1;
        }
        let small = (1..=4).map(|i| hits[&i]).sum::<usize>() as f64 / 4.0;
        let ratio = hits[&5] as f64 / small;
        assert!((1.5..=2.5).contains(&ratio), "ratio {ratio}: {hits:?}");
    }

    #[test]
    fn removing_a_server_moves_only_its_keys() {
        let cands = grid(3, 2, 2);
        let removed = cands[4].id;
        let before = Ring::new(cands.clone());
        let after = Ring::new(cands.into_iter().filter(|c| c.id != removed).collect());
        let (mut kept_exact, total) = (0, 2000);
        for k in 0..total as u32 {
            let key = k.to_le_bytes();
            let (a, b) = (before.place(&key, 3), after.place(&key, 3));
            assert!(!b.contains(&removed));
            if !a.contains(&removed) {
                assert_eq!(a[0], b[0]);
                assert_eq!(a, b);
            }
            if a == b {
                kept_exact += 1;
            }
        }
        assert!(kept_exact * 10 >= total * 6, "{kept_exact}/{total}");
    }

    #[test]
    fn fewer_servers_than_shards_reuses() {
        let ring = Ring::new(vec![cand(1, "a", "r", 10), cand(2, "b", "r", 10)]);
        let p = ring.place(b"key", 5);
        assert_eq!(p.len(), 5);
        assert_eq!(p[0..2], p[2..4]);
        assert_eq!(p[4], p[0]);
        assert_ne!(p[0], p[1]);
        let one = Ring::new(vec![cand(7, "a", "r", 10)]);
        assert_eq!(one.place(b"k", 3), vec![7, 7, 7]);
        assert_eq!(ring.place(b"key", 0), Vec::<u32>::new());
    }

    #[test]
    fn empty_ring_and_exclusions() {
        let empty = Ring::new(vec![]);
        assert!(empty.is_empty());
        assert!(empty.place(b"k", 3).is_empty());
        let ring = Ring::new(grid(3, 1, 2));
        let all: Vec<u32> = (1..=6).collect();
        assert!(ring.place_excluding(b"k", 3, &all).is_empty());
        for k in 0..200u32 {
            let p = ring.place_excluding(&k.to_le_bytes(), 4, &[1, 2, 3]);
            assert_eq!(p.len(), 4);
            assert!(p.iter().all(|id| ![1, 2, 3].contains(id)));
            // Three servers left, so exactly one is reused.
            assert_eq!(p.iter().collect::<HashSet<_>>().len(), 3);
        }
    }

    #[test]
    fn input_order_does_not_matter() {
        let cands = grid(2, 2, 2);
        let mut rev = cands.clone();
        rev.reverse();
        let (a, b) = (Ring::new(cands), Ring::new(rev));
        for k in 0..100u32 {
            assert_eq!(a.place(&k.to_le_bytes(), 5), b.place(&k.to_le_bytes(), 5));
        }
    }

    #[test]
    fn zero_capacity_everywhere_still_places() {
        let ring = Ring::new((1..=3).map(|i| cand(i, "z", "r", 0)).collect());
        assert_eq!(ring.place(b"x", 3).len(), 3);
    }

    #[test]
    fn place_beside_avoids_the_domains_of_kept_shards() {
        // Three zones of three servers; shards kept on 1, 4 (zones a, b):
        // the first new shard goes to the unused zone c, the second to any
        // zone with one shard, never next to a kept one in its rack.
        let mut servers = Vec::new();
        for (i, zone) in ["a", "b", "c"].iter().enumerate() {
            for r in 0..3u32 {
                let id = i as u32 * 3 + r + 1;
                servers.push(cand(id, zone, &format!("r{r}"), 1 << 30));
            }
        }
        let ring = Ring::new(servers);
        for key in 0u32..50 {
            let key = key.to_be_bytes();
            let new = ring.place_beside(&key, 2, &[1, 4], &[7]);
            assert_eq!(new.len(), 2);
            assert!(!new.contains(&1) && !new.contains(&4) && !new.contains(&7));
            assert_ne!(new[0], new[1]);
            let zone_c = new.iter().filter(|&&id| (7..=9).contains(&id)).count();
            assert!(zone_c >= 1, "a new shard in the unused zone c: {new:?}");
        }
    }

    #[test]
    fn place_beside_reuses_kept_servers_only_when_nothing_else_is_left() {
        let ring = Ring::new(vec![cand(1, "a", "r", 1), cand(2, "b", "r", 1)]);
        assert_eq!(ring.place_beside(b"k", 1, &[1], &[]), vec![2]);
        let reused = ring.place_beside(b"k", 2, &[1, 2], &[]);
        assert_eq!(reused.len(), 2);
        assert!(ring.place_beside(b"k", 1, &[1, 2], &[1, 2]).is_empty());
    }

    #[test]
    fn full_means_within_the_margin() {
        assert!(!is_full(0, 0), "unknown capacity is not full");
        assert!(!is_full(100 << 20, 10 << 20));
        assert!(is_full(100 << 20, 99 << 20), "2% of 100 MiB left");
        assert!(
            is_full(1 << 40, (1 << 40) - (64 << 20)),
            "the margin is at most 64 MiB"
        );
        assert!(!is_full(1 << 40, (1 << 40) - (65 << 20)));
    }
}
