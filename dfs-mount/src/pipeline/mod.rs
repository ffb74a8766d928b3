//! The data pipelines between a file's bytes and shards on chunk servers.

pub mod read;
mod split;
mod upload;
pub mod write;
