#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests, and the integration tests
# that start real dfs processes on loopback and mount them with FUSE.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}

scripts/install-deps.sh
cargo fmt --all -- --check
# The FUSE layer only adapts kernel requests to the file-system core: every
# metadata or chunk RPC is made by the core (dfs-mount/src/fs), not by it.
if grep -nE '\.call\(|\bcluster\b|\bmeta\b|\.locks\b' dfs-mount/src/fuse/*.rs; then
  echo "dfs-mount/src/fuse reaches the cluster itself (lines above): call the core in fs/ instead" >&2
  exit 1
fi
# Modules stay small enough to read in one sitting.
too_long=$(find dfs-mount/src dfs-meta/src -name '*.rs' -exec wc -l {} + |
  awk '$2 != "total" && $1 > 850 {print $2 " (" $1 " lines)"}')
if [ -n "$too_long" ]; then
  echo "split these modules by responsibility: $too_long" >&2
  exit 1
fi
# The shipped alert rules: valid, and their unit tests pass.
promtool check rules packaging/prometheus/dfs-alerts.yml
(cd packaging/prometheus && promtool test rules dfs-alerts.test.yml)
cargo build --release --workspace --all-targets
cargo clippy --release --workspace --all-targets -- -D warnings
# The FoundationDB backend is compiled (not linked: that needs libfdb_c) on
# every run so it cannot rot; scripts/fdb-tests.sh links and runs it.
cargo clippy --release -p dfs-meta --features fdb --all-targets -- -D warnings
# Integration tests mount FUSE file systems and start whole clusters: run
# them one at a time on a small machine.
cargo test --release --workspace -- --test-threads=2 --skip the_core_matches_a_model \
  --skip random_requests_to_every_handler --skip migrations_cut_short
# The in-process reference-model test on its own, its figures (cases run,
# operations applied, faults injected) in the log.
cargo test --release -p dfs-mount --test core_model -- --nocapture
# Random and malformed requests at every RPC handler in process, its
# figures (cases, requests, how they were answered) in the log.
cargo test --release -p dfs-mount --test hostile_requests -- --nocapture
# Cold-tier migrations cut short by killing the S3 server, dfs-meta and a
# chunk server, its figures (chunks packed at each fault, bytes read back,
# fsck) in the log.
cargo test --release -p dfs-mount --test tiers migrations_cut_short -- --nocapture
# On a real FoundationDB (from ../shared/fdb, when this machine has it): the
# store's conformance suite, the cluster tests with dfs-meta on it, two
# dfs-meta over one database, SIGTERM with the database gone.
scripts/fdb-tests.sh
# pjdfstest and fsx on a fresh mount (root only: pjdfstest switches users).
scripts/posix-suites.sh
# The packages, installed and used as an administrator would (root only:
# dpkg -i, an /etc/fstab line, mount).
packaging/test.sh
