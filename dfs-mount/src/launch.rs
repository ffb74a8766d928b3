//! Entry point of `dfs-mount`, also when called as `mount.dfs` (a link to
//! it: cargo cannot name a binary with a dot): validates arguments,
//! then either serves in the foreground or starts itself in the background
//! and waits until the mount is really up (or prints why it is not).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

use dfs_core::telemetry::traces::TracingGuard;

use crate::cli::{MountOptions, Source};
use crate::mount::{self, MountRequest};

/// Set in the environment of the background child: it reports readiness on
/// its stdout, one line, then never writes there again.
const NOTIFY_ENV: &str = "DFS_MOUNT_NOTIFY";
const READY: &str = "dfs-mount: ready";
const FAILED: &str = "dfs-mount: error: ";

pub struct LaunchArgs {
    pub source: String,
    pub mountpoint: PathBuf,
    pub options: Vec<String>,
    pub foreground: bool,
}

fn init_logging(options: &MountOptions, mountpoint: &std::path::Path) -> Option<TracingGuard> {
    use dfs_core::telemetry::traces::{self, LogOutput};
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    use tracing_subscriber::Layer;

    let output = match &options.log {
        Some(path) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(file) => LogOutput {
                writer: BoxMakeWriter::new(std::sync::Mutex::new(file)),
                ansi: false,
                journal: false,
            },
            Err(e) => {
                eprintln!("dfs-mount: cannot open log file {}: {e}", path.display());
                LogOutput::stderr()
            }
        },
        None => LogOutput::stderr(),
    };
    let logs = traces::log_layer(options.traces.log_format, output)
        .with_filter(tracing_subscriber::filter::FilterExt::and(
            traces::default_filter(),
            NoBenignFuserLines,
        ))
        .boxed();
    let identity = traces::ProcessIdentity {
        service: "dfs-mount",
        instance: mountpoint.display().to_string(),
    };
    match traces::init(identity, &options.traces, logs) {
        Ok(guard) => Some(guard),
        Err(e) => {
            eprintln!("dfs-mount: {e}");
            None
        }
    }
}

/// fuser log lines that report no fault, each as the start of the message
/// and the errno text it ends with. Other failures of the same calls are
/// still logged.
const BENIGN_FUSER_LINES: &[(&str, &str)] = &[
    // The kernel answers a reply with ENOENT when its request no longer
    // exists: the caller was interrupted by a signal and the request ended
    // (or, for a FUSE_INTERRUPT, which fuser answers with ENOSYS itself,
    // the interrupted request had been answered first). Go programs
    // interrupt requests all the time (preemption signals): one run of
    // juicefs bench left 30 of these errors in the log.
    ("Failed to send FUSE reply: ", "(os error 2)"),
    // When the session ends fuser unmounts, and warns when it cannot. After
    // `umount` or `fusermount -u`, the way a user ends a mount, the mount
    // point is no longer one and umount(2) says EINVAL: a warning at
    // every unmount.
    ("Unmount failed: ", "(os error 22)"),
];

/// Leaves [`BENIGN_FUSER_LINES`] out of the mount's log.
struct NoBenignFuserLines;

impl<S> tracing_subscriber::layer::Filter<S> for NoBenignFuserLines {
    fn enabled(
        &self,
        _meta: &tracing::Metadata<'_>,
        _cx: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        true
    }

    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _cx: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        // Only fuser's events, which come through `log`, are looked into.
        let target = event.metadata().target();
        if target != "log" && !target.starts_with("fuser") {
            return true;
        }
        let mut fields = EventText {
            target: target.to_string(),
            message: String::new(),
        };
        event.record(&mut fields);
        let benign = fields.target.starts_with("fuser")
            && BENIGN_FUSER_LINES.iter().any(|(start, end)| {
                fields.message.starts_with(start) && fields.message.ends_with(end)
            });
        !benign
    }
}

/// The target (a `log` record's, when the event came through `log`) and
/// message of an event.
struct EventText {
    target: String,
    message: String,
}

impl tracing::field::Visit for EventText {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            "log.target" => self.target = value.to_string(),
            "message" => self.message = value.to_string(),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        }
    }
}

pub fn main_with(args: LaunchArgs) -> ExitCode {
    let source: Source = match args.source.parse() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dfs-mount: bad source `{}`: {e}", args.source);
            return ExitCode::from(2);
        }
    };
    let is_remount = args
        .options
        .iter()
        .flat_map(|list| list.split(','))
        .any(|o| o == "remount");
    let mut options = MountOptions::for_source(&source);
    for list in &args.options {
        let list: Vec<&str> = list.split(',').filter(|o| *o != "remount").collect();
        if let Err(e) = options.apply(&list.join(",")) {
            eprintln!("dfs-mount: {e}");
            return ExitCode::from(2);
        }
    }
    if is_remount {
        return match remount(&args.mountpoint, &options) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!(
                    "dfs-mount: cannot remount {}: {e}",
                    args.mountpoint.display()
                );
                ExitCode::from(32)
            }
        };
    }
    let notify = std::env::var_os(NOTIFY_ENV).is_some();
    if !args.foreground && !notify {
        return spawn_background(&args);
    }
    let _traces = init_logging(&options, &args.mountpoint);
    let request = MountRequest {
        source,
        source_text: args.source.clone(),
        mountpoint: args.mountpoint.clone(),
        options,
    };
    let result = mount::run(request, |outcome| {
        if notify {
            let line = match outcome {
                Ok(()) => READY.to_string(),
                Err(e) => format!("{FAILED}{e}"),
            };
            let mut out = std::io::stdout();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        } else if let Err(e) = outcome {
            eprintln!("dfs-mount: {e}");
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !notify {
                eprintln!("dfs-mount: {e:#}");
            }
            tracing::error!(error = %format!("{e:#}"), "mount ended with an error");
            ExitCode::FAILURE
        }
    }
}

/// Re-runs this program in the background with the same arguments and
/// waits for its one-line report.
fn spawn_background(args: &LaunchArgs) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("dfs-mount: cannot find my own executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut cmd = Command::new(exe);
    cmd.arg(&args.source).arg(&args.mountpoint);
    for o in &args.options {
        cmd.arg("-o").arg(o);
    }
    cmd.arg("--foreground")
        .env(NOTIFY_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // Its own process group: the shell's Ctrl-C or hang-up must not end it.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dfs-mount: cannot start the background process: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(stdout) = child.stdout.take() else {
        eprintln!("dfs-mount: background process has no stdout");
        return ExitCode::FAILURE;
    };
    let mut line = String::new();
    let _ = BufReader::new(stdout).read_line(&mut line);
    let line = line.trim_end();
    if line == READY {
        return ExitCode::SUCCESS;
    }
    let _ = child.wait();
    match line.strip_prefix(FAILED) {
        Some(reason) => eprintln!("dfs-mount: {reason}"),
        None => eprintln!(
            "dfs-mount: the background process ended before the mount was up (try --foreground)"
        ),
    }
    ExitCode::FAILURE
}

/// The names under which `dfs-mount` acts as mount(8)'s helper.
pub fn is_mount_helper_name(argv0: &str) -> bool {
    let name = std::path::Path::new(argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    name == "mount.dfs" || name == "mount.fuse.dfs"
}

fn usage() -> ExitCode {
    eprintln!("usage: mount.dfs SOURCE MOUNTPOINT [-sfnv] [-N NAMESPACE] [-o OPTIONS] [-t dfs]");
    ExitCode::from(1)
}

/// Runs as `mount.dfs` with mount(8)'s arguments (after the program name).
pub fn mount_helper_main(args: impl Iterator<Item = String>) -> ExitCode {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut foreground = false;
    let mut args = args;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-o" => match args.next() {
                Some(o) => options.push(o),
                None => return usage(),
            },
            "-t" | "-N" => {
                if args.next().is_none() {
                    return usage();
                }
            }
            "--foreground" => foreground = true,
            s if s.starts_with("-o") && s.len() > 2 => options.push(s[2..].to_string()),
            // -s (sloppy), -f (fake), -n (no mtab), -v (verbose): nothing to do
            // for a FUSE file system, accepted so mount(8) can pass them.
            s if s.starts_with('-')
                && s.len() > 1
                && s[1..].chars().all(|c| "sfnv".contains(c)) => {}
            s if s.starts_with('-') => {
                eprintln!("mount.dfs: unknown flag {s}");
                return usage();
            }
            _ => positional.push(arg),
        }
    }
    let [source, mountpoint] = <[String; 2]>::try_from(positional).unwrap_or_default();
    if source.is_empty() || mountpoint.is_empty() {
        return usage();
    }
    main_with(LaunchArgs {
        source,
        mountpoint: PathBuf::from(mountpoint),
        options,
        foreground,
    })
}

/// `mount -o remount,...` of a dfs mount: the client keeps running; the
/// kernel changes the mount's flags (`ro`/`rw`, `nosuid`, `nodev`,
/// `noexec`, `noatime`), which it enforces itself.
fn remount(mountpoint: &std::path::Path, options: &MountOptions) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let target = std::fs::canonicalize(mountpoint).map_err(|e| e.to_string())?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").map_err(|e| e.to_string())?;
    let is_fuse = mounts.lines().any(|line| {
        let mut fields = line.split(' ');
        let (_, dir, kind) = (fields.next(), fields.next(), fields.next());
        dir.map(|d| d.replace("\\040", " ")) == Some(target.to_string_lossy().into_owned())
            && kind.is_some_and(|k| k == "fuse" || k.starts_with("fuse."))
    });
    if !is_fuse {
        return Err("it is not a mounted dfs file system".into());
    }
    let mut flags = libc::MS_REMOUNT;
    for (on, flag) in [
        (options.read_only, libc::MS_RDONLY),
        (options.nosuid, libc::MS_NOSUID),
        (options.nodev, libc::MS_NODEV),
        (options.noexec, libc::MS_NOEXEC),
        (options.noatime, libc::MS_NOATIME),
    ] {
        if on {
            flags |= flag;
        }
    }
    let target = std::ffi::CString::new(target.as_os_str().as_bytes())
        .map_err(|_| "the mountpoint has a NUL byte".to_string())?;
    // SAFETY: `target` is a valid NUL-terminated string that outlives the
    // call; source, type and data may be null for a remount.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            target.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().to_string())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::Layer;

    use super::NoBenignFuserLines;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn benign_fuser_lines_are_left_out_other_failures_of_the_same_calls_are_not() {
        let captured = Captured::default();
        let writer = captured.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .with_filter(NoBenignFuserLines);
        let subscriber = tracing_subscriber::registry().with(layer);
        // As fuser logs, through `log`, handed to tracing.
        let _ = tracing_log::LogTracer::init();
        tracing::subscriber::with_default(subscriber, || {
            let gone = std::io::Error::from_raw_os_error(libc::ENOENT);
            log::error!(target: "fuser::reply", "Failed to send FUSE reply: {gone}");
            tracing::error!(target: "fuser::reply", "Failed to send FUSE reply: {gone}");
            let bad = std::io::Error::from_raw_os_error(libc::EINVAL);
            log::error!(target: "fuser::reply", "Failed to send FUSE reply: {bad}");
            tracing::error!(target: "dfs_mount::fuse", "lookup failed: {gone}");
            let not_mounted = std::io::Error::from_raw_os_error(libc::EINVAL);
            log::warn!(target: "fuser::mnt", "Unmount failed: {not_mounted}");
            let busy = std::io::Error::from_raw_os_error(libc::EBUSY);
            log::warn!(target: "fuser::mnt", "Unmount failed: {busy}");
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].contains("Invalid argument"), "{text}");
        assert!(lines[1].contains("lookup failed"), "{text}");
        assert!(
            lines[2].contains("Unmount failed: Device or resource busy"),
            "{text}"
        );
    }
}
