//! fcntl and flock locks held for every client of a cluster: two mounts of
//! one volume stand for two machines.

// fcntl(2) and flock(2) through libc: each call passes a descriptor that
// the `File` it comes from keeps open, and a `flock` struct on the stack.
#![allow(unsafe_code)]

mod common;

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

fn open_rw(path: &std::path::Path) -> fs::File {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .expect("open")
}

fn flock_struct(typ: i32, start: i64, len: i64) -> libc::flock {
    // SAFETY: `flock` is plain integers, for which all zeros is valid.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = typ as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start;
    fl.l_len = len;
    fl
}

/// F_SETLK / F_SETLKW; the errno on failure.
fn fcntl_lock(f: &fs::File, cmd: i32, typ: i32, start: i64, len: i64) -> Result<(), i32> {
    let fl = flock_struct(typ, start, len);
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), cmd, &fl) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

fn fcntl_getlk(f: &fs::File, typ: i32, start: i64, len: i64) -> libc::flock {
    let mut fl = flock_struct(typ, start, len);
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut fl) };
    assert_eq!(rc, 0, "F_GETLK: {}", std::io::Error::last_os_error());
    fl
}

fn flock(f: &fs::File, op: i32) -> Result<(), i32> {
    let rc = unsafe { libc::flock(f.as_raw_fd(), op) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

#[test]
fn fcntl_locks_hold_across_clients() {
    let cluster = TestCluster::start(1, 3);
    let a = TestMount::start(&cluster.meta_addr(), &[]);
    let b = TestMount::start(&cluster.meta_addr(), &[]);
    fs::write(a.path.join("db"), vec![0u8; 4096]).expect("create");
    let on_a = open_rw(&a.path.join("db"));
    let on_b = open_rw(&b.path.join("db"));

    fcntl_lock(&on_a, libc::F_SETLK, libc::F_WRLCK, 0, 100).expect("lock on a");
    assert_eq!(
        fcntl_lock(&on_b, libc::F_SETLK, libc::F_WRLCK, 50, 10),
        Err(libc::EAGAIN),
        "another client's write lock must block an overlapping one"
    );
    assert_eq!(
        fcntl_lock(&on_b, libc::F_SETLK, libc::F_RDLCK, 99, 1),
        Err(libc::EAGAIN),
        "the last byte of the range is locked too"
    );
    let seen = fcntl_getlk(&on_b, libc::F_RDLCK, 0, 0);
    assert_eq!(
        (seen.l_type as i32, seen.l_start, seen.l_len),
        (libc::F_WRLCK, 0, 100),
        "F_GETLK on the other client names the lock"
    );
    fcntl_lock(&on_b, libc::F_SETLK, libc::F_WRLCK, 100, 50)
        .expect("the bytes after the range are free");

    // Downgrade to a read lock: readers share it.
    fcntl_lock(&on_a, libc::F_SETLK, libc::F_RDLCK, 0, 100).expect("downgrade");
    fcntl_lock(&on_b, libc::F_SETLK, libc::F_RDLCK, 0, 10).expect("shared read lock");
    assert_eq!(
        fcntl_lock(&on_b, libc::F_SETLK, libc::F_WRLCK, 0, 10),
        Err(libc::EAGAIN),
        "a read lock still blocks another client's write lock"
    );
    fcntl_lock(&on_b, libc::F_SETLK, libc::F_UNLCK, 0, 0).expect("unlock all on b");

    // F_SETLKW on b waits until a unlocks, and then gets the lock.
    let released = Arc::new(AtomicBool::new(false));
    let waiter = {
        let released = released.clone();
        let on_b = on_b.try_clone().expect("dup");
        std::thread::spawn(move || {
            let got = fcntl_lock(&on_b, libc::F_SETLKW, libc::F_WRLCK, 0, 100);
            // Returned, not dropped: closing any descriptor of the file
            // would release the process's locks on it.
            (got, released.load(Ordering::SeqCst), on_b)
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    released.store(true, Ordering::SeqCst);
    fcntl_lock(&on_a, libc::F_SETLK, libc::F_UNLCK, 0, 0).expect("unlock on a");
    let (got, after_release, _dup) = waiter.join().expect("waiter");
    got.expect("F_SETLKW granted after the release");
    assert!(
        after_release,
        "F_SETLKW returned before the lock was released"
    );
    assert_eq!(
        fcntl_lock(&on_a, libc::F_SETLK, libc::F_WRLCK, 0, 1),
        Err(libc::EAGAIN)
    );

    // Closing any descriptor of the file releases the process's locks.
    let another = fs::File::open(b.path.join("db")).expect("second open on b");
    drop(another);
    fcntl_lock(&on_a, libc::F_SETLK, libc::F_WRLCK, 0, 1)
        .expect("the close on b released its locks");
    fcntl_lock(&on_a, libc::F_SETLK, libc::F_UNLCK, 0, 0).expect("unlock");

    // OFD locks belong to the open file and go with its last close.
    let ofd = open_rw(&a.path.join("db"));
    fcntl_lock(&ofd, libc::F_OFD_SETLK, libc::F_WRLCK, 0, 10).expect("OFD lock");
    assert_eq!(
        fcntl_lock(&on_b, libc::F_SETLK, libc::F_WRLCK, 0, 1),
        Err(libc::EAGAIN)
    );
    drop(ofd);
    // The kernel sends the release after close(2) returns.
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = fcntl_lock(&on_b, libc::F_SETLK, libc::F_WRLCK, 0, 1) {
        assert_eq!(e, libc::EAGAIN);
        assert!(Instant::now() < deadline, "an OFD lock outlived its file");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn data_written_under_a_lock_is_what_the_next_holder_reads() {
    let cluster = TestCluster::start(1, 3);
    let a = TestMount::start(&cluster.meta_addr(), &[]);
    let b = TestMount::start(&cluster.meta_addr(), &[]);
    fs::write(a.path.join("counter"), 0u64.to_le_bytes()).expect("create");
    // Both clients keep the file open throughout, and increment a counter
    // in it under a write lock, taking turns: a lost update shows.
    let files = [
        open_rw(&a.path.join("counter")),
        open_rw(&b.path.join("counter")),
    ];
    for round in 0..20 {
        let f = &files[round % 2];
        fcntl_lock(f, libc::F_SETLKW, libc::F_WRLCK, 0, 0).expect("lock");
        let mut buf = [0u8; 8];
        f.read_exact_at(&mut buf, 0).expect("read counter");
        let value = u64::from_le_bytes(buf);
        assert_eq!(
            value,
            round as u64,
            "client {} read a stale counter",
            round % 2
        );
        f.write_all_at(&(value + 1).to_le_bytes(), 0)
            .expect("write counter");
        fcntl_lock(f, libc::F_SETLK, libc::F_UNLCK, 0, 0).expect("unlock");
    }
}

#[test]
fn flock_holds_across_clients_and_waits_can_be_interrupted() {
    let cluster = TestCluster::start(1, 3);
    let a = TestMount::start(&cluster.meta_addr(), &[]);
    let b = TestMount::start(&cluster.meta_addr(), &[]);
    fs::write(a.path.join("lockfile"), b"").expect("create");
    let on_a = open_rw(&a.path.join("lockfile"));
    let on_b = open_rw(&b.path.join("lockfile"));

    flock(&on_a, libc::LOCK_EX).expect("flock on a");
    assert_eq!(
        flock(&on_b, libc::LOCK_EX | libc::LOCK_NB),
        Err(libc::EWOULDBLOCK)
    );
    assert_eq!(
        flock(&on_b, libc::LOCK_SH | libc::LOCK_NB),
        Err(libc::EWOULDBLOCK)
    );

    // flock(1) waiting with a timeout: its alarm interrupts the wait.
    let lockfile = b.path.join("lockfile");
    let status = Command::new("flock")
        .args(["-w", "1", "-x"])
        .arg(&lockfile)
        .arg("true")
        .stderr(Stdio::null())
        .status()
        .expect("run flock");
    assert_eq!(
        status.code(),
        Some(1),
        "flock -w must time out, not hang or succeed"
    );

    // A process killed while it waits goes at once.
    let mut waiting = Command::new("flock")
        .arg("-x")
        .arg(&lockfile)
        .arg("true")
        .spawn()
        .expect("spawn flock");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        waiting.try_wait().expect("try_wait").is_none(),
        "flock did not wait"
    );
    waiting.kill().expect("kill");
    let deadline = Instant::now() + Duration::from_secs(10);
    while waiting.try_wait().expect("try_wait").is_none() {
        assert!(
            Instant::now() < deadline,
            "a killed lock waiter did not exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Closing the holder's open file releases its flock.
    drop(on_a);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match flock(&on_b, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(()) => break,
            Err(e) if e == libc::EWOULDBLOCK && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("flock after the holder closed: errno {e}"),
        }
    }
    flock(&on_b, libc::LOCK_UN).expect("unlock");

    // flock and fcntl locks taken through one mount by one process: two
    // open files are two flock owners, as on a local disk.
    let one = open_rw(&a.path.join("lockfile"));
    let two = open_rw(&a.path.join("lockfile"));
    flock(&one, libc::LOCK_SH).expect("shared");
    flock(&two, libc::LOCK_SH).expect("shared again");
    assert_eq!(
        flock(&two, libc::LOCK_EX | libc::LOCK_NB),
        Err(libc::EWOULDBLOCK),
        "another open file's shared flock blocks an exclusive one"
    );
}

#[test]
fn locks_of_a_killed_client_go_when_its_lease_runs_out() {
    let cluster = TestCluster::start(1, 3);
    let mut a = TestMount::start(&cluster.meta_addr(), &[]);
    let b = TestMount::start(&cluster.meta_addr(), &[]);
    fs::write(b.path.join("pid"), b"").expect("create");
    // The holder is a child process, so that killing the client does not
    // leave this test process stuck in a dead mount.
    let holder = Command::new("flock")
        .args(["--no-fork", "-x"])
        .arg(a.path.join("pid"))
        .args(["sleep", "600"])
        .spawn();
    let mut holder = holder.expect("spawn holder");
    let on_b = open_rw(&b.path.join("pid"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while flock(&on_b, libc::LOCK_EX | libc::LOCK_NB).is_ok() {
        flock(&on_b, libc::LOCK_UN).expect("unlock");
        assert!(Instant::now() < deadline, "the holder never took the lock");
        std::thread::sleep(Duration::from_millis(50));
    }
    a.proc.kill();
    let _ = holder.kill();
    let _ = holder.wait();
    a.unmount();
    // Within the lease (20 s) plus a margin, the lock is free again.
    let started = Instant::now();
    while let Err(e) = flock(&on_b, libc::LOCK_EX | libc::LOCK_NB) {
        assert_eq!(e, libc::EWOULDBLOCK);
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the dead client's lock was never given up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "lock of a killed client freed after {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
