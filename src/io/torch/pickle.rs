//! A restricted unpickler: the small stack machine of Python's `pickle`,
//! cut down to the opcodes and globals that `torch.save(model.state_dict())`
//! writes, so that reading a state dict runs none of the file's code.
//!
//! What it refuses, and why:
//!
//! * any opcode outside the list in [`Unpickler::run`] (errors name the
//!   opcode byte and its offset): the others build arbitrary objects;
//! * any global outside [`Global`]'s allowlist, at the `GLOBAL` /
//!   `STACK_GLOBAL` opcode itself, before anything else happens: a global is
//!   how a pickle names code (`os.system`, `builtins.eval`) to call;
//! * `REDUCE` on anything but those globals, which are *interpreted* here
//!   (an `OrderedDict()` is an empty dict, `_rebuild_tensor_v2(...)` a
//!   [`TensorRef`]), never called.
//!
//! Everything is bounded by the input: strings and frames against the bytes
//! left, the stack, the marks, the memo and the nesting depth of values by
//! constants, and the copies made by copy-on-write containers by a budget
//! proportional to the input length. Malformed input gives an error, never a
//! panic, unbounded memory or an endless loop (every opcode consumes input).
//!
//! Containers are immutable `Rc`s that are copied on write: the memo keeps
//! the value as it was when it was memoised, where Python keeps the object
//! itself. A torch pickle never fetches a container from the memo after
//! mutating it, and immutable sharing cannot build a reference cycle (which
//! `Rc` would leak), so the difference does not matter here.

use std::collections::HashMap;
use std::rc::Rc;

use super::tensor::{Dtype, StorageRef, TensorRef};

/// A pickle error: what went wrong, and the offset of the opcode at fault
/// (an offset into the buffer given to [`unpickle`], so for a legacy file an
/// offset into the file).
#[derive(Debug)]
pub(crate) struct PickleError {
    /// Offset of the opcode at fault.
    pub offset: usize,
    /// What went wrong.
    pub msg: String,
}

impl std::fmt::Display for PickleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pickle at byte {}: {}", self.offset, self.msg)
    }
}

/// Deepest nesting of containers: state dicts nest 3 or 4 deep; deeper input
/// would make dropping a value recurse without bound.
const MAX_DEPTH: usize = 64;
/// Most values on the stack, and most open marks: far above what a state
/// dict needs (its stack holds a few values per tensor at most).
const MAX_STACK: usize = 1 << 20;
const MAX_MARKS: usize = 1 << 10;
/// Most memo entries (torch memoises each object once: a handful per tensor).
const MAX_MEMO: usize = 1 << 22;
/// Longest `GLOBAL` line (module or name).
const MAX_GLOBAL_LINE: usize = 256;

/// The globals a torch state dict may name: all others are refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Global {
    /// `collections.OrderedDict`: a state dict and its `_metadata`.
    OrderedDict,
    /// `torch._utils._rebuild_tensor_v2`: a tensor (torch ≥ 0.4).
    RebuildTensorV2,
    /// `torch._utils._rebuild_tensor`: a tensor (older torch).
    RebuildTensor,
    /// `torch._utils._rebuild_parameter`: a `Parameter` around a tensor
    /// (what `state_dict(keep_vars=True)` saves).
    RebuildParameter,
    /// A storage type (`torch.FloatStorage`, ...) inside a persistent id.
    Storage(Dtype),
}

impl Global {
    /// The allowed global `module.name`, or `None`.
    fn lookup(module: &str, name: &str) -> Option<Global> {
        match (module, name) {
            ("collections", "OrderedDict") => Some(Global::OrderedDict),
            ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
            ("torch._utils", "_rebuild_tensor") => Some(Global::RebuildTensor),
            ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
            // A model saved from a GPU names `torch.cuda.*Storage`: the
            // bytes are the same, and the storage is only a name here.
            ("torch" | "torch.cuda", storage) => Dtype::from_storage_name(storage).map(Global::Storage),
            _ => None,
        }
    }
}

/// A dict key: the hashable values a torch pickle uses as keys.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    Str(Rc<str>),
    Int(i128),
    Bool(bool),
    None,
}

/// A dict, in insertion order (as Python's; a repeated key keeps its place
/// and takes the new value).
#[derive(Clone, Debug, Default)]
pub(crate) struct Dict {
    /// The items, in insertion order.
    pub items: Vec<(Key, Value)>,
    index: HashMap<Key, usize>,
    depth: usize,
}

/// A list or tuple's items and its nesting depth.
#[derive(Clone, Debug, Default)]
pub(crate) struct Seq {
    /// The items.
    pub items: Vec<Value>,
    depth: usize,
}

/// A value on the unpickler's stack.
#[derive(Clone, Debug)]
pub(crate) enum Value {
    None,
    Bool(bool),
    /// Any integer up to 128 bits (the legacy magic number has 80).
    Int(i128),
    // Floats and bytes mean nothing to a state dict; their values are kept
    // for `Debug` (what error messages show of an unexpected value).
    #[allow(dead_code)]
    Float(f64),
    Str(Rc<str>),
    #[allow(dead_code)]
    Bytes(Rc<[u8]>),
    Tuple(Rc<Seq>),
    List(Rc<Seq>),
    Dict(Rc<Dict>),
    /// An allowed global, not yet applied.
    Global(Global),
    /// A storage, as the persistent-id loader made it.
    Storage(Rc<StorageRef>),
    /// A tensor: `_rebuild_tensor_v2`'s result.
    Tensor(Rc<TensorRef>),
}

impl Value {
    /// Nesting depth: 0 for scalars.
    fn depth(&self) -> usize {
        match self {
            Value::Tuple(s) | Value::List(s) => s.depth,
            Value::Dict(d) => d.depth,
            _ => 0,
        }
    }

    /// A short name of the value's type, for errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }
}

/// A tuple of `items`, refused if it would nest too deep.
fn tuple(items: Vec<Value>) -> std::result::Result<Value, String> {
    let depth = 1 + items.iter().map(Value::depth).max().unwrap_or(0);
    if depth > MAX_DEPTH {
        return Err(format!("values nest deeper than {MAX_DEPTH}"));
    }
    Ok(Value::Tuple(Rc::new(Seq { items, depth })))
}

/// What the caller does with a persistent id (`BINPERSID`): torch's are
/// storages, which the caller describes (and records) as a value.
pub(crate) type PersistentLoad<'a> = dyn FnMut(&Value) -> std::result::Result<Value, String> + 'a;

/// Unpickles the pickle that starts at `start` in `data`, and returns its
/// value and the offset just past its `STOP`.
pub(crate) fn unpickle(
    data: &[u8],
    start: usize,
    persistent_load: &mut PersistentLoad<'_>,
) -> std::result::Result<(Value, usize), PickleError> {
    let mut machine = Unpickler {
        data,
        pos: start,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        // Copy-on-write copies, in items: generous for any real pickle
        // (which copies nothing), linear in the input for a hostile one.
        copy_budget: data.len().saturating_mul(4).saturating_add(1 << 16),
    };
    let mut op_at = start;
    machine
        .run(persistent_load, &mut op_at)
        .map(|value| (value, machine.pos))
        .map_err(|msg| PickleError { offset: op_at, msg })
}

struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    copy_budget: usize,
}

type R<T> = std::result::Result<T, String>;

impl<'a> Unpickler<'a> {
    /// Runs opcodes until `STOP`; `op_at` follows the current opcode's offset
    /// for the caller's error.
    fn run(&mut self, persistent_load: &mut PersistentLoad<'_>, op_at: &mut usize) -> R<Value> {
        // torch writes protocol 2 or later, which begins with PROTO; an
        // older pickle (protocols 0 and 1 have no PROTO) is another format.
        *op_at = self.pos;
        match self.data.get(self.pos) {
            Some(0x80) => {}
            Some(_) => return Err("not a pickle of protocol 2 or later (no PROTO opcode first)".to_string()),
            None => return Err("truncated: no STOP opcode".to_string()),
        }
        loop {
            *op_at = self.pos;
            let op = self.take(1).map_err(|_| "truncated: no STOP opcode".to_string())?[0];
            match op {
                // PROTO
                0x80 => {
                    let proto = self.take(1)?[0];
                    if !(2..=5).contains(&proto) {
                        return Err(format!("pickle protocol {proto} (only 2 to 5 are read)"));
                    }
                }
                // FRAME: a length hint only; the opcodes inside are read as usual.
                0x95 => {
                    let len = self.u64()?;
                    if len > (self.data.len() - self.pos) as u64 {
                        return Err(format!("frame of {len} bytes runs past the end of the input"));
                    }
                }
                // STOP
                b'.' => {
                    if !self.marks.is_empty() {
                        return Err("STOP with a MARK still open".into());
                    }
                    if self.stack.len() != 1 {
                        return Err(format!(
                            "STOP with {} values on the stack (expected 1)",
                            self.stack.len()
                        ));
                    }
                    return self.pop();
                }
                // MARK
                b'(' => {
                    if self.marks.len() >= MAX_MARKS {
                        return Err(format!("more than {MAX_MARKS} open marks"));
                    }
                    self.marks.push(self.stack.len());
                }
                b'}' => self.push(Value::Dict(Rc::default()))?,
                b']' => self.push(Value::List(Rc::new(Seq {
                    items: Vec::new(),
                    depth: 1,
                })))?,
                b')' => self.push(tuple(Vec::new())?)?,
                // TUPLE
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(tuple(items)?)?;
                }
                // TUPLE1, TUPLE2, TUPLE3
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    if self.stack.len() < n + self.marks.last().copied().unwrap_or(0) {
                        return Err(format!("TUPLE{n} with fewer than {n} values on the stack"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push(tuple(items)?)?;
                }
                // BININT, BININT1, BININT2
                b'J' => {
                    let b = self.take(4)?;
                    self.push(Value::Int(i32::from_le_bytes([b[0], b[1], b[2], b[3]]).into()))?;
                }
                b'K' => {
                    let b = self.take(1)?[0];
                    self.push(Value::Int(b.into()))?;
                }
                b'M' => {
                    let b = self.take(2)?;
                    self.push(Value::Int(u16::from_le_bytes([b[0], b[1]]).into()))?;
                }
                // LONG1: little-endian two's complement of 0 to 255 bytes.
                0x8a => {
                    let n = usize::from(self.take(1)?[0]);
                    let b = self.take(n)?;
                    if n > 16 {
                        return Err(format!("LONG1 of {n} bytes (at most 16 are read)"));
                    }
                    let fill = if b.last().is_some_and(|&last| last & 0x80 != 0) {
                        0xff
                    } else {
                        0
                    };
                    let mut le = [fill; 16];
                    le[..n].copy_from_slice(b);
                    self.push(Value::Int(i128::from_le_bytes(le)))?;
                }
                // BINFLOAT: big-endian f64.
                b'G' => {
                    let b = self.take(8)?;
                    let mut be = [0u8; 8];
                    be.copy_from_slice(b);
                    self.push(Value::Float(f64::from_be_bytes(be)))?;
                }
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                // SHORT_BINUNICODE, BINUNICODE, BINUNICODE8; and Python 2's
                // SHORT_BINSTRING, BINSTRING, which torch.load decodes as UTF-8.
                0x8c | b'X' | 0x8d | b'U' | b'T' => {
                    let len = match op {
                        0x8c | b'U' => u64::from(self.take(1)?[0]),
                        0x8d => self.u64()?,
                        b'T' => {
                            let b = self.take(4)?;
                            let len = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                            u64::try_from(len).map_err(|_| format!("BINSTRING of negative length {len}"))?
                        }
                        _ => u64::from(self.u32()?),
                    };
                    let b = self.take_len(len)?;
                    let s = std::str::from_utf8(b).map_err(|e| format!("string is not UTF-8 ({e})"))?;
                    self.push(Value::Str(s.into()))?;
                }
                // SHORT_BINBYTES, BINBYTES
                b'C' | b'B' => {
                    let len = if op == b'C' {
                        u64::from(self.take(1)?[0])
                    } else {
                        u64::from(self.u32()?)
                    };
                    let b = self.take_len(len)?;
                    self.push(Value::Bytes(b.into()))?;
                }
                // GLOBAL: "module\nname\n".
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push_global(module, name)?;
                }
                // STACK_GLOBAL
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (&module, &name) {
                        (Value::Str(m), Value::Str(n)) => {
                            let (m, n) = (m.clone(), n.clone());
                            self.push_global(&m, &n)?;
                        }
                        _ => {
                            return Err(format!(
                                "STACK_GLOBAL on a {} and a {} (expected two str)",
                                module.kind(),
                                name.kind()
                            ));
                        }
                    }
                }
                // REDUCE
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let value = reduce(callable, args)?;
                    self.push(value)?;
                }
                // BUILD: only the state of a state dict (its `_metadata`
                // attribute), which is dropped.
                b'b' => {
                    let _state = self.pop()?;
                    match self.stack.last() {
                        Some(Value::Dict(_)) => {}
                        Some(other) => return Err(format!("BUILD on a {} (only on a dict)", other.kind())),
                        None => return Err("BUILD on an empty stack".into()),
                    }
                }
                // SETITEM, SETITEMS
                b's' | b'u' => {
                    let items = if op == b's' {
                        let value = self.pop()?;
                        let key = self.pop()?;
                        vec![key, value]
                    } else {
                        self.pop_mark()?
                    };
                    if items.len() % 2 != 0 {
                        return Err("SETITEMS with an odd number of values".into());
                    }
                    self.set_items(items)?;
                }
                // APPEND, APPENDS
                b'a' | b'e' => {
                    let items = if op == b'a' {
                        vec![self.pop()?]
                    } else {
                        self.pop_mark()?
                    };
                    self.append(items)?;
                }
                // BINPUT, LONG_BINPUT, MEMOIZE
                b'q' | b'r' | 0x94 => {
                    let index = match op {
                        b'q' => u32::from(self.take(1)?[0]),
                        b'r' => self.u32()?,
                        _ => u32::try_from(self.memo.len()).map_err(|_| "memo too large".to_string())?,
                    };
                    let top = self.stack.last().ok_or("memoising from an empty stack")?.clone();
                    if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&index) {
                        return Err(format!("more than {MAX_MEMO} memo entries"));
                    }
                    self.memo.insert(index, top);
                }
                // BINGET, LONG_BINGET
                b'h' | b'j' => {
                    let index = if op == b'h' {
                        u32::from(self.take(1)?[0])
                    } else {
                        self.u32()?
                    };
                    let value = self
                        .memo
                        .get(&index)
                        .ok_or_else(|| format!("memo entry {index} is not set"))?;
                    let value = value.clone();
                    self.push(value)?;
                }
                // BINPERSID
                b'Q' => {
                    let pid = self.pop()?;
                    let value = persistent_load(&pid)?;
                    self.push(value)?;
                }
                other => return Err(format!("opcode 0x{other:02x} is not supported")),
            }
        }
    }

    /// The next `n` bytes.
    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.data.len());
        match end {
            Some(end) => {
                let b = &self.data[self.pos..end];
                self.pos = end;
                Ok(b)
            }
            None => Err(format!(
                "truncated: {n} bytes needed, {} left",
                self.data.len().saturating_sub(self.pos)
            )),
        }
    }

    /// The next `len` bytes, a length read from the input.
    fn take_len(&mut self, len: u64) -> R<&'a [u8]> {
        let n = usize::try_from(len).map_err(|_| format!("length {len} is too large"))?;
        self.take(n)
    }

    fn u32(&mut self) -> R<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> R<u64> {
        let b = self.take(8)?;
        let mut le = [0u8; 8];
        le.copy_from_slice(b);
        Ok(u64::from_le_bytes(le))
    }

    /// A `GLOBAL` line, without its newline.
    fn line(&mut self) -> R<&'a str> {
        let rest = &self.data[self.pos..];
        let len = rest
            .iter()
            .take(MAX_GLOBAL_LINE + 1)
            .position(|&b| b == b'\n')
            .ok_or_else(|| format!("GLOBAL line without a newline in its first {MAX_GLOBAL_LINE} bytes"))?;
        let line = self.take(len + 1)?;
        std::str::from_utf8(&line[..len]).map_err(|e| format!("GLOBAL line is not UTF-8 ({e})"))
    }

    fn push_global(&mut self, module: &str, name: &str) -> R<()> {
        let global = Global::lookup(module, name).ok_or_else(|| {
            format!(
                "global '{module}.{name}' is refused (a state dict names only collections.OrderedDict, \
                 torch._utils._rebuild_tensor(_v2), torch._utils._rebuild_parameter and torch storage types)"
            )
        })?;
        self.push(Value::Global(global))
    }

    fn push(&mut self, value: Value) -> R<()> {
        if self.stack.len() >= MAX_STACK {
            return Err(format!("more than {MAX_STACK} values on the stack"));
        }
        self.stack.push(value);
        Ok(())
    }

    /// Pops a value, never one below the innermost mark.
    fn pop(&mut self) -> R<Value> {
        if self.stack.len() <= self.marks.last().copied().unwrap_or(0) {
            return Err("stack underflow".into());
        }
        self.stack.pop().ok_or_else(|| "stack underflow".into())
    }

    /// Pops the values above the innermost mark, and the mark.
    fn pop_mark(&mut self) -> R<Vec<Value>> {
        let mark = self.marks.pop().ok_or("no MARK to pop to")?;
        Ok(self.stack.split_off(mark.min(self.stack.len())))
    }

    /// Charges a copy-on-write copy of `n` items.
    fn charge(&mut self, n: usize) -> R<()> {
        self.copy_budget = self
            .copy_budget
            .checked_sub(n)
            .ok_or("too many copies of shared containers")?;
        Ok(())
    }

    /// SETITEM(S): `items` alternate keys and values.
    fn set_items(&mut self, items: Vec<Value>) -> R<()> {
        let Some(Value::Dict(dict)) = self.stack.last() else {
            let kind = self.stack.last().map_or("nothing", Value::kind);
            return Err(format!("SETITEM on a {kind} (only on a dict)"));
        };
        if Rc::strong_count(dict) > 1 {
            let n = dict.items.len();
            self.charge(n)?;
        }
        let Some(Value::Dict(dict)) = self.stack.last_mut() else {
            return Err("SETITEM on a non-dict".into());
        };
        let dict = Rc::make_mut(dict);
        let mut items = items.into_iter();
        while let (Some(key), Some(value)) = (items.next(), items.next()) {
            let key = match key {
                Value::Str(s) => Key::Str(s),
                Value::Int(i) => Key::Int(i),
                Value::Bool(b) => Key::Bool(b),
                Value::None => Key::None,
                other => return Err(format!("dict key is a {} (only str, int, bool or None)", other.kind())),
            };
            let depth = value.depth() + 1;
            if depth > MAX_DEPTH {
                return Err(format!("values nest deeper than {MAX_DEPTH}"));
            }
            dict.depth = dict.depth.max(depth);
            match dict.index.get(&key) {
                Some(&i) => dict.items[i].1 = value,
                None => {
                    dict.index.insert(key.clone(), dict.items.len());
                    dict.items.push((key, value));
                }
            }
        }
        Ok(())
    }

    /// APPEND(S) onto a list.
    fn append(&mut self, items: Vec<Value>) -> R<()> {
        let Some(Value::List(list)) = self.stack.last() else {
            let kind = self.stack.last().map_or("nothing", Value::kind);
            return Err(format!("APPEND on a {kind} (only on a list)"));
        };
        if Rc::strong_count(list) > 1 {
            let n = list.items.len();
            self.charge(n)?;
        }
        let Some(Value::List(list)) = self.stack.last_mut() else {
            return Err("APPEND on a non-list".into());
        };
        let list = Rc::make_mut(list);
        let depth = 1 + items.iter().map(Value::depth).max().unwrap_or(0);
        if depth > MAX_DEPTH {
            return Err(format!("values nest deeper than {MAX_DEPTH}"));
        }
        list.depth = list.depth.max(depth);
        list.items.extend(items);
        Ok(())
    }
}

/// REDUCE: the allowed globals, interpreted.
fn reduce(callable: Value, args: Value) -> R<Value> {
    let Value::Global(global) = callable else {
        return Err(format!("REDUCE on a {} (only on an allowed global)", callable.kind()));
    };
    let Value::Tuple(args) = args else {
        return Err(format!("REDUCE with a {} of arguments (expected a tuple)", args.kind()));
    };
    let args = &args.items;
    match global {
        Global::OrderedDict if args.is_empty() => Ok(Value::Dict(Rc::default())),
        Global::OrderedDict => Err("OrderedDict() with arguments".into()),
        // (storage, storage_offset, size, stride, requires_grad,
        // backward_hooks[, metadata]); _rebuild_tensor has the first four.
        Global::RebuildTensorV2 | Global::RebuildTensor => {
            let (least, most) = if global == Global::RebuildTensor {
                (4, 4)
            } else {
                (6, 7)
            };
            if !(least..=most).contains(&args.len()) {
                return Err(format!(
                    "tensor rebuilt from {} arguments (expected {least} to {most})",
                    args.len()
                ));
            }
            let Value::Storage(storage) = &args[0] else {
                return Err(format!("tensor rebuilt from a {} (expected a storage)", args[0].kind()));
            };
            let offset = index(&args[1], "storage offset")?;
            let size = dims(&args[2], "size")?;
            let stride = dims(&args[3], "stride")?;
            if size.len() != stride.len() {
                return Err(format!("tensor with {} sizes and {} strides", size.len(), stride.len()));
            }
            Ok(Value::Tensor(Rc::new(TensorRef {
                storage: storage.clone(),
                offset,
                size,
                stride,
            })))
        }
        // (data, requires_grad, backward_hooks): the tensor itself.
        Global::RebuildParameter => match args.first() {
            Some(tensor @ Value::Tensor(_)) if args.len() == 3 => Ok(tensor.clone()),
            _ => Err("_rebuild_parameter with arguments other than (tensor, bool, hooks)".into()),
        },
        Global::Storage(dtype) => Err(format!("storage type {} called", dtype.storage_name())),
    }
}

/// A non-negative integer that fits `usize`.
fn index(value: &Value, what: &str) -> R<usize> {
    match value {
        Value::Int(i) => usize::try_from(*i).map_err(|_| format!("{what} {i} is negative or too large")),
        other => Err(format!("{what} is a {} (expected an int)", other.kind())),
    }
}

/// A tuple of non-negative integers (a size or stride).
fn dims(value: &Value, what: &str) -> R<Vec<usize>> {
    match value {
        Value::Tuple(t) => t.items.iter().map(|v| index(v, what)).collect(),
        other => Err(format!("{what} is a {} (expected a tuple)", other.kind())),
    }
}
