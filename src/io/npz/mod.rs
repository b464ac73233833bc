//! Reading and writing NumPy `.npy` arrays and `.npz` archives.
//!
//! Only what the crate needs is supported, and everything else is refused with
//! an [`Error::Npz`] rather than a panic:
//!
//! * `.npy` format versions 1.0, 2.0 and 3.0, C order, little-endian dtypes
//!   `<f4`, `<f8`, `<i4`, `<i8`, `|u1`, `|i1` (widened to `i32`) and `|b1`;
//! * `.npz` archives whose entries are *stored* (what `np.savez` writes),
//!   including ZIP64 archives, and deflated entries (`np.savez_compressed`,
//!   inflated up to their declared size and no further). Every entry's CRC-32
//!   is checked.
//!
//! [`NpzWriter`] writes stored `.npz` archives that `numpy.load` reads, with
//! `.npy` headers laid out byte-for-byte as `np.save` lays them out, and ZIP64
//! records only where a size, offset or entry count needs them, so archives
//! over 4 GiB work.
//!
//! The archives are the [`zip`] crate's (reading, writing, ZIP64, CRC-32,
//! inflating through flate2's pure-Rust backend). The `.npy` header parser and
//! writer are this module's own; the comments marked "Why not npyz" say why.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Cursor, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use zip::result::ZipError;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipReadOptions, ZipWriter};

use crate::error::{Error, Result};

/// The magic string that opens every `.npy` file.
const NPY_MAGIC: &[u8; 6] = b"\x93NUMPY";
/// NumPy aligns the start of the array data to this many bytes.
const NPY_ALIGN: usize = 64;
/// NumPy leaves room for this many digits in the first dimension of the shape.
const NPY_GROWTH_AXIS_MAX_DIGITS: usize = 21;

fn npz_err(msg: impl Into<String>) -> Error {
    Error::Npz(msg.into())
}

/// Prefixes the message of an [`Error::Npz`] with some context; other errors
/// pass through unchanged.
fn with_context(e: Error, context: impl std::fmt::Display) -> Error {
    match e {
        Error::Npz(msg) => Error::Npz(format!("{context}: {msg}")),
        other => other,
    }
}

// ---------------------------------------------------------------------------
// Arrays
// ---------------------------------------------------------------------------

/// Element data of one array, in C (row-major) order.
#[derive(Debug, Clone, PartialEq)]
pub enum NpyData {
    /// `<f4`
    F32(Vec<f32>),
    /// `<f8`
    F64(Vec<f64>),
    /// `<i4` (and `|i1`, widened)
    I32(Vec<i32>),
    /// `<i8`
    I64(Vec<i64>),
    /// `|u1`
    U8(Vec<u8>),
    /// `|b1` (any non-zero byte reads as `true`)
    Bool(Vec<bool>),
}

impl NpyData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            NpyData::F32(v) => v.len(),
            NpyData::F64(v) => v.len(),
            NpyData::I32(v) => v.len(),
            NpyData::I64(v) => v.len(),
            NpyData::U8(v) => v.len(),
            NpyData::Bool(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The NumPy type string of this kind of data (`"<f4"`, `"|u1"`, ...).
    pub fn descr(&self) -> &'static str {
        match self {
            NpyData::F32(_) => "<f4",
            NpyData::F64(_) => "<f8",
            NpyData::I32(_) => "<i4",
            NpyData::I64(_) => "<i8",
            NpyData::U8(_) => "|u1",
            NpyData::Bool(_) => "|b1",
        }
    }
}

/// One array: its shape (empty for a 0-d array) and its elements.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// The elements, in C order; as many as the product of `shape`.
    pub data: NpyData,
}

impl NpyArray {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the array has no elements (some dimension is 0).
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The elements converted to `f32`, whatever the numeric kind: `f64` and
    /// 64-bit integers are rounded to the nearest `f32`, `bool` gives 0 or 1.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        Ok(match &self.data {
            NpyData::F32(v) => v.clone(),
            NpyData::F64(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::I32(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::I64(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::U8(v) => v.iter().map(|&x| f32::from(x)).collect(),
            NpyData::Bool(v) => v.iter().map(|&x| f32::from(u8::from(x))).collect(),
        })
    }

    /// The elements converted to `i64`: integer kinds, `u8` and `bool` (0 or
    /// 1). Floating-point data is an error, never silently truncated.
    pub fn to_i64(&self) -> Result<Vec<i64>> {
        match &self.data {
            NpyData::I32(v) => Ok(v.iter().map(|&x| i64::from(x)).collect()),
            NpyData::I64(v) => Ok(v.clone()),
            NpyData::U8(v) => Ok(v.iter().map(|&x| i64::from(x)).collect()),
            NpyData::Bool(v) => Ok(v.iter().map(|&x| i64::from(x)).collect()),
            NpyData::F32(_) | NpyData::F64(_) => Err(npz_err(format!(
                "expected integer data, found floating-point dtype '{}'",
                self.data.descr()
            ))),
        }
    }
}

// ---------------------------------------------------------------------------
// .npy reading
// ---------------------------------------------------------------------------
//
// Why not npyz (0.9.1, the maintained npy crate; ndarray-npy needs ndarray
// arrays and parses with the same py_literal): its header reader panics on a
// shape whose element count overflows `u64` (`(4294967296, 4294967296,
// 4294967296)`: "attempt to multiply with overflow" in `NpyHeader::from_parts`
// wherever overflow checks are on, as in debug builds, `cargo test` and
// Miri; without them the count wraps to 0 and the file reads as an empty
// array), and it brings pest, pest_derive, a second syn major version,
// stacker and psm (a C/assembly build) and num-bigint for a dictionary of
// three keys. Nor does it decode faster: 200 MB of `<f4` in 0.25-0.29 s
// through `into_vec`, 0.18-0.28 s read straight into the vector as below
// (medians of 5, two runs; the page faults of the new vector dominate). The
// parser below is small, bounded, and checked by the tests.

/// The element types `parse_npy` understands.
#[derive(Debug, Clone, Copy)]
enum DType {
    F32,
    F64,
    I32,
    I64,
    U8,
    I8,
    Bool,
}

impl DType {
    fn from_descr(descr: &str) -> Result<Self> {
        Ok(match descr {
            "<f4" => DType::F32,
            "<f8" => DType::F64,
            "<i4" => DType::I32,
            "<i8" => DType::I64,
            "|u1" | "<u1" => DType::U8,
            "|i1" | "<i1" => DType::I8,
            "|b1" | "<b1" => DType::Bool,
            d if d.starts_with('>') => {
                return Err(npz_err(format!("big-endian dtype '{d}' is not supported")));
            }
            d => {
                return Err(npz_err(format!(
                    "unsupported dtype '{d}' (supported: <f4, <f8, <i4, <i8, |u1, |i1, |b1)"
                )));
            }
        })
    }

    fn item_size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F64 | DType::I64 => 8,
            DType::U8 | DType::I8 | DType::Bool => 1,
        }
    }

    /// Reads `count` elements from `r` (the caller has checked that `r` holds
    /// that many bytes).
    fn read<R: Read + ?Sized>(self, r: &mut R, count: usize) -> Result<NpyData> {
        Ok(match self {
            DType::F32 => NpyData::F32(read_le(r, count)?),
            DType::F64 => NpyData::F64(read_le(r, count)?),
            DType::I32 => NpyData::I32(read_le(r, count)?),
            DType::I64 => NpyData::I64(read_le(r, count)?),
            DType::U8 => NpyData::U8(read_le(r, count)?),
            DType::I8 => NpyData::I32(
                read_le::<u8, R>(r, count)?
                    .into_iter()
                    .map(|b| i32::from(b as i8))
                    .collect(),
            ),
            DType::Bool => NpyData::Bool(read_le::<u8, R>(r, count)?.into_iter().map(|b| b != 0).collect()),
        })
    }
}

/// `read_exact`, its errors saying what was being read: the end of the data
/// is a truncated file; anything else (a CRC-32 or deflate failure inside an
/// archive, an I/O error) is reported as it comes.
fn read_exact<R: Read + ?Sized>(r: &mut R, buf: &mut [u8], what: &str) -> Result<()> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => npz_err(format!("truncated .npy file (in {what})")),
        _ => npz_err(format!("cannot read {what}: {e}")),
    })
}

/// `count` little-endian elements read straight into their vector, with no
/// byte buffer in between; swapped in place on big-endian targets.
fn read_le<T: bytemuck::Pod, R: Read + ?Sized>(r: &mut R, count: usize) -> Result<Vec<T>> {
    let mut v = vec![T::zeroed(); count];
    let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut v);
    read_exact(r, bytes, "the array data")?;
    if cfg!(target_endian = "big") {
        for x in bytes.chunks_exact_mut(std::mem::size_of::<T>()) {
            x.reverse();
        }
    }
    Ok(v)
}

/// The three keys of a `.npy` header dictionary.
struct NpyHeader {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// A value in the header dictionary.
enum HeaderValue {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
}

/// A parser for the small subset of Python literal syntax used by `.npy`
/// headers: `{'key': value, ...}` with strings, `True`/`False` and tuples of
/// non-negative integers.
struct HeaderParser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl<'a> HeaderParser<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn unexpected(&self, expected: &str) -> Error {
        match self.peek() {
            Some(c) => npz_err(format!(
                "malformed .npy header: expected {expected} at byte {}, found {:?}",
                self.pos,
                char::from(c)
            )),
            None => npz_err(format!(
                "malformed .npy header: expected {expected}, found end of header"
            )),
        }
    }

    fn expect(&mut self, c: u8) -> Result<()> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.unexpected(&format!("'{}'", char::from(c))))
        }
    }

    fn string(&mut self) -> Result<String> {
        let quote = match self.peek() {
            Some(q @ (b'\'' | b'"')) => q,
            _ => return Err(self.unexpected("a quoted string")),
        };
        self.pos += 1;
        let start = self.pos;
        loop {
            match self.peek() {
                None => return Err(npz_err("malformed .npy header: unterminated string")),
                Some(b'\\') => return Err(npz_err("malformed .npy header: escapes in strings are not supported")),
                Some(c) if c == quote => break,
                Some(_) => self.pos += 1,
            }
        }
        let text = std::str::from_utf8(&self.s[start..self.pos])
            .map_err(|_| npz_err("malformed .npy header: string is not valid UTF-8"))?
            .to_string();
        self.pos += 1;
        Ok(text)
    }

    fn integer(&mut self) -> Result<usize> {
        let start = self.pos;
        let mut value: usize = 0;
        while let Some(c @ b'0'..=b'9') = self.peek() {
            value = value
                .checked_mul(10)
                .and_then(|v| v.checked_add(usize::from(c - b'0')))
                .ok_or_else(|| npz_err("malformed .npy header: dimension too large"))?;
            self.pos += 1;
        }
        if self.pos == start {
            return Err(self.unexpected("a non-negative integer"));
        }
        // Python 2 wrote long integers with an `L` suffix.
        if self.peek() == Some(b'L') {
            self.pos += 1;
        }
        Ok(value)
    }

    fn tuple(&mut self) -> Result<Vec<usize>> {
        self.expect(b'(')?;
        let mut items = Vec::new();
        let mut trailing_comma = false;
        loop {
            self.skip_ws();
            if self.peek() == Some(b')') {
                self.pos += 1;
                break;
            }
            items.push(self.integer()?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    trailing_comma = true;
                }
                Some(b')') => {
                    self.pos += 1;
                    trailing_comma = false;
                    break;
                }
                _ => return Err(self.unexpected("',' or ')'")),
            }
        }
        // `(3)` is the integer 3 in Python, not a tuple.
        if items.len() == 1 && !trailing_comma {
            return Err(npz_err("malformed .npy header: shape is not a tuple"));
        }
        Ok(items)
    }

    fn keyword(&mut self) -> Result<bool> {
        let start = self.pos;
        while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || c == b'_') {
            self.pos += 1;
        }
        match &self.s[start..self.pos] {
            b"True" => Ok(true),
            b"False" => Ok(false),
            _ => {
                self.pos = start;
                Err(self.unexpected("True or False"))
            }
        }
    }

    fn value(&mut self) -> Result<HeaderValue> {
        match self.peek() {
            Some(b'\'' | b'"') => Ok(HeaderValue::Str(self.string()?)),
            Some(b'(') => Ok(HeaderValue::Tuple(self.tuple()?)),
            Some(b'T' | b'F') => Ok(HeaderValue::Bool(self.keyword()?)),
            Some(b'[') => Err(npz_err("structured dtypes are not supported")),
            _ => Err(self.unexpected("a value")),
        }
    }

    fn dict(mut self) -> Result<NpyHeader> {
        let mut descr = None;
        let mut fortran_order = None;
        let mut shape = None;
        self.skip_ws();
        self.expect(b'{')?;
        loop {
            self.skip_ws();
            if self.peek() == Some(b'}') {
                self.pos += 1;
                break;
            }
            let key = self.string()?;
            self.skip_ws();
            self.expect(b':')?;
            self.skip_ws();
            let value = self.value()?;
            let duplicate = match (key.as_str(), value) {
                ("descr", HeaderValue::Str(s)) => descr.replace(s).is_some(),
                ("fortran_order", HeaderValue::Bool(b)) => fortran_order.replace(b).is_some(),
                ("shape", HeaderValue::Tuple(t)) => shape.replace(t).is_some(),
                ("descr" | "fortran_order" | "shape", _) => {
                    return Err(npz_err(format!("malformed .npy header: bad value type for '{key}'")));
                }
                _ => return Err(npz_err(format!("malformed .npy header: unexpected key '{key}'"))),
            };
            if duplicate {
                return Err(npz_err(format!("malformed .npy header: duplicate key '{key}'")));
            }
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    break;
                }
                _ => return Err(self.unexpected("',' or '}'")),
            }
        }
        self.skip_ws();
        if self.pos != self.s.len() {
            return Err(self.unexpected("end of header"));
        }
        let missing = |k: &str| npz_err(format!("malformed .npy header: missing key '{k}'"));
        Ok(NpyHeader {
            descr: descr.ok_or_else(|| missing("descr"))?,
            fortran_order: fortran_order.ok_or_else(|| missing("fortran_order"))?,
            shape: shape.ok_or_else(|| missing("shape"))?,
        })
    }
}

fn shape_text(shape: &[usize]) -> String {
    match shape {
        [] => "()".to_string(),
        [d] => format!("({d},)"),
        _ => {
            let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
            format!("({})", dims.join(", "))
        }
    }
}

/// Number of elements of `shape`, or an error if it overflows `usize`.
fn element_count(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| npz_err(format!("shape {} has too many elements", shape_text(shape))))
}

/// Reads a `.npy` header from `r`, whose contents are `len` bytes in all: the
/// header and the number of bytes it took, the data's offset.
fn read_npy_header<R: Read + ?Sized>(r: &mut R, len: u64) -> Result<(NpyHeader, u64)> {
    let mut prefix = [0u8; 8];
    let got = prefix.len().min(usize::try_from(len).unwrap_or(usize::MAX));
    read_exact(r, &mut prefix[..got], "the magic string")?;
    if got < NPY_MAGIC.len() || prefix[..NPY_MAGIC.len()] != NPY_MAGIC[..] {
        return Err(npz_err("not a .npy file (bad magic string)"));
    }
    if got < prefix.len() {
        return Err(npz_err("truncated .npy file (no version)"));
    }
    let (major, minor) = (prefix[6], prefix[7]);
    let length_bytes = match (major, minor) {
        (1, 0) => 2,
        (2, 0) | (3, 0) => 4,
        _ => return Err(npz_err(format!("unsupported .npy format version {major}.{minor}"))),
    };
    let header_start = 8 + length_bytes as u64;
    if len < header_start {
        return Err(npz_err("truncated .npy file (no header length)"));
    }
    let mut length = [0u8; 4];
    read_exact(r, &mut length[..length_bytes], "the header length")?;
    let header_len = u64::from(u32::from_le_bytes(length));
    let header_end = header_start + header_len;
    if header_end > len {
        return Err(npz_err(format!(
            "truncated .npy file: header length {header_len} runs past the end of the {len} bytes"
        )));
    }
    let mut text = Vec::new();
    Read::take(&mut *r, header_len)
        .read_to_end(&mut text)
        .map_err(|e| npz_err(format!("cannot read the header: {e}")))?;
    if text.len() as u64 != header_len {
        return Err(npz_err("truncated .npy file (in the header)"));
    }
    let header = HeaderParser { s: &text, pos: 0 }.dict()?;
    Ok((header, header_end))
}

/// Reads one `.npy` file of `len` bytes from `r`.
fn read_npy<R: Read + ?Sized>(r: &mut R, len: u64) -> Result<NpyArray> {
    let (header, header_end) = read_npy_header(r, len)?;
    let dtype = DType::from_descr(&header.descr)?;
    if header.fortran_order {
        return Err(npz_err(
            "Fortran-order arrays are not supported (save a C-contiguous array)",
        ));
    }
    let count = element_count(&header.shape)?;
    let expected = count
        .checked_mul(dtype.item_size())
        .ok_or_else(|| npz_err(format!("shape {} is too large", shape_text(&header.shape))))?;
    let data_len = len - header_end;
    if data_len != expected as u64 {
        return Err(npz_err(format!(
            "data is {data_len} bytes but shape {} of '{}' needs {expected}",
            shape_text(&header.shape),
            header.descr
        )));
    }
    Ok(NpyArray {
        data: dtype.read(r, count)?,
        shape: header.shape,
    })
}

/// Parses a complete `.npy` file held in memory.
///
/// Accepts format versions 1.0, 2.0 and 3.0 with C-order data of dtype
/// `<f4`, `<f8`, `<i4`, `<i8`, `|u1` (or `<u1`), `|i1` (widened to
/// [`NpyData::I32`]) or `|b1`. The data must be exactly as long as the shape
/// and dtype say.
pub fn parse_npy(bytes: &[u8]) -> Result<NpyArray> {
    let mut r = bytes;
    read_npy(&mut r, bytes.len() as u64)
}

/// Splits a `.npy` file into its header's `(descr, shape)` and the data bytes
/// that follow, without decoding them (for object arrays, a pickle stream).
pub fn split_npy(bytes: &[u8]) -> Result<(String, Vec<usize>, &[u8])> {
    let mut r = bytes;
    let (header, _) = read_npy_header(&mut r, bytes.len() as u64)?;
    // `r` now starts where the header ends.
    Ok((header.descr, header.shape, r))
}

// ---------------------------------------------------------------------------
// .npz (zip) reading
// ---------------------------------------------------------------------------

/// Opens the archive in `reader` (`len` bytes in all) and calls `f` on each
/// entry with its name, its size and a reader of its contents, inflated if
/// need be; once `f` has read all of an entry, checks its CRC-32 (the zip
/// crate checks it when its reader reaches the end).
fn for_each_entry<R: Read + Seek>(
    reader: R,
    len: u64,
    mut f: impl FnMut(&str, u64, &mut dyn Read) -> Result<()>,
) -> Result<()> {
    let mut archive = ZipArchive::new(reader).map_err(|e| npz_err(format!("not a readable zip archive ({e})")))?;
    // Without it the zip crate keeps one of two entries of the same name
    // and does not compare an entry's local header (name, method, sizes,
    // CRC-32) with its central-directory record: neither is covered by the
    // CRC-32 of the data.
    let options = || ZipReadOptions::new().enforce_header_consistency(true);
    for index in 0..archive.len() {
        let mut entry = archive
            .by_index_with_options(index, options())
            .map_err(|e| npz_err(format!("entry #{index}: {e}")))?;
        let name = entry
            .name()
            .map_err(|e| npz_err(format!("entry #{index}: {e}")))?
            .into_owned();
        let fail = |msg: String| npz_err(format!("entry '{name}': {msg}"));
        let size = crate::io::zip_entry::checked_size(&entry, len).map_err(fail)?;
        f(&name, size, &mut entry).map_err(|e| with_context(e, format!("entry '{name}'")))?;
        match entry.read(&mut [0u8; 1]) {
            Ok(0) => {}
            Ok(_) => return Err(fail(format!("holds more than its declared {size} bytes"))),
            Err(e) => return Err(fail(format!("corrupt archive ({e})"))),
        }
    }
    Ok(())
}

fn read_arrays<R: Read + Seek>(reader: R, len: u64) -> Result<BTreeMap<String, NpyArray>> {
    let mut arrays = BTreeMap::new();
    for_each_entry(reader, len, |name, size, r| {
        let key = name.strip_suffix(".npy").unwrap_or(name);
        if arrays.contains_key(key) {
            return Err(npz_err(format!("array '{key}' appears twice in the archive")));
        }
        let array = read_npy(r, size)?;
        arrays.insert(key.to_string(), array);
        Ok(())
    })?;
    Ok(arrays)
}

/// Reads every array of an `.npz` archive held in memory, keyed by entry name
/// without its `.npy` suffix.
///
/// Entries may be stored (`np.savez`, ZIP64 or not) or deflated
/// (`np.savez_compressed`); every entry's CRC-32 is verified.
pub fn read_npz_bytes(bytes: &[u8]) -> Result<BTreeMap<String, NpyArray>> {
    read_arrays(Cursor::new(bytes), bytes.len() as u64)
}

/// The raw `.npy` bytes of every entry of an `.npz` archive (inflated and
/// CRC-checked), for arrays [`parse_npy`] does not decode (object arrays).
pub fn read_npz_raw(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
    let mut entries = Vec::new();
    for_each_entry(Cursor::new(bytes), bytes.len() as u64, |name, size, r| {
        // `size` is bounded by the archive (stored) or by the deflate ratio.
        let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        r.read_to_end(&mut data)
            .map_err(|e| npz_err(format!("corrupt archive ({e})")))?;
        if data.len() as u64 != size {
            return Err(npz_err(format!(
                "holds {} bytes, the directory says {size}",
                data.len()
            )));
        }
        entries.push((name.strip_suffix(".npy").unwrap_or(name).to_string(), data));
        Ok(())
    })?;
    Ok(entries)
}

/// Reads every array of an `.npz` file, keyed by entry name without its
/// `.npy` suffix. See [`read_npz_bytes`]. The arrays are read from the file
/// straight into their vectors, without holding the whole file in memory.
pub fn read_npz(path: &Path) -> Result<BTreeMap<String, NpyArray>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    read_arrays(BufReader::new(file), len).map_err(|e| with_context(e, path.display()))
}

// ---------------------------------------------------------------------------
// .npy writing
// ---------------------------------------------------------------------------

/// Element types the writers accept.
trait Element: bytemuck::Pod {
    const DESCR: &'static str;
    fn extend_le(self, out: &mut Vec<u8>);
}

impl Element for f32 {
    const DESCR: &'static str = "<f4";
    fn extend_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl Element for i32 {
    const DESCR: &'static str = "<i4";
    fn extend_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

/// The elements as little-endian bytes: borrowed on little-endian targets.
fn le_bytes<T: Element>(data: &[T]) -> Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        Cow::Borrowed(bytemuck::cast_slice(data))
    } else {
        let mut out = Vec::with_capacity(std::mem::size_of_val(data));
        for &x in data {
            x.extend_le(&mut out);
        }
        Cow::Owned(out)
    }
}

fn check_len(shape: &[usize], len: usize) -> Result<()> {
    let count = element_count(shape)?;
    if count != len {
        return Err(npz_err(format!(
            "shape {} holds {count} elements but {len} were given",
            shape_text(shape)
        )));
    }
    Ok(())
}

/// The `.npy` header (magic, version, length, dictionary, padding), laid out
/// exactly as `np.save` lays it out.
//
// Why not npyz: its writer lays the header out otherwise than `np.save`
// (`'shape': (3, ), }` where NumPy writes `'shape': (3,), }`, and no room for
// the first dimension to grow), so our headers would no longer match
// NumPy's byte for byte.
fn npy_header(descr: &str, shape: &[usize]) -> Result<Vec<u8>> {
    let mut dict = format!(
        "{{'descr': '{descr}', 'fortran_order': False, 'shape': {}, }}",
        shape_text(shape)
    );
    // NumPy leaves room for the first dimension to grow in place.
    if let Some(first) = shape.first() {
        let digits = first.to_string().len();
        dict.extend(std::iter::repeat_n(
            ' ',
            NPY_GROWTH_AXIS_MAX_DIGITS.saturating_sub(digits),
        ));
    }
    let with_newline = dict.len() + 1;
    let padded = |prefix: usize| {
        let pad = NPY_ALIGN - (prefix + with_newline) % NPY_ALIGN;
        (pad, with_newline + pad)
    };
    let (pad, total) = padded(10);
    let mut out;
    if let Ok(len) = u16::try_from(total) {
        out = Vec::with_capacity(10 + total);
        out.extend_from_slice(NPY_MAGIC);
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(dict.as_bytes());
        out.resize(out.len() + pad, b' ');
    } else {
        let (pad, total) = padded(12);
        let len = u32::try_from(total).map_err(|_| npz_err("shape too long for a .npy header"))?;
        out = Vec::with_capacity(12 + total);
        out.extend_from_slice(NPY_MAGIC);
        out.extend_from_slice(&[2, 0]);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(dict.as_bytes());
        out.resize(out.len() + pad, b' ');
    }
    out.push(b'\n');
    Ok(out)
}

fn npy_bytes<T: Element>(shape: &[usize], data: &[T]) -> Result<Vec<u8>> {
    check_len(shape, data.len())?;
    let mut out = npy_header(T::DESCR, shape)?;
    out.extend_from_slice(&le_bytes(data));
    Ok(out)
}

/// A complete `.npy` file (format 1.0, `<f4`, C order) holding `data` with
/// the given shape. Errors if `data.len()` is not the product of `shape`.
pub fn npy_bytes_f32(shape: &[usize], data: &[f32]) -> Result<Vec<u8>> {
    npy_bytes(shape, data)
}

/// A complete `.npy` file (format 1.0, `<i4`, C order) holding `data` with
/// the given shape. Errors if `data.len()` is not the product of `shape`.
pub fn npy_bytes_i32(shape: &[usize], data: &[i32]) -> Result<Vec<u8>> {
    npy_bytes(shape, data)
}

// ---------------------------------------------------------------------------
// .npz (zip) writing
// ---------------------------------------------------------------------------

/// Writes an uncompressed `.npz` archive (stored zip entries) that
/// `numpy.load` reads.
///
/// Each array becomes an entry `name.npy`. The writer needs [`Seek`] (a
/// file, or an [`io::Cursor`] in memory): each entry's CRC-32 and sizes are
/// written into its local header once its data is written, so the archive has
/// no data descriptors. ZIP64 records are written only where a size, offset
/// or entry count does not fit the classic fields, so archives over 4 GiB
/// work. [`finish`](NpzWriter::finish) must be called to write the central
/// directory and see its errors; an archive dropped before that is finished
/// by the zip crate on a best-effort basis.
pub struct NpzWriter<W: Write + Seek> {
    zip: ZipWriter<Fuse<W>>,
    /// Blown at the first failed write (see [`Fuse`]).
    blown: Arc<AtomicBool>,
    label: PathBuf,
    names: BTreeSet<String>,
    failed: bool,
    /// Write ZIP64 sizes even where they are not needed (for tests).
    force_zip64: bool,
}

impl NpzWriter<BufWriter<File>> {
    /// Creates (or truncates) the file at `path` and writes an archive to it.
    pub fn create(path: &Path) -> Result<Self> {
        let file = File::create(path).map_err(|e| Error::io(path, e))?;
        Ok(Self::with_path(BufWriter::new(file), path))
    }
}

impl<W: Write + Seek> NpzWriter<W> {
    /// Starts an archive written to `w`, from its current position.
    pub fn new(w: W) -> Self {
        Self::with_path(w, "<npz output>")
    }

    /// Starts an archive written to `w`, naming `path` in I/O errors.
    pub fn with_path(w: W, path: impl Into<PathBuf>) -> Self {
        let blown = Arc::new(AtomicBool::new(false));
        NpzWriter {
            zip: ZipWriter::new(Fuse {
                inner: w,
                blown: blown.clone(),
                at: 0,
            }),
            blown,
            label: path.into(),
            names: BTreeSet::new(),
            failed: false,
            force_zip64: false,
        }
    }

    /// Adds an `f32` array as entry `name.npy`. Errors if `data.len()` is not
    /// the product of `shape`, if `name` was already added, or on I/O failure.
    pub fn add_f32(&mut self, name: &str, shape: &[usize], data: &[f32]) -> Result<()> {
        self.add(name, shape, data)
    }

    /// Adds an `i32` array as entry `name.npy`. Errors if `data.len()` is not
    /// the product of `shape`, if `name` was already added, or on I/O failure.
    pub fn add_i32(&mut self, name: &str, shape: &[usize], data: &[i32]) -> Result<()> {
        self.add(name, shape, data)
    }

    /// Writes the central directory and end records, flushes, and returns the
    /// underlying writer.
    pub fn finish(self) -> Result<W> {
        self.check_usable()?;
        let NpzWriter { zip, label, .. } = self;
        let mut w = zip.finish().map_err(|e| zip_write_err(&label, e))?.inner;
        w.flush().map_err(|e| Error::io(&label, e))?;
        Ok(w)
    }

    fn check_usable(&self) -> Result<()> {
        if self.failed {
            return Err(npz_err(format!(
                "{}: an earlier write failed, the archive is incomplete",
                self.label.display()
            )));
        }
        Ok(())
    }

    fn add<T: Element>(&mut self, name: &str, shape: &[usize], data: &[T]) -> Result<()> {
        check_len(shape, data.len()).map_err(|e| with_context(e, format!("array '{name}'")))?;
        let header = npy_header(T::DESCR, shape)?;
        let payload = le_bytes(data);
        self.add_entry(&format!("{name}.npy"), &[&header, &payload])
    }

    /// Writes one stored entry whose contents are the concatenation of `parts`.
    fn add_entry(&mut self, file_name: &str, parts: &[&[u8]]) -> Result<()> {
        self.check_usable()?;
        if u16::try_from(file_name.len()).is_err() {
            return Err(npz_err(format!("entry name '{file_name}' is too long")));
        }
        if self.names.contains(file_name) {
            return Err(npz_err(format!("entry '{file_name}' added twice")));
        }
        let size = parts
            .iter()
            .try_fold(0u64, |n, part| n.checked_add(part.len() as u64))
            .ok_or_else(|| npz_err("entry too large"))?;
        let options = SimpleFileOptions::default()
            .compression_method(CompressionMethod::Stored)
            // ZIP64 sizes only for an entry of 4 GiB or more (offsets past
            // 4 GiB get theirs in the central directory by themselves).
            .large_file(self.force_zip64 || size >= u64::from(u32::MAX));
        if let Err(e) = self.zip.start_file(file_name, options) {
            if matches!(e, ZipError::Io(_)) {
                self.fail();
            }
            return Err(zip_write_err(&self.label, e));
        }
        for part in parts {
            if let Err(e) = self.zip.write_all(part) {
                self.fail();
                return Err(Error::io(&self.label, e));
            }
        }
        self.names.insert(file_name.to_string());
        Ok(())
    }
}

impl<W: Write + Seek> NpzWriter<W> {
    /// A write failed: the archive is broken, and the writer under it
    /// takes nothing more.
    fn fail(&mut self) {
        self.failed = true;
        self.blown.store(true, Ordering::Relaxed);
    }
}

/// The writer under the zip crate's. Once a write failed (a full disk) the
/// fuse is blown: it then takes whatever it is given and writes nothing,
/// so the zip crate's best-effort finish when an unfinished archive is
/// dropped neither writes into the broken file nor prints its own
/// "ZipWriter::drop: failed to finalize archive" to standard error (the
/// caller already has the error).
struct Fuse<W> {
    inner: W,
    blown: Arc<AtomicBool>,
    /// The position the zip crate believes in once blown.
    at: u64,
}

impl<W: Write> Write for Fuse<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.blown.load(Ordering::Relaxed) {
            self.at += buf.len() as u64;
            return Ok(buf.len());
        }
        let n = self.inner.write(buf)?;
        self.at += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.blown.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.inner.flush()
    }
}

impl<W: Seek> Seek for Fuse<W> {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        if !self.blown.load(Ordering::Relaxed) {
            self.at = self.inner.seek(pos)?;
            return Ok(self.at);
        }
        self.at = match pos {
            io::SeekFrom::Start(n) => n,
            io::SeekFrom::Current(d) | io::SeekFrom::End(d) => self.at.saturating_add_signed(d),
        };
        Ok(self.at)
    }
}

fn zip_write_err(label: &Path, e: ZipError) -> Error {
    match e {
        ZipError::Io(e) => Error::io(label, e),
        other => npz_err(format!("{}: {other}", label.display())),
    }
}

#[cfg(test)]
mod tests;
