//! What dfs clients and servers share: content-defined chunking, chunk
//! fingerprints, compression, inline chunks, erasure coding, shard placement, the error
//! type that crosses processes, timestamps, and the RPC transport type.
//!
//! Everything here that decides how bytes are cut, named, encoded or placed
//! is effectively part of the storage format; see each module for what may
//! and may not change.

pub mod chunker;
pub mod codec;
pub mod codec_model;
pub mod dictionary;
pub mod erasure;
pub mod error;
pub mod fingerprint;
pub mod inline;
pub mod placement;
pub mod rpc;
pub mod shard_key;
pub mod shard_token;
pub mod shutdown;
pub mod size;
pub mod telemetry;
pub mod tier;
pub mod time;
pub mod tls;
pub mod workers;
pub mod xorshift;

pub use chunker::{cut_lengths, AVG_CHUNK, MAX_CHUNK, MIN_CHUNK};
pub use codec::{compress, decompress, CodecError, CodecPolicy, UnknownCodec};
pub use erasure::{decode, encode, reconstruct_all, shard_len, ErasureError};
pub use error::{DfsError, DfsResult};
pub use fingerprint::{Fingerprint, FingerprintError};
pub use placement::{Candidate, Ring};
pub use rpc::{boxed_transport, BoxError, RpcTransport};
pub use time::{now_ns, ns_to_system_time, system_time_to_ns};
