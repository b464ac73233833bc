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
/// Deflate cannot expand data more than 1032 times (a 258-byte match coded in
/// two bits): an entry declaring more is refused before anything is
/// allocated for it.
const MAX_DEFLATE_RATIO: u64 = 1032;

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
        let (size, compressed) = (entry.size(), entry.compressed_size());
        let most = match entry.compression() {
            CompressionMethod::Stored if compressed != size => {
                return Err(fail(format!(
                    "stored entry has compressed size {compressed} but uncompressed size {size}"
                )));
            }
            CompressionMethod::Stored => compressed,
            CompressionMethod::Deflated => compressed.saturating_mul(MAX_DEFLATE_RATIO),
            other => {
                return Err(fail(format!(
                    "compression method {other:?} not supported (only stored or deflated entries)"
                )));
            }
        };
        if size > most {
            return Err(fail(format!(
                "declares {size} bytes, more than its {compressed} compressed bytes can hold"
            )));
        }
        // The zip crate does not compare the entry's extent with the archive's.
        if entry
            .data_start()
            .and_then(|start| start.checked_add(compressed))
            .is_none_or(|end| end > len)
        {
            return Err(fail("data runs past the end of the archive (truncated?)".into()));
        }
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
    zip: ZipWriter<W>,
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
        NpzWriter {
            zip: ZipWriter::new(w),
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
        let mut w = zip.finish().map_err(|e| zip_write_err(&label, e))?;
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
            self.failed |= matches!(e, ZipError::Io(_));
            return Err(zip_write_err(&self.label, e));
        }
        for part in parts {
            if let Err(e) = self.zip.write_all(part) {
                self.failed = true;
                return Err(Error::io(&self.label, e));
            }
        }
        self.names.insert(file_name.to_string());
        Ok(())
    }
}

fn zip_write_err(label: &Path, e: ZipError) -> Error {
    match e {
        ZipError::Io(e) => Error::io(label, e),
        other => npz_err(format!("{}: {other}", label.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_array(shape: &[usize]) -> Vec<f32> {
        let n: usize = shape.iter().product();
        (0..n).map(|i| i as f32 * 0.5 - 3.25).collect()
    }

    fn i32_array(shape: &[usize]) -> Vec<i32> {
        let n: usize = shape.iter().product();
        (0..n).map(|i| i as i32 * 7 - 11).collect()
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    const SHAPES: &[&[usize]] = &[&[], &[5], &[2, 3, 4], &[0], &[2, 0, 3]];

    /// The signatures of the ZIP64 end records and, with its 16-byte size, of
    /// a local header's ZIP64 extra field.
    const SIG_ZIP64_EOCD: &[u8] = b"PK\x06\x06";
    const SIG_ZIP64_LOCATOR: &[u8] = b"PK\x06\x07";
    const ZIP64_LOCAL_EXTRA: &[u8] = &[0x01, 0x00, 0x10, 0x00];

    fn writer() -> NpzWriter<Cursor<Vec<u8>>> {
        NpzWriter::new(Cursor::new(Vec::new()))
    }

    fn finish(w: NpzWriter<Cursor<Vec<u8>>>) -> Vec<u8> {
        w.finish().unwrap().into_inner()
    }

    fn sample_archive(force_zip64: bool) -> Vec<u8> {
        let mut w = writer();
        w.force_zip64 = force_zip64;
        for (i, shape) in SHAPES.iter().enumerate() {
            w.add_f32(&format!("f{i}"), shape, &f32_array(shape)).unwrap();
            w.add_i32(&format!("i{i}"), shape, &i32_array(shape)).unwrap();
        }
        finish(w)
    }

    fn check_sample(arrays: &BTreeMap<String, NpyArray>) {
        assert_eq!(arrays.len(), 2 * SHAPES.len());
        for (i, shape) in SHAPES.iter().enumerate() {
            let f = &arrays[&format!("f{i}")];
            assert_eq!(f.shape, shape.to_vec());
            assert_eq!(f.data, NpyData::F32(f32_array(shape)));
            let n = &arrays[&format!("i{i}")];
            assert_eq!(n.shape, shape.to_vec());
            assert_eq!(n.data, NpyData::I32(i32_array(shape)));
            assert_eq!(n.len(), shape.iter().product::<usize>());
        }
        assert_eq!(arrays["f0"].len(), 1);
        assert!(arrays["f3"].is_empty());
        assert!(arrays["i4"].is_empty());
    }

    #[test]
    fn npz_round_trip() {
        let bytes = sample_archive(false);
        check_sample(&read_npz_bytes(&bytes).unwrap());
        // No ZIP64 records in a small archive.
        assert!(!contains(&bytes, SIG_ZIP64_EOCD));
        assert!(!contains(&bytes, ZIP64_LOCAL_EXTRA));
    }

    #[test]
    fn npz_round_trip_zip64_sizes() {
        let bytes = sample_archive(true);
        assert!(contains(&bytes, ZIP64_LOCAL_EXTRA));
        check_sample(&read_npz_bytes(&bytes).unwrap());
    }

    /// More entries than the classic end record counts: the writer adds the
    /// ZIP64 end records, the reader follows them.
    #[test]
    #[cfg_attr(miri, ignore = "65,536 entries: too slow under Miri")]
    fn npz_with_zip64_end_records() {
        let n = 65_536;
        let mut w = writer();
        for i in 0..n {
            w.add_i32(&format!("a{i}"), &[1], &[i]).unwrap();
        }
        let bytes = finish(w);
        assert!(contains(&bytes, SIG_ZIP64_EOCD));
        assert!(contains(&bytes, SIG_ZIP64_LOCATOR));
        let arrays = read_npz_bytes(&bytes).unwrap();
        assert_eq!(arrays.len(), n as usize);
        assert_eq!(arrays["a65535"].data, NpyData::I32(vec![65535]));
    }

    #[test]
    fn npz_round_trip_through_file() {
        let dir = std::env::temp_dir().join(format!("elmo-npz-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("round_trip.npz");
        let mut w = NpzWriter::create(&path).unwrap();
        w.add_f32("x", &[2, 2], &[1.0, 2.0, 3.0, 4.0]).unwrap();
        w.add_i32("ünïcode", &[1], &[9]).unwrap();
        w.finish().unwrap();
        let arrays = read_npz(&path).unwrap();
        assert_eq!(arrays["x"].to_f32().unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(arrays["ünïcode"].to_i64().unwrap(), vec![9]);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(read_npz(&path), Err(Error::Io { .. })));
    }

    /// An entry over 4 GiB (ZIP64 sizes) and entries after it (ZIP64
    /// offsets), through a file; NumPy reads such an archive of ours too.
    #[test]
    #[ignore = "writes and reads a 4.4 GB archive (about 5 GB of disk and of memory, a minute)"]
    fn npz_over_4_gib() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.npz");
        let n = 1_100_000_000;
        let mut w = NpzWriter::create(&path).unwrap();
        w.add_i32("before", &[3], &[1, 2, 3]).unwrap();
        w.add_f32("big", &[n / 1000, 1000], &vec![0.0; n]).unwrap();
        w.add_f32("after", &[2], &[0.5, -1.5]).unwrap();
        w.finish().unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() > 1 << 32);
        let arrays = read_npz(&path).unwrap();
        assert_eq!(arrays["before"].data, NpyData::I32(vec![1, 2, 3]));
        assert_eq!(arrays["after"].data, NpyData::F32(vec![0.5, -1.5]));
        assert_eq!(arrays["big"].shape, vec![n / 1000, 1000]);
        assert!(matches!(&arrays["big"].data, NpyData::F32(v) if v.len() == n && v.iter().all(|&x| x == 0.0)));
    }

    #[test]
    fn npy_header_layout_matches_numpy() {
        for shape in SHAPES {
            let bytes = npy_bytes_f32(shape, &f32_array(shape)).unwrap();
            let header_len = usize::from(u16::from_le_bytes([bytes[8], bytes[9]]));
            assert_eq!((10 + header_len) % 64, 0);
            assert_eq!(bytes[10 + header_len - 1], b'\n');
            assert_eq!(bytes.len(), 10 + header_len + 4 * f32_array(shape).len());
        }
        let bytes = npy_bytes_i32(&[3], &[1, 2, 3]).unwrap();
        assert!(bytes.starts_with(b"\x93NUMPY\x01\x00v\x00{'descr': '<i4', 'fortran_order': False, 'shape': (3,), }"));
        assert_eq!(bytes.len(), 128 + 12);
        let zero_d = npy_bytes_f32(&[], &[2.5]).unwrap();
        assert!(contains(&zero_d, b"'shape': (), }"));
        let three_d = npy_bytes_f32(&[3, 6, 50], &vec![0.0; 900]).unwrap();
        assert!(contains(&three_d, b"'shape': (3, 6, 50), }"));
    }

    #[test]
    fn npy_writer_rejects_length_mismatch() {
        assert!(npy_bytes_f32(&[2, 3], &[0.0; 5]).is_err());
        assert!(npy_bytes_i32(&[], &[]).is_err());
        assert!(npy_bytes_f32(&[usize::MAX, 2], &[]).is_err());
        let mut w = writer();
        assert!(w.add_i32("a", &[2], &[1]).is_err());
        // A rejected array does not poison the name or the writer.
        w.add_i32("a", &[1], &[1]).unwrap();
        assert!(w.add_f32("a", &[1], &[1.0]).is_err());
        let arrays = read_npz_bytes(&finish(w)).unwrap();
        assert_eq!(arrays["a"].data, NpyData::I32(vec![1]));
    }

    #[test]
    fn parse_npy_variants() {
        let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
        let dict = b"{\"descr\": \"<f8\", \"shape\": (2L,), \"fortran_order\": False}\n";
        v2.extend_from_slice(&(dict.len() as u32).to_le_bytes());
        v2.extend_from_slice(dict);
        v2.extend_from_slice(&1.5f64.to_le_bytes());
        v2.extend_from_slice(&(-2.0f64).to_le_bytes());
        let a = parse_npy(&v2).unwrap();
        assert_eq!(a.shape, vec![2]);
        assert_eq!(a.data, NpyData::F64(vec![1.5, -2.0]));
        assert_eq!(a.to_f32().unwrap(), vec![1.5, -2.0]);
        assert!(a.to_i64().is_err());

        let make = |descr: &str, shape: &str, data: &[u8]| {
            let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}\n");
            let mut v = b"\x93NUMPY\x01\x00".to_vec();
            v.extend_from_slice(&(dict.len() as u16).to_le_bytes());
            v.extend_from_slice(dict.as_bytes());
            v.extend_from_slice(data);
            v
        };
        let b = parse_npy(&make("|b1", "(3,)", &[0, 1, 2])).unwrap();
        assert_eq!(b.data, NpyData::Bool(vec![false, true, true]));
        assert_eq!(b.to_i64().unwrap(), vec![0, 1, 1]);
        assert_eq!(b.to_f32().unwrap(), vec![0.0, 1.0, 1.0]);
        let u = parse_npy(&make("|u1", "(2, 1)", &[7, 255])).unwrap();
        assert_eq!(u.to_i64().unwrap(), vec![7, 255]);
        let s = parse_npy(&make("|i1", "(2,)", &[0xFF, 5])).unwrap();
        assert_eq!(s.data, NpyData::I32(vec![-1, 5]));
        let mut le = Vec::new();
        le.extend_from_slice(&(-5i64).to_le_bytes());
        let l = parse_npy(&make("<i8", "()", &le)).unwrap();
        assert_eq!((l.shape.clone(), l.to_i64().unwrap()), (vec![], vec![-5]));
        assert_eq!(l.to_f32().unwrap(), vec![-5.0]);

        // Unsupported or inconsistent headers.
        assert!(parse_npy(&make(">f4", "(1,)", &[0; 4])).is_err());
        assert!(parse_npy(&make("<c8", "(1,)", &[0; 8])).is_err());
        assert!(parse_npy(&make("<f4", "(1)", &[0; 4])).is_err());
        assert!(parse_npy(&make("<f4", "(1,", &[0; 4])).is_err());
        assert!(parse_npy(&make("<f4", "(-1,)", &[])).is_err());
        assert!(parse_npy(&make("<f4", "(99999999999999999999999,)", &[])).is_err());
        assert!(parse_npy(&make("<f4", "(4294967296, 4294967296, 4294967296)", &[])).is_err());
        assert!(parse_npy(&make("<f4", "(2,)", &[0; 4])).is_err());
        assert!(parse_npy(&make("<f4", "(1,)", &[0; 5])).is_err());
        let fortran = make("<f4", "(1,)", &[0; 4]);
        let fortran = String::from_utf8(fortran[10..].to_vec())
            .unwrap()
            .replace("False", "True ");
        let mut f = make("<f4", "(1,)", &[])[..10].to_vec();
        f.extend_from_slice(fortran.as_bytes());
        assert!(parse_npy(&f).is_err());
        let extra_key = b"\x93NUMPY\x01\x00\x3c\x00{'descr': '<f4', 'fortran_order': False, 'shape': (), 'x': 1}";
        assert!(parse_npy(extra_key).is_err());
    }

    #[test]
    fn parse_npy_rejects_bad_magic_and_truncation() {
        let good = npy_bytes_f32(&[2, 2], &[1.0, 2.0, 3.0, 4.0]).unwrap();
        let mut bad = good.clone();
        bad[1] = b'X';
        assert!(parse_npy(&bad).is_err());
        let mut bad_version = good.clone();
        bad_version[6] = 4;
        assert!(parse_npy(&bad_version).is_err());
        let mut huge_header = good.clone();
        huge_header[8] = 0xFF;
        huge_header[9] = 0xFF;
        assert!(parse_npy(&huge_header).is_err());
        for cut in 0..good.len() {
            assert!(parse_npy(&good[..cut]).is_err(), "prefix of {cut} bytes accepted");
        }
        for i in 0..good.len() {
            for bits in [0x01u8, 0x80, 0xFF] {
                let mut v = good.clone();
                v[i] ^= bits;
                let _ = parse_npy(&v); // must not panic
            }
        }
    }

    /// Rewrites every entry's compression method in both headers.
    fn set_method(bytes: &mut [u8], method: u16) {
        for (sig, offset_in_header) in [(b"PK\x03\x04", 8), (b"PK\x01\x02", 10)] {
            let positions: Vec<usize> = bytes
                .windows(4)
                .enumerate()
                .filter(|(_, w)| *w == sig)
                .map(|(i, _)| i)
                .collect();
            for p in positions {
                bytes[p + offset_in_header..p + offset_in_header + 2].copy_from_slice(&method.to_le_bytes());
            }
        }
    }

    #[test]
    fn corrupt_archives_are_errors() {
        // Under Miri (an interpreter) every 101st position; natively all.
        let step = if cfg!(miri) { 101 } else { 1 };
        for force in [false, true] {
            let good = sample_archive(force);
            // Truncated anywhere.
            for cut in (0..good.len()).step_by(step) {
                assert!(read_npz_bytes(&good[..cut]).is_err(), "prefix of {cut} bytes accepted");
            }
            // Bad CRC: flip a byte of array data (the last f32 of "f2").
            let mut bad = good.clone();
            let npy = npy_bytes_f32(SHAPES[2], &f32_array(SHAPES[2])).unwrap();
            let at = good.windows(npy.len()).position(|w| w == npy.as_slice()).unwrap() + npy.len() - 1;
            bad[at] ^= 0x40;
            let msg = read_npz_bytes(&bad).unwrap_err().to_string();
            assert!(msg.contains("f2.npy") && msg.contains("checksum"), "{msg}");
            // Deflated entry.
            let mut deflated = good.clone();
            set_method(&mut deflated, 8);
            // (stored bytes relabelled as deflate are not a valid deflate stream)
            assert!(read_npz_bytes(&deflated).is_err());
            set_method(&mut deflated, 12);
            assert!(read_npz_bytes(&deflated).is_err());
            // Every single-byte corruption gives a result, never a panic.
            for i in (0..good.len()).step_by(step) {
                let mut v = good.clone();
                v[i] ^= 0xFF;
                let _ = read_npz_bytes(&v);
            }
        }
        assert!(read_npz_bytes(b"").is_err());
        assert!(read_npz_bytes(b"PK\x05\x06").is_err());
        assert!(read_npz_bytes(&[0u8; 100]).is_err());
    }

    #[test]
    fn bad_entries_are_errors() {
        // Not a .npy file inside the archive.
        let mut w = writer();
        w.add_entry("junk.npy", &[b"hello, world"]).unwrap();
        let msg = read_npz_bytes(&finish(w)).unwrap_err().to_string();
        assert!(msg.contains("junk.npy") && msg.contains("magic"), "{msg}");

        // Header shape disagrees with the data size.
        let mut npy = npy_bytes_f32(&[2, 3], &[0.0; 6]).unwrap();
        npy.truncate(npy.len() - 4);
        let mut w = writer();
        w.add_entry("short.npy", &[&npy]).unwrap();
        let msg = read_npz_bytes(&finish(w)).unwrap_err().to_string();
        assert!(msg.contains("short.npy") && msg.contains("needs 24"), "{msg}");

        // Two entries mapping to the same key.
        let one = npy_bytes_i32(&[1], &[1]).unwrap();
        let mut w = writer();
        w.add_entry("k.npy", &[&one]).unwrap();
        w.add_entry("k", &[&one]).unwrap();
        let bytes = finish(w);
        assert!(read_npz_bytes(&bytes).is_err());
        // Two entries of the same name: "j.npy" renamed "k.npy" in both of
        // its headers (names are not covered by the CRC-32).
        let mut w = writer();
        w.add_entry("k.npy", &[&one]).unwrap();
        w.add_entry("j.npy", &[&one]).unwrap();
        let mut same = finish(w);
        let at: Vec<usize> = (0..same.len() - 4)
            .filter(|&i| same[i..].starts_with(b"j.npy"))
            .collect();
        assert_eq!(at.len(), 2);
        for i in at {
            same[i] = b'k';
        }
        let msg = read_npz_bytes(&same).unwrap_err().to_string();
        assert!(msg.contains("duplicate"), "{msg}");
        // The local header names another file than the central directory.
        let mut w = writer();
        w.add_entry("k.npy", &[&one]).unwrap();
        let mut other = finish(w);
        let first = (0..other.len()).find(|&i| other[i..].starts_with(b"k.npy")).unwrap();
        other[first] = b'j';
        assert!(read_npz_bytes(&other).is_err());
    }

    /// `np.savez('/tmp/np_small.npz', a=np.arange(3, dtype=np.int32),
    /// b=np.array(1.5, dtype=np.float32))` with NumPy 2.4.6: local headers
    /// carry ZIP64 extra fields (`force_zip64=True`).
    const NUMPY_SAVEZ_ZIP64: &[&str] = &[
        "504b03042d00000000000000210002ecbda9ffffffffffffffff05001400612e6e7079010010008c000000000000008c",
        "00000000000000934e554d5059010076007b276465736372273a20273c6934272c2027666f727472616e5f6f72646572",
        "273a2046616c73652c20277368617065273a2028332c292c207d20202020202020202020202020202020202020202020",
        "20202020202020202020202020202020202020202020202020202020202020202020202020200a000000000100000002",
        "000000504b03042d0000000000000021002513e65dffffffffffffffff05001400622e6e707901001000840000000000",
        "00008400000000000000934e554d5059010076007b276465736372273a20273c6634272c2027666f727472616e5f6f72",
        "646572273a2046616c73652c20277368617065273a2028292c207d202020202020202020202020202020202020202020",
        "20202020202020202020202020202020202020202020202020202020202020202020202020202020200a0000c03f504b",
        "01022d032d00000000000000210002ecbda98c0000008c000000050000000000000000000000800100000000612e6e70",
        "79504b01022d032d0000000000000021002513e65d84000000840000000500000000000000000000008001c300000062",
        "2e6e7079504b05060000000002000200660000007e0100000000",
    ];

    fn unhex(parts: &[&str]) -> Vec<u8> {
        let hex: String = parts.concat();
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn reads_numpy_savez_with_zip64_local_headers() {
        let bytes = unhex(NUMPY_SAVEZ_ZIP64);
        let arrays = read_npz_bytes(&bytes).unwrap();
        assert_eq!(arrays["a"].shape, vec![3]);
        assert_eq!(arrays["a"].data, NpyData::I32(vec![0, 1, 2]));
        assert_eq!(arrays["b"].shape, Vec::<usize>::new());
        assert_eq!(arrays["b"].data, NpyData::F32(vec![1.5]));
        // Our writer lays out .npy files byte-for-byte like np.save.
        let a = npy_bytes_i32(&[3], &[0, 1, 2]).unwrap();
        let b = npy_bytes_f32(&[], &[1.5]).unwrap();
        assert!(contains(&bytes, &a));
        assert!(contains(&bytes, &b));
    }

    /// `np.savez_compressed(f, a=np.arange(3, dtype=np.int32),
    /// m=np.array([[True, False]]))` with NumPy 2.4.6: deflated entries.
    const NUMPY_SAVEZ_COMPRESSED: &[&str] = &[
        "504b03042d00000008000000210002ecbda9ffffffffffffffff05001400612e6e7079010010008c000000000000004c",
        "000000000000009bec17ea1b10c9c850c650ad9e925a9c5ca46ea5a06e9369a2aea3a09e965f54529498179f5f94920a",
        "12774bcc294e058a17672416a402f91ac63a9a3a0ab50a14002e062060046226200600504b03042d0000000800000021",
        "0010193a19ffffffffffffffff050014006d2e6e707901001000820000000000000048000000000000009bec17ea1b10",
        "c9c850c650ad9e925a9c5ca46ea5a05e9364a8aea3a09e965f54529498179f5f94920a12774bcc294e058a17672416a4",
        "02f91a863a0a469a3a0ab50a64032e460600504b01022d032d00000008000000210002ecbda94c0000008c0000000500",
        "00000000000000000000800100000000612e6e7079504b01022d032d00000008000000210010193a1948000000820000",
        "000500000000000000000000008001830000006d2e6e7079504b0506000000000200020066000000020100000000",
    ];

    #[test]
    fn reads_numpy_savez_compressed() {
        let bytes = unhex(NUMPY_SAVEZ_COMPRESSED);
        let arrays = read_npz_bytes(&bytes).unwrap();
        assert_eq!(arrays["a"].shape, vec![3]);
        assert_eq!(arrays["a"].data, NpyData::I32(vec![0, 1, 2]));
        assert_eq!(arrays["m"].shape, vec![1, 2]);
        assert_eq!(arrays["m"].data, NpyData::Bool(vec![true, false]));
        let raw = read_npz_raw(&bytes).unwrap();
        assert_eq!(raw[0].1, npy_bytes_i32(&[3], &[0, 1, 2]).unwrap());
        // A flipped bit anywhere (deflate streams included) is refused or
        // changes nothing read (a timestamp, the padding after a stream's
        // last block): never other data, never a panic.
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            if let Ok(got) = read_npz_bytes(&bad) {
                assert_eq!(got, arrays, "byte {i:#x} flipped");
            }
        }
    }

    #[test]
    fn reads_golden_numpy_file() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/npz_sample/stateless_batch_00.npz"
        );
        let arrays = read_npz(Path::new(path)).unwrap();
        let char_ids = &arrays["char_ids"];
        assert_eq!(char_ids.shape, vec![3, 6, 50]);
        assert!(matches!(char_ids.data, NpyData::I32(_)));
        let lengths = &arrays["lengths"];
        assert_eq!(lengths.shape, vec![3]);
        assert_eq!(lengths.data, NpyData::I32(vec![4, 2, 1]));
        assert_eq!(lengths.to_i64().unwrap(), vec![4, 2, 1]);
        let mask = &arrays["mask"];
        assert_eq!(mask.shape, vec![3, 4]);
        assert!(matches!(mask.data, NpyData::U8(_)));
        assert_eq!(mask.to_i64().unwrap(), vec![1, 1, 1, 1, 1, 1, 0, 0, 1, 0, 0, 0]);
        let lm = &arrays["lm_embeddings"];
        assert_eq!(lm.shape, vec![3, 3, 4, 32]);
        assert!(matches!(lm.data, NpyData::F32(_)));
        assert_eq!(lm.to_f32().unwrap().len(), 3 * 3 * 4 * 32);
    }
}
