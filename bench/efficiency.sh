#!/usr/bin/env bash
# How many bytes dfs stores for successive releases of a real source tree,
# against restic and borg on the same data, in one run (issue 21).
#
#   bench/efficiency.sh [--out FILE] [--keep]
#
# The corpus: BENCH_EFF_CRATE (tokio) at each of BENCH_EFF_VERSIONS
# (1.36.0 ... 1.42.0), downloaded once from crates.io into
# BENCH_TOOLS (/var/tmp/dfs-bench-tools)/crates. Two forms of it:
#   - trees: each release unpacked, copied in with `cp -r`, one directory
#     per release;
#   - tarballs: each release as one uncompressed tar file, copied in with
#     `cp`.
# Each form goes into a fresh dfs volume (dfs-meta on RocksDB, three
# dfs-server, RS 2+1, plaintext on 127.0.0.1, mounted with dfs-mount, the
# client's default compression), a fresh restic repository (format 2,
# compression auto: zstd), and two fresh borg repositories (its default
# lz4, and zstd level 3), one snapshot/archive per release.
#
# Figures: dfs's stored bytes (`dfs stats`: after dedup and compression,
# before redundancy, inline chunks included), right after the copy and
# again once the volume aged: dfs-meta's tiering clock (a hidden test
# hook) moved 100 days on, past the default policy's cold threshold, and
# the tiering worker finished two passes, with cold chunks packed into
# objects of a cold store (`--cold-store file://DIR`: the same packs an S3
# bucket would hold; their size on disk is printed too); the repositories' size on
# disk (`du -sb`: packs, index, snapshots). dfs's metadata store on disk is
# printed beside it, not added: restic's and borg's figures include their
# indexes, dfs's store also holds the namespace a mount serves.
# Run as root (it mounts FUSE file systems).
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=""
KEEP=0
while (($#)); do
  case $1 in
    --out) [[ $# -ge 2 ]] || { sed -n '4p' "$0" >&2; exit 2; }; OUT=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    *) echo "efficiency.sh: unknown argument $1" >&2; sed -n '4p' "$0" >&2; exit 2 ;;
  esac
done

CRATE=${BENCH_EFF_CRATE:-tokio}
read -r -a VERSIONS <<<"${BENCH_EFF_VERSIONS:-1.36.0 1.37.0 1.38.0 1.39.0 1.40.0 1.41.0 1.42.0}"
TOOLS=${BENCH_TOOLS:-/var/tmp/dfs-bench-tools}
BIN=${CARGO_TARGET_DIR:-/var/tmp/dfs-target}/release

STEP="checking the environment"
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  printf 'efficiency.sh: FAILED while %s: %s\n' "$STEP" "$*" >&2
  exit 1
}
trap 'printf "efficiency.sh: FAILED while %s (line %s: %s)\n" "$STEP" "$LINENO" "$BASH_COMMAND" >&2' ERR

((EUID == 0)) || die "run as root: it mounts FUSE file systems"
for b in dfs dfs-meta dfs-server dfs-mount; do
  [[ -x $BIN/$b ]] || die "$BIN/$b is missing: build with cargo build --release --workspace"
done
missing=()
command -v restic >/dev/null || missing+=(restic)
command -v borg >/dev/null || missing+=(borgbackup)
command -v fusermount3 >/dev/null || missing+=(fuse3)
if ((${#missing[@]})); then
  log "installing ${missing[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }
fi

RUN=$(mktemp -d /var/tmp/dfs-efficiency.XXXXXX)
LOGS=$RUN/logs
mkdir -p "$LOGS"
PIDS=()
MNT=""
cleanup() {
  local pid
  if [[ -n $MNT ]] && grep -qs " $MNT fuse" /proc/self/mounts; then
    fusermount3 -u "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true
  fi
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
  if ((KEEP == 0)); then rm -rf --one-file-system "$RUN"; else log "kept $RUN"; fi
}
trap cleanup EXIT

# ---------------------------------------------------------------- corpus

STEP="fetching the corpus"
mkdir -p "$TOOLS/crates" "$RUN/trees" "$RUN/tarballs"
for v in "${VERSIONS[@]}"; do
  f=$TOOLS/crates/$CRATE-$v.crate
  if [[ ! -s $f ]]; then
    log "downloading $CRATE $v from crates.io"
    curl -sSfL --retry 3 -o "$f.part" "https://static.crates.io/crates/$CRATE/$CRATE-$v.crate" ||
      die "cannot download $CRATE $v"
    mv "$f.part" "$f"
  fi
  mkdir -p "$RUN/trees/$v"
  tar -xzf "$f" -C "$RUN/trees/$v"
  gzip -dc "$f" >"$RUN/tarballs/$CRATE-$v.tar"
done
FILES=$(find "$RUN/trees" -type f | wc -l)
TREE_BYTES=$(du -sb --apparent-size "$RUN/trees" | cut -f1)
TAR_BYTES=$(du -sb --apparent-size "$RUN/tarballs" | cut -f1)
log "corpus: $CRATE ${VERSIONS[*]}: $FILES files, $TREE_BYTES bytes as trees, $TAR_BYTES as tarballs"

# ---------------------------------------------------------------- dfs

wait_line() { # FILE PREFIX SECONDS
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    grep -q "^$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  die "no line '$2' in $1 within $3 s: $(tail -n 5 "${1%.out}.err" 2>/dev/null)"
}

# Moves dfs-meta's tiering clock to DAYS after the copy and waits until
# two passes ended after that (the first may have begun before dfs-meta
# read the clock again).
age_to() {
  local days=$1 form=$2 dir=$3 addr=$4 runs0 i
  STEP="aging the $form in dfs to $days days"
  echo $((days * 86400)) >"$dir/clock"
  sleep 1.5
  runs0=$(tiering_runs "$addr")
  for ((i = 0; i < 600; i++)); do
    (($(tiering_runs "$addr") >= runs0 + 2)) && break
    sleep 1
  done
  (($(tiering_runs "$addr") >= runs0 + 2)) || die "the tiering worker did not finish two passes in 10 minutes"
}

# How many passes dfs-meta's tiering worker has finished.
tiering_runs() {
  "$BIN/dfs" workers --meta "$1" --plaintext --json |
    python3 -c 'import json,sys; print(next(w["runs"] for w in json.load(sys.stdin) if w["name"] == "tiering"))'
}

# dfs_store FORM: a fresh volume, the FORM's releases copied in one by one;
# prints its stored bytes and its metadata store's size on disk.
dfs_store() {
  local form=$1 dir=$RUN/dfs-$1 i addr v
  STEP="storing the $form in dfs"
  mkdir -p "$dir/mnt"
  # The tiering clock is moved forward after the copy (the hidden test
  # hook), to measure the same data once the tiering worker aged it.
  echo 0 >"$dir/clock"
  "$BIN/dfs-meta" --listen 127.0.0.1:0 --store "rocksdb:$dir/meta" --ec 2+1 --plaintext \
    --tier-clock-offset-file "$dir/clock" --tier-interval 1 --cold-store "file://$dir/cold" \
    >"$LOGS/$form-meta.out" 2>"$LOGS/$form-meta.err" &
  PIDS+=($!)
  wait_line "$LOGS/$form-meta.out" "dfs-meta listening on " 30
  addr=$(sed -n 's/^dfs-meta listening on //p' "$LOGS/$form-meta.out" | head -1)
  for i in 0 1 2; do
    "$BIN/dfs-server" --listen 127.0.0.1:0 --meta "$addr" --data "$dir/server-$i" \
      --zone "zone-$i" --rack "rack-$i" --plaintext \
      >"$LOGS/$form-server-$i.out" 2>"$LOGS/$form-server-$i.err" &
    PIDS+=($!)
  done
  for i in 0 1 2; do wait_line "$LOGS/$form-server-$i.out" "dfs-server listening on " 30; done
  for ((i = 0; i < 150; i++)); do
    [[ $("$BIN/dfs" status --meta "$addr" --plaintext --json 2>/dev/null |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["servers_up"])' 2>/dev/null) == 3 ]] && break
    sleep 0.2
  done
  MNT=$dir/mnt
  DFS_MOUNT_NOTIFY=1 "$BIN/dfs-mount" "$addr" "$MNT" -o plaintext -o "log=$LOGS/$form-mount.log" --foreground \
    >"$LOGS/$form-mount.out" 2>"$LOGS/$form-mount.err" &
  PIDS+=($!)
  wait_line "$LOGS/$form-mount.out" "dfs-mount: " 30
  grep -q '^dfs-mount: ready' "$LOGS/$form-mount.out" || die "$(cat "$LOGS/$form-mount.out")"
  for v in "${VERSIONS[@]}"; do
    if [[ $form == trees ]]; then
      cp -r "$RUN/trees/$v" "$MNT/$v"
    else
      cp "$RUN/tarballs/$CRATE-$v.tar" "$MNT/"
    fi
  done
  sync -f "$MNT"
  "$BIN/dfs" stats --meta "$addr" --plaintext --json >"$LOGS/$form-stats.json"
  # 10 days later, past the default policy's warm threshold (7 days), then
  # 100, past its cold one (90 days).
  age_to 10 "$form" "$dir" "$addr"
  "$BIN/dfs" stats --meta "$addr" --plaintext --json >"$LOGS/$form-stats-warm.json"
  age_to 100 "$form" "$dir" "$addr"
  "$BIN/dfs" stats --meta "$addr" --plaintext --json >"$LOGS/$form-stats-aged.json"
  if [[ $form == trees ]]; then
    diff -r "$RUN/trees" "$MNT" >/dev/null || die "the trees read back from dfs differ"
  else
    diff -r "$RUN/tarballs" "$MNT" >/dev/null || die "the tarballs read back from dfs differ"
  fi
  fusermount3 -u "$MNT"
  MNT=""
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
  python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); a=json.load(open(sys.argv[2])); w=json.load(open(sys.argv[3])); print(s["stored_bytes"], s["logical_bytes"], s["unique_bytes"], a["stored_bytes"], a["cold_bytes"], w["stored_bytes"], w["dictionary_chunks"], w["dictionary_bytes"])' \
    "$LOGS/$form-stats.json" "$LOGS/$form-stats-aged.json" "$LOGS/$form-stats-warm.json" | tr '\n' ' '
  du -sb "$dir/meta" | cut -f1 | tr '\n' ' '
  if [[ -d $dir/cold ]]; then du -sb "$dir/cold" | cut -f1; else echo 0; fi
}

# ---------------------------------------------------------------- restic, borg

restic_store() {
  local form=$1 repo=$RUN/restic-$1 v
  STEP="storing the $form in restic"
  export RESTIC_PASSWORD=bench
  restic init --repository-version 2 -r "$repo" >"$LOGS/restic-$form.log" 2>&1
  for v in "${VERSIONS[@]}"; do
    if [[ $form == trees ]]; then
      (cd "$RUN/trees" && restic backup -q -r "$repo" "$v") >>"$LOGS/restic-$form.log" 2>&1
    else
      (cd "$RUN/tarballs" && restic backup -q -r "$repo" "$CRATE-$v.tar") >>"$LOGS/restic-$form.log" 2>&1
    fi
  done
  du -sb "$repo" | cut -f1
}

borg_store() {
  local form=$1 compression=$2 repo=$RUN/borg-$1-${2%%,*} v
  STEP="storing the $form in borg ($compression)"
  export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
  borg init -e none "$repo" >"$LOGS/borg-$form.log" 2>&1
  for v in "${VERSIONS[@]}"; do
    if [[ $form == trees ]]; then
      (cd "$RUN/trees" && borg create -C "$compression" "$repo::$v" "$v") >>"$LOGS/borg-$form.log" 2>&1
    else
      (cd "$RUN/tarballs" && borg create -C "$compression" "$repo::$v" "$CRATE-$v.tar") >>"$LOGS/borg-$form.log" 2>&1
    fi
  done
  du -sb "$repo" | cut -f1
}

# ---------------------------------------------------------------- run

declare -A R
for form in trees tarballs; do
  # Not in a subshell: the processes it starts are this shell's to stop.
  dfs_store "$form" >"$LOGS/$form-dfs.txt"
  read -r R[$form.dfs] R[$form.logical] R[$form.unique] R[$form.aged] R[$form.cold] R[$form.warm] R[$form.dict_chunks] R[$form.dict_bytes] R[$form.meta] R[$form.packs] <"$LOGS/$form-dfs.txt"
  R[$form.restic]=$(restic_store "$form")
  R[$form.borg_lz4]=$(borg_store "$form" lz4)
  R[$form.borg_zstd]=$(borg_store "$form" zstd,3)
  log "$form: dfs ${R[$form.dfs]} (warm ${R[$form.warm]}: ${R[$form.dict_chunks]} chunks in ${R[$form.dict_bytes]} bytes with the dictionary; aged ${R[$form.aged]}), restic ${R[$form.restic]}, borg lz4 ${R[$form.borg_lz4]}, borg zstd,3 ${R[$form.borg_zstd]}"
done

STEP="printing the table"
mib() { awk -v b="$1" 'BEGIN { printf "%.2f", b / 1048576 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
{
  echo "stored bytes of $CRATE ${VERSIONS[*]} (${#VERSIONS[@]} releases, $FILES files), $(date -u +%Y-%m-%d), $(git -C "$HERE/.." rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "MiB; dfs: stored (after dedup and compression, before redundancy); others: repository on disk"
  echo
  printf '| %-8s | %9s | %9s | %9s | %9s | %9s | %9s | %9s | %9s | %8s | %10s | %10s | %9s |\n' \
    form input dfs "dfs warm" "dfs aged" "dfs packs" restic "borg lz4" "borg zstd" "dfs meta" "dfs/restic" "aged/restic" "dfs dedup"
  printf '|%s|\n' "----------|-----------|-----------|-----------|-----------|-----------|-----------|-----------|-----------|----------|------------|-------------|-----------"
  for form in trees tarballs; do
    input=$TREE_BYTES
    [[ $form == tarballs ]] && input=$TAR_BYTES
    printf '| %-8s | %9s | %9s | %9s | %9s | %9s | %9s | %9s | %9s | %8s | %10s | %11s | %8sx |\n' \
      "$form" "$(mib "$input")" "$(mib "${R[$form.dfs]}")" "$(mib "${R[$form.warm]}")" "$(mib "${R[$form.aged]}")" "$(mib "${R[$form.packs]}")" "$(mib "${R[$form.restic]}")" \
      "$(mib "${R[$form.borg_lz4]}")" "$(mib "${R[$form.borg_zstd]}")" "$(mib "${R[$form.meta]}")" \
      "$(ratio "${R[$form.dfs]}" "${R[$form.restic]}")" "$(ratio "${R[$form.aged]}" "${R[$form.restic]}")" \
      "$(ratio "${R[$form.logical]}" "${R[$form.unique]}")"
  done
  echo
  echo "dfs: stored bytes after the copy (hot: LZ4); dfs warm: 10 days on (small chunks recompressed as the codec model says,"
  echo "  or with the volume's zstd dictionary when smaller; big ones stay); dfs aged: the same volume after its tiering clock moved 100 days on and the"
  echo "  tiering worker ran (cold: chunks packed into objects of the cold store, frames of chunks compressed together with xz);"
  echo "  dfs packs: those objects on disk (their bytes are in 'dfs aged'); issue 21 asks at most 0.8 against restic"
  echo "dfs dedup: logical over unique bytes in dfs; dfs meta: its metadata store on disk (RocksDB, not counted in 'dfs')"
} | tee ${OUT:+"$OUT"}
