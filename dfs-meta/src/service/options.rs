//! Options a `MetaService` is opened with beyond the volume (daemon
//! flags, test hooks).

use super::MetaService;
use std::sync::Arc;

use crate::access::TierClock;

impl MetaService {
    /// The metadata store the service runs on (for services served beside
    /// it, such as `access_keys`).
    pub fn store(&self) -> Arc<dyn crate::store::MetaStore> {
        self.store.clone()
    }

    /// Runs the `tiering` worker every `interval` (`None`: never).
    pub fn with_tier_interval(mut self, interval: Option<std::time::Duration>) -> Self {
        self.tier_interval = interval;
        self
    }

    /// Tiering reads `clock` instead of the system clock (tests age a
    /// volume with an offset file).
    pub fn with_tier_clock(mut self, clock: TierClock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Test hook: every `n`-th committed create is answered with a
    /// commit-outcome-unknown error (0: never). See `unknown_create_every`.
    pub fn inject_unknown_create_commits(mut self, n: u64) -> Self {
        self.unknown_create_every = n;
        self
    }

    /// How long the shard tokens this server signs stay good.
    pub fn with_token_lifetime(mut self, lifetime: std::time::Duration) -> Self {
        self.token_lifetime_ns = i64::try_from(lifetime.as_nanos()).unwrap_or(i64::MAX);
        self
    }

    /// Cold files read again come back to hot (`dfs-meta --reheat`).
    pub fn with_reheat(mut self, on: bool) -> Self {
        self.reheat = on;
        self
    }
}
