//! Command line of `dfs-mount` and `mount.dfs`, and the `-o` option list
//! that both share with /etc/fstab.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use dfs_core::codec::CodecPolicy;

/// Where the file system lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// Metadata servers of a cluster, tried in order.
    Cluster(Vec<String>),
    /// Everything embedded in this process, data under this directory.
    Local(PathBuf),
}

impl FromStr for Source {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("local:") {
            if path.is_empty() {
                return Err("local: needs a directory, as in local:/var/lib/dfs".into());
            }
            return Ok(Source::Local(PathBuf::from(path)));
        }
        let addrs: Vec<String> = s
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(String::from)
            .collect();
        if addrs.is_empty() {
            return Err("empty source: expected HOST:PORT[,HOST:PORT...] or local:PATH".into());
        }
        for a in &addrs {
            let Some((host, port)) = a.rsplit_once(':') else {
                return Err(format!("`{a}` is not HOST:PORT (or use local:PATH)"));
            };
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(format!("`{a}` is not HOST:PORT"));
            }
        }
        Ok(Source::Cluster(addrs))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    Strong,
    ReadOwn,
    Eventual,
}

impl Consistency {
    /// How long the kernel may cache attributes and entries.
    pub fn ttl(self) -> Duration {
        match self {
            Consistency::Strong => Duration::ZERO,
            Consistency::ReadOwn => Duration::from_secs(1),
            Consistency::Eventual => Duration::from_secs(30),
        }
    }
}

/// Everything `-o` can set.
#[derive(Clone, Debug)]
pub struct MountOptions {
    pub read_only: bool,
    pub allow_other: bool,
    pub allow_root: bool,
    pub noatime: bool,
    pub nodev: bool,
    pub nosuid: bool,
    pub noexec: bool,
    /// POSIX ACLs enforced (`acl`, the default; `noacl`: mode bits only,
    /// and setting an ACL is refused).
    pub acl: bool,
    pub consistency: Consistency,
    pub cache_bytes: u64,
    pub readahead_bytes: u64,
    /// Bound on bytes buffered for writes over all files.
    pub write_buffer_bytes: u64,
    pub codec: CodecPolicy,
    pub threads: usize,
    pub fsname: Option<String>,
    /// Log file of a mount running in the background.
    pub log: Option<PathBuf>,
    /// How long metadata requests are retried while the cluster is unreachable.
    pub retry_for: Duration,
    /// `tls=DIR`: where the cluster's ca.crt and this client's client.crt
    /// and client.key are (default: $DFS_TLS_DIR, else /etc/dfs/tls).
    pub tls_dir: Option<PathBuf>,
    /// `plaintext`: no TLS to the cluster (an explicit, logged opt-out).
    pub plaintext: bool,
    /// `metrics=ADDR`: serve Prometheus metrics on http://ADDR/metrics.
    pub metrics: Option<std::net::SocketAddr>,
    /// `otlp=URL`, `trace_sample=RATIO`, `log_format=text|json`: traces
    /// and log lines, as the daemons' `--otlp-endpoint`, `--trace-sample`
    /// and `--log-format`.
    pub traces: dfs_core::telemetry::TraceArgs,
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            read_only: false,
            allow_other: false,
            allow_root: false,
            noatime: false,
            nodev: false,
            nosuid: false,
            noexec: false,
            acl: true,
            consistency: Consistency::ReadOwn,
            cache_bytes: 256 << 20,
            readahead_bytes: 16 << 20,
            write_buffer_bytes: 256 << 20,
            codec: CodecPolicy::Lz4,
            threads: 4,
            fsname: None,
            log: None,
            retry_for: Duration::from_secs(30),
            tls_dir: None,
            plaintext: false,
            metrics: None,
            traces: Default::default(),
        }
    }
}

pub use dfs_core::size::parse_size;

/// Splits an option string on commas, honouring `\,` escapes.
fn split_options(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&',') => {
                cur.push(',');
                chars.next();
            }
            ',' => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter().filter(|o| !o.is_empty()).collect()
}

impl MountOptions {
    /// The defaults for a mount of `source`. A cluster is reached over the
    /// network: its mounts default to `nosuid,nodev`, so a set-user-ID
    /// program or a device node that another machine put in the volume
    /// grants nothing here unless the administrator asks for it (`suid`,
    /// `dev`), as NFS and CIFS mounts do. The embedded `local:` mode keeps
    /// the plain defaults.
    pub fn for_source(source: &Source) -> Self {
        let network = matches!(source, Source::Cluster(_));
        Self {
            nodev: network,
            nosuid: network,
            ..Self::default()
        }
    }

    /// Applies one `-o` list. Options that only mount(8) or fstab use are
    /// accepted and ignored; anything unknown is an error.
    pub fn apply(&mut self, list: &str) -> Result<(), String> {
        for opt in split_options(list) {
            self.apply_one(&opt)?;
        }
        Ok(())
    }

    fn apply_one<'a>(&mut self, opt: &'a str) -> Result<(), String> {
        {
            let (key, value) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt, None),
            };
            let need = |v: Option<&'a str>| -> Result<&'a str, String> {
                v.ok_or_else(|| format!("mount option `{key}` needs a value ({key}=...)"))
            };
            match key {
                "ro" => self.read_only = true,
                "rw" => self.read_only = false,
                "allow_other" => self.allow_other = true,
                "allow_root" => self.allow_root = true,
                "noatime" => self.noatime = true,
                "atime" | "relatime" | "strictatime" => self.noatime = false,
                "nodev" => self.nodev = true,
                "dev" => self.nodev = false,
                "nosuid" => self.nosuid = true,
                "suid" => self.nosuid = false,
                "noexec" => self.noexec = true,
                "exec" => self.noexec = false,
                "acl" | "posixacl" => self.acl = true,
                "noacl" => self.acl = false,
                // The kernel checks permissions from mode bits always; the
                // option is accepted for fstab compatibility.
                "default_permissions" => {}
                // Used by mount(8), systemd and fstab, not by the file system.
                "_netdev" | "nofail" | "auto" | "noauto" | "user" | "nouser" | "users"
                | "defaults" | "async" | "sync" | "dirsync" | "nodiratime" | "diratime"
                | "comment" => {}
                k if k.starts_with("x-") || k.starts_with("comment") => {}
                "consistency" => {
                    self.consistency = match need(value)? {
                        "strong" => Consistency::Strong,
                        "read-own" | "close-to-open" => Consistency::ReadOwn,
                        "eventual" => Consistency::Eventual,
                        other => {
                            return Err(format!(
                                "consistency=`{other}`: expected strong, read-own or eventual"
                            ))
                        }
                    }
                }
                "cache_size" | "cache" => self.cache_bytes = parse_size(need(value)?)?,
                "readahead" => self.readahead_bytes = parse_size(need(value)?)?,
                "write_buffer" => self.write_buffer_bytes = parse_size(need(value)?)?,
                "codec" | "compress" => {
                    self.codec = need(value)?
                        .parse()
                        .map_err(|e: dfs_core::UnknownCodec| e.to_string())?
                }
                "threads" => {
                    self.threads = need(value)?
                        .parse()
                        .ok()
                        .filter(|n| (1..=64).contains(n))
                        .ok_or("threads must be 1 to 64")?
                }
                "retry_timeout" => {
                    let secs: u64 = need(value)?
                        .parse()
                        .map_err(|_| "retry_timeout is in seconds".to_string())?;
                    self.retry_for = Duration::from_secs(secs);
                }
                "fsname" => self.fsname = Some(need(value)?.to_string()),
                "log" => self.log = Some(PathBuf::from(need(value)?)),
                "tls" => self.tls_dir = Some(PathBuf::from(need(value)?)),
                "plaintext" => self.plaintext = true,
                "metrics" => {
                    let addr = need(value)?;
                    self.metrics = Some(addr.parse().map_err(|_| {
                        format!("metrics=`{addr}`: expected an address like 127.0.0.1:9101")
                    })?)
                }
                "otlp" => {
                    self.traces.otlp_endpoint = Some(
                        dfs_core::telemetry::traces::parse_endpoint(need(value)?)
                            .map_err(|e| format!("otlp: {e}"))?,
                    )
                }
                "trace_sample" => {
                    self.traces.trace_sample =
                        dfs_core::telemetry::traces::parse_ratio(need(value)?)
                            .map_err(|e| format!("trace_sample: {e}"))?
                }
                "log_format" => self.traces.log_format = need(value)?.parse()?,
                other => return Err(format!("unknown mount option `{other}`")),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        assert_eq!("local:/tmp/x".parse(), Ok(Source::Local("/tmp/x".into())));
        assert_eq!(
            "127.0.0.1:7000,host:7001".parse(),
            Ok(Source::Cluster(vec![
                "127.0.0.1:7000".into(),
                "host:7001".into()
            ]))
        );
        assert!("nonsense".parse::<Source>().is_err());
        assert!("host:99999".parse::<Source>().is_err());
        assert!("local:".parse::<Source>().is_err());
    }

    #[test]
    fn options_from_fstab() {
        let mut o = MountOptions::default();
        o.apply(
            "_netdev,ro,allow_other,consistency=strong,cache_size=64M,x-systemd.automount,nofail",
        )
        .expect("valid");
        assert!(o.read_only && o.allow_other);
        assert_eq!(o.consistency, Consistency::Strong);
        assert_eq!(o.cache_bytes, 64 << 20);
        let err = MountOptions::default()
            .apply("rw,bogus")
            .expect_err("unknown option");
        assert!(err.contains("bogus"), "{err}");
        assert!(MountOptions::default().apply("consistency=maybe").is_err());
        assert!(MountOptions::default().apply("cache_size").is_err());
        let mut o = MountOptions::default();
        o.apply("metrics=127.0.0.1:9102").expect("valid");
        assert_eq!(o.metrics, Some("127.0.0.1:9102".parse().expect("addr")));
        let err = MountOptions::default()
            .apply("metrics=somewhere")
            .expect_err("not an address");
        assert!(err.contains("metrics=`somewhere`"), "{err}");
        let mut o = MountOptions::default();
        o.apply("otlp=http://127.0.0.1:4317,trace_sample=0.5,log_format=json")
            .expect("valid");
        assert_eq!(
            o.traces.otlp_endpoint.as_deref(),
            Some("http://127.0.0.1:4317")
        );
        assert_eq!(o.traces.trace_sample, 0.5);
        assert_eq!(o.traces.log_format, dfs_core::telemetry::LogFormat::Json);
        assert!(MountOptions::default().apply("trace_sample=2").is_err());
        assert!(MountOptions::default().apply("log_format=xml").is_err());
        assert!(MountOptions::default().apply("otlp=localhost").is_err());
    }

    #[test]
    fn escaped_commas() {
        assert_eq!(
            split_options("a,fsname=x\\,y,,b"),
            vec!["a", "fsname=x,y", "b"]
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn cluster_mounts_default_to_nosuid_nodev_unless_asked() {
        let cluster: Source = "127.0.0.1:7000".parse().expect("source");
        let o = MountOptions::for_source(&cluster);
        assert!(o.nosuid && o.nodev);
        let mut o = MountOptions::for_source(&cluster);
        o.apply("suid,dev").expect("options");
        assert!(!o.nosuid && !o.nodev);
        let mut o = MountOptions::for_source(&cluster);
        o.apply("dev").expect("options");
        assert!(o.nosuid && !o.nodev);
        let local: Source = "local:/var/lib/dfs".parse().expect("source");
        let o = MountOptions::for_source(&local);
        assert!(!o.nosuid && !o.nodev);
    }
}
