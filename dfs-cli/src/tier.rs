//! `dfs tier get|set|clear PATH`: the tiering policy of a file or
//! directory on a dfs mount (issue 21), kept in its `user.dfs.tier`
//! extended attribute; see `dfs_core::tier`. `dfs tier status --meta
//! ADDR`: the volume's files by how long ago they were last accessed.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use dfs_core::tier::{TierPolicy, XATTR};
use serde::Serialize;

#[derive(Subcommand, Debug)]
pub enum TierCommand {
    /// The policy that applies to PATH (a file or directory on a dfs
    /// mount) and where it comes from: its own, the nearest directory
    /// above it that has one, or the volume's default.
    Get {
        path: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Sets PATH's policy, e.g. `warm=7d,cold=90d`, `warm=30d,cold=never`
    /// or `hot`; what is created in a directory afterwards inherits it.
    Set { path: PathBuf, policy: String },
    /// Removes PATH's own policy: it follows its directory's again.
    Clear { path: PathBuf },
    /// The volume's files by how long ago they were last written or
    /// opened and read (tracked by dfs-meta, at most once a day a file).
    Status {
        /// HOST:PORT of a metadata server.
        #[arg(long)]
        meta: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Serialize)]
struct Effective {
    policy: String,
    /// The file or directory whose attribute sets it; none: the default.
    source: Option<PathBuf>,
    /// Whether PATH holds the policy itself.
    own: bool,
}

/// PATH's own policy, if it has one.
fn own_policy(path: &Path) -> anyhow::Result<Option<TierPolicy>> {
    let Some(value) = xattr::get(path, XATTR)
        .with_context(|| format!("cannot read {XATTR} of {}", path.display()))?
    else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&value);
    TierPolicy::parse(&text)
        .map(Some)
        .with_context(|| format!("{} holds an unreadable policy", path.display()))
}

/// The policy PATH follows: its own, else the nearest directory's above it
/// on the same mount, else the volume default.
fn effective(path: &Path) -> anyhow::Result<Effective> {
    let start =
        std::fs::canonicalize(path).with_context(|| format!("cannot find {}", path.display()))?;
    let device = std::fs::metadata(&start)?.dev();
    let mut at = start.as_path();
    loop {
        if let Some(policy) = own_policy(at)? {
            return Ok(Effective {
                policy: policy.to_string(),
                source: Some(at.to_path_buf()),
                own: at == start,
            });
        }
        // Up to the mount's root: the directory above it is another file
        // system's.
        match at.parent() {
            Some(parent) if std::fs::metadata(parent)?.dev() == device => at = parent,
            _ => break,
        }
    }
    Ok(Effective {
        policy: TierPolicy::volume_default().to_string(),
        source: None,
        own: false,
    })
}

#[derive(Serialize)]
struct AgeRow {
    /// Last accessed at most this many days ago; none: older than the
    /// row before.
    max_days: Option<u32>,
    files: u64,
}

#[derive(Serialize)]
struct Status {
    /// Today, in days since the Unix epoch (dfs-meta's tiering clock).
    today: u32,
    ages: Vec<AgeRow>,
}

/// Prints `dfs tier status` from dfs-meta's answer.
pub fn print_status(reply: dfs_proto::TierStatusReply, json: bool) -> anyhow::Result<()> {
    let last = reply.ages.len().saturating_sub(1);
    let status = Status {
        today: reply.today,
        ages: reply
            .ages
            .iter()
            .enumerate()
            .map(|(i, a)| AgeRow {
                max_days: (i != last).then_some(a.max_days),
                files: a.files,
            })
            .collect(),
    };
    if json {
        println!("{}", serde_json::to_string(&status)?);
        return Ok(());
    }
    println!("files by last access (written, or opened and read):");
    let mut after = None;
    for row in &status.ages {
        let label = match (after, row.max_days) {
            (None, Some(0)) => "today".to_string(),
            (None, Some(d)) => format!("within {d} days"),
            (Some(a), Some(d)) => format!("{}-{d} days ago", a + 1),
            (Some(a), None) => format!("over {a} days ago"),
            (None, None) => "any time".to_string(),
        };
        println!("  {label:<20} {:>12}", row.files);
        after = row.max_days;
    }
    Ok(())
}

pub fn run(command: TierCommand) -> anyhow::Result<()> {
    match command {
        // Run by main, which holds the connection.
        TierCommand::Status { .. } => {
            anyhow::bail!("dfs tier status needs a metadata server connection")
        }
        TierCommand::Get { path, json } => {
            let e = effective(&path)?;
            if json {
                println!("{}", serde_json::to_string(&e)?);
            } else {
                let from = match (&e.source, e.own) {
                    (None, _) => "the volume's default".to_string(),
                    (Some(_), true) => "set on it".to_string(),
                    (Some(dir), false) => format!("inherited from {}", dir.display()),
                };
                println!("{}  ({from})", e.policy);
            }
        }
        TierCommand::Set { path, policy } => {
            let parsed = TierPolicy::parse(&policy)?;
            xattr::set(&path, XATTR, parsed.to_string().as_bytes()).with_context(|| {
                format!(
                    "cannot set the tier policy of {} (is it on a dfs mount?)",
                    path.display()
                )
            })?;
        }
        TierCommand::Clear { path } => match xattr::remove(&path, XATTR) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {
                anyhow::bail!("{} has no tier policy of its own", path.display())
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot clear the tier policy of {}", path.display()))
            }
        },
    }
    Ok(())
}
