//! The encodings under a TF checkpoint: CRC-32C (masked as TF stores it),
//! varints, Snappy blocks, half floats, the protobuf wire format.

use super::*;

// ---------------------------------------------------------------------------
// CRC-32C (Castagnoli) through the `crc32c` crate (SSE 4.2 / ARM CRC
// instructions where the CPU has them); TF's masking is ours.

pub(super) const CRC_MASK_DELTA: u32 = 0xa282_ead8;

/// CRC-32C (Castagnoli) of `data`, as TensorFlow and LevelDB compute it.
pub fn crc32c(data: &[u8]) -> u32 {
    ::crc32c::crc32c(data)
}

/// Extends `crc` (the CRC-32C of some bytes) with `data`:
/// `crc32c_extend(crc32c(a), b) == crc32c(a ++ b)`.
pub fn crc32c_extend(crc: u32, data: &[u8]) -> u32 {
    ::crc32c::crc32c_append(crc, data)
}

/// The masked form of a CRC that TensorFlow and LevelDB store:
/// `((crc >> 15) | (crc << 17)) + 0xa282ead8`.
pub fn mask_crc(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(CRC_MASK_DELTA)
}

/// Inverse of [`mask_crc`].
pub fn unmask_crc(masked: u32) -> u32 {
    masked.wrapping_sub(CRC_MASK_DELTA).rotate_left(15)
}

// ---------------------------------------------------------------------------
// Varints, little-endian words, Snappy, half floats.

/// Decodes a base-128 varint (at most 10 bytes, at most 64 bits) at `*pos`
/// and advances `*pos`; `None` when truncated or overlong.
pub(super) fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..10 {
        let b = *buf.get(*pos)?;
        *pos += 1;
        if i == 9 && b > 1 {
            return None; // more than 64 bits
        }
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// A varint that must fit in 32 bits (LevelDB block entry lengths).
pub(super) fn varint32(buf: &[u8], pos: &mut usize) -> Option<u32> {
    let start = *pos;
    let v = varint(buf, pos)?;
    if *pos - start > 5 {
        return None;
    }
    u32::try_from(v).ok()
}

/// `n` bytes at `*pos`, advancing `*pos`; `None` when fewer are left.
pub(super) fn take<'a>(buf: &'a [u8], pos: &mut usize, n: usize) -> Option<&'a [u8]> {
    let end = pos.checked_add(n)?;
    let s = buf.get(*pos..end)?;
    *pos = end;
    Some(s)
}

pub(super) fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Largest expansion of Snappy: a 3-byte copy yields at most 64 bytes.
pub(super) const SNAPPY_MAX_RATIO: u64 = 22;

/// Decompresses a raw (unframed) Snappy block with the `snap` crate, after
/// checking that the declared length is one compressed bytes can give (so a
/// corrupt header cannot make us allocate gigabytes).
pub(super) fn snappy_decompress(src: &[u8]) -> Msg<Vec<u8>> {
    let n = snap::raw::decompress_len(src).map_err(|e| format!("Snappy block: {e}"))? as u64;
    let bound = (src.len() as u64).saturating_mul(SNAPPY_MAX_RATIO);
    if n > bound {
        return Err(format!(
            "Snappy block claims {n} bytes from {} compressed bytes: corrupt",
            src.len()
        ));
    }
    snap::raw::Decoder::new()
        .decompress_vec(src)
        .map_err(|e| format!("Snappy block: {e}"))
}

/// IEEE 754 half precision (TensorFlow `DT_HALF`) to `f32`, exactly.
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: m * 2^-24, exact in f32.
            let v = m as f32 * f32::from_bits(0x3380_0000);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, m) => sign | 0x7fc0_0000 | (m << 13),
        (e, m) => sign | ((e + 112) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// bfloat16 (TensorFlow `DT_BFLOAT16`: the top half of an `f32`) to `f32`.
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits(u32::from(b) << 16)
}

// ---------------------------------------------------------------------------
// Protocol buffers: just the wire format.

#[derive(Debug, Clone, Copy)]
pub(super) enum Field<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

impl<'a> Field<'a> {
    pub(super) fn varint(self, what: &str) -> Msg<u64> {
        match self {
            Field::Varint(v) => Ok(v),
            _ => Err(format!("{what}: wrong wire type, expected a varint")),
        }
    }
    pub(super) fn bytes(self, what: &str) -> Msg<&'a [u8]> {
        match self {
            Field::Bytes(b) => Ok(b),
            _ => Err(format!("{what}: wrong wire type, expected a length-delimited field")),
        }
    }
}

/// Calls `visit(field_number, value)` for every field of a message; unknown
/// fields are the caller's to skip.
pub(super) fn parse_proto<'a>(buf: &'a [u8], mut visit: impl FnMut(u64, Field<'a>) -> Msg<()>) -> Msg<()> {
    let mut pos = 0;
    while pos < buf.len() {
        let key = varint(buf, &mut pos).ok_or("truncated field tag")?;
        let (num, wire) = (key >> 3, key & 7);
        if num == 0 {
            return Err("field number 0".into());
        }
        let field = match wire {
            0 => Field::Varint(varint(buf, &mut pos).ok_or_else(|| format!("field {num}: truncated varint"))?),
            1 => {
                take(buf, &mut pos, 8).ok_or_else(|| format!("field {num}: truncated fixed64"))?;
                Field::Fixed64
            }
            2 => {
                let len = varint(buf, &mut pos).ok_or_else(|| format!("field {num}: truncated length"))?;
                let len = usize::try_from(len)
                    .ok()
                    .filter(|&l| l <= buf.len() - pos)
                    .ok_or_else(|| format!("field {num}: length {len} runs past the end of the message"))?;
                Field::Bytes(take(buf, &mut pos, len).ok_or("unreachable")?)
            }
            5 => Field::Fixed32(le_u32(
                take(buf, &mut pos, 4).ok_or_else(|| format!("field {num}: truncated fixed32"))?,
            )),
            w => return Err(format!("field {num}: unsupported wire type {w}")),
        };
        visit(num, field)?;
    }
    Ok(())
}

/// A proto `int64`/`int32` field as a signed value (negative numbers are
/// sign-extended to 64 bits on the wire).
pub(super) fn as_i64(v: u64) -> i64 {
    v as i64
}
