//! Raw gRPC: any bytes to any method, for tests that send what no client
//! would (`hostile_requests`, `attacks`).

use bytes::{Buf, BufMut};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

/// Every RPC of `dfs.proto`, as `/dfs.v1.Service/Method`.
pub fn methods() -> Vec<String> {
    let proto = include_str!("../../../proto/proto/dfs.proto");
    let mut service = "";
    let mut out = Vec::new();
    for line in proto.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("service ") {
            service = rest.trim_end_matches(" {").trim();
        } else if let Some(rest) = line.strip_prefix("rpc ") {
            if let Some((method, _)) = rest.split_once('(') {
                out.push(format!("/dfs.v1.{service}/{}", method.trim()));
            }
        }
    }
    out
}

/// Sends and receives message bytes as they are.
#[derive(Clone, Default)]
pub struct RawCodec;

pub struct RawEncoder;
pub struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> Self::Encoder {
        RawEncoder
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let out = src.chunk().to_vec();
        src.advance(out.len());
        Ok(Some(out))
    }
}
