//! dfs FUSE client: the write and read pipelines, the chunk cache, the
//! kernel adapter, and the `dfs-mount` / `mount.dfs` entry points.
//!
//! Layers, top to bottom: `cli` (arguments and `-o` options) and `launch`
//! (daemonizing) → `mount` (bring-up) → `fuse` (kernel requests) → `fs`
//! (file operations, write buffers) → `pipeline` (chunk read/write) and
//! `cache` → `client` (RPCs to metadata and chunk servers).

pub mod cache;
pub mod cli;
pub mod client;
pub mod embedded;
pub mod fs;
pub mod fuse;
pub mod launch;
pub mod locks;
pub mod mount;
pub mod pipeline;
