//! Compression codecs a record batch may use, numbered as in Kafka's batch attributes.
//!
//! Batches are stored and served exactly as the producer compressed them. Brokers only
//! decompress to validate a batch's records and to answer timestamp look-ups; decompression
//! is bounded by `decompressed_bytes_max` so a small batch cannot expand without limit.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

/// The codec in the low three bits of a batch's attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Gzip,
    /// Snappy in the xerial framing used by Kafka's clients.
    Snappy,
    /// LZ4 frame format.
    Lz4,
    Zstd,
}

/// Why a compressed payload could not be decoded or encoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("unknown compression codec id {0}")]
    UnknownCodec(u8),
    #[error("{codec:?} payload is corrupt: {reason}")]
    Corrupt { codec: Compression, reason: String },
    #[error("decompressed payload exceeds {limit} bytes")]
    TooLarge { limit: usize },
}

impl Compression {
    pub const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    pub fn id(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    pub fn from_id(id: u8) -> Result<Compression, CodecError> {
        Ok(match id {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            4 => Compression::Zstd,
            other => return Err(CodecError::UnknownCodec(other)),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }

    /// Compresses `data`. Used by producers; brokers never recompress.
    pub fn compress(self, data: &[u8]) -> Result<Vec<u8>, CodecError> {
        let corrupt = |e: std::io::Error| CodecError::Corrupt {
            codec: self,
            reason: e.to_string(),
        };
        match self {
            Compression::None => Ok(data.to_vec()),
            Compression::Gzip => {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(data).map_err(corrupt)?;
                enc.finish().map_err(corrupt)
            }
            Compression::Snappy => xerial::compress(data).map_err(|reason| CodecError::Corrupt {
                codec: self,
                reason,
            }),
            Compression::Lz4 => {
                let mut enc = lz4_flex::frame::FrameEncoder::new(Vec::new());
                enc.write_all(data).map_err(corrupt)?;
                enc.finish().map_err(|e| CodecError::Corrupt {
                    codec: self,
                    reason: e.to_string(),
                })
            }
            Compression::Zstd => Ok(ruzstd::encoding::compress_to_vec(
                data,
                ruzstd::encoding::CompressionLevel::Fastest,
            )),
        }
    }

    /// Decompresses `data`, failing if the output would exceed `limit` bytes.
    pub fn decompress(self, data: &[u8], limit: usize) -> Result<Vec<u8>, CodecError> {
        let corrupt = |reason: String| CodecError::Corrupt {
            codec: self,
            reason,
        };
        let out = match self {
            Compression::None => data.to_vec(),
            Compression::Gzip => read_bounded(flate2::read::GzDecoder::new(data), limit)
                .map_err(|e| corrupt(e.to_string()))?,
            Compression::Snappy => xerial::decompress(data, limit).map_err(corrupt)?,
            Compression::Lz4 => read_bounded(lz4_flex::frame::FrameDecoder::new(data), limit)
                .map_err(|e| corrupt(e.to_string()))?,
            Compression::Zstd => {
                let decoder = ruzstd::decoding::StreamingDecoder::new(data)
                    .map_err(|e| corrupt(e.to_string()))?;
                read_bounded(decoder, limit).map_err(|e| corrupt(e.to_string()))?
            }
        };
        if out.len() > limit {
            return Err(CodecError::TooLarge { limit });
        }
        Ok(out)
    }
}

/// Reads at most `limit + 1` bytes so that an oversized payload is noticed without reading it
/// all.
fn read_bounded(reader: impl Read, limit: usize) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    reader.take(limit as u64 + 1).read_to_end(&mut out)?;
    Ok(out)
}

/// The xerial snappy framing (snappy-java's `SnappyOutputStream`), which Kafka clients use: an
/// 8-byte magic, two big-endian i32 version fields, then blocks of `[len: i32 BE][raw snappy]`.
mod xerial {
    const MAGIC: [u8; 8] = [0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];
    const HEADER_LEN: usize = 16;
    const BLOCK_BYTES: usize = 32 * 1024;

    pub fn compress(data: &[u8]) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(HEADER_LEN + data.len() / 2);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&1i32.to_be_bytes());
        out.extend_from_slice(&1i32.to_be_bytes());
        let mut encoder = snap::raw::Encoder::new();
        for chunk in data.chunks(BLOCK_BYTES) {
            let block = encoder.compress_vec(chunk).map_err(|e| e.to_string())?;
            let len = i32::try_from(block.len()).map_err(|e| e.to_string())?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&block);
        }
        Ok(out)
    }

    pub fn decompress(data: &[u8], limit: usize) -> Result<Vec<u8>, String> {
        let mut decoder = snap::raw::Decoder::new();
        if data.len() < HEADER_LEN || data[..8] != MAGIC {
            return Err("missing xerial snappy header".into());
        }
        let mut rest = &data[HEADER_LEN..];
        let mut out = Vec::new();
        while !rest.is_empty() {
            let Some((len_bytes, tail)) = rest.split_first_chunk::<4>() else {
                return Err("truncated block length".into());
            };
            let len = usize::try_from(i32::from_be_bytes(*len_bytes))
                .map_err(|_| "negative block length".to_string())?;
            if tail.len() < len {
                return Err("truncated block".into());
            }
            let (block, tail) = tail.split_at(len);
            let block_len = snap::raw::decompress_len(block).map_err(|e| e.to_string())?;
            if out.len() + block_len > limit {
                return Err(format!("decompressed payload exceeds {limit} bytes"));
            }
            let start = out.len();
            out.resize(start + block_len, 0);
            decoder
                .decompress(block, &mut out[start..])
                .map_err(|e| e.to_string())?;
            rest = tail;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_round_trips() {
        let data: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for codec in Compression::ALL {
            let packed = codec.compress(&data).expect("compress");
            let unpacked = codec.decompress(&packed, data.len()).expect("decompress");
            assert_eq!(unpacked, data, "{codec:?}");
            assert_eq!(Compression::from_id(codec.id()).ok(), Some(codec));
        }
    }

    #[test]
    fn decompression_is_bounded() {
        let data = vec![0u8; 1 << 20];
        for codec in Compression::ALL {
            let packed = codec.compress(&data).expect("compress");
            assert!(
                codec.decompress(&packed, 1000).is_err(),
                "{codec:?} ignored the bound"
            );
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let garbage = [
            0x82u8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17,
        ];
        for codec in Compression::ALL.into_iter().skip(1) {
            assert!(codec.decompress(&garbage, 1 << 20).is_err(), "{codec:?}");
        }
        assert!(Compression::from_id(7).is_err());
    }
}
