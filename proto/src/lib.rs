//! The wire format between dfs processes, generated from `proto/dfs.proto`.
//!
//! Messages named `*Record` double as the values stored in the metadata
//! store, so they only ever change compatibly.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("dfs.v1");
}

pub use v1::*;

/// Largest message either side accepts: a batch of shards for one server.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;
/// `RenameRequest::flags`, with Linux's values.
pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;
