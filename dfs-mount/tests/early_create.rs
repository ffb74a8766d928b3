//! Creates answered before they are sent (`fs::early_create`), on real
//! mounts: in a directory the mount made (and holds dfs-meta's lease on),
//! a new file's create goes with its first commit, so a small file written
//! and closed is one request; and another client still finds every file at
//! once after its close (close-to-open), cannot remove the directory from
//! under a file still open there, and finds a file held open past the
//! lease made in time.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use common::*;

const FILES: usize = 40;

#[test]
fn a_small_file_is_made_by_its_commit_and_shows_to_another_client_at_close() {
    let (meta_port, _cluster, a, b) = two_mounts();
    let (in_a, in_b) = (a.path.join("tree"), b.path.join("tree"));
    fs::create_dir(&in_a).expect("mkdir");
    let (creates, commits) = (
        meta_rpcs(meta_port, "Create"),
        meta_rpcs(meta_port, "CommitChunks"),
    );
    for i in 0..FILES {
        let name = format!("f{i:02}");
        let bytes = format!("file {i}").repeat(100);
        let mut file = fs::File::create(in_a.join(&name)).expect("create");
        let answered = file.metadata().expect("fstat");
        file.write_all(bytes.as_bytes()).expect("write");
        drop(file);
        // Another client, right after the close: the file, its bytes, and
        // the attributes the writer was told at its create.
        let seen = fs::metadata(in_b.join(&name)).expect("made by the close");
        assert_eq!(
            (seen.ino(), seen.mode(), seen.uid(), seen.gid(), seen.len()),
            (
                answered.ino(),
                answered.mode(),
                answered.uid(),
                answered.gid(),
                bytes.len() as u64
            ),
            "{name}"
        );
        assert_eq!(fs::read(in_b.join(&name)).expect("read"), bytes.as_bytes());
    }
    // A create goes with its commit while the lease has half a second
    // left; a machine stalled that long sends one alone now and then.
    let alone = meta_rpcs(meta_port, "Create") - creates;
    assert!(
        alone < (FILES / 4) as f64,
        "{alone} of {FILES} creates went alone, not with their file's commit"
    );
    assert!(meta_rpcs(meta_port, "CommitChunks") - commits >= FILES as f64);
    // The writer's own view: every name, listed and looked up.
    let mut listed: Vec<String> = fs::read_dir(&in_a)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    listed.sort();
    assert_eq!(listed.len(), FILES);
    assert_eq!(listed[0], "f00");
}

#[test]
fn files_not_committed_by_their_close_are_made_in_time() {
    let (_meta_port, _cluster, a, b) = two_mounts();
    let (in_a, in_b) = (a.path.join("tree"), b.path.join("tree"));
    fs::create_dir(&in_a).expect("mkdir");
    // Closed empty: nothing to commit, so the create goes alone.
    drop(fs::File::create(in_a.join("empty")).expect("create"));
    assert_eq!(fs::metadata(in_b.join("empty")).expect("made").len(), 0);
    // Held open, unwritten, past the lease it was answered under: made
    // before the lease ran out, so another client finds it.
    let held = fs::File::create(in_a.join("held")).expect("create");
    std::thread::sleep(dfs_proto::DIRECTORY_LEASE + Duration::from_millis(500));
    assert!(in_b.join("held").exists(), "made before the lease ran out");
    drop(held);
    // Another client cannot remove the directory from under a file still
    // open there, however soon: its rmdir waits the lease out, by when the
    // file is made.
    let open = fs::File::create(in_a.join("open")).expect("create");
    fs::remove_file(in_b.join("empty")).expect("unlink");
    fs::remove_file(in_b.join("held")).expect("unlink");
    let err = fs::remove_dir(&in_b).expect_err("not empty");
    assert_eq!(err.raw_os_error(), Some(libc::ENOTEMPTY), "{err}");
    drop(open);
    assert!(in_b.join("open").exists());
}
