#!/usr/bin/env bash
# Brings up a working dfs on this one machine: installs what is missing,
# builds, and mounts the embedded file system (metadata and chunk store in
# the client process) from DATA_DIR on MOUNTPOINT.
#
#   scripts/up.sh [MOUNTPOINT] [DATA_DIR]      (defaults: /mnt/dfs /var/lib/dfs/local)
set -euo pipefail
cd "$(dirname "$0")/.."

mountpoint=${1:-/mnt/dfs}
data=${2:-/var/lib/dfs/local}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}

scripts/install-deps.sh
cargo build --release --workspace
# mount(8) runs /sbin/mount.dfs for `mount -t dfs` and fstab lines.
ln -sf dfs-mount "$CARGO_TARGET_DIR/release/mount.dfs"
mkdir -p "$mountpoint" "$data"
if grep -qs " $mountpoint fuse" /proc/mounts; then
  echo "$mountpoint is already mounted"
  exit 0
fi
"$CARGO_TARGET_DIR/release/dfs-mount" "local:$data" "$mountpoint" -o "log=$data/mount.log"
echo "dfs is mounted on $mountpoint (data in $data, log in $data/mount.log)"
echo "unmount with: umount $mountpoint"
