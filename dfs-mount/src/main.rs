use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// First argument that makes `dfs-mount` act as mount(8)'s helper whatever
/// its name: the packaged `/sbin/mount.dfs` is a two-line script calling
/// it (cargo-generate-rpm cannot package symbolic links; one script serves
/// the deb and the rpm alike).
const MOUNT_HELPER_FLAG: &str = "--mount-helper";

/// Mount a dfs file system.
#[derive(Parser, Debug)]
#[command(name = "dfs-mount", version)]
struct Args {
    /// HOST:PORT[,HOST:PORT...] of metadata servers, or local:PATH for a
    /// file system embedded in this process.
    source: String,
    /// Directory to mount on.
    mountpoint: PathBuf,
    /// Mount options, comma-separated (as in fstab).
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// Stay in the foreground instead of returning once mounted.
    #[arg(short = 'f', long)]
    foreground: bool,
}

fn main() -> ExitCode {
    let mut argv = std::env::args();
    let argv0 = argv.next().unwrap_or_default();
    if dfs_mount::launch::is_mount_helper_name(&argv0) {
        return dfs_mount::launch::mount_helper_main(argv);
    }
    let mut rest = argv.peekable();
    if rest.peek().map(String::as_str) == Some(MOUNT_HELPER_FLAG) {
        rest.next();
        return dfs_mount::launch::mount_helper_main(rest);
    }
    let args = Args::parse();
    dfs_mount::launch::main_with(dfs_mount::launch::LaunchArgs {
        source: args.source,
        mountpoint: args.mountpoint,
        options: args.options,
        foreground: args.foreground,
    })
}
