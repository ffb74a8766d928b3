#!/usr/bin/env bash
# Runs fstests (xfstests) against dfs mounts.
#
#   xfstests/run.sh FSTESTS_CHECKOUT [CHECK_ARGS...]     (default: -g quick)
#
# FSTESTS_CHECKOUT is a clone of git://git.kernel.org/pub/scm/fs/xfs/xfstests-dev.git
# (or its mirror github.com/kdave/xfstests); this script builds it when
# needed, installs what fstests needs (Debian packages, the fsgqa users,
# /sbin/mount.fuse.dfs), and runs ./check with our local.config and the
# exclude list beside this script. Results land in
# FSTESTS_CHECKOUT/results; the summary is printed at the end.
#
# Environment: CARGO_TARGET_DIR (where dfs-mount was built; default
# /var/tmp/dfs-target), DFS_XFSTESTS_ROOT (volumes and mountpoints;
# default /var/tmp/dfs-xfstests, wiped first).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
fstests=${1:?usage: xfstests/run.sh FSTESTS_CHECKOUT [CHECK_ARGS...]}
fstests=$(cd "$fstests" && pwd)
shift
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(-g quick)
target=${CARGO_TARGET_DIR:-/var/tmp/dfs-target}
root=${DFS_XFSTESTS_ROOT:-/var/tmp/dfs-xfstests}

if [ "$(id -u)" -ne 0 ]; then
  echo "fstests needs root (it mounts, creates users, runs as fsgqa)" >&2
  exit 1
fi

# What fstests itself needs to build and run.
pkgs=(xfsprogs xfslibs-dev uuid-dev uuid-runtime libtool-bin automake autoconf gcc make
      libacl1-dev libaio-dev libattr1-dev attr acl bc gawk psmisc quota fio
      libgdbm-dev libcap-dev e2fsprogs python3 sqlite3 fuse3 liburing-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
for user in fsgqa fsgqa2; do
  id "$user" >/dev/null 2>&1 || useradd -m "$user"
done
id 123456-fsgqa >/dev/null 2>&1 || useradd -m 123456-fsgqa
getent group fsgqa >/dev/null || groupadd fsgqa

if [ ! -x "$fstests/check" ] || [ ! -e "$fstests/ltp/fsx" ]; then
  make -C "$fstests" -j"$(nproc)"
fi

if [ ! -x "$target/release/dfs-mount" ]; then
  (cd "$repo" && CARGO_TARGET_DIR=$target cargo build --release -p dfs-mount)
fi
# mount -t fuse.dfs runs /sbin/mount.fuse.dfs; the packaged one calls
# /usr/bin/dfs-mount, this one the build.
if [ ! -e /sbin/mount.fuse.dfs ] || grep -q "dfs-xfstests-helper" /sbin/mount.fuse.dfs; then
  cat > /sbin/mount.fuse.dfs <<HELPER
#!/bin/sh
# dfs-xfstests-helper: installed by xfstests/run.sh
exec "$target/release/dfs-mount" --mount-helper "\$@"
HELPER
  chmod +x /sbin/mount.fuse.dfs
fi

cleanup() {
  for m in "$root/test" "$root/scratch"; do
    if findmnt -n "$m" >/dev/null 2>&1; then
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    fi
  done
}
trap cleanup EXIT
cleanup
rm -rf "$root"
mkdir -p "$root/test" "$root/scratch" "$root/test-volume" "$root/scratch-volume"
# fstests expects TEST_DEV to hold a file system before it starts.
mount -t fuse.dfs "local:$root/test-volume" "$root/test" -o allow_other,default_permissions
umount "$root/test"

export DFS_XFSTESTS_ROOT=$root DFS_XFSTESTS_DIR=$here
export HOST_OPTIONS=$here/local.config
cd "$fstests"
status=0
./check -E "$here/exclude" "${args[@]}" | tee "$root/check.log" || status=$?
echo
grep -E "^(Ran|Not run|Failures|Passed all)" "$root/check.log" | sed -e 's/^\(.\{300\}\).*/\1 .../' || true
ran=$(grep -oE "^Ran: .*" "$root/check.log" | wc -w || true)
failed=$(grep -oE "^Failures: .*" "$root/check.log" | wc -w || true)
notrun=$(grep -oE "^Not run: .*" "$root/check.log" | wc -w || true)
ran=$(( ran > 0 ? ran - 1 : 0 )); failed=$(( failed > 0 ? failed - 1 : 0 )); notrun=$(( notrun > 0 ? notrun - 2 : 0 ))
# fstests lists the tests it did not run among those it "ran".
echo "dfs fstests: $ran tests, passed $(( ran - failed - notrun )), failed $failed, not run $notrun"
exit $status
