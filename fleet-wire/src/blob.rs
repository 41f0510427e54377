//! Blobs cut into chunks ([`crate::CHUNK_BYTES`] each, the last shorter) and checked by
//! SHA-256: each chunk on arrival, the whole blob once complete. Keeping chunks (durably) is
//! the receiver's business; this module only says whether a chunk or a blob is right.

use crate::message::{chunk_count, ChunkHeader};
use crate::{sha256_hex, CHUNK_BYTES, MAX_BLOB_BYTES};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BlobError {
    #[error("blob of {0} bytes: 1 to {MAX_BLOB_BYTES} are allowed")]
    Size(u64),
    #[error("chunk {index} has {got} bytes; {expected} expected")]
    ChunkLength {
        index: u32,
        expected: usize,
        got: usize,
    },
    #[error("chunk {index}: its bytes do not hash to the declared SHA-256")]
    ChunkHash { index: u32 },
    #[error("the assembled blob does not hash to {expected}")]
    BlobHash { expected: String },
    #[error("the assembled blob has {got} bytes; {expected} declared")]
    BlobLength { expected: u64, got: u64 },
}

/// The chunks of `blob`, with their headers.
pub fn split(blob: &[u8]) -> Result<Vec<(ChunkHeader, &[u8])>, BlobError> {
    let size = blob.len() as u64;
    if size == 0 || size > MAX_BLOB_BYTES {
        return Err(BlobError::Size(size));
    }
    let hash = sha256_hex(blob);
    let count = chunk_count(size);
    Ok(blob
        .chunks(CHUNK_BYTES)
        .enumerate()
        .map(|(index, body)| {
            (
                ChunkHeader {
                    blob: hash.clone(),
                    index: index as u32,
                    count,
                    size,
                    sha256: sha256_hex(body),
                },
                body,
            )
        })
        .collect())
}

/// Check a received chunk's body against its (already validated) header.
pub fn check_chunk(header: &ChunkHeader, body: &[u8]) -> Result<(), BlobError> {
    if body.len() != header.body_len() {
        return Err(BlobError::ChunkLength {
            index: header.index,
            expected: header.body_len(),
            got: body.len(),
        });
    }
    if sha256_hex(body) != header.sha256 {
        return Err(BlobError::ChunkHash {
            index: header.index,
        });
    }
    Ok(())
}

/// Check an assembled blob against the hash and size it was announced with.
pub fn check_blob(blob: &[u8], sha256: &str, size: u64) -> Result<(), BlobError> {
    if blob.len() as u64 != size {
        return Err(BlobError::BlobLength {
            expected: size,
            got: blob.len() as u64,
        });
    }
    if sha256_hex(blob) != sha256 {
        return Err(BlobError::BlobHash {
            expected: sha256.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_reassemble_to_the_blob_and_each_is_checked() {
        let blob: Vec<u8> = (0..(2 * CHUNK_BYTES + 17)).map(|i| (i * 7) as u8).collect();
        let chunks = split(&blob).unwrap();
        assert_eq!(chunks.len(), 3);
        let mut assembled = Vec::new();
        for (header, body) in &chunks {
            header.validate().unwrap();
            check_chunk(header, body).unwrap();
            assembled.extend_from_slice(body);
        }
        check_blob(&assembled, &chunks[0].0.blob, blob.len() as u64).unwrap();
        let (header, body) = &chunks[1];
        let mut flipped = body.to_vec();
        flipped[5] ^= 1;
        assert_eq!(
            check_chunk(header, &flipped),
            Err(BlobError::ChunkHash { index: 1 })
        );
        assert!(matches!(
            check_chunk(&chunks[2].0, body),
            Err(BlobError::ChunkLength { index: 2, .. })
        ));
        assembled[0] ^= 1;
        assert!(matches!(
            check_blob(&assembled, &chunks[0].0.blob, blob.len() as u64),
            Err(BlobError::BlobHash { .. })
        ));
        assert_eq!(split(&[]).unwrap_err(), BlobError::Size(0));
    }
}
