//! Training and evaluation corpora: which files of some directories the
//! codec model is trained on, which it is checked on, and how much of each.
//!
//! **Held-out files.** A file is held out when the FNV-1a hash of its
//! canonical path is 0 modulo 5 (about a fifth of the files): `dfs codec
//! train` never uses them and `dfs codec eval --held-out` uses only them,
//! so the latter's figures are for files the model has not seen.
//!
//! **Sampling.** A byte budget is shared evenly among the file kinds found
//! (what a kind cannot use goes to the others), so that one huge kind (the
//! libraries of a system, say) does not drown the rest; within a kind,
//! files are taken in a fixed pseudo-random order (a hash of the path), at
//! most so much from the start of each. The same directories and budget
//! give the same sample on any machine with the same files.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::FileKind;

/// One file in five is held out of training.
pub const HELD_OUT_MODULUS: u64 = 5;

/// The held-out rule, in words, for a model's provenance.
pub const HELD_OUT_RULE: &str = "files whose FNV-1a 64 hash of their canonical path is 0 mod 5; \
     train skips them, eval --held-out uses only them";

/// A file of a corpus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorpusFile {
    pub path: PathBuf,
    pub len: u64,
    /// From its name and first bytes.
    pub kind: FileKind,
    pub held_out: bool,
    /// Bytes to use from its start (set by [`select`]).
    pub take: u64,
}

/// Which files a command uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// All but the held-out files.
    Train,
    /// Only the held-out files.
    HeldOut,
    All,
}

/// FNV-1a, 64 bits: stable across builds and platforms, unlike std's
/// hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// splitmix64's finaliser: an order for files independent of the held-out
/// rule.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Whether the file at `path` (canonical) is held out of training.
pub fn is_held_out(path: &Path) -> bool {
    fnv1a(path.as_os_str().as_bytes()).is_multiple_of(HELD_OUT_MODULUS)
}

/// What [`walk`] found.
#[derive(Debug, Default)]
pub struct Walked {
    /// Sorted by path, without duplicates.
    pub files: Vec<CorpusFile>,
    /// Files and directories that could not be read.
    pub skipped: u64,
}

/// Every regular, readable, non-empty file under `roots`, with its kind.
/// Symlinks and special files are skipped, and so are files and
/// directories that cannot be read; a root that cannot be opened is an
/// error.
pub fn walk(roots: &[PathBuf]) -> std::io::Result<Walked> {
    let mut out = Walked::default();
    for root in roots {
        let root = std::fs::canonicalize(root)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", root.display())))?;
        let mut stack = vec![root];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                out.skipped += 1;
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(meta) = std::fs::symlink_metadata(&path) else {
                    out.skipped += 1;
                    continue;
                };
                if meta.is_dir() {
                    stack.push(path);
                } else if meta.is_file() && meta.len() > 0 {
                    let mut head = Vec::with_capacity(512);
                    let read = File::open(&path).and_then(|f| f.take(512).read_to_end(&mut head));
                    if read.is_err() {
                        out.skipped += 1;
                        continue;
                    }
                    out.files.push(CorpusFile {
                        kind: FileKind::of(path.to_str(), &head),
                        held_out: is_held_out(&path),
                        path,
                        len: meta.len(),
                        take: 0,
                    });
                }
            }
        }
    }
    out.files.sort_by(|a, b| a.path.cmp(&b.path));
    out.files.dedup_by(|a, b| a.path == b.path);
    Ok(out)
}

/// The files of `split` to use, each with how much of it to `take`, sorted
/// by path: see the module documentation.
pub fn select(files: Vec<CorpusFile>, split: Split, budget: u64, max_file: u64) -> Vec<CorpusFile> {
    let mut by_kind: BTreeMap<FileKind, Vec<CorpusFile>> = BTreeMap::new();
    for f in files {
        let wanted = match split {
            Split::Train => !f.held_out,
            Split::HeldOut => f.held_out,
            Split::All => true,
        };
        if wanted {
            by_kind.entry(f.kind).or_default().push(f);
        }
    }
    for list in by_kind.values_mut() {
        list.sort_by_key(|f| mix(fnv1a(f.path.as_os_str().as_bytes())));
    }
    let mut next: BTreeMap<FileKind, usize> = by_kind.keys().map(|&k| (k, 0)).collect();
    let mut chosen = Vec::new();
    let mut left = budget;
    // Rounds: share what is left evenly among the kinds with files left.
    loop {
        let open: Vec<FileKind> = next
            .iter()
            .filter(|(k, &i)| by_kind.get(k).is_some_and(|l| i < l.len()))
            .map(|(&k, _)| k)
            .collect();
        if open.is_empty() || left < 4096 {
            break;
        }
        let share = left / open.len() as u64;
        let mut used = 0;
        for kind in open {
            let (Some(list), Some(i)) = (by_kind.get(&kind), next.get_mut(&kind)) else {
                continue;
            };
            let mut taken = 0;
            while *i < list.len() && taken < share {
                let mut f = list[*i].clone();
                f.take = f.len.min(max_file).min(share - taken).max(1);
                taken += f.take;
                chosen.push(f);
                *i += 1;
            }
            used += taken;
        }
        left = left.saturating_sub(used);
        if used == 0 {
            break;
        }
    }
    chosen.sort_by(|a, b| a.path.cmp(&b.path));
    chosen
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn held_out_is_about_a_fifth_and_stable() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let held = (0..10_000)
            .filter(|i| is_held_out(Path::new(&format!("/usr/share/doc/f{i}"))))
            .count();
        assert!((1_700..2_300).contains(&held), "{held}");
    }

    #[test]
    fn selection_shares_the_budget_by_kind() {
        let file = |name: &str, kind, len, held_out| CorpusFile {
            path: PathBuf::from(name),
            len,
            kind,
            held_out,
            take: 0,
        };
        let mut files = Vec::new();
        for i in 0..100 {
            files.push(file(
                &format!("/t/{i}.txt"),
                FileKind::Text,
                100_000,
                i % 5 == 0,
            ));
        }
        files.push(file("/t/a.so", FileKind::Executable, 50_000, false));
        let chosen = select(files.clone(), Split::Train, 1_000_000, 40_000);
        let text: u64 = chosen
            .iter()
            .filter(|f| f.kind == FileKind::Text)
            .map(|f| f.take)
            .sum();
        let exe: u64 = chosen
            .iter()
            .filter(|f| f.kind != FileKind::Text)
            .map(|f| f.take)
            .sum();
        assert_eq!(exe, 40_000);
        assert_eq!(text + exe, 1_000_000);
        assert!(chosen.iter().all(|f| !f.held_out && f.take <= 40_000));
        assert_eq!(
            chosen,
            select(files.clone(), Split::Train, 1_000_000, 40_000)
        );
        let held = select(files, Split::HeldOut, 1_000_000, 1 << 30);
        assert!(held.iter().all(|f| f.held_out));
        assert_eq!(held.len(), 10);
    }

    #[test]
    fn walk_skips_symlinks_and_finds_kinds() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), b"hello\n").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b"), b"\x7fELF\x02\x01\x01").unwrap();
        std::fs::write(dir.path().join("empty"), b"").unwrap();
        std::os::unix::fs::symlink("a.txt", dir.path().join("link.txt")).unwrap();
        let walked = walk(&[dir.path().to_path_buf(), dir.path().join("sub")]).unwrap();
        let found: Vec<(String, FileKind)> = walked
            .files
            .iter()
            .map(|f| {
                (
                    f.path.file_name().unwrap().to_string_lossy().into_owned(),
                    f.kind,
                )
            })
            .collect();
        assert_eq!(
            found,
            [
                ("a.txt".to_string(), FileKind::Text),
                ("b".to_string(), FileKind::Executable)
            ]
        );
        assert!(walk(&[dir.path().join("missing")]).is_err());
    }
}
