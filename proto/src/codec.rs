//! The gRPC codec of every dfs service: prost's, except that an encoder
//! reserves a message's whole encoded length before writing it.
//!
//! prost writes into tonic's buffer without reserving first, so a
//! multi-MiB `PutShards` or `GetShards` reply grew the buffer a doubling at
//! a time, each step a reallocation into fresh pages the kernel had to
//! zero (a unique 512 MiB write: ~5% of the mount's CPU in those
//! reallocations alone).

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::Status;
use tonic_prost::{ProstCodec, ProstDecoder};

/// A [`Codec`] for prost messages `T` out and `U` in.
#[derive(Debug, Clone)]
pub struct ReservingCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for ReservingCodec<T, U> {
    fn default() -> Self {
        Self {
            _types: PhantomData,
        }
    }
}

impl<T, U> Codec for ReservingCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ReservingEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ReservingEncoder { _type: PhantomData }
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::default().decoder()
    }
}

/// Encodes `T` into a buffer grown once to the message's length.
#[derive(Debug, Clone)]
pub struct ReservingEncoder<T> {
    _type: PhantomData<T>,
}

impl<T: Message> Encoder for ReservingEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        item.encode(buf)
            .map_err(|e| Status::internal(format!("encoding a message: {e}")))
    }
}
