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
//! allennlp), readable by libhdf5 1.8 and later and by pure-Rust readers:
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
//! Metadata costs 208 bytes per dataset of rank 3 (measured at a million:
//! a 160-byte header, a 40-byte symbol table entry, 8 bytes of name, 16 from
//! key 10,000,000 on; B-tree nodes 0.1 byte), 16 fewer for rank 2. For a
//! million datasets `finish` takes 0.2 s (into the page cache) and under
//! 4 MB of memory; for 20 million, 16 s (disk-bound) and the same memory
//! (`cargo bench --bench hdf5_out`). The JSON is limited to
//! [`MAX_JSON_LEN`] bytes (4 GiB - 1): a variable-length string's reference
//! holds its length in 32 bits, in libhdf5's files as in ours. `count` is
//! limited only by 64-bit file addresses. Readers: libhdf5 loads a group's
//! whole local heap when it opens the group (16 bytes per name from ten
//! million on; 720 MB for 50 million lines), as it does for allennlp's own
//! files.
//!
//! # Why not a crate
//!
//! The pure-Rust HDF5 writers looked at (2026) miss the two needs that
//! matter here: millions of datasets in one group with memory bounded
//! independently of their number, and raw data that the caller has already
//! appended at known offsets during a long run (the resume protocol above),
//! with all metadata written at the end:
//!
//! * `hdf5-pure` (0.x, 0.1 to 0.45 seen, the API still moving): files are
//!   built by `FileBuilder`, which owns every dataset with its data until it
//!   serializes the file; later versions add in-place edits (metadata
//!   rebuilt at the end of the file, the superblock repointed) and appends
//!   to chunked datasets, but data still goes through the crate, which
//!   cannot refer to bytes the caller placed, and it writes new-style groups
//!   (superblock 2/3, link messages).
//! * `rust-hdf5`: datasets are created through an `H5File` handle and their
//!   data passed to `write_raw` / `write_chunk`; the crate decides where
//!   bytes go and tracks every dataset until `close`, so neither the caller's
//!   offsets nor a rebuild of a crashed run's metadata fit its model.
//! * `hdf5-rust` (2.0): writes superblock version 2 with compact groups only
//!   (all links in the group's object header: not for millions of links) and
//!   no variable-length strings.
//! * `hdf5-pure-rust`: releases yanked, marked "under construction"; a
//!   `WritableFile` builder that writes on `flush` / `close`.
//! * `hdf5-writer` (0.9): builds a whole `Hdf5WritePlan` in memory (every
//!   dataset and its data) before encoding it.
//!
//! The subset needed here is small (six structure kinds), so it is written
//! here from the HDF5 File Format Specification, with the choices libhdf5
//! makes where the specification leaves one (message flags, fill value
//! message, free-list end, collection minimum size), and checked in the tests
//! against the `hdf5-reader` crate and libhdf5 through h5py (run with
//! libhdf5 1.12.2, 1.14.6 and 2.0.0: reading, and adding and deleting
//! datasets in a copy).

use std::io::{Read, Seek, Write};
use std::path::Path;

use crate::error::{Error, Result};
use names::{Name, kth_lexicographic, name_offset};
use write::{clear_signature, write_metadata, write_superblock};

mod names;
#[cfg(test)]
mod tests;
mod write;

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
/// [`finish_file`] does, and syncs. On error the data is untouched and the
/// file has no valid superblock: an earlier one's signature is cleared
/// before any metadata is written (a manifest refused up front writes
/// nothing).
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
    clear_signature(file, path)?;
    let superblock = write_metadata(file, &plan, entries, json)?;
    write_superblock(file, path, &superblock)?;
    Ok(plan.end)
}

/// [`finish`] on a file, with syncs between the steps so that after a crash
/// the superblock never points to metadata that is not on disk: clears an
/// old superblock's signature (sync), writes the metadata (sync), then the
/// superblock, sets the file's length to the end of the metadata (sync).
pub fn finish_file(
    file: &mut std::fs::File,
    path: &Path,
    manifest: &Manifest,
    entries: impl IntoIterator<Item = Result<DatasetEntry>>,
    json: &mut dyn Read,
) -> Result<u64> {
    let plan = Plan::new(path, manifest, Params::DEFAULT)?;
    clear_signature(file, path)?;
    file.sync_data().map_err(|e| Error::io(path, e))?;
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
