//! TensorFlow V2 checkpoints (tensor bundles), and ELMo weights from them.
//!
//! A V2 checkpoint with prefix `P` is `P.index` plus the data shards
//! `P.data-SSSSS-of-NNNNN`. The index is a LevelDB-style table (an SSTable):
//! a 48-byte footer with the handles of the metaindex and index blocks and a
//! magic number; an index block whose values are the handles of the data
//! blocks; data blocks of prefix-compressed key/value entries with restart
//! points. Every block is followed by a one-byte compression type (0 raw,
//! 1 Snappy) and the masked CRC-32C of the block and that byte. The value under
//! the empty key is a `BundleHeaderProto`; every other key is a variable name
//! and its value a `BundleEntryProto` saying where the variable's bytes lie
//! (shard, offset, size) and their masked CRC-32C.
//!
//! Everything is decoded by hand: no TensorFlow, no protobuf code generation,
//! no C library. Every checksum is verified, every length is checked against
//! the bytes that are really there before anything is allocated, and every
//! problem is an [`Error`] that names the file and, where there is one, the
//! variable.
//!
//! [`open_checkpoint`] finds and opens a checkpoint; [`Checkpoint`] lists its
//! variables and reads them as `f32` (float32, float64, float16 and bfloat16
//! are read). [`elmo_from_checkpoint`] maps the variables of a bilm-tf graph or
//! a TF Hub ELMo module (`bilm/...`, `aggregation/...`) to the converted model
//! layout, and [`convert_tf_checkpoint`] writes them as a model file.

use crate::error::{Error, Result};
use crate::io::model_file::{NamedTensor, expected_tensors};
use crate::options::{Activation, N_CHARACTERS, Options};
use serde_json::json;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Internal results: a message that the caller wraps into an [`Error`]
/// naming the file and the variable.
type Msg<T> = std::result::Result<T, String>;

// ---------------------------------------------------------------------------
// CRC-32C (Castagnoli), software slice-by-8.

const CRC32C_POLY: u32 = 0x82f6_3b78;
const CRC_MASK_DELTA: u32 = 0xa282_ead8;

const fn crc_tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ CRC32C_POLY } else { c >> 1 };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut i = 0;
    while i < 256 {
        let mut j = 1;
        while j < 8 {
            let prev = t[j - 1][i];
            t[j][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            j += 1;
        }
        i += 1;
    }
    t
}

static CRC_TABLES: [[u32; 256]; 8] = crc_tables();

/// CRC-32C (Castagnoli) of `data`, as TensorFlow and LevelDB compute it.
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c_extend(0, data)
}

/// Extends `crc` (the CRC-32C of some bytes) with `data`:
/// `crc32c_extend(crc32c(a), b) == crc32c(a ++ b)`.
pub fn crc32c_extend(crc: u32, data: &[u8]) -> u32 {
    let t = &CRC_TABLES;
    let mut c = !crc;
    let mut chunks = data.chunks_exact(8);
    for ch in &mut chunks {
        let lo = u32::from_le_bytes([ch[0], ch[1], ch[2], ch[3]]) ^ c;
        let hi = u32::from_le_bytes([ch[4], ch[5], ch[6], ch[7]]);
        c = t[7][(lo & 0xff) as usize]
            ^ t[6][((lo >> 8) & 0xff) as usize]
            ^ t[5][((lo >> 16) & 0xff) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][(hi & 0xff) as usize]
            ^ t[2][((hi >> 8) & 0xff) as usize]
            ^ t[1][((hi >> 16) & 0xff) as usize]
            ^ t[0][(hi >> 24) as usize];
    }
    for &b in chunks.remainder() {
        c = t[0][((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
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
fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
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
fn varint32(buf: &[u8], pos: &mut usize) -> Option<u32> {
    let start = *pos;
    let v = varint(buf, pos)?;
    if *pos - start > 5 {
        return None;
    }
    u32::try_from(v).ok()
}

/// `n` bytes at `*pos`, advancing `*pos`; `None` when fewer are left.
fn take<'a>(buf: &'a [u8], pos: &mut usize, n: usize) -> Option<&'a [u8]> {
    let end = pos.checked_add(n)?;
    let s = buf.get(*pos..end)?;
    *pos = end;
    Some(s)
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Largest expansion of Snappy: a 3-byte copy yields at most 64 bytes.
const SNAPPY_MAX_RATIO: u64 = 22;

/// Decompresses a raw (unframed) Snappy block.
fn snappy_decompress(src: &[u8]) -> Msg<Vec<u8>> {
    let mut pos = 0;
    let n = varint(src, &mut pos).ok_or("Snappy block: bad length header")?;
    let bound = (src.len() as u64).saturating_mul(SNAPPY_MAX_RATIO);
    if n > bound || n > u32::MAX as u64 {
        return Err(format!(
            "Snappy block claims {n} bytes from {} compressed bytes: corrupt",
            src.len()
        ));
    }
    let n = n as usize;
    let mut out: Vec<u8> = Vec::with_capacity(n);
    let short = || "Snappy block: truncated element".to_string();
    while pos < src.len() {
        let tag = src[pos];
        pos += 1;
        let (len, offset) = match tag & 3 {
            0 => {
                let mut len = (tag >> 2) as usize;
                if len >= 60 {
                    let extra = len - 59;
                    let b = take(src, &mut pos, extra).ok_or_else(short)?;
                    len = b.iter().rev().fold(0usize, |a, &x| (a << 8) | x as usize);
                }
                let len = len + 1;
                let lit = take(src, &mut pos, len).ok_or_else(short)?;
                if out.len() + len > n {
                    return Err(format!("Snappy block: output exceeds the declared {n} bytes"));
                }
                out.extend_from_slice(lit);
                continue;
            }
            1 => {
                let b = take(src, &mut pos, 1).ok_or_else(short)?;
                (
                    4 + ((tag >> 2) & 7) as usize,
                    (((tag >> 5) as usize) << 8) | b[0] as usize,
                )
            }
            2 => {
                let b = take(src, &mut pos, 2).ok_or_else(short)?;
                ((tag >> 2) as usize + 1, u16::from_le_bytes([b[0], b[1]]) as usize)
            }
            _ => {
                let b = take(src, &mut pos, 4).ok_or_else(short)?;
                ((tag >> 2) as usize + 1, le_u32(b) as usize)
            }
        };
        if offset == 0 || offset > out.len() {
            return Err(format!(
                "Snappy block: copy offset {offset} with only {} bytes decoded",
                out.len()
            ));
        }
        if out.len() + len > n {
            return Err(format!("Snappy block: output exceeds the declared {n} bytes"));
        }
        let start = out.len() - offset;
        if offset >= len {
            out.extend_from_within(start..start + len);
        } else {
            for i in 0..len {
                out.push(out[start + i]);
            }
        }
    }
    if out.len() != n {
        return Err(format!("Snappy block: {} bytes decoded, {n} declared", out.len()));
    }
    Ok(out)
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
enum Field<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

impl<'a> Field<'a> {
    fn varint(self, what: &str) -> Msg<u64> {
        match self {
            Field::Varint(v) => Ok(v),
            _ => Err(format!("{what}: wrong wire type, expected a varint")),
        }
    }
    fn bytes(self, what: &str) -> Msg<&'a [u8]> {
        match self {
            Field::Bytes(b) => Ok(b),
            _ => Err(format!("{what}: wrong wire type, expected a length-delimited field")),
        }
    }
}

/// Calls `visit(field_number, value)` for every field of a message; unknown
/// fields are the caller's to skip.
fn parse_proto<'a>(buf: &'a [u8], mut visit: impl FnMut(u64, Field<'a>) -> Msg<()>) -> Msg<()> {
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
fn as_i64(v: u64) -> i64 {
    v as i64
}

// ---------------------------------------------------------------------------
// The table (SSTable) of the `.index` file.

const TABLE_MAGIC: u64 = 0xdb47_7524_8b80_fb57;
const FOOTER_LEN: usize = 48;
const BLOCK_TRAILER_LEN: usize = 5;
/// Largest `.index` file read (real ones are a few KiB; 1 MiB holds many
/// thousands of variables).
const MAX_INDEX_BYTES: u64 = 256 << 20;

/// A key and its value inside a block.
type Entry<'a> = (Vec<u8>, &'a [u8]);
/// A key and its value, copied out of its block.
type OwnedEntry = (Vec<u8>, Vec<u8>);

#[derive(Debug, Clone, Copy)]
struct BlockHandle {
    offset: u64,
    size: u64,
}

fn block_handle(buf: &[u8], pos: &mut usize) -> Option<BlockHandle> {
    Some(BlockHandle {
        offset: varint(buf, pos)?,
        size: varint(buf, pos)?,
    })
}

/// The contents of the block at `h`, its checksum verified, decompressed.
fn read_block<'a>(file: &'a [u8], h: BlockHandle, what: &str) -> Msg<Cow<'a, [u8]>> {
    let end = h
        .offset
        .checked_add(h.size)
        .and_then(|e| e.checked_add(BLOCK_TRAILER_LEN as u64))
        .filter(|&e| e <= file.len() as u64)
        .ok_or_else(|| {
            format!(
                "{what} block (offset {}, size {}) runs past the end of the file ({} bytes): truncated or corrupt",
                h.offset,
                h.size,
                file.len()
            )
        })?;
    let (start, end) = (h.offset as usize, end as usize);
    let contents = &file[start..end - BLOCK_TRAILER_LEN];
    let kind = file[end - BLOCK_TRAILER_LEN];
    let stored = unmask_crc(le_u32(&file[end - 4..end]));
    let actual = crc32c_extend(crc32c(contents), &[kind]);
    if stored != actual {
        return Err(format!(
            "checksum mismatch in the {what} block at offset {} (stored {stored:#010x}, computed {actual:#010x}): \
             the index file is corrupt",
            h.offset
        ));
    }
    match kind {
        0 => Ok(Cow::Borrowed(contents)),
        1 => snappy_decompress(contents)
            .map(Cow::Owned)
            .map_err(|e| format!("{what} block at offset {}: {e}", h.offset)),
        k => Err(format!(
            "{what} block at offset {}: unknown compression type {k}",
            h.offset
        )),
    }
}

/// The key/value entries of a block, keys expanded from their shared prefixes.
fn block_entries(block: &[u8]) -> Msg<Vec<Entry<'_>>> {
    if block.len() < 4 {
        return Err(format!("block of {} bytes is too short", block.len()));
    }
    let n_restarts = le_u32(&block[block.len() - 4..]) as u64;
    let trailer = n_restarts
        .checked_mul(4)
        .and_then(|t| t.checked_add(4))
        .filter(|&t| t <= block.len() as u64)
        .ok_or_else(|| {
            format!(
                "block claims {n_restarts} restart points, more than fit in its {} bytes",
                block.len()
            )
        })?;
    let limit = block.len() - trailer as usize;
    let data = &block[..limit];
    let mut pos = 0;
    let mut key: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    while pos < limit {
        let at = pos;
        let bad = |what: &str| format!("entry at block offset {at}: {what}");
        let shared = varint32(data, &mut pos).ok_or_else(|| bad("bad key prefix length"))? as usize;
        let non_shared = varint32(data, &mut pos).ok_or_else(|| bad("bad key length"))? as usize;
        let value_len = varint32(data, &mut pos).ok_or_else(|| bad("bad value length"))? as usize;
        if shared > key.len() {
            return Err(bad(&format!(
                "shares {shared} bytes with a previous key of {} bytes",
                key.len()
            )));
        }
        let suffix = take(data, &mut pos, non_shared).ok_or_else(|| bad("key runs past the end of the block"))?;
        let value = take(data, &mut pos, value_len).ok_or_else(|| bad("value runs past the end of the block"))?;
        key.truncate(shared);
        key.extend_from_slice(suffix);
        out.push((key.clone(), value));
    }
    Ok(out)
}

/// Every key/value pair of a table file, in key order.
fn read_table(file: &[u8]) -> Msg<Vec<OwnedEntry>> {
    if file.len() < FOOTER_LEN {
        return Err(format!(
            "{} bytes: too short for a checkpoint index (a {FOOTER_LEN}-byte footer at least): truncated",
            file.len()
        ));
    }
    let footer = &file[file.len() - FOOTER_LEN..];
    let magic = u64::from_le_bytes([
        footer[40], footer[41], footer[42], footer[43], footer[44], footer[45], footer[46], footer[47],
    ]);
    if magic != TABLE_MAGIC {
        return Err(format!(
            "bad magic number {magic:#018x} at the end: not a TensorFlow V2 checkpoint index, or truncated"
        ));
    }
    let mut pos = 0;
    let handles = &footer[..40];
    let _metaindex = block_handle(handles, &mut pos).ok_or("footer: bad metaindex block handle")?;
    let index = block_handle(handles, &mut pos).ok_or("footer: bad index block handle")?;
    let index_block = read_block(file, index, "index")?;
    let mut out: Vec<OwnedEntry> = Vec::new();
    for (_, value) in block_entries(&index_block).map_err(|e| format!("index block: {e}"))? {
        let mut p = 0;
        let h = block_handle(value, &mut p).ok_or("index block: bad data block handle")?;
        let block = read_block(file, h, "data")?;
        for (k, v) in block_entries(&block).map_err(|e| format!("data block at offset {}: {e}", h.offset))? {
            if let Some((last, _)) = out.last()
                && *last >= k
            {
                return Err(format!(
                    "keys out of order ('{}' after '{}'): corrupt",
                    String::from_utf8_lossy(&k),
                    String::from_utf8_lossy(last)
                ));
            }
            out.push((k, v.to_vec()));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Bundle entries.

/// A TensorFlow element type (`DataType` enum of `types.proto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    /// `DT_FLOAT` (1).
    Float32,
    /// `DT_DOUBLE` (2).
    Float64,
    /// `DT_HALF` (19), IEEE half precision.
    Float16,
    /// `DT_BFLOAT16` (14).
    BFloat16,
    /// `DT_INT32` (3).
    Int32,
    /// `DT_INT64` (9).
    Int64,
    /// Any other type, by its `DataType` number (listed, not readable).
    Other(i64),
}

impl DType {
    /// The type of TensorFlow's `DataType` number `code`.
    pub fn from_tf(code: i64) -> Self {
        match code {
            1 => DType::Float32,
            2 => DType::Float64,
            19 => DType::Float16,
            14 => DType::BFloat16,
            3 => DType::Int32,
            9 => DType::Int64,
            c => DType::Other(c),
        }
    }

    /// TensorFlow's `DataType` number.
    pub fn tf_code(self) -> i64 {
        match self {
            DType::Float32 => 1,
            DType::Float64 => 2,
            DType::Float16 => 19,
            DType::BFloat16 => 14,
            DType::Int32 => 3,
            DType::Int64 => 9,
            DType::Other(c) => c,
        }
    }

    /// The numpy-style name (`float32`, `bfloat16`, ...), `unknown` for a
    /// number TensorFlow does not define.
    pub fn name(self) -> &'static str {
        match self.tf_code() {
            1 => "float32",
            2 => "float64",
            3 => "int32",
            4 => "uint8",
            5 => "int16",
            6 => "int8",
            7 => "string",
            8 => "complex64",
            9 => "int64",
            10 => "bool",
            11 => "qint8",
            12 => "quint8",
            13 => "qint32",
            14 => "bfloat16",
            15 => "qint16",
            16 => "quint16",
            17 => "uint16",
            18 => "complex128",
            19 => "float16",
            20 => "resource",
            21 => "variant",
            22 => "uint32",
            23 => "uint64",
            _ => "unknown",
        }
    }

    /// Bytes per element of the types [`Checkpoint::read_f32`] reads.
    fn float_size(self) -> Option<usize> {
        match self {
            DType::Float32 => Some(4),
            DType::Float64 => Some(8),
            DType::Float16 | DType::BFloat16 => Some(2),
            _ => None,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            "unknown" => write!(f, "dtype {}", self.tf_code()),
            n => f.write_str(n),
        }
    }
}

/// One variable of a checkpoint, as its index describes it (no data read).
#[derive(Debug, Clone, PartialEq)]
pub struct Variable {
    /// Full name, e.g. `bilm/CNN/W_cnn_0`.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Dimensions; empty for a scalar.
    pub shape: Vec<usize>,
    /// Which data shard holds the bytes.
    pub shard_id: u32,
    /// Byte offset in the shard.
    pub offset: u64,
    /// Byte length in the shard.
    pub size: u64,
    /// Masked CRC-32C of the bytes, as stored (see [`unmask_crc`]).
    pub crc32c: u32,
    /// Number of slices of a partitioned variable; 0 for a whole one.
    pub slices: usize,
}

impl Variable {
    /// Whether the variable is partitioned (saved as slices); such variables
    /// are listed but cannot be read.
    pub fn is_partitioned(&self) -> bool {
        self.slices > 0
    }

    /// Number of elements (1 for a scalar), `None` on overflow.
    pub fn numel(&self) -> Option<usize> {
        self.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
    }
}

fn parse_shape(buf: &[u8]) -> Msg<Vec<usize>> {
    let mut shape = Vec::new();
    parse_proto(buf, |num, f| {
        match num {
            2 => {
                let mut size = 0i64;
                parse_proto(f.bytes("shape.dim")?, |n, f| {
                    if n == 1 {
                        size = as_i64(f.varint("shape.dim.size")?);
                    }
                    Ok(())
                })?;
                let d = usize::try_from(size).map_err(|_| format!("dimension {size} is not a size"))?;
                shape.push(d);
            }
            3 if f.varint("shape.unknown_rank")? != 0 => return Err("shape has unknown rank".into()),
            _ => {}
        }
        Ok(())
    })?;
    Ok(shape)
}

fn parse_entry(name: &str, buf: &[u8]) -> Msg<Variable> {
    let mut v = Variable {
        name: name.to_string(),
        dtype: DType::Other(0),
        shape: Vec::new(),
        shard_id: 0,
        offset: 0,
        size: 0,
        crc32c: 0,
        slices: 0,
    };
    parse_proto(buf, |num, f| {
        match num {
            1 => v.dtype = DType::from_tf(as_i64(f.varint("dtype")?)),
            2 => v.shape = parse_shape(f.bytes("shape")?)?,
            3 => {
                let s = as_i64(f.varint("shard_id")?);
                v.shard_id = u32::try_from(s).map_err(|_| format!("shard_id {s} is invalid"))?;
            }
            4 => {
                let o = as_i64(f.varint("offset")?);
                v.offset = u64::try_from(o).map_err(|_| format!("offset {o} is negative"))?;
            }
            5 => {
                let s = as_i64(f.varint("size")?);
                v.size = u64::try_from(s).map_err(|_| format!("size {s} is negative"))?;
            }
            6 => match f {
                Field::Fixed32(c) => v.crc32c = c,
                _ => return Err("crc32c: wrong wire type, expected fixed32".into()),
            },
            7 => {
                f.bytes("slices")?;
                v.slices += 1;
            }
            _ => {}
        }
        Ok(())
    })?;
    Ok(v)
}

/// `path` with `suffix` appended to its last component (`P` -> `P.index`).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = OsString::from(path.as_os_str());
    s.push(suffix);
    PathBuf::from(s)
}

// ---------------------------------------------------------------------------
// The checkpoint.

/// An opened TensorFlow V2 checkpoint: the parsed index, and the shards read
/// on demand.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    prefix: PathBuf,
    index_path: PathBuf,
    num_shards: u32,
    variables: Vec<Variable>,
}

impl Checkpoint {
    /// Opens the checkpoint with prefix `prefix` (`prefix.index` and
    /// `prefix.data-*`). [`open_checkpoint`] also accepts folders.
    ///
    /// Reads and verifies the whole index; data shards are only opened by
    /// [`read_f32`](Self::read_f32).
    pub fn open(prefix: &Path) -> Result<Self> {
        let index_path = with_suffix(prefix, ".index");
        let meta = std::fs::metadata(&index_path).map_err(|e| Error::io(&index_path, e))?;
        if meta.len() > MAX_INDEX_BYTES {
            return Err(Error::weights(
                &index_path,
                format!(
                    "{} bytes: too large for a checkpoint index (at most {MAX_INDEX_BYTES})",
                    meta.len()
                ),
            ));
        }
        let bytes = std::fs::read(&index_path).map_err(|e| Error::io(&index_path, e))?;
        Self::from_index_bytes(prefix, &bytes)
    }

    /// Like [`open`](Self::open) with the index's bytes given (data shards
    /// are still read from `prefix.data-*`); used by the fuzz target.
    pub fn from_index_bytes(prefix: &Path, bytes: &[u8]) -> Result<Self> {
        let index_path = with_suffix(prefix, ".index");
        let entries = read_table(bytes).map_err(|m| Error::weights(&index_path, m))?;
        let mut num_shards: Option<u32> = None;
        let mut variables = Vec::new();
        for (key, value) in entries {
            if key.is_empty() {
                num_shards = Some(parse_header(&value).map_err(|m| {
                    Error::weights(
                        &index_path,
                        format!("bundle header (the entry under the empty key): {m}"),
                    )
                })?);
                continue;
            }
            if key[0] == 0 {
                continue; // a slice of a partitioned variable, under an encoded key
            }
            let name = String::from_utf8(key).map_err(|e| {
                Error::weights(
                    &index_path,
                    format!("variable name '{}' is not UTF-8", String::from_utf8_lossy(e.as_bytes())),
                )
            })?;
            let v = parse_entry(&name, &value)
                .map_err(|m| Error::tensor(&index_path, &name, format!("corrupt entry: {m}")))?;
            variables.push(v);
        }
        let num_shards = num_shards.ok_or_else(|| {
            Error::weights(
                &index_path,
                "no bundle header (the entry under the empty key): not a TensorFlow V2 checkpoint index",
            )
        })?;
        if let Some(v) = variables
            .iter()
            .find(|v| v.shard_id >= num_shards && !v.is_partitioned())
        {
            return Err(Error::tensor(
                &index_path,
                &v.name,
                format!(
                    "shard {} does not exist: the header says {num_shards} shards",
                    v.shard_id
                ),
            ));
        }
        Ok(Checkpoint {
            prefix: prefix.to_path_buf(),
            index_path,
            num_shards,
            variables,
        })
    }

    /// The checkpoint prefix (the paths of its files without `.index` / `.data-*`).
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// The `.index` file.
    pub fn index_path(&self) -> &Path {
        &self.index_path
    }

    /// Number of data shards.
    pub fn num_shards(&self) -> u32 {
        self.num_shards
    }

    /// The data shard file `shard`: `PREFIX.data-SSSSS-of-NNNNN`.
    pub fn shard_path(&self, shard: u32) -> PathBuf {
        with_suffix(&self.prefix, &format!(".data-{shard:05}-of-{:05}", self.num_shards))
    }

    /// Every variable, sorted by name.
    pub fn variables(&self) -> &[Variable] {
        &self.variables
    }

    /// The variable called `name`, if any.
    pub fn variable(&self, name: &str) -> Option<&Variable> {
        self.variables
            .binary_search_by(|v| v.name.as_bytes().cmp(name.as_bytes()))
            .ok()
            .map(|i| &self.variables[i])
    }

    /// Reads the variable `name` as `f32` values, row-major.
    ///
    /// float32 is read as is; float64 is rounded, float16 and bfloat16 are
    /// widened (exactly). The bytes' checksum is verified. Errors name the
    /// file and the variable: unknown name, unsupported dtype, partitioned
    /// variable, missing or truncated shard, checksum mismatch.
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let v = self
            .variable(name)
            .ok_or_else(|| Error::tensor(&self.index_path, name, "no such variable in the checkpoint"))?;
        self.read_variable_f32(v)
    }

    /// Like [`read_f32`](Self::read_f32), for a variable of [`variables`](Self::variables).
    pub fn read_variable_f32(&self, v: &Variable) -> Result<Vec<f32>> {
        let bytes = self.read_bytes(v)?;
        Ok(match v.dtype {
            DType::Float32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            DType::Float64 => bytes
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
                .collect(),
            DType::Float16 => bytes
                .chunks_exact(2)
                .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
                .collect(),
            DType::BFloat16 => bytes
                .chunks_exact(2)
                .map(|b| bf16_to_f32(u16::from_le_bytes([b[0], b[1]])))
                .collect(),
            other => {
                return Err(Error::tensor(
                    &self.index_path,
                    &v.name,
                    format!("dtype {other} cannot be read as floats"),
                ));
            }
        })
    }

    /// The raw bytes of a float variable, size and checksum verified.
    fn read_bytes(&self, v: &Variable) -> Result<Vec<u8>> {
        let name = &v.name;
        if v.is_partitioned() {
            return Err(Error::tensor(
                &self.index_path,
                name,
                format!(
                    "partitioned variable (saved as {} slices): not supported; save it unpartitioned",
                    v.slices
                ),
            ));
        }
        let elem = v.dtype.float_size().ok_or_else(|| {
            Error::tensor(
                &self.index_path,
                name,
                format!(
                    "dtype {} cannot be read as floats: only float32, float64, float16 and bfloat16",
                    v.dtype
                ),
            )
        })?;
        let expected = v.numel().and_then(|n| n.checked_mul(elem));
        if expected.map(|e| e as u64) != Some(v.size) {
            return Err(Error::tensor(
                &self.index_path,
                name,
                format!(
                    "the index says {} bytes, but shape {:?} of {} needs {}",
                    v.size,
                    v.shape,
                    v.dtype,
                    expected
                        .map(|e| e.to_string())
                        .unwrap_or_else(|| "more than fit in memory".into())
                ),
            ));
        }
        let shard = self.shard_path(v.shard_id);
        let terr = |m: String| Error::tensor(&shard, name, m);
        let mut file = std::fs::File::open(&shard).map_err(|e| terr(format!("cannot open the data shard: {e}")))?;
        let len = file
            .metadata()
            .map_err(|e| terr(format!("cannot read the data shard: {e}")))?
            .len();
        if v.offset.checked_add(v.size).is_none_or(|end| end > len) {
            return Err(terr(format!(
                "bytes {}..{} lie past the end of the data shard ({len} bytes): truncated or not this checkpoint's shard",
                v.offset,
                v.offset.saturating_add(v.size)
            )));
        }
        let mut buf = vec![0u8; v.size as usize];
        file.seek(SeekFrom::Start(v.offset))
            .and_then(|_| file.read_exact(&mut buf))
            .map_err(|e| terr(format!("cannot read the data shard: {e}")))?;
        let actual = crc32c(&buf);
        let stored = unmask_crc(v.crc32c);
        if actual != stored {
            return Err(terr(format!(
                "checksum mismatch (stored {stored:#010x}, computed {actual:#010x}): the data shard is corrupt"
            )));
        }
        Ok(buf)
    }
}

fn parse_header(buf: &[u8]) -> Msg<u32> {
    let mut num_shards = 0i64;
    let mut endianness = 0u64;
    parse_proto(buf, |num, f| {
        match num {
            1 => num_shards = as_i64(f.varint("num_shards")?),
            2 => endianness = f.varint("endianness")?,
            _ => {}
        }
        Ok(())
    })?;
    if endianness != 0 {
        return Err("big-endian checkpoints are not supported".into());
    }
    u32::try_from(num_shards).map_err(|_| format!("num_shards {num_shards} is invalid"))
}

/// Finds the checkpoint prefix that `path` designates:
///
/// - a prefix itself (`PATH.index` exists), or one of its files
///   (`PATH` ends in `.index` or `.data-SSSSS-of-NNNNN`);
/// - a folder with a `checkpoint` file (`model_checkpoint_path: "..."`,
///   relative to the folder or absolute);
/// - a TF Hub module or SavedModel folder (`variables/variables.index`), or
///   its `variables` folder (`variables.index`).
pub fn checkpoint_prefix(path: &Path) -> Result<PathBuf> {
    if path.is_dir() {
        let state = path.join("checkpoint");
        if state.is_file() {
            return prefix_from_state(&state, path);
        }
        for p in [path.join("variables").join("variables"), path.join("variables")] {
            if with_suffix(&p, ".index").is_file() {
                return Ok(p);
            }
        }
        return Err(Error::weights(
            path,
            "this folder holds no TensorFlow checkpoint: expected a `checkpoint` file, \
             variables/variables.index (a TF Hub module or SavedModel) or variables.index",
        ));
    }
    if with_suffix(path, ".index").is_file() {
        return Ok(path.to_path_buf());
    }
    if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
        let stem = name
            .strip_suffix(".index")
            .or_else(|| name.rfind(".data-").map(|i| &name[..i]));
        if let Some(stem) = stem.filter(|s| !s.is_empty()) {
            let p = path.with_file_name(stem);
            if with_suffix(&p, ".index").is_file() {
                return Ok(p);
            }
        }
    }
    Err(Error::weights(
        path,
        "no TensorFlow checkpoint here: expected a checkpoint prefix (PATH.index must exist), \
         a folder with a `checkpoint` file, or a TF Hub module folder (variables/variables.index)",
    ))
}

/// The prefix named by a `checkpoint` state file (a text proto).
fn prefix_from_state(state: &Path, dir: &Path) -> Result<PathBuf> {
    let text = std::fs::read_to_string(state).map_err(|e| Error::io(state, e))?;
    let value = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("model_checkpoint_path:"))
        .and_then(|v| unquote(v.trim()))
        .ok_or_else(|| Error::weights(state, "no `model_checkpoint_path: \"...\"` line"))?;
    let named = PathBuf::from(&value);
    let prefix = if named.is_absolute() {
        named.clone()
    } else {
        dir.join(&named)
    };
    if with_suffix(&prefix, ".index").is_file() {
        return Ok(prefix);
    }
    // Checkpoints moved from another machine keep absolute paths: look beside
    // the state file.
    if let Some(base) = named.file_name() {
        let local = dir.join(base);
        if with_suffix(&local, ".index").is_file() {
            return Ok(local);
        }
    }
    Err(Error::weights(
        state,
        format!(
            "model_checkpoint_path \"{value}\" names {}, but {} does not exist",
            prefix.display(),
            with_suffix(&prefix, ".index").display()
        ),
    ))
}

/// The contents of a text-proto string literal (`"..."` or `'...'`, C escapes).
fn unquote(s: &str) -> Option<String> {
    let q = s.chars().next().filter(|&c| c == '"' || c == '\'')?;
    let mut out: Vec<u8> = Vec::new();
    let mut it = s[1..].bytes();
    while let Some(b) = it.next() {
        match b {
            _ if b == q as u8 => return String::from_utf8(out).ok(),
            b'\\' => {
                let e = it.next()?;
                match e {
                    b'n' => out.push(b'\n'),
                    b't' => out.push(b'\t'),
                    b'r' => out.push(b'\r'),
                    b'0'..=b'7' => {
                        let mut v = u32::from(e - b'0');
                        for _ in 0..2 {
                            let d = it.clone().next().filter(|d| (b'0'..=b'7').contains(d));
                            if let Some(d) = d {
                                it.next();
                                v = v * 8 + u32::from(d - b'0');
                            }
                        }
                        out.push(u8::try_from(v).ok()?);
                    }
                    other => out.push(other),
                }
            }
            _ => out.push(b),
        }
    }
    None
}

/// Opens the checkpoint that `path` designates (see [`checkpoint_prefix`]).
pub fn open_checkpoint(path: &Path) -> Result<Checkpoint> {
    Checkpoint::open(&checkpoint_prefix(path)?)
}

// ---------------------------------------------------------------------------
// ELMo from a checkpoint.

/// Presets accepted by [`elmo_from_checkpoint`]: the settings a checkpoint
/// does not record. `tfhub-elmo-2` is the original ELMo (TF Hub
/// `google/elmo/2`): cell_clip 3, proj_clip 3, skip connections,
/// 50 characters per token, relu.
pub const PRESETS: &[&str] = &["tfhub-elmo-2"];

/// The options a checkpoint's shapes cannot tell.
#[derive(Debug, Clone, Copy)]
struct Unrecorded {
    cell_clip: Option<f32>,
    proj_clip: Option<f32>,
    use_skip_connections: bool,
    max_characters_per_token: usize,
    activation: Activation,
}

fn preset_settings(name: &str) -> Result<Unrecorded> {
    match name {
        "tfhub-elmo-2" => Ok(Unrecorded {
            cell_clip: Some(3.0),
            proj_clip: Some(3.0),
            use_skip_connections: true,
            max_characters_per_token: 50,
            activation: Activation::Relu,
        }),
        other => Err(Error::Options(format!(
            "unknown preset '{other}': known presets are {}",
            PRESETS.join(", ")
        ))),
    }
}

/// The checkpoint name (without any `module/` prefix) of our tensor `name`.
fn checkpoint_name(name: &str) -> String {
    if let Some(rest) = name.strip_prefix("RNN_")
        && let Some((head, leaf)) = rest.rsplit_once("/LSTMCell/")
    {
        let leaf = match leaf {
            "W_0" => "kernel",
            "B" => "bias",
            "W_P_0" => "projection/kernel",
            other => other,
        };
        return format!("bilm/RNN_{head}/rnn/lstm_cell/{leaf}");
    }
    format!("bilm/{name}")
}

fn is_index(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Whether `name` (without `module/`) is an ELMo weight of some structure:
/// such a variable left unused means the options describe another model.
fn is_elmo_weight(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("bilm/") else {
        return false;
    };
    if rest == "char_embed" || rest == "CNN_proj/W_proj" || rest == "CNN_proj/b_proj" {
        return true;
    }
    if let Some(i) = rest
        .strip_prefix("CNN/W_cnn_")
        .or_else(|| rest.strip_prefix("CNN/b_cnn_"))
    {
        return is_index(i);
    }
    if let Some((h, leaf)) = rest.strip_prefix("CNN_high_").and_then(|r| r.split_once('/')) {
        return is_index(h) && ["W_carry", "b_carry", "W_transform", "b_transform"].contains(&leaf);
    }
    if let Some((d, r)) = rest.strip_prefix("RNN_").and_then(|r| r.split_once('/'))
        && let Some((l, leaf)) = r
            .strip_prefix("RNN/MultiRNNCell/Cell")
            .and_then(|r| r.split_once("/rnn/lstm_cell/"))
    {
        return is_index(d) && is_index(l) && ["kernel", "bias", "projection/kernel"].contains(&leaf);
    }
    false
}

/// The ELMo variables of a checkpoint by name without `module/`.
struct ElmoVars<'a> {
    ckpt: &'a Checkpoint,
    /// `module/` when the checkpoint's names carry it, else empty.
    prefix: &'static str,
    by_name: BTreeMap<&'a str, &'a Variable>,
}

impl<'a> ElmoVars<'a> {
    fn get(&self, name: &str) -> Option<&'a Variable> {
        self.by_name.get(name).copied()
    }

    /// The variable `name`, which must be there.
    fn need(&self, name: &str) -> Result<&'a Variable> {
        self.get(name).ok_or_else(|| {
            Error::tensor(
                self.ckpt.index_path(),
                format!("{}{name}", self.prefix),
                "missing from the checkpoint",
            )
        })
    }

    /// The shape of `name`, which must have `rank` positive dimensions.
    fn dims(&self, name: &str, rank: usize) -> Result<&'a [usize]> {
        let v = self.need(name)?;
        if v.shape.len() != rank || v.shape.contains(&0) {
            return Err(Error::tensor(
                self.ckpt.index_path(),
                &v.name,
                format!("shape {:?}: expected {rank} positive dimensions", v.shape),
            ));
        }
        Ok(&v.shape)
    }

    /// Options from the shapes, plus the settings they cannot tell.
    fn infer(&self, s: Unrecorded) -> Result<Options> {
        let e = self.dims("bilm/char_embed", 2)?[1];
        let mut filters = Vec::new();
        while self.get(&format!("bilm/CNN/W_cnn_{}", filters.len())).is_some() {
            let name = format!("bilm/CNN/W_cnn_{}", filters.len());
            let d = self.dims(&name, 4)?;
            if d[0] != 1 {
                return Err(Error::tensor(
                    self.ckpt.index_path(),
                    &self.need(&name)?.name,
                    format!("shape {d:?}: expected (1, width, embedding dim, count)"),
                ));
            }
            filters.push([d[1], d[3]]);
        }
        if filters.is_empty() {
            self.need("bilm/CNN/W_cnn_0")?;
        }
        let mut n_highway = 0;
        while self.get(&format!("bilm/CNN_high_{n_highway}/W_carry")).is_some() {
            n_highway += 1;
        }
        let cell = |l: usize, leaf: &str| format!("bilm/RNN_0/RNN/MultiRNNCell/Cell{l}/rnn/lstm_cell/{leaf}");
        let proj = self.dims(&cell(0, "projection/kernel"), 2)?;
        let (dim, projection_dim) = (proj[0], proj[1]);
        let mut n_layers = 0;
        while self.get(&cell(n_layers, "kernel")).is_some() {
            n_layers += 1;
        }
        let v = json!({
            "lstm": {
                "dim": dim,
                "projection_dim": projection_dim,
                "n_layers": n_layers.max(1),
                "cell_clip": s.cell_clip,
                "proj_clip": s.proj_clip,
                "use_skip_connections": s.use_skip_connections,
            },
            "char_cnn": {
                "embedding": {"dim": e},
                "filters": filters,
                "n_highway": n_highway,
                "n_characters": N_CHARACTERS,
                "max_characters_per_token": s.max_characters_per_token,
                "activation": s.activation.name(),
            }
        });
        Options::from_value(&v).map_err(|err| {
            Error::weights(
                self.ckpt.index_path(),
                format!("the options its shapes give are not valid: {err}"),
            )
        })
    }

    /// Reads `v`, checking that every value is finite.
    fn read(&self, v: &Variable) -> Result<Vec<f32>> {
        let data = self.ckpt.read_variable_f32(v)?;
        if let Some(i) = data.iter().position(|x| !x.is_finite()) {
            return Err(Error::tensor(
                self.ckpt.shard_path(v.shard_id),
                &v.name,
                format!("holds a non-finite value ({}) at flat index {i}", data[i]),
            ));
        }
        Ok(data)
    }
}

/// Maps the ELMo variables of a checkpoint to the converted model layout.
///
/// Accepted names are those of bilm-tf's graph, which the TF Hub ELMo
/// module's checkpoint uses, optionally under `module/`:
///
/// | checkpoint | model file |
/// | --- | --- |
/// | `bilm/char_embed` (262 rows, row 0 the padding row) | `char_embed` (kept as is) |
/// | `bilm/CNN/W_cnn_i`, `bilm/CNN/b_cnn_i` | `CNN/W_cnn_i`, `CNN/b_cnn_i` |
/// | `bilm/CNN_high_i/{W,b}_{carry,transform}` | `CNN_high_i/...` |
/// | `bilm/CNN_proj/{W,b}_proj` | `CNN_proj/...` |
/// | `bilm/RNN_d/RNN/MultiRNNCell/Celll/rnn/lstm_cell/kernel`, `bias`, `projection/kernel` | `RNN_d/RNN/MultiRNNCell/Celll/LSTMCell/W_0`, `B`, `W_P_0` |
/// | `aggregation/weights` (n_layers + 1), `aggregation/scaling` (scalar or (1,)) | same names, scaling with shape (1,) |
///
/// The options: when `options` is given, they are used as they are and every
/// variable must have the shape they require. Otherwise the structure
/// (embedding dim, filters, highway layers, projection and cell dims, number
/// of layers) is inferred from the shapes and the settings no shape records
/// (cell_clip, proj_clip, use_skip_connections, max_characters_per_token,
/// activation) come from `preset` (one of [`PRESETS`]); with neither, the
/// error says what is missing. A given `preset` is checked but not used when
/// `options` is given.
///
/// Returns the options and the tensors in [`expected_tensors`] order, then
/// `aggregation/weights` and `aggregation/scaling` when the checkpoint has
/// them. Other variables (bilm-tf's LSTM state variables `bilm/Variable*`,
/// anything not under `bilm/`) are ignored, but an ELMo weight the options do
/// not use is an error. Errors name the file and the variable.
pub fn elmo_from_checkpoint(
    ckpt: &Checkpoint,
    options: Option<Options>,
    preset: Option<&str>,
) -> Result<(Options, Vec<NamedTensor>)> {
    let index = ckpt.index_path();
    let mut by_name: BTreeMap<&str, &Variable> = BTreeMap::new();
    let mut prefix = "";
    for v in ckpt.variables() {
        let short = match v.name.strip_prefix("module/") {
            Some(s) => {
                if s.starts_with("bilm/") {
                    prefix = "module/";
                }
                s
            }
            None => &v.name,
        };
        if by_name.insert(short, v).is_some() {
            return Err(Error::tensor(
                index,
                &v.name,
                format!("the checkpoint has both '{short}' and 'module/{short}'"),
            ));
        }
    }
    if !by_name.keys().any(|k| k.starts_with("bilm/")) {
        let names: Vec<&str> = ckpt.variables().iter().take(5).map(|v| v.name.as_str()).collect();
        return Err(Error::weights(
            index,
            format!(
                "not an ELMo checkpoint: no bilm/ variables (it has {} variables{}{})",
                ckpt.variables().len(),
                if names.is_empty() { "" } else { ": " },
                names.join(", ")
                    + if ckpt.variables().len() > names.len() {
                        ", ..."
                    } else {
                        ""
                    }
            ),
        ));
    }
    let vars = ElmoVars { ckpt, prefix, by_name };
    let preset = preset.map(preset_settings).transpose()?;
    let options = match (options, preset) {
        (Some(o), _) => o,
        (None, Some(s)) => vars.infer(s)?,
        (None, None) => {
            return Err(Error::Options(format!(
                "{}: a checkpoint does not record cell_clip, proj_clip, use_skip_connections, \
                 max_characters_per_token and activation: give them with --options options.json, or \
                 --preset tfhub-elmo-2 for the original ELMo's settings",
                index.display()
            )));
        }
    };

    let expected = expected_tensors(&options);
    let mut used: HashSet<&str> = HashSet::new();
    let mut out: Vec<NamedTensor> = Vec::with_capacity(expected.len() + 2);
    for (name, shape) in expected {
        let ck = checkpoint_name(&name);
        let v = vars.get(&ck).ok_or_else(|| {
            Error::tensor(
                index,
                format!("{prefix}{ck}"),
                format!("missing from the checkpoint (the options need it with shape {shape:?})"),
            )
        })?;
        if v.shape != shape {
            return Err(Error::tensor(
                index,
                &v.name,
                format!("shape {:?} does not match the options, which need {shape:?}", v.shape),
            ));
        }
        used.insert(v.name.as_str());
        let data = vars.read(v)?;
        out.push((name, shape, data));
    }
    for (short, v) in &vars.by_name {
        if is_elmo_weight(short) && !used.contains(v.name.as_str()) {
            return Err(Error::tensor(
                index,
                &v.name,
                "not used by the options: the checkpoint holds a model of another structure \
                 (filters, highway layers or LSTM layers differ)",
            ));
        }
    }
    let k = options.n_output_layers();
    if let Some(v) = vars.get("aggregation/weights") {
        if v.shape != [k] {
            return Err(Error::tensor(
                index,
                &v.name,
                format!("shape {:?}: expected [{k}], one weight per biLM layer", v.shape),
            ));
        }
        out.push(("aggregation/weights".into(), vec![k], vars.read(v)?));
    }
    if let Some(v) = vars.get("aggregation/scaling") {
        if !(v.shape.is_empty() || v.shape == [1]) {
            return Err(Error::tensor(
                index,
                &v.name,
                format!("shape {:?}: expected a scalar or [1]", v.shape),
            ));
        }
        out.push(("aggregation/scaling".into(), vec![1], vars.read(v)?));
    }
    Ok((options, out))
}

/// `elmo convert` for TensorFlow checkpoints: opens the checkpoint at `path`
/// (see [`open_checkpoint`]), maps it with [`elmo_from_checkpoint`] (options
/// from the `options.json` file `options` if given, else inferred with
/// `preset`) and writes the model file `out`.
pub fn convert_tf_checkpoint(path: &Path, options: Option<&Path>, preset: Option<&str>, out: &Path) -> Result<()> {
    convert_tf_checkpoint_with(path, options, preset, out, crate::io::convert::WeightDtype::F32)
}

/// [`convert_tf_checkpoint`] with a choice of weight dtype for the LSTM matrices.
pub fn convert_tf_checkpoint_with(
    path: &Path,
    options: Option<&Path>,
    preset: Option<&str>,
    out: &Path,
    dtype: crate::io::convert::WeightDtype,
) -> Result<()> {
    let options = options.map(Options::from_file).transpose()?;
    let ckpt = open_checkpoint(path)?;
    let (options, tensors) = elmo_from_checkpoint(&ckpt, options, preset)?;
    crate::io::convert::write_converted(out, &options, &tensors, dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints() {
        let mut p = 0;
        assert_eq!(varint(&[0x00], &mut p), Some(0));
        p = 0;
        assert_eq!(varint(&[0x96, 0x01], &mut p), Some(150));
        assert_eq!(p, 2);
        p = 0;
        let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(varint(&max, &mut p), Some(u64::MAX));
        // Overflowing the 64 bits, too long, truncated.
        p = 0;
        assert_eq!(
            varint(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02], &mut p),
            None
        );
        p = 0;
        assert_eq!(varint(&[0x80; 11], &mut p), None);
        p = 0;
        assert_eq!(varint(&[0x80, 0x80], &mut p), None);
        p = 0;
        assert_eq!(varint(&[], &mut p), None);
        // 32-bit varints: at most 5 bytes and 32 bits.
        p = 0;
        assert_eq!(varint32(&[0xff, 0xff, 0xff, 0xff, 0x0f], &mut p), Some(u32::MAX));
        p = 0;
        assert_eq!(varint32(&[0xff, 0xff, 0xff, 0xff, 0x1f], &mut p), None);
        p = 0;
        assert_eq!(varint32(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x00], &mut p), None);
    }

    #[test]
    fn crc32c_known_values() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(b""), 0);
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa); // RFC 3720 B.4
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62a8_ab43);
        let inc: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&inc), 0x46dd_794e);
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        for split in [0, 1, 7, 8, 9, 500, 1000] {
            assert_eq!(crc32c_extend(crc32c(&data[..split]), &data[split..]), crc32c(&data));
        }
        // Byte at a time equals slice-by-8.
        let slow = data.iter().fold(0, |c, &b| crc32c_extend(c, &[b]));
        assert_eq!(slow, crc32c(&data));
    }

    #[test]
    fn crc_masking() {
        let c = crc32c(b"foo");
        assert_ne!(mask_crc(c), c);
        assert_ne!(mask_crc(mask_crc(c)), c);
        assert_eq!(unmask_crc(mask_crc(c)), c);
        assert_eq!(unmask_crc(unmask_crc(mask_crc(mask_crc(c)))), c);
        assert_eq!(mask_crc(0), 0xa282_ead8);
        assert_eq!(mask_crc(0x8000), 0xa282_ead9);
        assert_eq!(mask_crc(1), 0xa284_ead8);
    }

    #[test]
    fn snappy() {
        // Literal "abc", then a 1-byte-offset copy of 4 bytes at offset 3
        // (overlapping): "abcabca".
        let s = [7, 0b0000_1000, b'a', b'b', b'c', 0b0000_0001, 3];
        assert_eq!(snappy_decompress(&s).unwrap(), b"abcabca");
        // 2-byte offset copy of 10 bytes at offset 1 (a run).
        let s = [11, 0, b'x', (9 << 2) | 2, 1, 0];
        assert_eq!(snappy_decompress(&s).unwrap(), b"xxxxxxxxxxx");
        // 4-byte offset copy.
        let s = [4, (1 << 2), b'h', b'i', (1 << 2) | 3, 2, 0, 0, 0];
        assert_eq!(snappy_decompress(&s).unwrap(), b"hihi");
        // A long literal with a one-byte length (60 + 1 bytes of length).
        let mut s = vec![100, 60 << 2, 99];
        s.extend(std::iter::repeat_n(b'z', 100));
        assert_eq!(snappy_decompress(&s).unwrap(), vec![b'z'; 100]);
        // Empty.
        assert_eq!(snappy_decompress(&[0]).unwrap(), b"");
        // Errors: offset 0, offset before the start, too long, too short,
        // truncated literal, absurd declared length.
        assert!(snappy_decompress(&[4, 0, b'a', 0b0000_0001, 0]).is_err());
        assert!(snappy_decompress(&[5, 0, b'a', 0b0000_0001, 2]).is_err());
        assert!(snappy_decompress(&[1, 4, b'a', b'b']).is_err());
        assert!(snappy_decompress(&[3, 4, b'a', b'b']).is_err());
        assert!(snappy_decompress(&[3, 8, b'a', b'b']).is_err());
        assert!(snappy_decompress(&[0xff, 0xff, 0xff, 0xff, 0x0f, 0]).is_err());
        assert!(snappy_decompress(&[]).is_err());
    }

    #[test]
    fn half_and_bfloat16() {
        for (h, f) in [
            (0x3c00u16, 1.0f32),
            (0xc000, -2.0),
            (0x3800, 0.5),
            (0x7bff, 65504.0),
            (0x0400, 6.103_515_6e-5),
            (0x0001, 5.960_464_5e-8),
            (0x03ff, 6.097_555e-5),
            (0x8001, -5.960_464_5e-8),
            (0x3555, 0.333_251_95),
        ] {
            assert_eq!(f16_to_f32(h), f, "{h:#06x}");
        }
        assert_eq!(f16_to_f32(0x0000).to_bits(), 0);
        assert_eq!(f16_to_f32(0x8000).to_bits(), 0x8000_0000);
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert_eq!(f16_to_f32(0xfc00), f32::NEG_INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
        assert!(f16_to_f32(0x7c01).is_nan());
        // Strictly increasing over all positive finite halves.
        let mut prev = -1.0f32;
        for h in 0..0x7c00u16 {
            let v = f16_to_f32(h);
            assert!(v > prev, "{h:#06x}");
            prev = v;
        }
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
        assert_eq!(bf16_to_f32(0xc040), -3.0);
        assert_eq!(bf16_to_f32(0x3eaa), f32::from_bits(0x3eaa_0000));
        assert_eq!(bf16_to_f32(0x7f80), f32::INFINITY);
    }

    #[test]
    fn blocks_with_shared_prefixes() {
        // "apple" -> "1", "apply" (shares 4) -> "22", "b" -> "" ; restarts [0].
        let mut b = vec![0, 5, 1];
        b.extend_from_slice(b"apple1");
        b.extend_from_slice(&[4, 1, 2]);
        b.extend_from_slice(b"y22");
        b.extend_from_slice(&[0, 1, 0]);
        b.extend_from_slice(b"b");
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        let e = block_entries(&b).unwrap();
        let got: Vec<(&[u8], &[u8])> = e.iter().map(|(k, v)| (k.as_slice(), *v)).collect();
        assert_eq!(got, vec![(&b"apple"[..], &b"1"[..]), (b"apply", b"22"), (b"b", b"")]);
        // Shared prefix longer than the previous key.
        let mut bad = vec![3, 1, 0, b'x'];
        bad.extend_from_slice(&0u32.to_le_bytes());
        bad.extend_from_slice(&1u32.to_le_bytes());
        assert!(block_entries(&bad).unwrap_err().contains("shares"));
        // A huge value length is refused, not allocated.
        let mut bad = vec![0, 1, 0xff, 0xff, 0xff, 0xff, 0x0f, b'x'];
        bad.extend_from_slice(&0u32.to_le_bytes());
        bad.extend_from_slice(&1u32.to_le_bytes());
        assert!(block_entries(&bad).unwrap_err().contains("past the end"));
        // Too many restart points.
        assert!(block_entries(&[0, 0, 0, 0, 9, 0, 0, 0]).is_err());
        assert!(block_entries(&[0, 0]).is_err());
    }

    #[test]
    fn bundle_entry_proto() {
        // dtype 1, shape [2, 3], shard 0, offset 300, size 24, crc 0xdeadbeef, 2 slices.
        let mut e = vec![0x08, 1, 0x12, 8, 0x12, 2, 0x08, 2, 0x12, 2, 0x08, 3];
        e.extend_from_slice(&[0x20, 0xac, 0x02, 0x28, 24, 0x35]);
        e.extend_from_slice(&0xdead_beefu32.to_le_bytes());
        e.extend_from_slice(&[0x3a, 0, 0x3a, 0]);
        let v = parse_entry("x", &e).unwrap();
        assert_eq!(v.dtype, DType::Float32);
        assert_eq!(v.shape, vec![2, 3]);
        assert_eq!((v.offset, v.size, v.crc32c, v.slices), (300, 24, 0xdead_beef, 2));
        assert!(v.is_partitioned());
        // Unknown fields are skipped; a length past the end is an error.
        assert!(parse_entry("x", &[0x50, 7, 0x08, 19]).is_ok_and(|v| v.dtype == DType::Float16));
        assert!(parse_entry("x", &[0x12, 0x7f, 0]).is_err());
        assert!(parse_entry("x", &[0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]).is_err());
        // Negative dimension, wrong wire type.
        let neg = [
            0x12, 13, 0x12, 11, 0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ];
        assert!(parse_entry("x", &neg).unwrap_err().contains("not a size"));
        assert!(parse_entry("x", &[0x0a, 0]).is_err());
        assert_eq!(DType::from_tf(14).to_string(), "bfloat16");
        assert_eq!(DType::from_tf(7).to_string(), "string");
        assert_eq!(DType::from_tf(999).to_string(), "dtype 999");
    }

    #[test]
    fn names() {
        assert_eq!(checkpoint_name("char_embed"), "bilm/char_embed");
        assert_eq!(checkpoint_name("CNN_high_1/W_carry"), "bilm/CNN_high_1/W_carry");
        assert_eq!(
            checkpoint_name(&crate::io::model_file::lstm_name(1, 0, "W_P_0")),
            "bilm/RNN_1/RNN/MultiRNNCell/Cell0/rnn/lstm_cell/projection/kernel"
        );
        assert_eq!(
            checkpoint_name(&crate::io::model_file::lstm_name(0, 1, "B")),
            "bilm/RNN_0/RNN/MultiRNNCell/Cell1/rnn/lstm_cell/bias"
        );
        assert!(is_elmo_weight("bilm/CNN/W_cnn_12"));
        assert!(is_elmo_weight("bilm/CNN_high_3/b_transform"));
        assert!(is_elmo_weight(
            "bilm/RNN_1/RNN/MultiRNNCell/Cell2/rnn/lstm_cell/projection/kernel"
        ));
        assert!(!is_elmo_weight("bilm/Variable_3"));
        assert!(!is_elmo_weight("bilm/CNN/W_cnn_0/Adagrad"));
        assert!(!is_elmo_weight("aggregation/weights"));
        assert_eq!(unquote(r#""a\"b\\c\101""#).as_deref(), Some("a\"b\\cA"));
        assert_eq!(unquote("'x/y'").as_deref(), Some("x/y"));
        assert_eq!(unquote("\"open"), None);
    }
}
