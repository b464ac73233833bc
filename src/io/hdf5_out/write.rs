//! Encoding the structures and writing them in one sequential pass.

use std::io::{BufWriter, ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::names::NameOrder;
use super::*;

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
pub(super) fn write_metadata<F: Write + Seek>(
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
    let mut names = NameOrder::new(plan.count);
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

/// Clears the signature of a superblock an earlier `finish` wrote, so that
/// a file whose metadata is being rewritten is not taken for a valid one.
pub(super) fn clear_signature<F: Write + Seek>(file: &mut F, path: &Path) -> Result<()> {
    write_superblock(file, path, &[0; SIGNATURE.len()])
}

pub(super) fn write_superblock<F: Write + Seek>(file: &mut F, path: &Path, superblock: &[u8]) -> Result<()> {
    file.seek(SeekFrom::Start(0)).map_err(|e| Error::io(path, e))?;
    file.write_all(superblock).map_err(|e| Error::io(path, e))?;
    file.flush().map_err(|e| Error::io(path, e))
}
