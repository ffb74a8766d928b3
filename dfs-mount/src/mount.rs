//! Bringing a mount up and down: connect to the cluster (or start the
//! embedded one), mount with FUSE, report readiness, and unmount on a
//! signal or when the kernel ends the session.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use fuser::{Config, MountOption, SessionACL};

use crate::cache::ChunkCache;
use crate::cli::{Consistency, MountOptions, Source};
use crate::client::{tcp_connector, Cluster, Driving, MetaRpc};
use crate::fs::known_names::Views;
use crate::fs::Dfs;
use crate::fuse::DfsFuse;

/// How long the first contact with the metadata servers may take before
/// the mount fails (a wrong address should not leave `mount` hanging).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct MountRequest {
    pub source: Source,
    pub source_text: String,
    pub mountpoint: PathBuf,
    pub options: MountOptions,
}

fn check_mountpoint(path: &Path) -> anyhow::Result<PathBuf> {
    let meta = std::fs::metadata(path).with_context(|| {
        format!(
            "mountpoint {} does not exist or cannot be read",
            path.display()
        )
    })?;
    if !meta.is_dir() {
        bail!("mountpoint {} is not a directory", path.display());
    }
    path.canonicalize()
        .with_context(|| format!("cannot resolve mountpoint {}", path.display()))
}

fn fuse_config(req: &MountRequest) -> Config {
    let o = &req.options;
    let mut options = vec![
        MountOption::FSName(o.fsname.clone().unwrap_or_else(|| req.source_text.clone())),
        MountOption::Subtype("dfs".into()),
        // Permission checks by the kernel, from the mode bits we return.
        MountOption::DefaultPermissions,
    ];
    options.push(if o.read_only {
        MountOption::RO
    } else {
        MountOption::RW
    });
    if o.noatime {
        options.push(MountOption::NoAtime);
    }
    if o.nodev {
        options.push(MountOption::NoDev);
    } else {
        options.push(MountOption::Dev);
    }
    if o.nosuid {
        options.push(MountOption::NoSuid);
    } else {
        options.push(MountOption::Suid);
    }
    if o.noexec {
        options.push(MountOption::NoExec);
    }
    let acl = if o.allow_other {
        options.push(MountOption::CUSTOM("allow_other".into()));
        SessionACL::All
    } else if o.allow_root {
        options.push(MountOption::CUSTOM("allow_root".into()));
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    let mut config = Config::default();
    config.mount_options = options;
    config.acl = acl;
    config.n_threads = Some(o.threads);
    config.clone_fd = o.threads > 1;
    config
}

/// Connects to the cluster (or starts the embedded one) and returns the
/// file system, ready to mount. Fails fast when the cluster is unreachable.
pub async fn connect(
    req: &MountRequest,
) -> anyhow::Result<(Arc<Dfs>, Option<crate::embedded::Embedded>)> {
    let (meta, connector, embedded) = match &req.source {
        Source::Cluster(addrs) => {
            let security = dfs_core::tls::Security::configure(
                req.options.tls_dir.as_deref(),
                dfs_core::tls::Role::Client,
                req.options.plaintext,
                "dfs-mount",
            )
            .context("cannot set up TLS (a client certificate, or -o plaintext)")?;
            let to_meta = tcp_connector(
                security.clone(),
                dfs_core::tls::Role::Meta,
                Driving::BlockedCaller,
            );
            let transports = addrs
                .iter()
                .map(|a| to_meta(a).map_err(|e| anyhow::anyhow!("{}", e.message)))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let to_servers = tcp_connector(security, dfs_core::tls::Role::Server, Driving::Task);
            (MetaRpc::new(transports, CONNECT_TIMEOUT), to_servers, None)
        }
        Source::Local(path) => {
            let embedded = crate::embedded::Embedded::start(path).await?;
            (
                MetaRpc::new(vec![embedded.meta.clone()], CONNECT_TIMEOUT),
                embedded.connector(),
                Some(embedded),
            )
        }
    };
    let cluster = tokio::time::timeout(
        CONNECT_TIMEOUT * 2,
        Cluster::connect(meta.clone(), connector),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no answer from the metadata server at {}", req.source_text))?
    .map_err(|e| {
        anyhow::anyhow!(
            "cannot reach the metadata server at {}: {}",
            req.source_text,
            e.message
        )
    })?;
    // From here on, ride out restarts of the metadata server for longer.
    cluster.meta.set_retry_for(req.options.retry_for);
    let cache = ChunkCache::new(req.options.cache_bytes);
    let mut dfs = Dfs::new(
        cluster,
        cache,
        req.options.codec,
        // A window the cache cannot hold would evict itself before it is read.
        req.options.readahead_bytes.min(req.options.cache_bytes / 4),
    );
    dfs.dirty_limit = usize::try_from(req.options.write_buffer_bytes).unwrap_or(usize::MAX);
    let dfs = Arc::new(dfs);
    let renewing = Arc::downgrade(&dfs);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UNLINKED_LEASE_RENEWAL);
        loop {
            tick.tick().await;
            let Some(dfs) = renewing.upgrade() else {
                return;
            };
            dfs.renew_unlinked_leases().await;
        }
    });
    Ok((dfs, embedded))
}

/// How often leases of unlinked-but-open files are renewed (the metadata
/// server's `--unlinked-timeout` is 10 minutes by default).
const UNLINKED_LEASE_RENEWAL: Duration = Duration::from_secs(60);

/// Mounts and serves until unmounted. `ready` is called once the kernel
/// has the mount (or with the reason it could not be mounted).
pub fn run(req: MountRequest, ready: impl FnOnce(Result<(), String>)) -> anyhow::Result<()> {
    let mountpoint = match check_mountpoint(&req.mountpoint) {
        Ok(p) => p,
        Err(e) => {
            ready(Err(format!("{e:#}")));
            return Err(e);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("dfs-io")
        .build()?;
    if let Some(addr) = req.options.metrics {
        if let Err(e) = runtime.block_on(dfs_core::telemetry::serve(addr, "dfs-mount")) {
            ready(Err(e.to_string()));
            bail!(e);
        }
    }
    let (dfs, embedded) = match runtime.block_on(connect(&req)) {
        Ok(v) => v,
        Err(e) => {
            ready(Err(format!("{e:#}")));
            return Err(e);
        }
    };
    // Lookups of absent names answered from this mount's own view: under
    // close-to-open (`read-own`) only while dfs-meta's lease on the
    // directory holds other clients' new names back; `eventual` for its
    // cache lifetime, as other clients' changes may take that to show.
    dfs.names.set_mode(match req.options.consistency {
        Consistency::Strong => Views::Off,
        Consistency::ReadOwn => Views::Leased {
            client: dfs.client_id,
        },
        Consistency::Eventual => Views::Cached(req.options.consistency.ttl()),
    });
    // Statahead pages answer only within the TTL the kernel keeps a
    // looked-up entry for anyway, so every level that caches entries has
    // them (`strong`, TTL 0, has none).
    dfs.statahead.set_ttl(req.options.consistency.ttl());
    let fs = DfsFuse::new(dfs, runtime.handle().clone(), req.options.consistency.ttl())
        .with_posix_acl(req.options.acl);
    let notifier = fs.notifier_slot();
    let mut session = match fuser::Session::new(fs, &mountpoint, &fuse_config(&req)) {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("cannot mount on {}: {e}", mountpoint.display());
            ready(Err(msg.clone()));
            bail!(msg);
        }
    };
    notifier.set(session.notifier()).ok();
    let mut unmounter = session.unmount_callable();
    let background = session.spawn().context("cannot start the FUSE session")?;
    tracing::info!(mountpoint = %mountpoint.display(), source = %req.source_text, "mounted");
    ready(Ok(()));

    // SIGTERM or Ctrl-C unmounts cleanly; the kernel flushes open files first.
    runtime.spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("signal received, unmounting");
        if let Err(e) = unmounter.unmount() {
            tracing::error!(error = %e, "unmount failed");
        }
    });
    let result = background.join();
    drop(embedded);
    runtime.shutdown_timeout(Duration::from_secs(5));
    tracing::info!("unmounted");
    result.context("FUSE session ended with an error")
}
