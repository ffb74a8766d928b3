//! dfs-gateway: an S3-compatible HTTP API over a dfs volume (issue 22).
//!
//! Layers, top to bottom: `server` (HTTP connections, TLS, limits,
//! `/health`) → s3s (routing, XML, SigV4) with `limits::Gate` (signed
//! requests only, per-key rates) → `s3` (the operations) → `volume` (keys
//! as paths, permission checks in `perm`) → the mount's file-system core
//! (`dfs_mount::fs`), the same code a FUSE mount runs, talking to dfs-meta
//! and the chunk servers. Keys come from dfs-meta (`auth`).

pub mod auth;
pub mod limits;
pub mod object_meta;
pub mod perm;
pub mod s3;
pub mod server;
pub mod sweep;
pub mod volume;
