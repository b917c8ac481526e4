//! The store's binary encoding, on disk and on the wire.
//!
//! Raft entries, metadata and RPC messages are openraft's and our own serde types,
//! encoded with postcard: compact (varints, bytes as bytes) and several times cheaper to
//! write and read than JSON, which matters on the write path (every entry is encoded
//! once for the log and once per follower). What is written to disk is also framed with
//! a CRC-32, so a torn or corrupted record is reported as such instead of decoded into
//! garbage.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why bytes could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The value could not be encoded.
    #[error("encoding: {0}")]
    Encode(postcard::Error),
    /// The bytes are not a valid encoding of the expected type.
    #[error("decoding: {0}")]
    Decode(postcard::Error),
    /// The record's checksum does not match its contents (a torn or corrupted write).
    #[error("checksum mismatch: the record is torn or corrupted")]
    Checksum,
    /// The record is shorter than its frame.
    #[error("truncated record ({0} bytes)")]
    Truncated(usize),
}

/// Encodes a value for the wire.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    postcard::to_stdvec(value).map_err(CodecError::Encode)
}

/// Decodes a value from the wire.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    postcard::from_bytes(bytes).map_err(CodecError::Decode)
}

/// Encodes a value for disk: a CRC-32 of the payload (4 bytes, big-endian), then the
/// payload.
pub fn encode_framed<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = postcard::to_extend(value, vec![0u8; 4]).map_err(CodecError::Encode)?;
    let crc = crc32fast::hash(&out[4..]);
    out[..4].copy_from_slice(&crc.to_be_bytes());
    Ok(out)
}

/// Decodes a value written by [`encode_framed`], checking its checksum.
pub fn decode_framed<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (crc, payload) = bytes
        .split_first_chunk::<4>()
        .ok_or(CodecError::Truncated(bytes.len()))?;
    if crc32fast::hash(payload) != u32::from_be_bytes(*crc) {
        return Err(CodecError::Checksum);
    }
    decode(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::types::{Op, Txn};

    #[test]
    fn framed_round_trip_and_corruption_is_detected() {
        let txn = Txn {
            compares: vec![],
            ops: vec![Op::Put {
                key: "/registry/configmaps/default/a".into(),
                value: vec![7; 300],
                lease: None,
            }],
        };
        let bytes = encode_framed(&txn).unwrap();
        // Bytes are bytes: the 300-byte value costs about 300 bytes, not 1,200 as JSON.
        assert!(bytes.len() < 350, "{} bytes", bytes.len());
        assert_eq!(decode_framed::<Txn>(&bytes).unwrap(), txn);

        let mut flipped = bytes.clone();
        flipped[100] ^= 1;
        assert!(matches!(decode_framed::<Txn>(&flipped), Err(CodecError::Checksum)));
        assert!(matches!(
            decode_framed::<Txn>(&bytes[..2]),
            Err(CodecError::Truncated(2))
        ));
        assert!(decode_framed::<Txn>(&bytes[..bytes.len() - 10]).is_err());
    }
}
