//! TensorFlow's V2 tensor bundle: the `.index` table (an SSTable of
//! BundleEntryProto records) and the data shards it points into.

use super::*;

// ---------------------------------------------------------------------------
// The table (SSTable) of the `.index` file.

pub(super) const TABLE_MAGIC: u64 = 0xdb47_7524_8b80_fb57;
pub(super) const FOOTER_LEN: usize = 48;
pub(super) const BLOCK_TRAILER_LEN: usize = 5;
/// Largest `.index` file read (real ones are a few KiB; 1 MiB holds many
/// thousands of variables).
pub(super) const MAX_INDEX_BYTES: u64 = 256 << 20;

/// A key and its value inside a block.
pub(super) type Entry<'a> = (Vec<u8>, &'a [u8]);
/// A key and its value, copied out of its block.
pub(super) type OwnedEntry = (Vec<u8>, Vec<u8>);

#[derive(Debug, Clone, Copy)]
pub(super) struct BlockHandle {
    pub(super) offset: u64,
    pub(super) size: u64,
}

pub(super) fn block_handle(buf: &[u8], pos: &mut usize) -> Option<BlockHandle> {
    Some(BlockHandle {
        offset: varint(buf, pos)?,
        size: varint(buf, pos)?,
    })
}

/// The contents of the block at `h`, its checksum verified, decompressed.
pub(super) fn read_block<'a>(file: &'a [u8], h: BlockHandle, what: &str) -> Msg<Cow<'a, [u8]>> {
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
pub(super) fn block_entries(block: &[u8]) -> Msg<Vec<Entry<'_>>> {
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
pub(super) fn read_table(file: &[u8]) -> Msg<Vec<OwnedEntry>> {
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
    pub(super) fn float_size(self) -> Option<usize> {
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

pub(super) fn parse_shape(buf: &[u8]) -> Msg<Vec<usize>> {
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

pub(super) fn parse_entry(name: &str, buf: &[u8]) -> Msg<Variable> {
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
pub(super) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
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
    pub(super) prefix: PathBuf,
    pub(super) index_path: PathBuf,
    pub(super) num_shards: u32,
    pub(super) variables: Vec<Variable>,
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
    pub(super) fn read_bytes(&self, v: &Variable) -> Result<Vec<u8>> {
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

pub(super) fn parse_header(buf: &[u8]) -> Msg<u32> {
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
pub(super) fn prefix_from_state(state: &Path, dir: &Path) -> Result<PathBuf> {
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
pub(super) fn unquote(s: &str) -> Option<String> {
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
