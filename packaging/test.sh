#!/usr/bin/env bash
# Package test, as an administrator would use dfs: builds the deb and rpm
# packages, installs the debs with dpkg, verifies the installed systemd
# units, starts the installed servers (with systemd when it runs, else from
# the units' own ExecStart/EnvironmentFile/User lines), mounts through an
# /etc/fstab line with `mount MOUNTPOINT`, copies files in and out,
# unmounts, remounts to check persistence, and removes the packages. The
# rpms are checked with `rpm -qpl` / `rpm -qpR`.
#
# Needs root. Cleans up in every outcome: unmounts, restores /etc/fstab,
# stops only the servers it started, removes the packages it installed.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}

# shellcheck source=packaging/tools.sh
. packaging/tools.sh
FSTAB_MARK="# dfs-package-test"

if [ "$(id -u)" != 0 ]; then
  echo "packaging/test.sh: needs root (dpkg -i, mount)" >&2
  exit 1
fi

# Tools: packagers from crates.io, rpm to inspect rpms, systemd-analyze.
install_packagers
missing=()
command -v rpm >/dev/null || missing+=(rpm)
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v runuser >/dev/null || missing+=(util-linux)
command -v adduser >/dev/null || missing+=(adduser)
if [ ${#missing[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi

echo "== building packages"
cargo build --release --workspace
out=$CARGO_TARGET_DIR/packages
rm -rf "$out" && mkdir -p "$out"
cargo deb -p dfs-server --no-build --strip -o "$out/"
cargo deb -p dfs-mount --no-build --strip -o "$out/"
cargo generate-rpm -p dfs-server -o "$out/"
cargo generate-rpm -p dfs-mount -o "$out/"
ls -l "$out"

echo "== checking the rpms"
server_rpm=$(ls "$out"/dfs-server-*.rpm)
client_rpm=$(ls "$out"/dfs-client-*.rpm)
expect_in() { # LIST WHAT...
  local list=$1; shift
  for want in "$@"; do
    grep -qx -- "$want" <<<"$list" || { echo "rpm: missing $want in:"; echo "$list"; exit 1; }
  done
}
expect_in "$(rpm -qpl "$server_rpm")" /usr/bin/dfs-meta /usr/bin/dfs-server /usr/bin/dfs-gateway \
  /etc/dfs/meta.conf /etc/dfs/server.conf /etc/dfs/gateway.conf \
  /usr/lib/systemd/system/dfs-meta.service /usr/lib/systemd/system/dfs-server.service \
  /usr/lib/systemd/system/dfs-gateway.service /usr/share/dfs/haproxy/dfs-gateway.cfg \
  /usr/share/dfs/prometheus/dfs-alerts.yml /usr/share/dfs/grafana/dfs-dashboard.json
expect_in "$(rpm -qpR "$server_rpm")" shadow-utils systemd
expect_in "$(rpm -qpl "$client_rpm")" /usr/bin/dfs-mount /usr/bin/dfs \
  /usr/sbin/mount.dfs /usr/sbin/mount.fuse.dfs
expect_in "$(rpm -qpR "$client_rpm")" fuse3
rpm -qp --configfiles "$server_rpm" | grep -qx /etc/dfs/meta.conf
echo "rpms: file lists and dependencies as expected"

work=$(mktemp -d /tmp/dfs-pkgtest.XXXXXX)
mnt=$work/mnt
started_pids=()
installed=()
tls_made=""
cleanup() {
  set +e
  if mountpoint -q "$mnt" 2>/dev/null; then umount "$mnt" || umount -l "$mnt"; fi
  sed -i "\|$FSTAB_MARK\$|d" /etc/fstab
  if [ -d /run/systemd/system ]; then
    for p in "${installed[@]}"; do
      [ "$p" = dfs-server ] && systemctl stop dfs-server.service dfs-meta.service
    done
  fi
  for pid in "${started_pids[@]}"; do
    kill "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null
  done
  for p in "${installed[@]}"; do dpkg -P "$p" >/dev/null; done
  if [ -n "$tls_made" ]; then rm -rf /etc/dfs/tls; rmdir /etc/dfs 2>/dev/null; fi
  rm -rf "$work"
}
trap cleanup EXIT

for p in dfs-client dfs-server; do
  if dpkg -s "$p" >/dev/null 2>&1; then
    echo "packaging/test.sh: $p is installed already; remove it first (dpkg -r $p)" >&2
    exit 1
  fi
done

echo "== installing the debs"
dpkg -s fuse3 >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -q fuse3 >/dev/null
installed+=(dfs-server)
dpkg -i --force-confnew "$out"/dfs-server_*.deb
# The alert rules and dashboard operators point Prometheus and Grafana at.
if command -v promtool >/dev/null; then
  promtool check rules /usr/share/dfs/prometheus/dfs-alerts.yml
else
  test -s /usr/share/dfs/prometheus/dfs-alerts.yml
fi
python3 -c 'import json, sys; json.load(open(sys.argv[1]))' /usr/share/dfs/grafana/dfs-dashboard.json
if command -v haproxy >/dev/null; then
  haproxy -c -q -f /usr/share/dfs/haproxy/dfs-gateway.cfg
fi
installed+=(dfs-client)
dpkg -i "$out"/dfs-client_*.deb
for f in /usr/bin/dfs-meta /usr/bin/dfs-server /usr/bin/dfs-gateway /usr/bin/dfs-mount /usr/bin/dfs \
  /sbin/mount.dfs /sbin/mount.fuse.dfs /etc/dfs/meta.conf /etc/dfs/server.conf /etc/dfs/gateway.conf; do
  [ -e "$f" ] || { echo "not installed: $f"; exit 1; }
done
getent passwd dfs >/dev/null || { echo "no system user dfs"; exit 1; }
units=(/usr/lib/systemd/system/dfs-meta.service /usr/lib/systemd/system/dfs-server.service
  /usr/lib/systemd/system/dfs-gateway.service)
systemd-analyze verify "${units[@]}"
echo "units: systemd-analyze verify passed"
# The sandbox's exposure (0 safest, 10 none), as systemd rates it; more
# than 2.0 means a hardening line went missing.
for unit in "${units[@]}"; do
  score=$(systemd-analyze security --offline=true "$unit" 2>&1 | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
  echo "figures: systemd-analyze security $(basename "$unit"): exposure ${score:-unknown}"
  awk -v s="${score:-99}" 'BEGIN { exit !(s <= 2.0) }' || { echo "$unit: exposure ${score:-unknown} (want at most 2.0)"; exit 1; }
done

# Ports nobody uses, written into the installed config as an admin would.
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 20000))
    (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null || { echo $p; return; }
  done
}
meta_port=$(free_port)
server_port=$(free_port)
sed -i "s|^DFS_META_LISTEN=.*|DFS_META_LISTEN=127.0.0.1:$meta_port|; s|^DFS_META_STORE=.*|DFS_META_STORE=rocksdb:/var/lib/dfs/pkgtest/meta|" /etc/dfs/meta.conf
sed -i "s|^DFS_SERVER_LISTEN=.*|DFS_SERVER_LISTEN=127.0.0.1:$server_port|; s|^DFS_SERVER_META=.*|DFS_SERVER_META=127.0.0.1:$meta_port|; s|^DFS_SERVER_DATA=.*|DFS_SERVER_DATA=/var/lib/dfs/pkgtest/server|" /etc/dfs/server.conf
install -d -o dfs -g dfs /var/lib/dfs/pkgtest

# Certificates as the README has an administrator make them: a CA (kept
# aside, as its key should be), one pair per role in /etc/dfs/tls, the
# services' keys readable by their user only.
echo "== cluster certificates (dfs ca)"
if [ -e /etc/dfs/tls ]; then
  echo "using the certificates already in /etc/dfs/tls"
else
  tls_made=1
  /usr/bin/dfs ca init "$work/ca"
  for role in meta server client admin; do
    /usr/bin/dfs ca issue --role "$role" "pkgtest-$role" --ca "$work/ca" --out /etc/dfs/tls
  done
  chown dfs:dfs /etc/dfs/tls/meta.key /etc/dfs/tls/server.key
fi

# Runs a unit the way systemd would: its environment file, its user, its
# UMask, its ExecStart with ${VAR} and $VAR expanded. (The rest of the
# sandbox needs systemd itself: where it runs, the unit is started by it.)
start_unit() {
  local name=$1 unit=/usr/lib/systemd/system/$1.service
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl start "$name"
    return
  fi
  local env_file exec_start user
  env_file=$(sed -n 's/^EnvironmentFile=//p' "$unit")
  exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
  user=$(sed -n 's/^User=//p' "$unit")
  (
    umask "$(sed -n 's/^UMask=//p' "$unit")"
    set -a
    # shellcheck disable=SC1090
    . "$env_file"
    set +a
    exec runuser -u "$user" -- sh -c "exec $exec_start" >"$work/$name.log" 2>&1
  ) &
  started_pids+=($!)
}

echo "== starting the installed servers"
mkdir -p "$mnt"
start_unit dfs-meta
start_unit dfs-server
for _ in $(seq 100); do
  if /usr/bin/dfs status --meta "127.0.0.1:$meta_port" --json 2>/dev/null | grep -q '"state": *"up"'; then
    break
  fi
  sleep 0.2
done
/usr/bin/dfs status --meta "127.0.0.1:$meta_port"

echo "== mounting from /etc/fstab"
echo "127.0.0.1:$meta_port $mnt dfs _netdev,nofail,consistency=read-own,noatime,log=$work/mount.log 0 0 $FSTAB_MARK" >>/etc/fstab
mount "$mnt"
findmnt "$mnt"
# A network mount is nosuid,nodev unless fstab says otherwise.
mount_flags=$(findmnt -no OPTIONS "$mnt")
for want in nosuid nodev; do
  grep -qw "$want" <<<"$mount_flags" || { echo "a cluster mount without $want by default: $mount_flags"; exit 1; }
done
# An unknown option fails clearly, naming the option.
if msg=$(mount -t dfs -o bogus_option "127.0.0.1:$meta_port" "$work" 2>&1); then
  echo "a mount with an unknown option succeeded"; exit 1
fi
grep -q "bogus_option" <<<"$msg" || { echo "unclear error for an unknown option: $msg"; exit 1; }

echo "== copying files in and out"
src=$work/src
mkdir -p "$src/dir/sub"
head -c $((20 << 20)) /dev/urandom >"$src/big"
for i in $(seq 200); do echo "file $i" >"$src/dir/sub/f$i"; done
cp -a /usr/share/doc/dfs-client "$src/doc"
cp -a "$src" "$mnt/"
diff -r "$src" "$mnt/src"
cp -a "$mnt/src" "$work/back"
diff -r "$src" "$work/back"

echo "== unmount, then mount again: data persisted, client gone"
umount "$mnt"
for _ in $(seq 50); do pgrep -f "dfs-mount.*$mnt" >/dev/null || break; sleep 0.1; done
if pgrep -f "dfs-mount.*$mnt" >/dev/null; then echo "the client did not end after umount"; exit 1; fi
mount "$mnt"
diff -r "$src" "$mnt/src"
umount "$mnt"

echo "== mount -t fuse.dfs (what fstests uses)"
mount -t fuse.dfs "127.0.0.1:$meta_port" "$mnt"
cmp "$src/big" "$mnt/src/big"
umount "$mnt"

echo "== read-only mount"
mount -t dfs -o ro "127.0.0.1:$meta_port" "$mnt"
if touch "$mnt/should-fail" 2>/dev/null; then echo "a write on a ro mount succeeded"; exit 1; fi
umount "$mnt"

echo "== removing the packages"
for pid in "${started_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
for pid in "${started_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
started_pids=()
rm -rf /var/lib/dfs/pkgtest
dpkg -r dfs-client dfs-server
installed=()
for f in /usr/bin/dfs-mount /sbin/mount.dfs /usr/bin/dfs-meta /usr/lib/systemd/system/dfs-meta.service; do
  [ ! -e "$f" ] || { echo "left behind after dpkg -r: $f"; exit 1; }
done
# dpkg -r keeps the (edited) config files, as it should; purge them and the
# system user so the next run starts from scratch.
dpkg -P dfs-client dfs-server
[ ! -e /etc/dfs/meta.conf ] || { echo "/etc/dfs/meta.conf left after purge"; exit 1; }
echo "packaging test: passed"
