#!/usr/bin/env bash
# Checks the dfs-meta-fdb packages in DIR as far as a machine without
# FoundationDB's own packages allows: file lists and dependencies of the deb
# and the rpm, then the packaged binary, unpacked into WORK (not installed:
# foundationdb-clients is not installable here), serving a volume on the
# running FoundationDB ($FDB_CLUSTER_FILE, libfdb_c on LD_LIBRARY_PATH) and
# answering `dfs stats`. Kills only the process it started.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$1 work=$2
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
fail() { echo "dfs-meta-fdb package: $*" >&2; exit 1; }

deb=$(ls "$dir"/dfs-meta-fdb_*.deb)
rpm_file=$(ls "$dir"/dfs-meta-fdb-*.rpm)
version=$(dpkg-deb -f "$deb" Version)
# cargo-deb's default revision is 1: the dfs-server package of this tree.
server_version="$(cargo pkgid -p dfs-server | sed 's/.*[@#]//')-1"
depends=$(dpkg-deb -f "$deb" Depends)
for want in "dfs-server (= $version)" "foundationdb-clients (>= 7.3)" "libc6"; do
  grep -qF -- "$want" <<<"$depends" || fail "deb Depends lacks '$want': $depends"
done
[[ $version == "$server_version" ]] || fail "version $version, but dfs-server is $server_version"
files=$(dpkg-deb -c "$deb")
for want in ./usr/bin/dfs-meta-fdb ./usr/lib/systemd/system/dfs-meta.service.d/foundationdb.conf; do
  grep -q " $want\$" <<<"$files" || fail "deb lacks $want"
done
rpm_files=$(rpm -qpl "$rpm_file")
for want in /usr/bin/dfs-meta-fdb /usr/lib/systemd/system/dfs-meta.service.d/foundationdb.conf; do
  grep -qx -- "$want" <<<"$rpm_files" || fail "rpm lacks $want"
done
rpm_requires=$(rpm -qpR "$rpm_file")
grep -qx "foundationdb-clients >= 7.3" <<<"$rpm_requires" || fail "rpm Requires: $rpm_requires"
grep -qx "dfs-server = $version" <<<"$rpm_requires" || fail "rpm Requires: $rpm_requires"

rm -rf "$work" && mkdir -p "$work"
dpkg-deb -x "$deb" "$work/root"
bin=$work/root/usr/bin/dfs-meta-fdb
# No `ldd | grep -q`: grep quitting early kills ldd with SIGPIPE, which
# pipefail reports as a failure.
[[ $(ldd "$bin") == *libfdb_c.so* ]] || fail "the packaged dfs-meta-fdb does not link libfdb_c"
grep -q '^ExecStart=/usr/bin/dfs-meta-fdb ' "$work/root/usr/lib/systemd/system/dfs-meta.service.d/foundationdb.conf" ||
  fail "the drop-in does not run /usr/bin/dfs-meta-fdb"
# Certificates for the packaged binary and the dfs that asks it.
"$CARGO_TARGET_DIR/release/dfs" ca init "$work/tls" >/dev/null
for role in meta admin; do
  "$CARGO_TARGET_DIR/release/dfs" ca issue --role "$role" "check-$role" --ca "$work/tls" >/dev/null
done
export DFS_TLS_DIR=$work/tls
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$bin" --listen "127.0.0.1:$port" --store "fdb:$FDB_CLUSTER_FILE#dfs-package-check/$$/" >"$work/meta.log" 2>&1 &
meta_pid=$!
trap 'kill "$meta_pid" 2>/dev/null; wait "$meta_pid" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  "$CARGO_TARGET_DIR/release/dfs" stats --meta "127.0.0.1:$port" >"$work/stats" 2>/dev/null && break
  kill -0 "$meta_pid" 2>/dev/null || { cat "$work/meta.log" >&2; fail "the packaged dfs-meta-fdb exited"; }
  sleep 0.2
done
[[ $(grep 'dfs-meta serving' "$work/meta.log") == *foundationdb* ]] || { cat "$work/meta.log" >&2; fail "not serving from FoundationDB"; }
[[ -s $work/stats ]] || fail "dfs stats got no answer from the packaged dfs-meta-fdb"
echo "dfs-meta-fdb $version: deb and rpm file lists and dependencies as expected; the packaged binary served a volume on FoundationDB (dfs stats answered)"
