//! Reading and writing NumPy `.npy` arrays and uncompressed `.npz` archives.
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
//! `.npy` headers laid out byte-for-byte as `np.save` lays them out, switching
//! to ZIP64 records only where a size or offset needs more than 32 bits.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The magic string that opens every `.npy` file.
const NPY_MAGIC: &[u8; 6] = b"\x93NUMPY";
/// NumPy aligns the start of the array data to this many bytes.
const NPY_ALIGN: usize = 64;
/// NumPy leaves room for this many digits in the first dimension of the shape.
const NPY_GROWTH_AXIS_MAX_DIGITS: usize = 21;

const SIG_LOCAL: u32 = 0x0403_4b50;
const SIG_CENTRAL: u32 = 0x0201_4b50;
const SIG_EOCD: u32 = 0x0605_4b50;
const SIG_ZIP64_EOCD: u32 = 0x0606_4b50;
const SIG_ZIP64_LOCATOR: u32 = 0x0706_4b50;
const ZIP64_EXTRA_ID: u16 = 0x0001;

const LOCAL_HEADER_LEN: usize = 30;
const EOCD_LEN: usize = 22;
const ZIP64_EOCD_LEN: usize = 56;
const ZIP64_LOCATOR_LEN: usize = 20;
const MAX_EOCD_COMMENT: usize = 0xFFFF;

/// Sentinel meaning "see the ZIP64 extra field / record" in 32-bit fields.
const U32_SENTINEL: u64 = 0xFFFF_FFFF;
/// Sentinel meaning "see the ZIP64 record" in 16-bit entry counts.
const U16_SENTINEL: u64 = 0xFFFF;

const METHOD_STORED: u16 = 0;
const METHOD_DEFLATE: u16 = 8;
const FLAG_ENCRYPTED: u16 = 0x0001;
const FLAG_UTF8: u16 = 0x0800;
const VERSION_PLAIN: u16 = 20;
const VERSION_ZIP64: u16 = 45;
/// 1980-01-01 in MS-DOS date format: the writer's fixed, reproducible timestamp.
const DOS_DATE_1980_01_01: u16 = (1 << 5) | 1;

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

    /// Decodes `bytes`, whose length is a multiple of the item size.
    fn decode(self, bytes: &[u8]) -> NpyData {
        match self {
            DType::F32 => NpyData::F32(decode_le(bytes, f32::from_le_bytes)),
            DType::F64 => NpyData::F64(decode_le(bytes, f64::from_le_bytes)),
            DType::I32 => NpyData::I32(decode_le(bytes, i32::from_le_bytes)),
            DType::I64 => NpyData::I64(decode_le(bytes, i64::from_le_bytes)),
            DType::U8 => NpyData::U8(bytes.to_vec()),
            DType::I8 => NpyData::I32(bytes.iter().map(|&b| i32::from(b as i8)).collect()),
            DType::Bool => NpyData::Bool(bytes.iter().map(|&b| b != 0).collect()),
        }
    }
}

fn decode_le<const N: usize, T>(bytes: &[u8], from: fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|chunk| {
            let mut a = [0u8; N];
            a.copy_from_slice(chunk);
            from(a)
        })
        .collect()
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

/// Parses a `.npy` header: the header and where the data starts.
fn npy_header_of(bytes: &[u8]) -> Result<(NpyHeader, usize)> {
    if bytes.get(..NPY_MAGIC.len()) != Some(&NPY_MAGIC[..]) {
        return Err(npz_err("not a .npy file (bad magic string)"));
    }
    let (major, minor) = match bytes.get(6..8) {
        Some(&[major, minor]) => (major, minor),
        _ => return Err(npz_err("truncated .npy file (no version)")),
    };
    let (header_start, header_len) = match (major, minor) {
        (1, 0) => match bytes.get(8..10) {
            Some(&[a, b]) => (10usize, usize::from(u16::from_le_bytes([a, b]))),
            _ => return Err(npz_err("truncated .npy file (no header length)")),
        },
        (2, 0) | (3, 0) => match bytes.get(8..12) {
            Some(&[a, b, c, d]) => {
                let len = u32::from_le_bytes([a, b, c, d]);
                let len = usize::try_from(len).map_err(|_| npz_err(".npy header length too large"))?;
                (12usize, len)
            }
            _ => return Err(npz_err("truncated .npy file (no header length)")),
        },
        _ => return Err(npz_err(format!("unsupported .npy format version {major}.{minor}"))),
    };
    let header_end = header_start
        .checked_add(header_len)
        .filter(|&end| end <= bytes.len())
        .ok_or_else(|| {
            npz_err(format!(
                "truncated .npy file: header length {header_len} runs past the end of the {} bytes",
                bytes.len()
            ))
        })?;
    let header = HeaderParser {
        s: &bytes[header_start..header_end],
        pos: 0,
    }
    .dict()?;
    Ok((header, header_end))
}

/// Parses a complete `.npy` file held in memory.
///
/// Accepts format versions 1.0, 2.0 and 3.0 with C-order data of dtype
/// `<f4`, `<f8`, `<i4`, `<i8`, `|u1` (or `<u1`), `|i1` (widened to
/// [`NpyData::I32`]) or `|b1`. The data must be exactly as long as the shape
/// and dtype say.
pub fn parse_npy(bytes: &[u8]) -> Result<NpyArray> {
    let (header, header_end) = npy_header_of(bytes)?;
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
    let data = &bytes[header_end..];
    if data.len() != expected {
        return Err(npz_err(format!(
            "data is {} bytes but shape {} of '{}' needs {expected}",
            data.len(),
            shape_text(&header.shape),
            header.descr
        )));
    }
    Ok(NpyArray {
        shape: header.shape,
        data: dtype.decode(data),
    })
}

// ---------------------------------------------------------------------------
// .npz (zip) reading
// ---------------------------------------------------------------------------

/// Little-endian reads from a byte slice, every one bounds-checked.
struct ByteReader<'a> {
    b: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> ByteReader<'a> {
    fn new(b: &'a [u8], pos: usize, what: &'static str) -> Self {
        ByteReader { b, pos, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.b.len())
            .ok_or_else(|| npz_err(format!("truncated zip archive (in {})", self.what)))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn remaining(&self) -> usize {
        self.b.len().saturating_sub(self.pos)
    }
}

fn u32_at(b: &[u8], pos: usize) -> Option<u32> {
    let end = pos.checked_add(4)?;
    let s = b.get(pos..end)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn to_usize(v: u64, what: &str) -> Result<usize> {
    usize::try_from(v).map_err(|_| npz_err(format!("{what} {v} does not fit in memory on this platform")))
}

/// Where the central directory is, from the end records.
struct CentralDirectory {
    entries: u64,
    offset: u64,
    size: u64,
    /// Where the end records begin: the central directory ends at or before.
    end_start: usize,
}

/// Finds the end-of-central-directory record, searching backwards over the
/// longest possible archive comment.
fn find_eocd(b: &[u8]) -> Result<usize> {
    if b.len() < EOCD_LEN {
        return Err(npz_err(format!("not a zip archive: only {} bytes", b.len())));
    }
    let last = b.len() - EOCD_LEN;
    let first = last.saturating_sub(MAX_EOCD_COMMENT);
    for pos in (first..=last).rev() {
        if u32_at(b, pos) != Some(SIG_EOCD) {
            continue;
        }
        let comment_len = match b.get(pos + 20..pos + 22) {
            Some(&[x, y]) => usize::from(u16::from_le_bytes([x, y])),
            _ => continue,
        };
        if pos + EOCD_LEN + comment_len <= b.len() {
            return Ok(pos);
        }
    }
    Err(npz_err(
        "end of central directory not found: not a zip archive, or truncated",
    ))
}

fn read_end_records(b: &[u8]) -> Result<CentralDirectory> {
    let eocd = find_eocd(b)?;
    let mut r = ByteReader::new(b, eocd + 4, "end of central directory");
    let disk = r.u16()?;
    let cd_disk = r.u16()?;
    let entries_here = r.u16()?;
    let entries = r.u16()?;
    let size = r.u32()?;
    let offset = r.u32()?;

    let locator = eocd.checked_sub(ZIP64_LOCATOR_LEN);
    let has_locator = locator.is_some_and(|p| u32_at(b, p) == Some(SIG_ZIP64_LOCATOR));
    let Some(locator) = locator.filter(|_| has_locator) else {
        if disk != 0 || cd_disk != 0 || entries_here != entries {
            return Err(npz_err("multi-disk zip archives are not supported"));
        }
        return Ok(CentralDirectory {
            entries: u64::from(entries),
            offset: u64::from(offset),
            size: u64::from(size),
            end_start: eocd,
        });
    };

    let mut r = ByteReader::new(b, locator + 4, "zip64 end of central directory locator");
    let record_disk = r.u32()?;
    let record_offset = r.u64()?;
    let disks = r.u32()?;
    if record_disk != 0 || disks > 1 {
        return Err(npz_err("multi-disk zip archives are not supported"));
    }
    let record = to_usize(record_offset, "zip64 end record offset")?;
    if record.checked_add(ZIP64_EOCD_LEN).is_none_or(|end| end > locator) {
        return Err(npz_err(
            "zip64 end of central directory record lies outside the archive",
        ));
    }
    if u32_at(b, record) != Some(SIG_ZIP64_EOCD) {
        return Err(npz_err("zip64 end of central directory record not found"));
    }
    let mut r = ByteReader::new(b, record + 4, "zip64 end of central directory");
    let _record_size = r.u64()?;
    let _version_made_by = r.u16()?;
    let _version_needed = r.u16()?;
    let disk = r.u32()?;
    let cd_disk = r.u32()?;
    let entries_here = r.u64()?;
    let entries = r.u64()?;
    let size = r.u64()?;
    let offset = r.u64()?;
    if disk != 0 || cd_disk != 0 || entries_here != entries {
        return Err(npz_err("multi-disk zip archives are not supported"));
    }
    Ok(CentralDirectory {
        entries,
        offset,
        size,
        end_start: record,
    })
}

/// Replaces the 32-bit fields that hold the sentinel 0xFFFFFFFF by their
/// values from the ZIP64 extended-information extra field.
fn apply_zip64_extra(extra: &[u8], uncompressed: &mut u64, compressed: &mut u64, offset: &mut u64) -> Result<()> {
    let mut r = ByteReader::new(extra, 0, "extra field");
    while r.remaining() >= 4 {
        let id = r.u16()?;
        let len = r.u16()?;
        let data = r.take(usize::from(len))?;
        if id == ZIP64_EXTRA_ID {
            let mut z = ByteReader::new(data, 0, "zip64 extra field");
            if *uncompressed == U32_SENTINEL {
                *uncompressed = z.u64()?;
            }
            if *compressed == U32_SENTINEL {
                *compressed = z.u64()?;
            }
            if *offset == U32_SENTINEL {
                *offset = z.u64()?;
            }
            return Ok(());
        }
    }
    Err(npz_err("ZIP64 sizes announced but the zip64 extra field is missing"))
}

/// One stored member of the archive, its CRC verified.
struct ZipEntry<'a> {
    name: String,
    data: Cow<'a, [u8]>,
}

/// Inflates a raw deflate stream that must hold exactly `size` bytes; never
/// allocates or reads beyond `size + 1` (a lying header cannot balloon memory).
fn inflate(raw: &[u8], size: usize) -> std::result::Result<Vec<u8>, String> {
    use std::io::Read;
    let mut out = Vec::with_capacity(size.min(raw.len().saturating_mul(1032)));
    flate2::read::DeflateDecoder::new(raw)
        .take(size as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("invalid deflate data: {e}"))?;
    if out.len() != size {
        return Err(format!("inflates to {} bytes, the directory says {size}", out.len()));
    }
    Ok(out)
}

/// Reads the next central-directory entry and returns its checked data.
fn read_entry<'a>(cd: &mut ByteReader<'_>, before_cd: &'a [u8]) -> Result<ZipEntry<'a>> {
    if cd.u32()? != SIG_CENTRAL {
        return Err(npz_err("corrupt central directory (bad entry signature)"));
    }
    let _version_made_by = cd.u16()?;
    let _version_needed = cd.u16()?;
    let flags = cd.u16()?;
    let method = cd.u16()?;
    let _time = cd.u16()?;
    let _date = cd.u16()?;
    let crc = cd.u32()?;
    let mut compressed = u64::from(cd.u32()?);
    let mut uncompressed = u64::from(cd.u32()?);
    let name_len = usize::from(cd.u16()?);
    let extra_len = usize::from(cd.u16()?);
    let comment_len = usize::from(cd.u16()?);
    let _disk_start = cd.u16()?;
    let _internal_attributes = cd.u16()?;
    let _external_attributes = cd.u32()?;
    let mut offset = u64::from(cd.u32()?);
    let name_bytes = cd.take(name_len)?;
    let extra = cd.take(extra_len)?;
    cd.take(comment_len)?;

    let name = String::from_utf8(name_bytes.to_vec()).map_err(|_| npz_err("entry name is not valid UTF-8"))?;
    let fail = |msg: String| npz_err(format!("entry '{name}': {msg}"));
    if compressed == U32_SENTINEL || uncompressed == U32_SENTINEL || offset == U32_SENTINEL {
        apply_zip64_extra(extra, &mut uncompressed, &mut compressed, &mut offset)
            .map_err(|e| with_context(e, format!("entry '{name}'")))?;
    }
    if flags & FLAG_ENCRYPTED != 0 {
        return Err(fail("encrypted entries are not supported".into()));
    }
    if method != METHOD_STORED && method != METHOD_DEFLATE {
        return Err(fail(format!(
            "compression method {method} not supported (only stored or deflated entries)"
        )));
    }
    if method == METHOD_STORED && compressed != uncompressed {
        return Err(fail(format!(
            "stored entry has compressed size {compressed} but uncompressed size {uncompressed}"
        )));
    }

    // The local header: its name must match; its sizes may be ZIP64
    // placeholders, so the central directory's sizes are the ones used.
    let mut local = ByteReader::new(before_cd, to_usize(offset, "local header offset")?, "local file header");
    if local.u32()? != SIG_LOCAL {
        return Err(fail("bad local file header signature".into()));
    }
    local.take(LOCAL_HEADER_LEN - 8)?;
    let local_name_len = usize::from(local.u16()?);
    let local_extra_len = usize::from(local.u16()?);
    if local.take(local_name_len)? != name_bytes {
        return Err(fail("local file header names another file".into()));
    }
    local.take(local_extra_len)?;
    let raw = local
        .take(to_usize(compressed, "entry size")?)
        .map_err(|e| with_context(e, format!("entry '{name}'")))?;
    let data: Cow<'a, [u8]> = if method == METHOD_DEFLATE {
        Cow::Owned(inflate(raw, to_usize(uncompressed, "entry size")?).map_err(&fail)?)
    } else {
        Cow::Borrowed(raw)
    };
    let actual = crc32fast::hash(&data);
    if actual != crc {
        return Err(fail(format!(
            "CRC-32 mismatch (central directory says {crc:08x}, data has {actual:08x}): corrupt archive"
        )));
    }
    Ok(ZipEntry { name, data })
}

fn read_zip_entries(b: &[u8]) -> Result<Vec<ZipEntry<'_>>> {
    let dir = read_end_records(b)?;
    let start = to_usize(dir.offset, "central directory offset")?;
    let size = to_usize(dir.size, "central directory size")?;
    let end = start
        .checked_add(size)
        .filter(|&end| end <= dir.end_start)
        .ok_or_else(|| npz_err("central directory lies outside the archive (truncated?)"))?;
    let before_cd = &b[..start];
    let mut cd = ByteReader::new(&b[start..end], 0, "central directory");
    let mut entries = Vec::new();
    for _ in 0..dir.entries {
        entries.push(read_entry(&mut cd, before_cd)?);
    }
    Ok(entries)
}

/// Reads every array of an `.npz` archive held in memory, keyed by entry name
/// without its `.npy` suffix.
///
/// Only stored (uncompressed) archives are supported, as written by
/// `np.savez` (ZIP64 or not); every entry's CRC-32 is verified.
pub fn read_npz_bytes(bytes: &[u8]) -> Result<BTreeMap<String, NpyArray>> {
    let mut arrays = BTreeMap::new();
    for entry in read_zip_entries(bytes)? {
        let key = entry.name.strip_suffix(".npy").unwrap_or(&entry.name).to_string();
        if arrays.contains_key(&key) {
            return Err(npz_err(format!("array '{key}' appears twice in the archive")));
        }
        let array = parse_npy(&entry.data).map_err(|e| with_context(e, format!("entry '{}'", entry.name)))?;
        arrays.insert(key, array);
    }
    Ok(arrays)
}

/// The raw `.npy` bytes of every entry of an `.npz` archive (inflated and
/// CRC-checked), for arrays [`parse_npy`] does not decode (object arrays).
pub fn read_npz_raw(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
    Ok(read_zip_entries(bytes)?
        .into_iter()
        .map(|e| {
            (
                e.name.strip_suffix(".npy").unwrap_or(&e.name).to_string(),
                e.data.into_owned(),
            )
        })
        .collect())
}

/// Splits a `.npy` file into its header's `(descr, shape)` and the data bytes
/// that follow, without decoding them (for object arrays, a pickle stream).
pub fn split_npy(bytes: &[u8]) -> Result<(String, Vec<usize>, &[u8])> {
    let (header, end) = npy_header_of(bytes)?;
    Ok((header.descr, header.shape, &bytes[end..]))
}

/// Reads every array of an `.npz` file, keyed by entry name without its
/// `.npy` suffix. See [`read_npz_bytes`].
pub fn read_npz(path: &Path) -> Result<BTreeMap<String, NpyArray>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    read_npz_bytes(&bytes).map_err(|e| with_context(e, path.display()))
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

/// What the central directory needs to know about a written entry.
struct WrittenEntry {
    name: Vec<u8>,
    flags: u16,
    crc: u32,
    size: u64,
    offset: u64,
}

/// Writes an uncompressed `.npz` archive (stored zip entries) that
/// `numpy.load` reads.
///
/// Each array becomes an entry `name.npy`. Sizes and CRC-32 are computed before
/// an entry is written, so the archive needs no seeking and no data
/// descriptors. ZIP64 records are written only where a size, offset or entry
/// count does not fit the classic fields, so archives over 4 GiB work.
/// [`finish`](NpzWriter::finish) must be called to write the central
/// directory; an archive dropped before that is incomplete.
pub struct NpzWriter<W: Write> {
    w: W,
    label: PathBuf,
    offset: u64,
    entries: Vec<WrittenEntry>,
    names: BTreeSet<String>,
    failed: bool,
    /// Write ZIP64 records even where they are not needed (for tests).
    force_zip64: bool,
}

impl NpzWriter<BufWriter<File>> {
    /// Creates (or truncates) the file at `path` and writes an archive to it.
    pub fn create(path: &Path) -> Result<Self> {
        let file = File::create(path).map_err(|e| Error::io(path, e))?;
        Ok(Self::with_path(BufWriter::new(file), path))
    }
}

impl<W: Write> NpzWriter<W> {
    /// Starts an archive written to `w`.
    pub fn new(w: W) -> Self {
        Self::with_path(w, "<npz output>")
    }

    /// Starts an archive written to `w`, naming `path` in I/O errors.
    pub fn with_path(w: W, path: impl Into<PathBuf>) -> Self {
        NpzWriter {
            w,
            label: path.into(),
            offset: 0,
            entries: Vec::new(),
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
    pub fn finish(mut self) -> Result<W> {
        self.check_usable()?;
        let cd_offset = self.offset;
        let mut cd = Vec::new();
        for e in &self.entries {
            let size64 = self.needs_zip64(e.size);
            let offset64 = self.needs_zip64(e.offset);
            let mut extra = Vec::new();
            if size64 || offset64 {
                let len = 8 * (2 * usize::from(size64) + usize::from(offset64));
                extra.extend_from_slice(&ZIP64_EXTRA_ID.to_le_bytes());
                extra.extend_from_slice(&(len as u16).to_le_bytes());
                if size64 {
                    extra.extend_from_slice(&e.size.to_le_bytes());
                    extra.extend_from_slice(&e.size.to_le_bytes());
                }
                if offset64 {
                    extra.extend_from_slice(&e.offset.to_le_bytes());
                }
            }
            let version = if extra.is_empty() { VERSION_PLAIN } else { VERSION_ZIP64 };
            let size32 = self.field32(e.size);
            put_u32(&mut cd, SIG_CENTRAL);
            put_u16(&mut cd, version); // version made by (MS-DOS attributes)
            put_u16(&mut cd, version); // version needed to extract
            put_u16(&mut cd, e.flags);
            put_u16(&mut cd, METHOD_STORED);
            put_u16(&mut cd, 0); // time
            put_u16(&mut cd, DOS_DATE_1980_01_01);
            put_u32(&mut cd, e.crc);
            put_u32(&mut cd, size32); // compressed
            put_u32(&mut cd, size32); // uncompressed
            put_u16(&mut cd, e.name.len() as u16); // checked when added
            put_u16(&mut cd, extra.len() as u16);
            put_u16(&mut cd, 0); // comment length
            put_u16(&mut cd, 0); // disk number start
            put_u16(&mut cd, 0); // internal attributes
            put_u32(&mut cd, 0); // external attributes
            put_u32(&mut cd, self.field32(e.offset));
            cd.extend_from_slice(&e.name);
            cd.extend_from_slice(&extra);
        }
        let cd_size = cd.len() as u64;
        let count = self.entries.len() as u64;
        let zip64 =
            self.force_zip64 || count >= U16_SENTINEL || self.needs_zip64(cd_size) || self.needs_zip64(cd_offset);
        let mut end = Vec::new();
        if zip64 {
            let record_offset = cd_offset
                .checked_add(cd_size)
                .ok_or_else(|| npz_err("archive too large"))?;
            put_u32(&mut end, SIG_ZIP64_EOCD);
            put_u64(&mut end, (ZIP64_EOCD_LEN - 12) as u64);
            put_u16(&mut end, VERSION_ZIP64);
            put_u16(&mut end, VERSION_ZIP64);
            put_u32(&mut end, 0); // this disk
            put_u32(&mut end, 0); // disk with the central directory
            put_u64(&mut end, count);
            put_u64(&mut end, count);
            put_u64(&mut end, cd_size);
            put_u64(&mut end, cd_offset);
            put_u32(&mut end, SIG_ZIP64_LOCATOR);
            put_u32(&mut end, 0); // disk with the zip64 end record
            put_u64(&mut end, record_offset);
            put_u32(&mut end, 1); // total disks
        }
        let count16 = if self.force_zip64 || count >= U16_SENTINEL {
            0xFFFF
        } else {
            count as u16
        };
        put_u32(&mut end, SIG_EOCD);
        put_u16(&mut end, 0); // this disk
        put_u16(&mut end, 0); // disk with the central directory
        put_u16(&mut end, count16);
        put_u16(&mut end, count16);
        put_u32(&mut end, self.field32(cd_size));
        put_u32(&mut end, self.field32(cd_offset));
        put_u16(&mut end, 0); // comment length
        self.write_parts(&[&cd, &end])?;
        self.w.flush().map_err(|e| Error::io(&self.label, e))?;
        Ok(self.w)
    }

    fn needs_zip64(&self, v: u64) -> bool {
        self.force_zip64 || v >= U32_SENTINEL
    }

    /// `v` for a classic 32-bit field, or the sentinel if ZIP64 holds it.
    fn field32(&self, v: u64) -> u32 {
        if self.needs_zip64(v) {
            U32_SENTINEL as u32
        } else {
            v as u32
        }
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

    fn write_parts(&mut self, parts: &[&[u8]]) -> Result<()> {
        for part in parts {
            if let Err(e) = self.w.write_all(part) {
                self.failed = true;
                return Err(Error::io(&self.label, e));
            }
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
        let mut hasher = crc32fast::Hasher::new();
        let mut size: u64 = 0;
        for part in parts {
            hasher.update(part);
            size = size
                .checked_add(part.len() as u64)
                .ok_or_else(|| npz_err("entry too large"))?;
        }
        let crc = hasher.finalize();
        let flags = if file_name.is_ascii() { 0 } else { FLAG_UTF8 };
        let zip64 = self.needs_zip64(size);
        let size32 = self.field32(size);

        let mut local = Vec::with_capacity(LOCAL_HEADER_LEN + file_name.len() + 20);
        put_u32(&mut local, SIG_LOCAL);
        put_u16(&mut local, if zip64 { VERSION_ZIP64 } else { VERSION_PLAIN });
        put_u16(&mut local, flags);
        put_u16(&mut local, METHOD_STORED);
        put_u16(&mut local, 0); // time
        put_u16(&mut local, DOS_DATE_1980_01_01);
        put_u32(&mut local, crc);
        put_u32(&mut local, size32); // compressed
        put_u32(&mut local, size32); // uncompressed
        put_u16(&mut local, file_name.len() as u16);
        put_u16(&mut local, if zip64 { 20 } else { 0 });
        local.extend_from_slice(file_name.as_bytes());
        if zip64 {
            put_u16(&mut local, ZIP64_EXTRA_ID);
            put_u16(&mut local, 16);
            put_u64(&mut local, size);
            put_u64(&mut local, size);
        }

        let entry_offset = self.offset;
        let next_offset = entry_offset
            .checked_add(local.len() as u64)
            .and_then(|o| o.checked_add(size))
            .ok_or_else(|| npz_err("archive too large"))?;
        self.write_parts(&[&local])?;
        self.write_parts(parts)?;
        self.offset = next_offset;
        self.names.insert(file_name.to_string());
        self.entries.push(WrittenEntry {
            name: file_name.as_bytes().to_vec(),
            flags,
            crc,
            size,
            offset: entry_offset,
        });
        Ok(())
    }
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
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

    fn sample_archive(force_zip64: bool) -> Vec<u8> {
        let mut w = NpzWriter::new(Vec::new());
        w.force_zip64 = force_zip64;
        for (i, shape) in SHAPES.iter().enumerate() {
            w.add_f32(&format!("f{i}"), shape, &f32_array(shape)).unwrap();
            w.add_i32(&format!("i{i}"), shape, &i32_array(shape)).unwrap();
        }
        w.finish().unwrap()
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
        assert!(!contains(&bytes, &SIG_ZIP64_EOCD.to_le_bytes()));
    }

    #[test]
    fn npz_round_trip_zip64() {
        let bytes = sample_archive(true);
        assert!(contains(&bytes, &SIG_ZIP64_EOCD.to_le_bytes()));
        assert!(contains(&bytes, &SIG_ZIP64_LOCATOR.to_le_bytes()));
        check_sample(&read_npz_bytes(&bytes).unwrap());
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
        let mut w = NpzWriter::new(Vec::new());
        assert!(w.add_i32("a", &[2], &[1]).is_err());
        // A rejected array does not poison the name or the writer.
        w.add_i32("a", &[1], &[1]).unwrap();
        assert!(w.add_f32("a", &[1], &[1.0]).is_err());
        let arrays = read_npz_bytes(&w.finish().unwrap()).unwrap();
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

    /// Rewrites a stored entry's method to deflate in both headers.
    fn set_method(bytes: &mut [u8], method: u16) {
        for sig in [SIG_LOCAL, SIG_CENTRAL] {
            let offset_in_header = if sig == SIG_LOCAL { 8 } else { 10 };
            let positions: Vec<usize> = bytes
                .windows(4)
                .enumerate()
                .filter(|(_, w)| *w == sig.to_le_bytes())
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
            assert!(msg.contains("CRC"), "{msg}");
            // Deflated entry.
            let mut deflated = good.clone();
            set_method(&mut deflated, METHOD_DEFLATE);
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
        let mut w = NpzWriter::new(Vec::new());
        w.add_entry("junk.npy", &[b"hello, world"]).unwrap();
        let msg = read_npz_bytes(&w.finish().unwrap()).unwrap_err().to_string();
        assert!(msg.contains("junk.npy") && msg.contains("magic"), "{msg}");

        // Header shape disagrees with the data size.
        let mut npy = npy_bytes_f32(&[2, 3], &[0.0; 6]).unwrap();
        npy.truncate(npy.len() - 4);
        let mut w = NpzWriter::new(Vec::new());
        w.add_entry("short.npy", &[&npy]).unwrap();
        let msg = read_npz_bytes(&w.finish().unwrap()).unwrap_err().to_string();
        assert!(msg.contains("short.npy") && msg.contains("needs 24"), "{msg}");

        // Two entries mapping to the same key.
        let one = npy_bytes_i32(&[1], &[1]).unwrap();
        let mut w = NpzWriter::new(Vec::new());
        w.add_entry("k.npy", &[&one]).unwrap();
        w.add_entry("k", &[&one]).unwrap();
        assert!(read_npz_bytes(&w.finish().unwrap()).is_err());
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
