#!/usr/bin/env bash
# A subset of Ceph's s3-tests against dfs-gateway and against SeaweedFS's
# S3 gateway, in one run, and their passed/failed/skipped counts side by
# side.
#
#   S3TESTS_DIR=/path/to/ceph/s3-tests bash bench/s3-tests.sh [--out FILE]
#
# s3-tests is not on PyPI: give a checkout of github.com/ceph/s3-tests
# (this script does not fetch it). Its Python requirements go into a venv
# under /var/tmp/dfs-tools/s3tests-venv. Binaries come from
# ${CARGO_TARGET_DIR:-/var/tmp/dfs-target}/release (build the workspace
# first); SeaweedFS is the `weed` on PATH or the one scripts/install-deps.sh
# installs.
#
# The subset (SUBSET_K, SUBSET_M below): the S3 operations dfs-gateway
# serves (buckets, object PUT/GET/HEAD/DELETE, ranges, conditional
# requests, user metadata, copies, listings v1 and v2, multipart uploads)
# from s3tests/functional/test_s3.py, leaving out what it does not serve
# and says so: ACLs and bucket policies (permissions are POSIX: mode bits
# and ACLs of the key's user), versioning, tagging, encryption, lifecycle,
# object lock, websites, logging, checksums other than Content-MD5, storage
# classes, append. Tests marked fails_on_aws are left out too (they test
# Ceph behaviour that AWS lacks). The same selection runs on both servers.
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=""
if [[ ${1:-} == --out ]]; then OUT=$2; fi
[[ -n ${S3TESTS_DIR:-} && -f ${S3TESTS_DIR:-}/s3tests/functional/test_s3.py ]] ||
  { echo "s3-tests.sh: set S3TESTS_DIR to a checkout of ceph/s3-tests" >&2; exit 2; }
BIN=${CARGO_TARGET_DIR:-/var/tmp/dfs-target}/release
for b in dfs dfs-meta dfs-server dfs-gateway; do
  [[ -x $BIN/$b ]] || { echo "s3-tests.sh: $BIN/$b missing: cargo build --release --workspace" >&2; exit 2; }
done
WEED=$(command -v weed || echo /var/tmp/dfs-tools/weed-venv/bin/weed)
VENV=/var/tmp/dfs-tools/s3tests-venv
if ! [[ -x $VENV/bin/pytest ]]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$S3TESTS_DIR/requirements.txt"
fi

SUBSET_K="(bucket_list or bucket_listv2 or object_write or object_read or object_head or object_copy \
or multipart or ranged or get_object_if or put_object_if or object_set_get or metadata or bucket_delete \
or object_delete or bucket_create or bucket_head or atomic or bucket_notexist or object_raw_get) \
and not (acl or policy or versioning or versioned or tagging or encryption or sse or lifecycle or lock \
or website or logging or checksum or storage_class or append or ownership or torrent or anonymous \
or public or authenticated or presigned or post_object)"
SUBSET_M="not (versioning or tagging or bucket_policy or encryption or bucket_encryption or sse_s3 \
or lifecycle or object_lock or s3website or bucket_logging or checksum or storage_class or appendobject \
or fails_on_aws or abac_test or object_ownership or iam_tenant or iam_account or user_policy)"

RUN=$(mktemp -d /var/tmp/dfs-s3tests.XXXXXX)
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "s3-tests.sh: logs in $RUN" >&2
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() {
  local i
  for ((i = 0; i < 600; i++)); do
    curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0
    sleep 0.1
  done
  echo "s3-tests.sh: nothing answers on port $1" >&2
  exit 1
}

# conf FILE PORT: an s3-tests configuration with three users (main, alt,
# tenant; the IAM sections are required by its loader, not used by the
# subset) whose keys are KEYS[0..2].
conf() {
  local file=$1 port=$2
  {
    printf '[DEFAULT]\nhost = 127.0.0.1\nport = %s\nis_secure = False\nssl_verify = False\n\n' "$port"
    printf '[fixtures]\nbucket prefix = s3t-{random}-\n\n'
    local i=0 section
    for section in "s3 main" "s3 alt" "s3 tenant" "iam" "iam root" "iam alt root"; do
      local k=$((i < 3 ? i : 0))
      printf '[%s]\ndisplay_name = user%s\nuser_id = user%s\nemail = user%s@example.com\n' "$section" "$k" "$k" "$k"
      printf 'access_key = %s\nsecret_key = %s\ntenant = t\napi_name = default\n\n' "${KEYS[$k]}" "${SECRETS[$k]}"
      i=$((i + 1))
    done
  } >"$file"
}

# run_subset NAME PORT: the subset against the server on PORT; sets
# COUNTS[NAME] to "passed failed skipped".
declare -A COUNTS=()
run_subset() {
  local name=$1 port=$2
  conf "$RUN/$name.conf" "$port"
  echo "== s3-tests subset against $name" >&2
  (cd "$S3TESTS_DIR" && S3TEST_CONF=$RUN/$name.conf timeout 1800 "$VENV/bin/pytest" -q -p no:cacheprovider \
    s3tests/functional/test_s3.py -k "$SUBSET_K" -m "$SUBSET_M" -rfE >"$RUN/$name.pytest.log" 2>&1) || true
  local summary passed failed skipped errors
  summary=$(tail -n 1 "$RUN/$name.pytest.log")
  passed=$(grep -o '[0-9]* passed' <<<"$summary" | cut -d' ' -f1 || true)
  failed=$(grep -o '[0-9]* failed' <<<"$summary" | cut -d' ' -f1 || true)
  skipped=$(grep -o '[0-9]* skipped' <<<"$summary" | cut -d' ' -f1 || true)
  errors=$(grep -o '[0-9]* error' <<<"$summary" | cut -d' ' -f1 || true)
  COUNTS[$name]="${passed:-0} ${failed:-0} ${skipped:-0} ${errors:-0}"
  echo "$name: $summary" >&2
}

# ---- dfs: one dfs-meta, nine chunk servers (3 zones x 3 racks), mutual
# TLS, the gateway with a certificate carrying the gateway cap.
"$BIN/dfs" ca init "$RUN/tls" >/dev/null
for role in meta server client admin; do "$BIN/dfs" ca issue --role "$role" "t-$role" --ca "$RUN/tls" >/dev/null; done
mkdir -p "$RUN/gw-tls"
"$BIN/dfs" ca issue --role client gw --gateway --ca "$RUN/tls" --out "$RUN/gw-tls" >/dev/null
cp "$RUN/tls/ca.crt" "$RUN/gw-tls/"
export DFS_TLS_DIR=$RUN/tls
meta_port=$(free_port)
"$BIN/dfs-meta" --listen "127.0.0.1:$meta_port" --store "rocksdb:$RUN/meta" --ec 6+3 >"$RUN/meta.log" 2>&1 &
PIDS+=($!)
sleep 1
for z in 0 1 2; do
  for r in 0 1 2; do
    "$BIN/dfs-server" --listen 127.0.0.1:0 --meta "127.0.0.1:$meta_port" --data "$RUN/server-$z$r" \
      --zone "z$z" --rack "r$z$r" >"$RUN/server-$z$r.log" 2>&1 &
    PIDS+=($!)
  done
done
for ((i = 0; i < 300; i++)); do
  up=$("$BIN/dfs" status --meta "127.0.0.1:$meta_port" --json 2>/dev/null |
    python3 -c 'import json,sys; print(sum(1 for s in json.load(sys.stdin)["servers"] if s["state"] == "up"))' 2>/dev/null || echo 0)
  [[ $up == 9 ]] && break
  sleep 0.2
done
gw_port=$(free_port)
"$BIN/dfs-gateway" --meta "127.0.0.1:$meta_port" --listen "127.0.0.1:$gw_port" --tls-dir "$RUN/gw-tls" \
  >"$RUN/gateway.out" 2>"$RUN/gateway.log" &
PIDS+=($!)
wait_port "$gw_port"
KEYS=() SECRETS=()
for i in 0 1 2; do
  made=$("$BIN/dfs" keys add --meta "127.0.0.1:$meta_port" --uid 0 --gid 0 --json)
  KEYS+=("$(python3 -c 'import json,sys; print(json.load(sys.stdin)["access_key"])' <<<"$made")")
  SECRETS+=("$(python3 -c 'import json,sys; print(json.load(sys.stdin)["secret_key"])' <<<"$made")")
done
run_subset dfs "$gw_port"

# ---- SeaweedFS: weed server with its S3 gateway, the same three users.
KEYS=(AKSEAWEED0 AKSEAWEED1 AKSEAWEED2) SECRETS=(sk-seaweed-0 sk-seaweed-1 sk-seaweed-2)
printf '{"identities":[' >"$RUN/weed-s3.json"
for i in 0 1 2; do
  ((i == 0)) || printf ',' >>"$RUN/weed-s3.json"
  printf '{"name":"user%s","credentials":[{"accessKey":"%s","secretKey":"%s"}],"actions":["Admin","Read","Write","List","Tagging"]}' \
    "$i" "${KEYS[$i]}" "${SECRETS[$i]}" >>"$RUN/weed-s3.json"
done
printf ']}\n' >>"$RUN/weed-s3.json"
ports=()
for i in 0 1 2 3 4 5 6 7; do ports+=("$(free_port)"); done
mkdir -p "$RUN/weed"
"$WEED" server -dir="$RUN/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false \
  -master.port="${ports[0]}" -master.port.grpc="${ports[1]}" -volume.port="${ports[2]}" \
  -volume.port.grpc="${ports[3]}" -filer.port="${ports[4]}" -filer.port.grpc="${ports[5]}" \
  -s3 -s3.port="${ports[6]}" -s3.port.grpc="${ports[7]}" -s3.port.iceberg=0 -s3.port.lance=0 \
  -s3.config="$RUN/weed-s3.json" >"$RUN/weed.log" 2>&1 &
PIDS+=($!)
wait_port "${ports[6]}"
sleep 3 # the volume server registers a moment after the S3 port opens
run_subset seaweedfs "${ports[6]}"

{
  echo "Ceph s3-tests subset (bench/s3-tests.sh), $(date -u '+%Y-%m-%d %H:%M UTC'), s3-tests $(git -C "$S3TESTS_DIR" rev-parse --short HEAD 2>/dev/null || echo "(no git)")"
  echo "dfs: $(git -C "$HERE/.." rev-parse --short HEAD) (dfs-gateway, 1 dfs-meta + 9 dfs-server, RS 6+3, mutual TLS); SeaweedFS: $("$WEED" version 2>/dev/null | awk '{print $3}') (weed server -s3)"
  printf '%-12s %8s %8s %8s %8s\n' server passed failed skipped errors
  for name in dfs seaweedfs; do
    read -r p f s e <<<"${COUNTS[$name]}"
    printf '%-12s %8s %8s %8s %8s\n' "$name" "$p" "$f" "$s" "$e"
  done
  echo "failed on dfs:"
  grep -E '^(FAILED|ERROR) ' "$RUN/dfs.pytest.log" | sed 's/^/  /' || true
} | tee "${OUT:-/dev/null}"
