//! Reading an HTTP request body: a size limit enforced while streaming
//! (Envoy posts chunked, without Content-Length) and `Content-Encoding`
//! (gzip, deflate) with the same limit on the decompressed size.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use futures::StreamExt;
use std::io::Read;

/// Why a request body could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BodyError {
    #[error(
        "request body is larger than the limit of {limit} bytes; send smaller batches or raise the limit"
    )]
    TooLarge { limit: usize },
    #[error(
        "{encoding} request body decompresses to more than the limit of {limit} bytes ({compressed} bytes compressed); refusing it as a possible compression bomb"
    )]
    DecompressedTooLarge {
        encoding: &'static str,
        limit: usize,
        compressed: usize,
    },
    #[error(
        "request body is not valid {encoding} data ({detail}); does the Content-Encoding header match the body?"
    )]
    Corrupt {
        encoding: &'static str,
        detail: String,
    },
    #[error(
        "{encoding} request body is truncated: the compressed stream ends before its end marker"
    )]
    Truncated { encoding: &'static str },
    #[error("unsupported Content-Encoding {0:?}; use gzip, deflate or identity")]
    UnsupportedEncoding(String),
    #[error("could not read the request body: {0}")]
    Read(String),
}

impl BodyError {
    pub fn status(&self) -> StatusCode {
        match self {
            BodyError::TooLarge { .. } | BodyError::DecompressedTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            BodyError::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            BodyError::Corrupt { .. } | BodyError::Truncated { .. } | BodyError::Read(_) => {
                StatusCode::BAD_REQUEST
            }
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            BodyError::TooLarge { .. } | BodyError::DecompressedTooLarge { .. } => "too_large",
            BodyError::UnsupportedEncoding(_) => "unsupported_encoding",
            BodyError::Corrupt { .. } | BodyError::Truncated { .. } => "bad_encoding",
            BodyError::Read(_) => "read_error",
        }
    }
}

/// A supported `Content-Encoding`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    /// HTTP "deflate" is zlib-wrapped; raw deflate is accepted too.
    Deflate,
}

impl Encoding {
    pub fn from_headers(headers: &HeaderMap) -> Result<Encoding, BodyError> {
        let Some(v) = headers.get(header::CONTENT_ENCODING) else {
            return Ok(Encoding::Identity);
        };
        let s = v
            .to_str()
            .map_err(|_| {
                BodyError::UnsupportedEncoding(String::from_utf8_lossy(v.as_bytes()).into())
            })?
            .trim();
        match s.to_ascii_lowercase().as_str() {
            "" | "identity" => Ok(Encoding::Identity),
            "gzip" | "x-gzip" => Ok(Encoding::Gzip),
            "deflate" => Ok(Encoding::Deflate),
            _ => Err(BodyError::UnsupportedEncoding(s.to_string())),
        }
    }
}

/// Reads the whole body, stopping as soon as it exceeds `limit` bytes.
pub async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Vec<u8>, BodyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared
        && n > limit as u64
    {
        return Err(BodyError::TooLarge { limit });
    }
    let mut out = Vec::with_capacity(declared.unwrap_or(0).min(limit as u64) as usize);
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| BodyError::Read(e.to_string()))?;
        if out.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Reads and decompresses a request body per its `Content-Encoding`.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Vec<u8>, BodyError> {
    let encoding = Encoding::from_headers(headers)?;
    let raw = read_limited(headers, body, limit).await?;
    decompress(encoding, raw, limit)
}

/// Decompresses `raw`, refusing output larger than `limit`.
pub fn decompress(encoding: Encoding, raw: Vec<u8>, limit: usize) -> Result<Vec<u8>, BodyError> {
    match encoding {
        Encoding::Identity => Ok(raw),
        Encoding::Gzip => gunzip(&raw, limit),
        Encoding::Deflate => inflate(&raw, limit),
    }
}

fn gunzip(raw: &[u8], limit: usize) -> Result<Vec<u8>, BodyError> {
    const ENC: &str = "gzip";
    // Multi-member gzip is valid (RFC 1952) and some clients concatenate.
    let decoder = flate2::read::MultiGzDecoder::new(raw);
    let mut out = Vec::with_capacity((raw.len() * 4).min(limit));
    match decoder.take(limit as u64 + 1).read_to_end(&mut out) {
        Ok(_) if out.len() > limit => Err(BodyError::DecompressedTooLarge {
            encoding: ENC,
            limit,
            compressed: raw.len(),
        }),
        Ok(_) => Ok(out),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(BodyError::Truncated { encoding: ENC })
        }
        Err(e) => Err(BodyError::Corrupt {
            encoding: ENC,
            detail: e.to_string(),
        }),
    }
}

/// zlib or raw deflate, driven by hand so a truncated stream (no end marker)
/// is an error rather than silently short data.
fn inflate(raw: &[u8], limit: usize) -> Result<Vec<u8>, BodyError> {
    const ENC: &str = "deflate";
    let zlib_header = raw.len() >= 2
        && raw[0] & 0x0f == 8
        && (u16::from(raw[0]) << 8 | u16::from(raw[1])) % 31 == 0;
    let mut d = flate2::Decompress::new(zlib_header);
    let too_large = || BodyError::DecompressedTooLarge {
        encoding: ENC,
        limit,
        compressed: raw.len(),
    };
    let mut out: Vec<u8> = Vec::with_capacity((raw.len() * 4).clamp(64, limit.max(64)));
    loop {
        if out.len() > limit {
            return Err(too_large());
        }
        if out.len() == out.capacity() {
            // Never grow past limit + 1: one byte over is enough to know.
            out.reserve_exact(out.len().max(64 * 1024).min(limit + 1 - out.len()));
        }
        let (in_before, out_before) = (d.total_in() as usize, out.len());
        let status = d
            .decompress_vec(&raw[in_before..], &mut out, flate2::FlushDecompress::None)
            .map_err(|e| BodyError::Corrupt {
                encoding: ENC,
                detail: e.to_string(),
            })?;
        if status == flate2::Status::StreamEnd {
            return if out.len() > limit {
                Err(too_large())
            } else {
                Ok(out)
            };
        }
        if d.total_in() as usize == in_before && out.len() == out_before {
            // No progress with room to write: the input ran out mid-stream.
            return Err(BodyError::Truncated { encoding: ENC });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use flate2::Compression;
    use std::io::Write;

    pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn chunked(parts: Vec<Vec<u8>>) -> Body {
        let stream = futures::stream::iter(
            parts
                .into_iter()
                .map(|p| Ok::<_, std::io::Error>(bytes::Bytes::from(p))),
        );
        Body::from_stream(stream)
    }

    #[tokio::test]
    async fn limit_enforced_while_streaming_without_content_length() {
        let h = HeaderMap::new();
        let ok = read_limited(&h, chunked(vec![vec![1; 10], vec![2; 10]]), 20)
            .await
            .unwrap();
        assert_eq!(ok.len(), 20);
        let err = read_limited(&h, chunked(vec![vec![1; 10], vec![2; 11]]), 20)
            .await
            .unwrap_err();
        assert_eq!(err, BodyError::TooLarge { limit: 20 });
        assert_eq!(err.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn declared_content_length_over_limit_is_refused_early() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("100"));
        let err = read_limited(&h, Body::from(vec![0u8; 100]), 50)
            .await
            .unwrap_err();
        assert_eq!(err, BodyError::TooLarge { limit: 50 });
    }

    #[tokio::test]
    async fn gzip_and_deflate_round_trip() {
        let data = b"[{\"traceId\":\"x\"}]".repeat(100);
        for (enc, body) in [("gzip", gzip(&data)), ("deflate", zlib(&data))] {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(enc));
            let out = read_body(&h, Body::from(body), 1 << 20).await.unwrap();
            assert_eq!(out, data, "{enc}");
        }
        // Raw deflate without the zlib wrapper.
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), Compression::default());
        e.write_all(&data).unwrap();
        assert_eq!(
            decompress(Encoding::Deflate, e.finish().unwrap(), 1 << 20).unwrap(),
            data
        );
    }

    #[test]
    fn gzip_bomb_is_refused() {
        // 100 MiB of zeros compresses to ~100 KiB.
        let mut e = flate2::write::GzEncoder::new(Vec::new(), Compression::default());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..100 {
            e.write_all(&zeros).unwrap();
        }
        let bomb = e.finish().unwrap();
        assert!(bomb.len() < 1 << 20);
        let err = decompress(Encoding::Gzip, bomb, 16 << 20).unwrap_err();
        assert!(
            matches!(err, BodyError::DecompressedTooLarge { .. }),
            "{err}"
        );
        assert_eq!(err.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(err.to_string().contains("compression bomb"), "{err}");
        let z = zlib(&vec![0u8; 1 << 22]);
        let err = decompress(Encoding::Deflate, z, 1 << 20).unwrap_err();
        assert!(
            matches!(err, BodyError::DecompressedTooLarge { .. }),
            "{err}"
        );
    }

    #[test]
    fn truncated_and_corrupt_streams() {
        let data = b"hello world, hello world, hello world".repeat(50);
        let g = gzip(&data);
        let err = decompress(Encoding::Gzip, g[..g.len() / 2].to_vec(), 1 << 20).unwrap_err();
        assert_eq!(err, BodyError::Truncated { encoding: "gzip" });
        assert!(err.to_string().contains("truncated"));
        let err = decompress(Encoding::Gzip, b"not gzip at all".to_vec(), 1 << 20).unwrap_err();
        assert!(matches!(err, BodyError::Corrupt { .. }), "{err}");
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        let z = zlib(&data);
        let err = decompress(Encoding::Deflate, z[..z.len() / 2].to_vec(), 1 << 20).unwrap_err();
        assert_eq!(
            err,
            BodyError::Truncated {
                encoding: "deflate"
            }
        );
        let mut flipped = g.clone();
        flipped[g.len() - 6] ^= 0xff; // in the CRC trailer
        assert!(decompress(Encoding::Gzip, flipped, 1 << 20).is_err());
    }

    #[test]
    fn unknown_encoding_is_415() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("br"));
        let err = Encoding::from_headers(&h).unwrap_err();
        assert_eq!(err.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("GZIP"));
        assert_eq!(Encoding::from_headers(&h).unwrap(), Encoding::Gzip);
    }
}
