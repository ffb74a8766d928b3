#!/usr/bin/env bash
# POSIX behaviour judged by suites nobody here wrote: pjdfstest (0 failures
# allowed) and fsx (three seeds x 100,000 operations, 0 errors), each on a
# fresh embedded dfs mount. Needs root (pjdfstest switches users; the mount
# needs allow_other for them).
#
#   scripts/posix-suites.sh [FSX_OPS]      (default 100000)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
fsx_ops=${1:-100000}

PJDFSTEST_VERSION=0.2.2
FSX_VERSION=0.3.2
command -v pjdfstest >/dev/null || cargo install --locked pjdfstest --version "$PJDFSTEST_VERSION"
command -v fsx >/dev/null || cargo install --locked fsx --version "$FSX_VERSION"
# pjdfstest's second test user (the first is nobody/nogroup).
getent group tests >/dev/null || groupadd tests
getent passwd tests >/dev/null || useradd -M -g tests -s /usr/sbin/nologin tests

work=$(mktemp -d /tmp/dfs-test-posix.XXXXXX)
# pjdfstest's users must reach the mount point.
chmod 0755 "$work"
mnt=$work/mnt
mount_pid=
cleanup() {
  set +e
  if mountpoint -q "$mnt" 2>/dev/null; then umount "$mnt" || umount -l "$mnt"; fi
  [ -n "$mount_pid" ] && kill "$mount_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# Mounts a fresh volume in the foreground process we started (so we know
# its PID), and waits until the kernel has it.
fresh_mount() {
  if mountpoint -q "$mnt" 2>/dev/null; then umount "$mnt"; fi
  if [ -n "$mount_pid" ]; then wait "$mount_pid" 2>/dev/null || true; fi
  rm -rf "$work/vol" && mkdir -p "$mnt"
  "$CARGO_TARGET_DIR/release/dfs-mount" "local:$work/vol" "$mnt" --foreground \
    -o "allow_other,log=$work/mount-$1.log" 2>"$work/mount-$1.stderr" &
  mount_pid=$!
  for _ in $(seq 100); do mountpoint -q "$mnt" && return; sleep 0.1; done
  echo "dfs did not mount; log:"; cat "$work/mount-$1.log"; exit 1
}

# A client panic answers EIO to one request and may go unnoticed by a
# suite that tolerates the error: fail on it.
check_no_panic() {
  if grep -q panicked "$work/mount-$1.stderr" "$work/mount-$1.log"; then
    cat "$work/mount-$1.stderr"
    echo "the dfs client panicked during $1"
    exit 1
  fi
}

# fsx with every operation it knows, not only its default read/write/
# truncate/mmap: fallocate, punch hole, copy_file_range, sendfile, fsync...
cat >"$work/fsx.toml" <<'TOML'
[weights]
close_open = 0.5
invalidate = 0.5
mapread = 1.0
mapwrite = 1.0
read = 1.0
write = 1.0
truncate = 1.0
fsync = 0.5
fdatasync = 0.5
posix_fallocate = 1.0
punch_hole = 1.0
sendfile = 0.5
posix_fadvise = 0.5
copy_file_range = 1.0
TOML

cat >"$work/pjdfstest.toml" <<'TOML'
[features]
posix_fallocate = {}
utime_now = {}
utimensat = {}

[settings]
naptime = 0.001
allow_remount = false

[dummy_auth]
entries = [
  ["nobody", "nogroup"],
  ["tests", "tests"],
]
TOML

echo "== pjdfstest"
fresh_mount pjdfstest
(cd "$mnt" && pjdfstest -c "$work/pjdfstest.toml" -p "$mnt") >"$work/pjdfstest.out" 2>&1 || true
grep FAILED -A3 "$work/pjdfstest.out" || true
summary=$(grep '^Summary:' "$work/pjdfstest.out" || true)
echo "pjdfstest: ${summary:-no summary (crashed?)}"
if [ -z "$summary" ] || ! grep -q '^Summary: 0 failed' <<<"$summary"; then
  tail -20 "$work/pjdfstest.out"
  exit 1
fi
check_no_panic pjdfstest

for seed in 1 2 3; do
  echo "== fsx seed $seed, $fsx_ops operations"
  fresh_mount "fsx-$seed"
  if ! (cd "$work" && fsx -q -f "$work/fsx.toml" -N "$fsx_ops" -S "$seed" -P "$work" "$mnt/fsx-$seed") >"$work/fsx-$seed.out" 2>&1; then
    tail -40 "$work/fsx-$seed.out"
    echo "fsx seed $seed: FAILED"
    exit 1
  fi
  tail -1 "$work/fsx-$seed.out"
  umount "$mnt"
  wait "$mount_pid" || true
  mount_pid=
  check_no_panic "fsx-$seed"
done
echo "posix suites: passed"
