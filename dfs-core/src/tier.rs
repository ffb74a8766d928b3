//! Storage tiers and the policies that say when a file moves between them
//! (issue 21).
//!
//! A file is hot while it is used, warm once it has not been read or
//! written for a while, cold after longer: hot chunks are stored for speed
//! (LZ4), warm ones for balance (ZSTD), cold ones for space (LZMA, and in
//! the end an object store). A policy is kept in the extended attribute
//! [`XATTR`] (`user.dfs.tier`, so `getfattr -d` shows it) of a directory or
//! file; a new entry inherits its directory's, and a file without one
//! follows the nearest directory above it that has one, else the volume's
//! default ([`TierPolicy::volume_default`]).
//!
//! The text form, e.g. `warm=7d,cold=90d`: after how long without access
//! a file becomes warm and cold (`never` for never), or one tier's name
//! (`hot`, `warm`, `cold`) to keep files in that tier whatever their age.

use std::fmt;
use std::time::Duration;

use crate::codec::CodecPolicy;

/// The extended attribute that holds a policy.
pub const XATTR: &str = "user.dfs.tier";

/// Where a file's chunks are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    Hot,
    Warm,
    Cold,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Hot, Tier::Warm, Tier::Cold];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Hot => "hot",
            Tier::Warm => "warm",
            Tier::Cold => "cold",
        }
    }

    /// The codec chunks of this tier are compressed with.
    pub fn codec(self) -> CodecPolicy {
        match self {
            Tier::Hot => CodecPolicy::Lz4,
            Tier::Warm => CodecPolicy::Zstd,
            Tier::Cold => CodecPolicy::Lzma,
        }
    }

    fn parse(text: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.as_str() == text)
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When files move from hot to warm to cold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TierPolicy {
    /// Always in this tier.
    Pinned(Tier),
    /// Warm after `warm_after` without access, cold after `cold_after`
    /// (`None`: never).
    ByAccess {
        warm_after: Option<Duration>,
        cold_after: Option<Duration>,
    },
}

/// Why a policy's text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tier policy `{text}`: {why} (expected e.g. `warm=7d,cold=90d`, `warm=30d,cold=never` or `hot`)")]
pub struct PolicyError {
    pub text: String,
    pub why: String,
}

const DAY: u64 = 24 * 3600;

impl TierPolicy {
    /// What a volume does unless told otherwise: warm after a week
    /// without access, cold after 90 days (the seed's cold threshold).
    pub fn volume_default() -> Self {
        TierPolicy::ByAccess {
            warm_after: Some(Duration::from_secs(7 * DAY)),
            cold_after: Some(Duration::from_secs(90 * DAY)),
        }
    }

    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let fail = |why: String| PolicyError {
            text: text.to_string(),
            why,
        };
        let trimmed = text.trim();
        if let Some(tier) = Tier::parse(trimmed) {
            return Ok(TierPolicy::Pinned(tier));
        }
        let (mut warm, mut cold) = (None, None);
        for part in trimmed.split(',') {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| fail(format!("`{part}` is not KEY=AGE")))?;
            let age = parse_age(value.trim()).map_err(fail)?;
            let slot = match key.trim() {
                "warm" => &mut warm,
                "cold" => &mut cold,
                other => return Err(fail(format!("unknown key `{other}`: use warm or cold"))),
            };
            if slot.is_some() {
                return Err(fail(format!("`{}` given twice", key.trim())));
            }
            *slot = Some(age);
        }
        let (Some(warm_after), Some(cold_after)) = (warm, cold) else {
            return Err(fail("give both warm= and cold=".into()));
        };
        if let (Some(w), Some(c)) = (warm_after, cold_after) {
            if c <= w {
                return Err(fail("cold= must be longer than warm=".into()));
            }
        }
        Ok(TierPolicy::ByAccess {
            warm_after,
            cold_after,
        })
    }

    /// The tier of a file not accessed for `idle`.
    pub fn tier_after(&self, idle: Duration) -> Tier {
        match *self {
            TierPolicy::Pinned(tier) => tier,
            TierPolicy::ByAccess {
                warm_after,
                cold_after,
            } => {
                if cold_after.is_some_and(|c| idle >= c) {
                    Tier::Cold
                } else if warm_after.is_some_and(|w| idle >= w) {
                    Tier::Warm
                } else {
                    Tier::Hot
                }
            }
        }
    }
}

/// `30d`, `12h`, `15m`, `90s`, a bare number of seconds, or `never`.
fn parse_age(text: &str) -> Result<Option<Duration>, String> {
    if text == "never" {
        return Ok(None);
    }
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not an age such as 30d, 12h or never"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => DAY,
        _ => return Err(format!("`{text}`: the unit is one of s, m, h, d")),
    };
    n.checked_mul(scale)
        .map(|s| Some(Duration::from_secs(s)))
        .ok_or_else(|| format!("`{text}` is too long"))
}

fn format_age(age: Option<Duration>) -> String {
    let Some(age) = age else {
        return "never".into();
    };
    let s = age.as_secs();
    for (unit, scale) in [("d", DAY), ("h", 3600), ("m", 60)] {
        if s >= scale && s % scale == 0 {
            return format!("{}{unit}", s / scale);
        }
    }
    format!("{s}s")
}

impl fmt::Display for TierPolicy {
    /// The canonical text, which [`TierPolicy::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            TierPolicy::Pinned(tier) => f.write_str(tier.as_str()),
            TierPolicy::ByAccess {
                warm_after,
                cold_after,
            } => write!(
                f,
                "warm={},cold={}",
                format_age(warm_after),
                format_age(cold_after)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_print_back() {
        for (text, canonical) in [
            ("warm=7d,cold=90d", "warm=7d,cold=90d"),
            (" cold=2160h , warm=604800 ", "warm=7d,cold=90d"),
            ("warm=30d,cold=never", "warm=30d,cold=never"),
            ("warm=never,cold=never", "warm=never,cold=never"),
            ("hot", "hot"),
            ("cold", "cold"),
            ("warm=90s,cold=5m", "warm=90s,cold=5m"),
        ] {
            let policy = TierPolicy::parse(text).expect(text);
            assert_eq!(policy.to_string(), canonical);
            assert_eq!(TierPolicy::parse(canonical), Ok(policy));
        }
        assert_eq!(TierPolicy::volume_default().to_string(), "warm=7d,cold=90d");
    }

    #[test]
    fn bad_policies_say_why() {
        for (text, why) in [
            ("", "is not KEY=AGE"),
            ("lukewarm", "is not KEY=AGE"),
            ("warm=7d", "both"),
            ("warm=7d,cold=3d", "longer"),
            ("warm=7d,warm=8d,cold=90d", "twice"),
            ("warm=7w,cold=90d", "unit"),
            ("warm=x,cold=90d", "not an age"),
            ("tepid=1d,cold=9d", "unknown key"),
            ("warm=99999999999999999d,cold=never", "too long"),
        ] {
            let err = TierPolicy::parse(text).expect_err(text);
            assert!(err.to_string().contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn files_move_with_their_idle_time() {
        let p = TierPolicy::parse("warm=7d,cold=90d").expect("policy");
        let days = |d: u64| Duration::from_secs(d * DAY);
        assert_eq!(p.tier_after(days(0)), Tier::Hot);
        assert_eq!(p.tier_after(days(7)), Tier::Warm);
        assert_eq!(p.tier_after(days(89)), Tier::Warm);
        assert_eq!(p.tier_after(days(90)), Tier::Cold);
        let never_cold = TierPolicy::parse("warm=1d,cold=never").expect("policy");
        assert_eq!(never_cold.tier_after(days(10_000)), Tier::Warm);
        assert_eq!(
            TierPolicy::parse("hot").expect("hot").tier_after(days(500)),
            Tier::Hot
        );
        assert_eq!(Tier::Cold.codec(), CodecPolicy::Lzma);
    }
}
