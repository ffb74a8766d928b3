//! Reference-model test: random writes, overwrites, appends, holes and
//! truncations applied both to files on a dfs mount and to files on the
//! local disk, compared after every step. At the end every file is
//! removed and the reference counts must come back to zero.

mod common;

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use common::*;
use dfs_core::xorshift::XorShift;

fn compare(local: &Path, dfs: &Path, context: &str) {
    let want = fs::read(local).expect("read local");
    let got = fs::read(dfs).expect("read dfs");
    if want != got {
        let first = want
            .iter()
            .zip(&got)
            .position(|(a, b)| a != b)
            .unwrap_or(want.len().min(got.len()));
        panic!("{context}: contents differ (local {} bytes, dfs {} bytes, first difference at {first})", want.len(), got.len());
    }
}

fn run_model(seed: u64, mnt: &Path, local: &Path, steps: usize) {
    let mut rng = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let names = ["f0", "f1", "f2"];
    for name in names {
        fs::write(local.join(name), b"").expect("create local");
        fs::write(mnt.join(name), b"").expect("create dfs");
    }
    for step in 0..steps {
        let name = names[rng.below(3) as usize];
        let (lp, dp) = (local.join(name), mnt.join(name));
        let size = fs::metadata(&lp).expect("stat").len();
        let context = format!("seed {seed} step {step} file {name}");
        match rng.below(10) {
            // A burst of writes through one handle, checked before close:
            // the client must read its own buffered writes.
            0..=6 => {
                let mut lf = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&lp)
                    .expect("open local");
                let mut df = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&dp)
                    .expect("open dfs");
                for _ in 0..=rng.below(4) {
                    let offset = match rng.below(4) {
                        0 => size,                      // append
                        1 => size + rng.below(300_000), // past the end: a hole
                        _ => rng.below(size.max(1)),    // overwrite
                    };
                    let max_len = if rng.below(3) == 0 { 400_000 } else { 3000 };
                    let len = 1 + rng.below(max_len) as usize;
                    let data = random_bytes(len, rng.next_u64());
                    for f in [&mut lf, &mut df] {
                        f.seek(SeekFrom::Start(offset)).expect("seek");
                        f.write_all(&data).expect("write");
                    }
                }
                let mut a = Vec::new();
                let mut b = Vec::new();
                lf.seek(SeekFrom::Start(0)).expect("seek");
                df.seek(SeekFrom::Start(0)).expect("seek");
                lf.read_to_end(&mut a).expect("read local");
                df.read_to_end(&mut b).expect("read dfs");
                assert!(
                    a == b,
                    "{context}: read-own-writes before close differ ({} vs {} bytes)",
                    a.len(),
                    b.len()
                );
            }
            7 | 8 => {
                let new_len = rng.below(size + size / 4 + 2);
                for p in [&lp, &dp] {
                    OpenOptions::new()
                        .write(true)
                        .open(p)
                        .expect("open")
                        .set_len(new_len)
                        .expect("truncate");
                }
            }
            _ => {
                // Replace the file whole, as editors and build tools do.
                let data = random_bytes(rng.below(200_000) as usize, rng.next_u64());
                fs::write(&lp, &data).expect("write local");
                fs::write(&dp, &data).expect("write dfs");
            }
        }
        compare(&lp, &dp, &context);
    }
}

#[test]
fn random_operations_match_a_local_disk_and_refcounts_return_to_zero() {
    let cluster = TestCluster::start(1, 3);
    let m = TestMount::start(&cluster.meta_addr(), &[]);
    let local = tempfile::tempdir().expect("tempdir");
    for seed in [1u64, 2, 3] {
        let (l, d) = (
            local.path().join(format!("s{seed}")),
            m.path.join(format!("s{seed}")),
        );
        fs::create_dir(&l).expect("mkdir");
        fs::create_dir(&d).expect("mkdir");
        run_model(seed, &d, &l, 120);
    }
    let stats = cluster.stats();
    eprintln!("figures: after the model run: {stats}");
    assert!(stats["logical_bytes"].as_u64() > Some(0));
    sh(&format!(
        "rm -rf {}/s1 {}/s2 {}/s3",
        m.path.display(),
        m.path.display(),
        m.path.display()
    ));
    let stats = cluster.stats();
    assert_eq!(
        stats["logical_bytes"].as_u64(),
        Some(0),
        "references left after removing every file: {stats}"
    );
    assert_eq!(
        stats["chunks"].as_u64(),
        Some(0),
        "chunks still referenced: {stats}"
    );
}
