#!/usr/bin/env bash
# The tests that need a real FoundationDB: the MetaStore conformance suite on
# it, and the integration tests that start whole clusters (cluster, locks,
# open files, reference model, faults) with dfs-meta on it.
#
# FoundationDB comes from ../shared/fdb (or DFS_FDB_DIST): a build of 7.3.79
# with start.sh, which starts a single-process database on loopback. Without
# it this says so in one line and exits 0: no registry ships FoundationDB.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}

# Where the build may be: DFS_FDB_DIST, beside the repository (../shared),
# or where this project's machines keep shared files (a clone elsewhere,
# as CI makes, still finds it).
dist=""
for candidate in ${DFS_FDB_DIST:-} "$PWD/../shared/fdb" /work/shared/fdb; do
  if [[ -x $candidate/start.sh ]]; then
    dist=$(cd "$candidate" && pwd)
    break
  fi
done
if [[ -z $dist ]]; then
  echo "FoundationDB tests: NOT RUN, no FoundationDB build (start.sh) in \$DFS_FDB_DIST, ../shared/fdb or /work/shared/fdb"
  exit 0
fi
command -v xz >/dev/null || {
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q xz-utils >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q xz-utils >/dev/null; }
}

data=$(mktemp -d /var/tmp/dfs-fdb.XXXXXX)
FDB_PID=""
stop_fdb() {
  if [[ -n $FDB_PID ]] && kill -0 "$FDB_PID" 2>/dev/null; then
    kill "$FDB_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$FDB_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$FDB_PID" 2>/dev/null || true
  fi
  rm -rf --one-file-system "$data"
}
trap stop_fdb EXIT
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
env_lines=$("$dist/start.sh" "$data" "$port") || {
  tail -n 20 "$data/log/fdbserver.out" >&2 2>/dev/null || true
  echo "FoundationDB tests: fdbserver did not start" >&2
  exit 1
}
eval "$env_lines"
echo "FoundationDB up: cluster file $FDB_CLUSTER_FILE, fdbserver PID $FDB_PID"

# dfs-meta with the FoundationDB backend, kept apart from the workspace's
# plain one (which the other tests and the packages use), which is then
# put back: both builds stay in the cache, so either is a copy next time.
cargo build --release -p dfs-meta --features fdb --bin dfs-meta
mkdir -p "$CARGO_TARGET_DIR/fdb-bin"
cp "$CARGO_TARGET_DIR/release/dfs-meta" "$CARGO_TARGET_DIR/fdb-bin/dfs-meta"

echo "== the dfs-meta-fdb package (deb and rpm) from that build"
# shellcheck source=packaging/tools.sh
. packaging/tools.sh
install_packagers
pkg_out=$CARGO_TARGET_DIR/packages-fdb
rm -rf "$pkg_out" && mkdir -p "$pkg_out"
cargo deb -p dfs-meta --no-build --strip -o "$pkg_out/" >/dev/null
cargo generate-rpm -p dfs-meta -o "$pkg_out/"
scripts/check-fdb-package.sh "$pkg_out" "$data/pkg"

cargo build --release -p dfs-meta --bin dfs-meta

# Runs a test command with --nocapture output cut down to the verdicts, the
# figures and what explains a failure; fails the script when it failed.
run_with_figures() { # NAME COMMAND...
  local name=$1 status
  shift
  set +e
  "$@" 2>&1 |
    grep -E '^(test |figures:|thread |  left|  right|failures|---- )|panicked|FAILED|test result|writes failed|differs'
  status=${PIPESTATUS[0]}
  set -e
  if [[ $status != 0 ]]; then
    echo "FoundationDB tests: $name FAILED" >&2
    exit 1
  fi
}

echo "== MetaStore conformance suite on FoundationDB"
# Its figures: key and value sizes, concurrent reads in one transaction.
run_with_figures conformance cargo test --release -p dfs-meta --features fdb \
  --lib store::conformance::foundationdb -- --test-threads=2 --nocapture

echo "== integration tests with dfs-meta on FoundationDB"
export DFS_TEST_META_STORE=fdb DFS_TEST_META_BIN=$CARGO_TARGET_DIR/fdb-bin/dfs-meta DFS_FDB_DIST=$dist
cargo test --release -p dfs-mount --test cluster --test locks --test open_files \
  --test reference_model --test faults -- --test-threads=2
echo "== FoundationDB's own faults and figures (two dfs-meta, fdbserver killed, SIGTERM, conflicts)"
run_with_figures tests/fdb.rs cargo test --release -p dfs-mount --test fdb -- --test-threads=1 --nocapture
echo "FoundationDB tests: passed"
