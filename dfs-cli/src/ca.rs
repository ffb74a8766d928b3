//! `dfs ca init|issue|revoke`: the cluster's certificate authority (see
//! `dfs_core::tls::ca` for the files and what goes in a certificate).

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use dfs_core::tls::{ca, identity::normalize_subtree, Identity, Role};

#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// Makes a new cluster CA in DIR: ca.crt (give it to every host) and
    /// ca.key (keep it on this machine, readable only by you).
    Init {
        /// Where the CA goes (created if missing).
        #[arg(default_value = dfs_core::tls::DEFAULT_TLS_DIR)]
        dir: PathBuf,
    },
    /// Signs a certificate for one process (or one role on a host):
    /// writes OUT/ROLE.crt and OUT/ROLE.key, and OUT/ca.crt when missing.
    Issue {
        /// What the holder may do: meta, server, client or admin.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// The holder's name (a host name, say), shown in logs and refusals.
        name: String,
        /// The CA's directory.
        #[arg(long, default_value = dfs_core::tls::DEFAULT_TLS_DIR)]
        ca: PathBuf,
        /// Where to write the pair [default: the CA's directory].
        #[arg(long)]
        out: Option<PathBuf>,
        /// File name of the pair, without .crt/.key [default: the role,
        /// which is what each program looks for].
        #[arg(long)]
        file: Option<String>,
        /// Client only: confine it to this directory of the volume.
        #[arg(long, value_name = "PATH")]
        subtree: Option<String>,
        /// Client only: no changes at all.
        #[arg(long)]
        read_only: bool,
        /// Client only: no set-user-ID/set-group-ID bits, device nodes or
        /// security.*/trusted.* xattrs.
        #[arg(long)]
        unprivileged: bool,
        /// Client only: may read S3 access keys' secrets (for dfs-gateway).
        #[arg(long)]
        gateway: bool,
        /// Extra host names or IP addresses to put in the certificate (for
        /// tools that check them; dfs checks the role).
        #[arg(long = "host", value_name = "NAME")]
        hosts: Vec<String>,
        /// Certify this existing private key instead of making a new one:
        /// renewing a chunk server's certificate must keep its key, which
        /// its registration is bound to.
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
    },
    /// Revokes a certificate the CA issued (a stolen or retired one):
    /// signs CA/crl.pem listing it and every one revoked before. Copy
    /// crl.pem into the TLS directory of every host and restart dfs-meta,
    /// the chunk servers and the mounts: each then refuses it.
    Revoke {
        /// The certificate (a .crt file `dfs ca issue` wrote).
        cert: PathBuf,
        /// The CA's directory.
        #[arg(long, default_value = dfs_core::tls::DEFAULT_TLS_DIR)]
        ca: PathBuf,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| format!("unknown role `{s}` (meta, server, client or admin)"))
}

pub fn run(command: CaCommand) -> anyhow::Result<()> {
    match command {
        CaCommand::Revoke { cert, ca: ca_dir } => {
            let (crl, identity) = ca::revoke(&ca_dir, &cert)
                .with_context(|| format!("cannot revoke {}", cert.display()))?;
            println!(
                "revoked {identity}: {} now lists it; copy it beside ca.crt on every host and restart the dfs processes there",
                crl.display()
            );
        }
        CaCommand::Init { dir } => {
            let cert = ca::init(&dir).context("cannot make the CA")?;
            println!(
                "CA made: {} (and ca.key beside it, mode 0600)",
                cert.display()
            );
        }
        CaCommand::Issue {
            role,
            name,
            ca: ca_dir,
            out,
            file,
            subtree,
            read_only,
            unprivileged,
            gateway,
            hosts,
            key,
        } => {
            let mut identity = Identity::new(role, &name);
            if let Some(path) = subtree {
                identity.caps.subtree = Some(normalize_subtree(&path).with_context(|| {
                    format!("--subtree {path}: must be an absolute path without `..`")
                })?);
            }
            identity.caps.read_only = read_only;
            identity.caps.unprivileged = unprivileged;
            identity.caps.gateway = gateway;
            anyhow::ensure!(
                role == Role::Client || identity.caps == Default::default(),
                "--subtree, --read-only, --unprivileged and --gateway are for client certificates"
            );
            let out = out.unwrap_or_else(|| ca_dir.clone());
            let stem = file.unwrap_or_else(|| role.as_str().to_string());
            // The key is read before anything is written: issuing writes
            // OUT/STEM.key, which may be the very file given.
            let kept = match &key {
                Some(path) => Some(
                    std::fs::read(path)
                        .with_context(|| format!("cannot read --key {}", path.display()))?,
                ),
                None => None,
            };
            let scratch = tempfile_for_key(kept.as_deref())?;
            let (cert, key) = ca::issue(
                &ca_dir,
                &identity,
                &out,
                &stem,
                &hosts,
                scratch
                    .as_ref()
                    .map(|d| d.path().join("key.pem"))
                    .as_deref(),
            )
            .context("cannot issue the certificate")?;
            println!(
                "issued {identity}: {} and {} (valid {} days)",
                cert.display(),
                key.display(),
                ca::LEAF_DAYS
            );
        }
    }
    Ok(())
}

/// A private directory holding a copy of the key to certify, if any.
fn tempfile_for_key(pem: Option<&[u8]>) -> anyhow::Result<Option<tempfile::TempDir>> {
    let Some(pem) = pem else {
        return Ok(None);
    };
    let dir = tempfile::tempdir().context("cannot make a temporary directory")?;
    let path = dir.path().join("key.pem");
    std::fs::write(&path, pem).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(Some(dir))
}
