//! LZ4 block compression of stored values (feature `compression`): `0x02`,
//! the uncompressed length (u32 LE), then the block.

use super::{CodecError, LZ4_MARKER};

/// Largest decompressed value accepted, whatever a length header claims.
pub(crate) const MAX_DECOMPRESSED: usize = 512 * 1024 * 1024;
/// LZ4's best case is about 255:1; a header claiming more is corrupt.
const MAX_LZ4_RATIO: usize = 255;

/// `encoded` compressed when it is at least `threshold` bytes long and
/// compression saves space; else `encoded` as it is.
pub(super) fn compress(encoded: Vec<u8>, threshold: usize) -> Vec<u8> {
    if encoded.len() < threshold || encoded.len() > MAX_DECOMPRESSED {
        return encoded;
    }
    let Ok(len) = u32::try_from(encoded.len()) else {
        return encoded;
    };
    let block = lz4_flex::block::compress(&encoded);
    if block.len() + 5 >= encoded.len() {
        return encoded;
    }
    let mut sealed = Vec::with_capacity(block.len() + 5);
    sealed.push(LZ4_MARKER);
    sealed.extend_from_slice(&len.to_le_bytes());
    sealed.extend_from_slice(&block);
    sealed
}

/// The value compressed in `rest` (what follows the marker byte).
///
/// # Errors
///
/// When it is truncated, corrupt or claims an implausible size.
pub(super) fn decompress(rest: &[u8]) -> Result<Vec<u8>, CodecError> {
    let Some((len_bytes, block)) = rest.split_first_chunk::<4>() else {
        return Err(CodecError::new("compressed value is truncated"));
    };
    let len = usize::try_from(u32::from_le_bytes(*len_bytes))
        .map_err(|_| CodecError::new("compressed value is too large"))?;
    if len == 0 || len > MAX_DECOMPRESSED || len > block.len().saturating_mul(MAX_LZ4_RATIO) + 16 {
        return Err(CodecError::new(
            "compressed value claims an implausible size",
        ));
    }
    let mut out = vec![0u8; len];
    match lz4_flex::block::decompress_into(block, &mut out) {
        Ok(written) if written == len => Ok(out),
        Ok(_) => Err(CodecError::new(
            "compressed value is shorter than its header says",
        )),
        Err(e) => Err(CodecError::with_source("compressed value is corrupt", e)),
    }
}
