#!/usr/bin/env python3
"""Metadata workload of bench/compare.sh: create, stat, rename and unlink N
empty files in one new directory, timing each phase.

Usage: meta_ops.py [--drop-caches] DIR [N]
       (DIR must not exist; N defaults to 10000)

Prints one line per phase, `PHASE OPS_PER_S SECONDS`, for the caller to
parse. Each phase is one system call per file (create = open(O_CREAT|O_EXCL)
plus close), in a fixed order, single-threaded: what a build tool or an
unpacker does. Between phases the directory listing is checked (untimed), so
a file system that loses or duplicates entries fails here instead of
producing a fast but meaningless figure.

With --drop-caches (root only), the kernel's dentry, inode and page caches
are dropped (untimed) before the stat phase, so that stat measures the file
system's own lookups and getattrs, not how long each file system lets the
kernel cache attributes.
"""

import os
import sys
import time


def timed(name, n, fn):
    start = time.perf_counter()
    fn()
    secs = time.perf_counter() - start
    print(f"{name} {n / secs:.1f} {secs:.3f}", flush=True)


def expect_listing(d, names):
    got = sorted(os.listdir(d))
    if got != sorted(names):
        missing = sorted(set(names) - set(got))[:5]
        extra = sorted(set(got) - set(names))[:5]
        sys.exit(
            f"meta_ops: listing of {d} is wrong: {len(got)} entries, expected "
            f"{len(names)}; missing e.g. {missing}, unexpected e.g. {extra}"
        )


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def main():
    args = sys.argv[1:]
    drop = bool(args) and args[0] == "--drop-caches"
    if drop:
        args = args[1:]
    if len(args) not in (1, 2):
        sys.exit(__doc__)
    d = args[0]
    n = int(args[1]) if len(args) == 2 else 10000
    os.mkdir(d)
    first = [f"f{i:05d}" for i in range(n)]
    second = [f"r{i:05d}" for i in range(n)]
    src = [os.path.join(d, x) for x in first]
    dst = [os.path.join(d, x) for x in second]

    def create():
        for p in src:
            os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))

    def stat():
        for p in src:
            if os.stat(p).st_size != 0:
                sys.exit(f"meta_ops: {p} is not empty")

    def rename():
        for a, b in zip(src, dst):
            os.rename(a, b)

    def unlink():
        for p in dst:
            os.unlink(p)

    timed("create", n, create)
    expect_listing(d, first)
    if drop:
        drop_caches()
    timed("stat", n, stat)
    timed("rename", n, rename)
    expect_listing(d, second)
    timed("unlink", n, unlink)
    expect_listing(d, [])
    os.rmdir(d)


if __name__ == "__main__":
    main()
