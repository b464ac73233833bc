//! Writing the HDF5 layout of allennlp's `elmo` command, in pure Rust.
//!
//! allennlp's `elmo` command writes one float32 dataset per input line into
//! the root group, named by the line number (`"0"` .. `"N-1"`), of shape
//! `(L+1, n, D)` (all layers) or `(n, D)` (one layer or the mix), plus a
//! dataset `sentence_to_index` of shape `(1,)` holding one variable-length
//! UTF-8 string, a JSON text. This module writes that layout so that scripts
//! written for allennlp's files read ours unchanged with h5py.
//!
//! # How a file is made
//!
//! The caller appends the raw data itself: each dataset's values, float32
//! little-endian in C order, as one contiguous run of `Layout::data_len(n)`
//! bytes anywhere at or after [`DATA_START`] (in any order of keys, e.g. as
//! batches sorted by length finish). Nothing here holds that data. At the end,
//! [`finish`] (or [`finish_file`]) writes all the metadata after the end of
//! the data and, last, the superblock at offset 0. A file is valid HDF5 only
//! once the superblock is there, so a run that crashes leaves raw data at
//! offsets the caller recorded and no metadata to distrust: to resume, keep
//! the data, append the rest, and call `finish` with the full list. A
//! `finish` that failed can be retried the same way; it never writes inside
//! `[DATA_START, end_of_data)`.
//!
//! # Format
//!
//! The classic layout libhdf5 writes by default (what h5py writes for
//! allennlp), readable by every libhdf5 since 1.8 and by pure readers:
//!
//! * superblock version 0, 8-byte offsets and lengths;
//! * the root group as an old-style symbol-table group: a version-1 B-tree
//!   ("TREE", type 0) over symbol table nodes ("SNOD"), the link names in one
//!   local heap ("HEAP");
//! * per dataset a version-1 object header with the messages libhdf5 writes
//!   (dataspace with maximum dimensions, IEEE float32 LE datatype, fill value
//!   "default", contiguous layout version 3, no modification time, so the
//!   bytes do not depend on the clock); an empty dataset (`n = 0`) has the
//!   undefined address and size 0, as libhdf5 writes it;
//! * `sentence_to_index`: datatype class 9 (variable-length string, UTF-8,
//!   null-terminated padding, base type `u8`), its one element a reference
//!   (length, collection address, index) into one global heap collection
//!   ("GCOL") that holds the JSON.
//!
//! Every dataset header has the same size and every link name's place in the
//! local heap follows from its key, so all addresses are computed from
//! `count` alone: the headers are written in key order as the entries come,
//! the symbol table nodes in name order (`"0" < "1" < "10" < "100" < "11"`,
//! byte order of the names, enumerated without sorting), and each B-tree key
//! is found by computing which name is the k-th in that order. `finish`
//! therefore writes the whole file in one sequential pass with memory
//! independent of `count` (a few buffers; nothing per dataset), and two calls
//! with the same input write the same bytes.
//!
//! The superblock's group K values are 64 and 64 (libhdf5's defaults are 4
//! and 16, it reads what the superblock says): a symbol table node holds 128
//! names (5 KiB) and a B-tree node 128 children, so 50 million datasets need
//! a B-tree of three levels. The nodes are written full; libhdf5 splits them
//! if a file is later extended.
//!
//! # Sizes and limits
//!
//! Metadata costs about 210 bytes per dataset of rank 3 (160-byte header,
//! 40-byte symbol table entry, 8 or 16 bytes of name; B-tree nodes are
//! 0.1 byte), 194 for rank 2. The JSON is limited to [`MAX_JSON_LEN`] bytes
//! (4 GiB - 1): the reference to a variable-length string holds its length in
//! 32 bits, in libhdf5's files as in ours. `count` is limited only by 64-bit
//! file addresses. Readers: libhdf5 loads a group's whole local heap when it
//! opens the group (about 16 bytes per name; 800 MB for 50 million lines),
//! as it does for allennlp's own files.
//!
//! # Why not a crate
//!
//! Pure-Rust HDF5 writers looked at (2026), none of which fits the two needs
//! that matter here: millions of datasets in one group with memory bounded
//! independently of their number, and raw data that the caller has already
//! appended at known offsets during a long run (the resume protocol above),
//! with all metadata written at the end:
//!
//! * `hdf5-pure` (0.x, many releases a month): `FileBuilder` owns every
//!   dataset, data included, until it serializes the whole file (to bytes or
//!   a path); it writes version-2/3 superblocks with link messages; there is
//!   no way to refer to data already in the file.
//! * `rust-hdf5`: an `H5File` handle writes datasets as they are created and
//!   keeps every object's state until `close`; new-style groups (link
//!   messages, dense links in a fractal heap); the caller cannot place raw
//!   data itself nor rebuild the metadata of a crashed run.
//! * `hdf5-rust` (2.0): writes superblock version 2 with compact groups only
//!   (all links in the group's object header: not for millions of links) and
//!   no variable-length strings.
//! * `hdf5-pure-rust`: releases yanked and marked "under construction"; a
//!   `WritableFile` builder that writes on `flush`/`close`.
//! * `hdf5-writer` (0.9): builds a whole `Hdf5WritePlan` in memory (every
//!   dataset and its data) before encoding it.
//!
//! The subset needed here is small (six structure kinds), so it is written
//! here from the HDF5 File Format Specification and checked against libhdf5
//! (through h5py) and the `hdf5-reader` crate in the tests.

use std::io::{BufWriter, ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::error::{Error, Result};

#[cfg(test)]
mod tests;

/// First byte where raw data may be appended. The bytes before it are the
/// superblock's (96 bytes, the rest zero); 4096 so that data starts on a page.
pub const DATA_START: u64 = 4096;

/// The longest JSON `sentence_to_index` can hold: a variable-length string's
/// length is a 32-bit field in the file format.
pub const MAX_JSON_LEN: u64 = u32::MAX as u64;

/// The name of the JSON dataset, as allennlp names it.
pub const SENTENCE_TO_INDEX: &str = "sentence_to_index";

/// One dataset: its key (its name is `key.to_string()`), where its raw
/// float32 little-endian bytes start in the file, and its `n` (tokens).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DatasetEntry {
    /// The line number; the dataset is named by its decimal text.
    pub key: u64,
    /// File offset of the dataset's first byte (ignored when `n == 0`).
    pub offset: u64,
    /// The varying dimension: the number of tokens.
    pub n: u64,
}

/// The fixed part of every dataset's shape: `(lead, n, dim)` when `lead` is
/// set (rank 3, allennlp's `--all`), else `(n, dim)` (rank 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// `L + 1` for rank 3 (the layers), `None` for rank 2.
    pub lead: Option<u64>,
    /// The embedding size `D`.
    pub dim: u64,
}

impl Layout {
    /// Datasets of shape `(n, dim)`.
    pub fn rank2(dim: u64) -> Self {
        Layout { lead: None, dim }
    }

    /// Datasets of shape `(lead, n, dim)`.
    pub fn rank3(lead: u64, dim: u64) -> Self {
        Layout { lead: Some(lead), dim }
    }

    /// The shape of a dataset with `n` tokens.
    pub fn shape(&self, n: u64) -> Vec<u64> {
        match self.lead {
            Some(lead) => vec![lead, n, self.dim],
            None => vec![n, self.dim],
        }
    }

    /// Bytes of raw data of a dataset with `n` tokens (`4 * lead * n * dim`).
    pub fn data_len(&self, n: u64) -> Result<u64> {
        self.lead
            .unwrap_or(1)
            .checked_mul(n)
            .and_then(|v| v.checked_mul(self.dim))
            .and_then(|v| v.checked_mul(4))
            .ok_or_else(|| {
                Error::Hdf5Write(format!(
                    "a dataset of shape {:?} has more than 2^64 bytes",
                    self.shape(n)
                ))
            })
    }

    fn rank(&self) -> u64 {
        if self.lead.is_some() { 3 } else { 2 }
    }
}

/// What [`finish`] needs besides the entries and the JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The fixed dimensions of every dataset.
    pub layout: Layout,
    /// The end of the raw data (at least [`DATA_START`]); metadata follows
    /// from here, rounded up to a multiple of 8.
    pub end_of_data: u64,
    /// The number of datasets: keys `0..count`.
    pub count: u64,
    /// The length of the JSON in bytes, at most [`MAX_JSON_LEN`].
    pub json_len: u64,
}

/// Writes all metadata after `manifest.end_of_data`, then the superblock at
/// offset 0, and returns the file's length (the end of the metadata).
///
/// `entries` must yield keys `0..count` in increasing order, each once; an
/// `Err` it yields is returned as is. `json` must supply `json_len` bytes of
/// UTF-8 (read in 64 KiB pieces, never held whole). The writes are buffered
/// here, so a plain `File` is fine. If the file may already be longer than
/// the returned length (an earlier `finish` of a longer file), truncate it:
/// [`finish_file`] does, and syncs. On error the file has no superblock
/// (unless an earlier `finish` wrote one) and the data is untouched.
pub fn finish<F: Write + Seek>(
    file: &mut F,
    path: &Path,
    manifest: &Manifest,
    entries: impl IntoIterator<Item = Result<DatasetEntry>>,
    json: &mut dyn Read,
) -> Result<u64> {
    finish_with(file, path, manifest, entries, json, Params::DEFAULT)
}

/// [`finish`] with the node sizes given.
fn finish_with<F: Write + Seek>(
    file: &mut F,
    path: &Path,
    manifest: &Manifest,
    entries: impl IntoIterator<Item = Result<DatasetEntry>>,
    json: &mut dyn Read,
    params: Params,
) -> Result<u64> {
    let plan = Plan::new(path, manifest, params)?;
    let superblock = write_metadata(file, &plan, entries, json)?;
    write_superblock(file, path, &superblock)?;
    Ok(plan.end)
}

/// [`finish`] on a file: writes the metadata, syncs it to disk, then writes
/// the superblock, sets the file's length to the end of the metadata and
/// syncs again, so that after a crash the superblock never points to
/// metadata that is not on disk.
pub fn finish_file(
    file: &mut std::fs::File,
    path: &Path,
    manifest: &Manifest,
    entries: impl IntoIterator<Item = Result<DatasetEntry>>,
    json: &mut dyn Read,
) -> Result<u64> {
    let plan = Plan::new(path, manifest, Params::DEFAULT)?;
    let superblock = write_metadata(file, &plan, entries, json)?;
    file.sync_data().map_err(|e| Error::io(path, e))?;
    write_superblock(file, path, &superblock)?;
    file.set_len(plan.end).map_err(|e| Error::io(path, e))?;
    file.sync_data().map_err(|e| Error::io(path, e))?;
    Ok(plan.end)
}

/// The length of the file [`finish`] would write for `manifest` (an error
/// where `finish` would refuse the manifest itself).
pub fn file_len(manifest: &Manifest) -> Result<u64> {
    Ok(Plan::new(Path::new("<hdf5 output>"), manifest, Params::DEFAULT)?.end)
}

// ---------------------------------------------------------------------------
// Sizes of the structures (8-byte offsets and lengths throughout).

const SIGNATURE: &[u8; 8] = b"\x89HDF\r\n\x1a\n";
/// The undefined address.
const UNDEF: u64 = u64::MAX;
const SUPERBLOCK_LEN: usize = 96;
/// A symbol table entry: name offset, header address, cache type, reserved,
/// 16-byte scratch pad.
const ENTRY_LEN: u64 = 40;
const SNOD_HDR_LEN: u64 = 8;
const TREE_HDR_LEN: u64 = 24;
/// A version-1 object header's prefix, with its 4 bytes of alignment.
const OH_PREFIX_LEN: u64 = 16;
/// The root group's header: prefix and a symbol table message.
const ROOT_OH_LEN: u64 = OH_PREFIX_LEN + 8 + 16;
/// `sentence_to_index`'s header: prefix, dataspace (rank 1 with maximum),
/// datatype (vlen string of u8), fill value, layout.
const S2I_OH_LEN: u64 = OH_PREFIX_LEN + (8 + 24) + (8 + 24) + (8 + 8) + (8 + 24);
const HEAP_HDR_LEN: u64 = 32;
const GCOL_HDR_LEN: u64 = 16;
const GCOL_OBJ_HDR_LEN: u64 = 16;
/// libhdf5 never makes a global heap collection smaller than this.
const GCOL_MIN_LEN: u64 = 4096;
/// Length (4), collection address (8), object index (4).
const VLEN_REF_LEN: u64 = 16;
/// libhdf5's "no free block" value in a local heap's free list (not the
/// undefined address: libhdf5 rejects a head offset past the data segment).
const HEAP_FREE_NULL: u64 = 1;
/// The local heap slot of `sentence_to_index\0`, padded to 8.
const S2I_NAME_SLOT: u64 = 24;

/// Object header message types.
const MSG_DATASPACE: u16 = 0x0001;
const MSG_DATATYPE: u16 = 0x0003;
const MSG_FILL_VALUE: u16 = 0x0005;
const MSG_LAYOUT: u16 = 0x0008;
const MSG_SYMBOL_TABLE: u16 = 0x0011;
/// Message flag: the message is constant (libhdf5 sets it on datatype and
/// fill value messages).
const MSG_CONSTANT: u8 = 0x01;

/// The B-tree and symbol table node sizes, chosen per file and stored in the
/// superblock (tests use small ones to build deep trees from few datasets).
#[derive(Clone, Copy, Debug)]
struct Params {
    /// A symbol table node holds up to `2 * leaf_k` entries.
    leaf_k: u16,
    /// A B-tree node has up to `2 * internal_k` children.
    internal_k: u16,
}

impl Params {
    const DEFAULT: Params = Params {
        leaf_k: 64,
        internal_k: 64,
    };
}

fn align8(v: u64) -> u64 {
    v.div_ceil(8) * 8
}

/// A name in the root group: a dataset key or `sentence_to_index`, which
/// sorts after every decimal name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Name {
    Key(u64),
    SentenceToIndex,
}

/// Where everything goes, computed from the manifest alone.
#[derive(Debug)]
struct Plan<'a> {
    path: &'a Path,
    layout: Layout,
    params: Params,
    count: u64,
    json_len: u64,
    end_of_data: u64,
    /// Size of one dataset's object header.
    oh_len: u64,
    /// Entries per symbol table node, children per B-tree node.
    snod_cap: u64,
    tree_cap: u64,
    snod_len: u64,
    node_len: u64,
    root_oh: u64,
    s2i_oh: u64,
    s2i_raw: u64,
    heap: u64,
    heap_data: u64,
    heap_data_len: u64,
    /// Dataset `k`'s header is at `ds_oh + k * oh_len`.
    ds_oh: u64,
    snods: u64,
    snod_count: u64,
    /// Per B-tree level from the leaves up: (address of its first node,
    /// number of nodes); the last level has one node, the root.
    levels: Vec<(u64, u64)>,
    gcol: u64,
    gcol_len: u64,
    end: u64,
}

impl<'a> Plan<'a> {
    fn new(path: &'a Path, m: &Manifest, params: Params) -> Result<Self> {
        let err = |msg: String| Error::Hdf5Write(format!("{}: {msg}", path.display()));
        let too_big = || err("the file would be larger than 2^64 bytes".into());
        if m.layout.dim == 0 || m.layout.lead == Some(0) {
            return Err(err(format!(
                "dataset dimensions other than n must be at least 1, got {:?}",
                m.layout.shape(0)
            )));
        }
        if m.end_of_data < DATA_START {
            return Err(err(format!(
                "the end of the data ({}) is before DATA_START ({DATA_START})",
                m.end_of_data
            )));
        }
        if m.json_len > MAX_JSON_LEN {
            return Err(err(format!(
                "the {SENTENCE_TO_INDEX} JSON has {} bytes; HDF5 variable-length strings hold at most {MAX_JSON_LEN}",
                m.json_len
            )));
        }
        let rank = m.layout.rank();
        // Prefix, dataspace (dims and maximum dims), datatype, fill, layout.
        let oh_len = OH_PREFIX_LEN + (8 + 8 + 16 * rank) + (8 + 24) + (8 + 8) + (8 + 24);
        let snod_cap = 2 * u64::from(params.leaf_k);
        let tree_cap = 2 * u64::from(params.internal_k);
        let snod_len = SNOD_HDR_LEN + snod_cap * ENTRY_LEN;
        let node_len = TREE_HDR_LEN + tree_cap * 8 + (tree_cap + 1) * 8;

        // Past the fixed structures, sizes are checked below.
        let root_oh = m
            .end_of_data
            .checked_next_multiple_of(8)
            .filter(|a| a.checked_add(1 << 16).is_some())
            .ok_or_else(too_big)?;
        let s2i_oh = root_oh + ROOT_OH_LEN;
        let s2i_raw = s2i_oh + S2I_OH_LEN;
        let heap = s2i_raw + VLEN_REF_LEN;
        let heap_data = heap + HEAP_HDR_LEN;
        let names_len = u64::try_from(name_offset(m.count)).map_err(|_| too_big())?;
        let heap_data_len = names_len.checked_add(S2I_NAME_SLOT).ok_or_else(too_big)?;
        let ds_oh = heap_data.checked_add(heap_data_len).ok_or_else(too_big)?;
        let snods = m
            .count
            .checked_mul(oh_len)
            .and_then(|v| v.checked_add(ds_oh))
            .ok_or_else(too_big)?;
        // One more symbol than datasets: sentence_to_index.
        let symbols = m.count.checked_add(1).ok_or_else(too_big)?;
        let snod_count = symbols.div_ceil(snod_cap);
        let mut at = snod_count
            .checked_mul(snod_len)
            .and_then(|v| v.checked_add(snods))
            .ok_or_else(too_big)?;
        let mut levels = Vec::new();
        let mut below = snod_count;
        loop {
            let nodes = below.div_ceil(tree_cap);
            levels.push((at, nodes));
            at = nodes
                .checked_mul(node_len)
                .and_then(|v| v.checked_add(at))
                .ok_or_else(too_big)?;
            if nodes == 1 {
                break;
            }
            below = nodes;
        }
        let gcol = at;
        let gcol_len = gcol_len(m.json_len);
        let end = gcol.checked_add(gcol_len).ok_or_else(too_big)?;
        Ok(Plan {
            path,
            layout: m.layout,
            params,
            count: m.count,
            json_len: m.json_len,
            end_of_data: m.end_of_data,
            oh_len,
            snod_cap,
            tree_cap,
            snod_len,
            node_len,
            root_oh,
            s2i_oh,
            s2i_raw,
            heap,
            heap_data,
            heap_data_len,
            ds_oh,
            snods,
            snod_count,
            levels,
            gcol,
            gcol_len,
            end,
        })
    }

    fn err(&self, msg: impl std::fmt::Display) -> Error {
        Error::Hdf5Write(format!("{}: {msg}", self.path.display()))
    }

    /// The local heap offset of a name (the heap holds `""` at 0, then the
    /// keys' names in key order, then `sentence_to_index`).
    fn name_offset(&self, name: Name) -> u64 {
        // Checked in `new`: the largest offset fits.
        match name {
            Name::Key(k) => name_offset(k) as u64,
            Name::SentenceToIndex => name_offset(self.count) as u64,
        }
    }

    fn header_address(&self, name: Name) -> u64 {
        match name {
            Name::Key(k) => self.ds_oh + k * self.oh_len,
            Name::SentenceToIndex => self.s2i_oh,
        }
    }

    /// The name at position `pos` (0..=count) in the group's name order.
    fn name_at(&self, pos: u64) -> Name {
        if pos == self.count {
            Name::SentenceToIndex
        } else if pos == 0 {
            Name::Key(0)
        } else {
            Name::Key(kth_lexicographic(pos - 1, self.count - 1))
        }
    }

    /// The B-tree key before symbol table node `s` (0..=snod_count): the heap
    /// offset of the last name in node `s - 1`, or of `""` for `s = 0`.
    /// libhdf5 looks a name up in child `i` when `key[i] < name <= key[i+1]`.
    fn boundary(&self, s: u64) -> u64 {
        if s == 0 {
            return 0;
        }
        let last = (u128::from(s) * u128::from(self.snod_cap)).min(u128::from(self.count) + 1) - 1;
        self.name_offset(self.name_at(last as u64))
    }
}

/// Bytes of the local heap before key `k`'s name: the 8-byte `""` slot and
/// the names of keys `0..k`, each its digits and a NUL, padded to 8.
fn name_offset(k: u64) -> u128 {
    let mut off: u128 = 8;
    let mut lo: u128 = 0;
    let mut hi: u128 = 10;
    let k = u128::from(k);
    for digits in 1u128.. {
        let slot = (digits + 1).div_ceil(8) * 8;
        off += (k.min(hi) - lo) * slot;
        if k <= hi {
            break;
        }
        lo = hi;
        hi *= 10;
    }
    off
}

/// How many of `1..=n` have the decimal prefix `prefix`.
fn prefix_count(prefix: u64, n: u64) -> u128 {
    let n = u128::from(n);
    let (mut first, mut next) = (u128::from(prefix), u128::from(prefix) + 1);
    let mut count = 0;
    while first <= n {
        count += next.min(n + 1) - first;
        first *= 10;
        next *= 10;
    }
    count
}

/// The `k`-th (from 0) of `1..=n` in the byte order of their decimal names;
/// `k < n`. Walks the tree of decimal prefixes, skipping whole subtrees.
fn kth_lexicographic(mut k: u64, n: u64) -> u64 {
    let mut cur = 1u64;
    while k > 0 {
        let below = prefix_count(cur, n);
        if below <= u128::from(k) {
            k -= below as u64;
            cur += 1;
        } else {
            k -= 1;
            cur *= 10;
        }
    }
    cur
}

/// The successor of `x` among `1..=n` in name order; only called when there
/// is one.
fn next_lexicographic(x: u64, n: u64) -> u64 {
    if x <= n / 10 {
        return x * 10;
    }
    let mut x = x;
    while x % 10 == 9 || x >= n {
        x /= 10;
    }
    x + 1
}

/// The names of the root group in name order: `"0"`, then `1..count` in
/// name order, then `sentence_to_index`.
struct NameOrder {
    count: u64,
    emitted: u64,
    last: u64,
}

impl Iterator for NameOrder {
    type Item = Name;

    fn next(&mut self) -> Option<Name> {
        let pos = self.emitted;
        if pos > self.count {
            return None;
        }
        self.emitted += 1;
        Some(if pos == self.count {
            Name::SentenceToIndex
        } else if pos == 0 {
            Name::Key(0)
        } else {
            self.last = if pos == 1 {
                1
            } else {
                next_lexicographic(self.last, self.count - 1)
            };
            Name::Key(self.last)
        })
    }
}

fn gcol_len(json_len: u64) -> u64 {
    let used = GCOL_HDR_LEN + GCOL_OBJ_HDR_LEN + align8(json_len);
    let mut len = used.max(GCOL_MIN_LEN);
    // Free space too small for an object header would have to be guessed at
    // by readers; make it a proper free-space object.
    if len > used && len - used < GCOL_OBJ_HDR_LEN {
        len += GCOL_OBJ_HDR_LEN;
    }
    len
}

// ---------------------------------------------------------------------------
// Encoding.

/// A buffered writer that knows its position and names the file in errors.
struct Out<'f, F: Write + Seek> {
    w: BufWriter<&'f mut F>,
    path: &'f Path,
    pos: u64,
}

impl<F: Write + Seek> Out<'_, F> {
    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.w.write_all(bytes).map_err(|e| Error::io(self.path, e))?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn zeros(&mut self, mut n: u64) -> Result<()> {
        const Z: [u8; 4096] = [0; 4096];
        while n > 0 {
            let k = n.min(Z.len() as u64) as usize;
            self.put(&Z[..k])?;
            n -= k as u64;
        }
        Ok(())
    }

    /// Checks that the writer is where the plan says the next structure is
    /// (a mismatch is a bug here, reported rather than written).
    fn at(&self, addr: u64, what: &str) -> Result<()> {
        if self.pos != addr {
            return Err(Error::Hdf5Write(format!(
                "{}: internal error: {what} planned at {addr}, writing at {}",
                self.path.display(),
                self.pos
            )));
        }
        Ok(())
    }
}

trait Put {
    fn u16(&mut self, v: u16);
    fn u32(&mut self, v: u32);
    fn u64(&mut self, v: u64);
    /// A header message's 8-byte prefix: type, data size, flags, reserved.
    fn msg(&mut self, kind: u16, size: u16, flags: u8);
    fn pad8(&mut self);
}

impl Put for Vec<u8> {
    fn u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn msg(&mut self, kind: u16, size: u16, flags: u8) {
        self.u16(kind);
        self.u16(size);
        self.extend_from_slice(&[flags, 0, 0, 0]);
    }
    fn pad8(&mut self) {
        self.resize(self.len().div_ceil(8) * 8, 0);
    }
}

/// A version-1 object header prefix: `messages` messages in `size` bytes.
fn oh_prefix(b: &mut Vec<u8>, messages: u16, size: u64) {
    b.extend_from_slice(&[1, 0]); // version 1, reserved
    b.u16(messages);
    b.u32(1); // reference count
    b.u32(size as u32); // at most a few hundred bytes
    b.u32(0); // alignment of the messages to 8
}

/// A simple dataspace (version 1) with maximum dimensions equal to `dims`,
/// as libhdf5 writes it.
fn dataspace_msg(b: &mut Vec<u8>, dims: &[u64]) {
    b.msg(MSG_DATASPACE, (8 + 16 * dims.len()) as u16, 0);
    b.extend_from_slice(&[1, dims.len() as u8, 1, 0, 0, 0, 0, 0]); // version, rank, max dims present
    for &d in dims.iter().chain(dims) {
        b.u64(d);
    }
}

/// IEEE 754 binary32, little-endian.
fn f32_type_msg(b: &mut Vec<u8>) {
    b.msg(MSG_DATATYPE, 24, MSG_CONSTANT);
    // Version 1, class 1 (floating point); LE, mantissa normalized with the
    // implied msb, sign at bit 31.
    b.extend_from_slice(&[0x11, 0x20, 31, 0]);
    b.u32(4);
    b.u16(0); // bit offset
    b.u16(32); // precision
    b.extend_from_slice(&[23, 8, 0, 23]); // exponent at 23, 8 bits; mantissa at 0, 23 bits
    b.u32(127); // exponent bias
    b.pad8();
}

/// A variable-length UTF-8 string (what h5py makes of `special_dtype(vlen=str)`).
fn vlen_str_type_msg(b: &mut Vec<u8>) {
    b.msg(MSG_DATATYPE, 24, MSG_CONSTANT);
    // Version 1, class 9 (variable-length): a string, null-terminated, UTF-8.
    b.extend_from_slice(&[0x19, 0x01, 0x01, 0]);
    b.u32(VLEN_REF_LEN as u32);
    // Its base type: version 1, class 0 (fixed point), LE unsigned, 1 byte.
    b.extend_from_slice(&[0x10, 0, 0, 0]);
    b.u32(1);
    b.u16(0); // bit offset
    b.u16(8); // precision
    b.pad8();
}

/// Fill value message version 2: allocation late, the given fill time,
/// value "defined" with size 0 (libhdf5's default fill value).
fn fill_msg(b: &mut Vec<u8>, fill_time: u8) {
    b.msg(MSG_FILL_VALUE, 8, MSG_CONSTANT);
    b.extend_from_slice(&[2, 2, fill_time, 1]);
    b.u32(0);
}

/// Contiguous layout, message version 3.
fn contiguous_msg(b: &mut Vec<u8>, addr: u64, size: u64) {
    b.msg(MSG_LAYOUT, 24, 0);
    b.extend_from_slice(&[3, 1]);
    b.u64(addr);
    b.u64(size);
    b.pad8();
}

/// Fill time "if set" (the float datasets) and "at allocation" (libhdf5's
/// choice for variable-length types), as h5py's files have them.
const FILL_TIME_IFSET: u8 = 2;
const FILL_TIME_ALLOC: u8 = 0;

/// Writes everything but the superblock; returns the superblock region's
/// bytes (`DATA_START` of them) to be written last.
fn write_metadata<F: Write + Seek>(
    file: &mut F,
    plan: &Plan,
    entries: impl IntoIterator<Item = Result<DatasetEntry>>,
    json: &mut dyn Read,
) -> Result<Vec<u8>> {
    file.seek(SeekFrom::Start(plan.end_of_data))
        .map_err(|e| Error::io(plan.path, e))?;
    let mut out = Out {
        w: BufWriter::with_capacity(1 << 20, file),
        path: plan.path,
        pos: plan.end_of_data,
    };
    out.zeros(plan.root_oh - plan.end_of_data)?;
    let mut b = Vec::with_capacity(4096);
    let root_btree = plan.levels.last().map_or(UNDEF, |&(addr, _)| addr);

    // The root group: a symbol table message naming its B-tree and heap.
    out.at(plan.root_oh, "root group header")?;
    oh_prefix(&mut b, 1, ROOT_OH_LEN - OH_PREFIX_LEN);
    b.msg(MSG_SYMBOL_TABLE, 16, 0);
    b.u64(root_btree);
    b.u64(plan.heap);

    // sentence_to_index: its header and its one element, the reference.
    oh_prefix(&mut b, 4, S2I_OH_LEN - OH_PREFIX_LEN);
    dataspace_msg(&mut b, &[1]);
    vlen_str_type_msg(&mut b);
    fill_msg(&mut b, FILL_TIME_ALLOC);
    contiguous_msg(&mut b, plan.s2i_raw, VLEN_REF_LEN);
    b.u32(plan.json_len as u32); // checked against MAX_JSON_LEN
    b.u64(plan.gcol);
    b.u32(1); // object 1 of the collection

    // The local heap: header, then the names.
    b.extend_from_slice(b"HEAP");
    b.extend_from_slice(&[0, 0, 0, 0]); // version 0, reserved
    b.u64(plan.heap_data_len);
    b.u64(HEAP_FREE_NULL);
    b.u64(plan.heap_data);
    b.u64(0); // the empty name at offset 0
    out.put(&b)?;
    write_names(&mut out, plan)?;
    out.put(b"sentence_to_index\0\0\0\0\0\0\0")?;

    out.at(plan.ds_oh, "dataset headers")?;
    write_dataset_headers(&mut out, plan, entries)?;

    out.at(plan.snods, "symbol table nodes")?;
    write_symbol_nodes(&mut out, plan)?;

    write_btree(&mut out, plan)?;

    out.at(plan.gcol, "global heap")?;
    write_global_heap(&mut out, plan, json)?;
    out.at(plan.end, "end of file")?;
    out.w.flush().map_err(|e| Error::io(plan.path, e))?;
    Ok(superblock(plan, root_btree))
}

/// The names of keys `0..count` in key order, each padded to 8 bytes.
fn write_names<F: Write + Seek>(out: &mut Out<F>, plan: &Plan) -> Result<()> {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut digits = [0u8; 24];
    for k in 0..plan.count {
        let mut i = digits.len();
        let mut v = k;
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        buf.extend_from_slice(&digits[i..]);
        buf.push(0);
        buf.pad8();
        if buf.len() >= 60 * 1024 {
            out.put(&buf)?;
            buf.clear();
        }
    }
    out.put(&buf)
}

fn write_dataset_headers<F: Write + Seek>(
    out: &mut Out<F>,
    plan: &Plan,
    entries: impl IntoIterator<Item = Result<DatasetEntry>>,
) -> Result<()> {
    let mut it = entries.into_iter();
    let mut b = Vec::with_capacity(plan.oh_len as usize);
    let mut shape = plan.layout.shape(0);
    let n_axis = shape.len() - 2;
    for expected in 0..plan.count {
        let e = match it.next() {
            Some(e) => e?,
            None => {
                return Err(plan.err(format!(
                    "only {expected} datasets given, the manifest says {}",
                    plan.count
                )));
            }
        };
        if e.key != expected {
            return Err(plan.err(if e.key < expected {
                format!(
                    "dataset key {} given after key {} (keys must be 0, 1, 2, ... in order)",
                    e.key,
                    expected - 1
                )
            } else {
                format!("dataset key {expected} is missing (the next key given is {})", e.key)
            }));
        }
        let len = plan.layout.data_len(e.n).map_err(|_| {
            plan.err(format!(
                "dataset {}: shape {:?} has more than 2^64 bytes",
                e.key,
                plan.layout.shape(e.n)
            ))
        })?;
        let addr = if e.n == 0 {
            UNDEF
        } else {
            let fits = e.offset >= DATA_START && e.offset.checked_add(len).is_some_and(|end| end <= plan.end_of_data);
            if !fits {
                return Err(plan.err(format!(
                    "dataset {}: its {len} bytes at offset {} are not within the data [{DATA_START}, {})",
                    e.key, e.offset, plan.end_of_data
                )));
            }
            e.offset
        };
        shape[n_axis] = e.n;
        b.clear();
        oh_prefix(&mut b, 4, plan.oh_len - OH_PREFIX_LEN);
        dataspace_msg(&mut b, &shape);
        f32_type_msg(&mut b);
        fill_msg(&mut b, FILL_TIME_IFSET);
        contiguous_msg(&mut b, addr, len);
        out.put(&b)?;
    }
    if let Some(extra) = it.next() {
        return Err(plan.err(format!(
            "more than {} datasets given (the next one has key {})",
            plan.count, extra?.key
        )));
    }
    Ok(())
}

/// One symbol table entry: name, header address, nothing cached.
fn symbol_entry(b: &mut Vec<u8>, name_offset: u64, header: u64) {
    b.u64(name_offset);
    b.u64(header);
    b.u32(0); // cache type: none
    b.u32(0);
    b.extend_from_slice(&[0; 16]);
}

/// The symbol table nodes, full except the last, names in name order.
fn write_symbol_nodes<F: Write + Seek>(out: &mut Out<F>, plan: &Plan) -> Result<()> {
    let mut names = NameOrder {
        count: plan.count,
        emitted: 0,
        last: 0,
    };
    let mut b = Vec::with_capacity(plan.snod_len as usize);
    let symbols = plan.count + 1;
    for s in 0..plan.snod_count {
        let used = (symbols - s * plan.snod_cap).min(plan.snod_cap);
        b.clear();
        b.extend_from_slice(b"SNOD");
        b.extend_from_slice(&[1, 0]); // version 1, reserved
        b.u16(used as u16); // at most 2 * leaf_k
        for _ in 0..used {
            let name = names.next().ok_or_else(|| plan.err("internal error: names ran out"))?;
            symbol_entry(&mut b, plan.name_offset(name), plan.header_address(name));
        }
        b.resize(plan.snod_len as usize, 0);
        out.put(&b)?;
    }
    Ok(())
}

/// The group's B-tree, level by level from the leaves (whose children are
/// the symbol table nodes) to the root; every node full but the last of its
/// level, siblings linked.
fn write_btree<F: Write + Seek>(out: &mut Out<F>, plan: &Plan) -> Result<()> {
    let mut b = Vec::with_capacity(plan.node_len as usize);
    // Symbol table nodes under one child of a node of the current level.
    let mut span: u128 = 1;
    let mut below = (plan.snods, plan.snod_count, plan.snod_len);
    for (level, &(base, nodes)) in plan.levels.iter().enumerate() {
        out.at(base, "B-tree level")?;
        let (child_base, children, child_len) = below;
        for j in 0..nodes {
            let first = j * plan.tree_cap;
            let last = (first + plan.tree_cap).min(children); // exclusive
            b.clear();
            b.extend_from_slice(b"TREE");
            b.extend_from_slice(&[0, level as u8]); // type 0 (group), level
            b.u16((last - first) as u16); // at most 2 * internal_k
            b.u64(if j > 0 { base + (j - 1) * plan.node_len } else { UNDEF });
            b.u64(if j + 1 < nodes {
                base + (j + 1) * plan.node_len
            } else {
                UNDEF
            });
            for c in first..last {
                b.u64(plan.boundary(snod_index(c, span, plan.snod_count)));
                b.u64(child_base + c * child_len);
            }
            b.u64(plan.boundary(snod_index(last, span, plan.snod_count)));
            b.resize(plan.node_len as usize, 0);
            out.put(&b)?;
        }
        below = (base, nodes, plan.node_len);
        span *= u128::from(plan.tree_cap);
    }
    Ok(())
}

/// The first symbol table node under child `c` of a level whose children
/// each span `span` nodes (or `snod_count` past the end).
fn snod_index(c: u64, span: u128, snod_count: u64) -> u64 {
    (u128::from(c) * span).min(u128::from(snod_count)) as u64
}

/// One collection: object 1 is the JSON, the rest free space (object 0).
fn write_global_heap<F: Write + Seek>(out: &mut Out<F>, plan: &Plan, json: &mut dyn Read) -> Result<()> {
    let mut b = Vec::with_capacity(32);
    b.extend_from_slice(b"GCOL");
    b.extend_from_slice(&[1, 0, 0, 0]); // version 1, reserved
    b.u64(plan.gcol_len);
    b.u16(1); // object index
    b.u16(0); // reference count, as libhdf5 leaves it for vlen data
    b.u32(0);
    b.u64(plan.json_len);
    out.put(&b)?;
    copy_utf8(out, plan, json)?;
    out.zeros(align8(plan.json_len) - plan.json_len)?;
    let used = GCOL_HDR_LEN + GCOL_OBJ_HDR_LEN + align8(plan.json_len);
    let free = plan.gcol_len - used;
    if free > 0 {
        b.clear();
        b.u16(0); // object 0: the free space, its size including this header
        b.u16(0);
        b.u32(0);
        b.u64(free);
        out.put(&b)?;
        out.zeros(free - GCOL_OBJ_HDR_LEN)?;
    }
    Ok(())
}

/// Copies `json_len` bytes from `json`, checking that they are UTF-8 (a
/// sequence split between two reads is carried over to the next).
fn copy_utf8<F: Write + Seek>(out: &mut Out<F>, plan: &Plan, json: &mut dyn Read) -> Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut carry = 0usize;
    let mut done = 0u64;
    while done < plan.json_len {
        let want = ((buf.len() - carry) as u64).min(plan.json_len - done) as usize;
        let got = match json.read(&mut buf[carry..carry + want]) {
            Ok(0) => {
                return Err(plan.err(format!(
                    "the {SENTENCE_TO_INDEX} JSON ended after {done} of {} bytes",
                    plan.json_len
                )));
            }
            Ok(got) => got,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(plan.err(format!(
                    "reading the {SENTENCE_TO_INDEX} JSON after {done} of {} bytes: {e}",
                    plan.json_len
                )));
            }
        };
        let chunk_start = done - carry as u64;
        done += got as u64;
        let len = carry + got;
        let valid = match std::str::from_utf8(&buf[..len]) {
            Ok(_) => len,
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(e) => {
                return Err(plan.err(format!(
                    "the {SENTENCE_TO_INDEX} JSON is not UTF-8 (at byte {})",
                    chunk_start + e.valid_up_to() as u64
                )));
            }
        };
        out.put(&buf[..valid])?;
        buf.copy_within(valid..len, 0);
        carry = len - valid;
    }
    if carry > 0 {
        return Err(plan.err(format!(
            "the {SENTENCE_TO_INDEX} JSON is not UTF-8 (it ends inside a character, at byte {})",
            plan.json_len - carry as u64
        )));
    }
    Ok(())
}

/// Superblock version 0, then zeros up to `DATA_START`.
fn superblock(plan: &Plan, root_btree: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(DATA_START as usize);
    b.extend_from_slice(SIGNATURE);
    // Versions: superblock 0, free space 0, root symbol table entry 0,
    // reserved, shared header messages 0; offsets and lengths of 8 bytes.
    b.extend_from_slice(&[0, 0, 0, 0, 0, 8, 8, 0]);
    b.u16(plan.params.leaf_k);
    b.u16(plan.params.internal_k);
    b.u32(0); // file consistency flags
    b.u64(0); // base address
    b.u64(UNDEF); // free-space info
    b.u64(plan.end); // end of file
    b.u64(UNDEF); // driver information block
    // The root group's symbol table entry, caching its B-tree and heap.
    b.u64(0);
    b.u64(plan.root_oh);
    b.u32(1); // cache type 1: a group's symbol table
    b.u32(0);
    b.u64(root_btree);
    b.u64(plan.heap);
    debug_assert_eq!(b.len(), SUPERBLOCK_LEN);
    b.resize(DATA_START as usize, 0);
    b
}

fn write_superblock<F: Write + Seek>(file: &mut F, path: &Path, superblock: &[u8]) -> Result<()> {
    file.seek(SeekFrom::Start(0)).map_err(|e| Error::io(path, e))?;
    file.write_all(superblock).map_err(|e| Error::io(path, e))?;
    file.flush().map_err(|e| Error::io(path, e))
}
