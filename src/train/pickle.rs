//! A minimal, safe reader of Python pickles: enough to decode NumPy object
//! arrays (`np.save(..., allow_pickle=True)`, as in Keras' `imdb.npz`) of
//! lists of integers. Nothing is executed: globals are recorded by name and
//! `REDUCE`/`BUILD` build inert values that the caller interprets.

use crate::error::{Error, Result};
use std::cell::RefCell;
use std::rc::Rc;

/// A decoded pickle value.
#[derive(Debug, Clone)]
pub enum Value {
    /// `None`.
    None,
    /// A bool.
    Bool(bool),
    /// An int (big ints that do not fit are an error).
    Int(i64),
    /// A float.
    Float(f64),
    /// A text string.
    Str(String),
    /// A byte string (also Python 2 `str`).
    Bytes(Vec<u8>),
    /// A list (shared, because pickles append to lists after memoizing them).
    List(Rc<RefCell<Vec<Value>>>),
    /// A tuple.
    Tuple(Vec<Value>),
    /// A dict, as pairs.
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    /// A global reference `module.name`.
    Global(String, String),
    /// `callable(*args)`, not executed.
    Call(Box<Value>, Vec<Value>),
    /// `obj.__setstate__(state)`, not executed.
    Built(Box<Value>, Box<Value>),
}

fn err(m: impl Into<String>) -> Error {
    Error::Input(format!("pickle: {}", m.into()))
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| err("truncated"))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn le(&mut self, n: usize) -> Result<u64> {
        Ok(self.take(n)?.iter().rev().fold(0u64, |a, &x| (a << 8) | x as u64))
    }
    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.b[self.pos..];
        let n = rest
            .iter()
            .position(|&c| c == b'\n')
            .ok_or_else(|| err("unterminated line"))?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| err("non-UTF-8 text"))?;
        self.pos += n + 1;
        Ok(s)
    }
}

/// Decodes one pickle (protocols 0 to 5, the opcodes NumPy and Python use for
/// arrays, lists, tuples, dicts, numbers and strings).
pub fn load(bytes: &[u8]) -> Result<Value> {
    let mut r = Reader { b: bytes, pos: 0 };
    let mut stack: Vec<Value> = Vec::new();
    let mut marks: Vec<usize> = Vec::new();
    let mut memo: std::collections::HashMap<u64, Value> = std::collections::HashMap::new();
    let pop = |stack: &mut Vec<Value>| stack.pop().ok_or_else(|| err("stack underflow"));
    loop {
        let op = r.u8()?;
        match op {
            0x80 => {
                r.u8()?; // PROTO
            }
            0x95 => {
                r.take(8)?; // FRAME
            }
            b'.' => return pop(&mut stack), // STOP
            b'(' => marks.push(stack.len()),
            b']' => stack.push(Value::List(Rc::new(RefCell::new(Vec::new())))),
            b')' => stack.push(Value::Tuple(Vec::new())),
            b'}' => stack.push(Value::Dict(Rc::new(RefCell::new(Vec::new())))),
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Bool(true)),
            0x89 => stack.push(Value::Bool(false)),
            b'J' => stack.push(Value::Int(r.le(4)? as u32 as i32 as i64)),
            b'K' => stack.push(Value::Int(r.le(1)? as i64)),
            b'M' => stack.push(Value::Int(r.le(2)? as i64)),
            0x8a => {
                // LONG1: n bytes of little-endian two's complement
                let n = r.u8()? as usize;
                if n > 8 {
                    return Err(err("integer too large"));
                }
                let raw = r.le(n)?;
                let v = if n == 0 {
                    0
                } else {
                    let shift = 64 - 8 * n as u32;
                    ((raw << shift) as i64) >> shift
                };
                stack.push(Value::Int(v));
            }
            b'I' | b'L' => {
                let l = r.line()?.trim_end_matches('L');
                stack.push(match l {
                    "01" => Value::Bool(true),
                    "00" => Value::Bool(false),
                    _ => Value::Int(l.parse().map_err(|_| err(format!("bad integer {l:?}")))?),
                });
            }
            b'G' => stack.push(Value::Float(f64::from_bits(u64::from_be_bytes(
                r.take(8)?.try_into().expect("8"),
            )))),
            b'U' | b'C' => {
                let n = r.u8()? as usize;
                stack.push(Value::Bytes(r.take(n)?.to_vec()));
            }
            b'T' | b'B' => {
                let n = r.le(4)? as usize;
                stack.push(Value::Bytes(r.take(n)?.to_vec()));
            }
            0x8e => {
                let n = usize::try_from(r.le(8)?).map_err(|_| err("too long"))?;
                stack.push(Value::Bytes(r.take(n)?.to_vec()));
            }
            0x8c | b'X' | 0x8d => {
                let n = match op {
                    0x8c => r.u8()? as usize,
                    b'X' => r.le(4)? as usize,
                    _ => usize::try_from(r.le(8)?).map_err(|_| err("too long"))?,
                };
                let s = std::str::from_utf8(r.take(n)?).map_err(|_| err("invalid UTF-8 string"))?;
                stack.push(Value::Str(s.to_string()));
            }
            b'c' => {
                let module = r.line()?.to_string();
                let name = r.line()?.to_string();
                stack.push(Value::Global(module, name));
            }
            0x93 => {
                let name = pop(&mut stack)?;
                let module = pop(&mut stack)?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => stack.push(Value::Global(m, n)),
                    _ => return Err(err("STACK_GLOBAL needs two strings")),
                }
            }
            b'a' => {
                let v = pop(&mut stack)?;
                match stack.last() {
                    Some(Value::List(l)) => l.borrow_mut().push(v),
                    _ => return Err(err("APPEND to a non-list")),
                }
            }
            b'e' | b'l' | b't' | b'u' | b's' => {
                let items = if op == b's' {
                    let v = pop(&mut stack)?;
                    let k = pop(&mut stack)?;
                    vec![k, v]
                } else {
                    let m = marks.pop().ok_or_else(|| err("no MARK"))?;
                    if m > stack.len() {
                        return Err(err("bad MARK"));
                    }
                    stack.split_off(m)
                };
                match op {
                    b'e' => match stack.last() {
                        Some(Value::List(l)) => l.borrow_mut().extend(items),
                        _ => return Err(err("APPENDS to a non-list")),
                    },
                    b'l' => stack.push(Value::List(Rc::new(RefCell::new(items)))),
                    b't' => stack.push(Value::Tuple(items)),
                    _ => match stack.last() {
                        Some(Value::Dict(d)) => {
                            let mut it = items.into_iter();
                            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                                d.borrow_mut().push((k, v));
                            }
                        }
                        _ => return Err(err("SETITEMS on a non-dict")),
                    },
                }
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    return Err(err("stack underflow"));
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(Value::Tuple(items));
            }
            b'R' | 0x81 => {
                let args = match pop(&mut stack)? {
                    Value::Tuple(t) => t,
                    _ => return Err(err("REDUCE arguments must be a tuple")),
                };
                let f = pop(&mut stack)?;
                stack.push(Value::Call(Box::new(f), args));
            }
            b'b' => {
                let state = pop(&mut stack)?;
                let obj = pop(&mut stack)?;
                stack.push(Value::Built(Box::new(obj), Box::new(state)));
            }
            b'q' | b'r' | 0x94 | b'p' => {
                let key = match op {
                    b'q' => r.le(1)?,
                    b'r' => r.le(4)?,
                    b'p' => r.line()?.parse().map_err(|_| err("bad PUT"))?,
                    _ => memo.len() as u64,
                };
                let top = stack.last().ok_or_else(|| err("memoize of nothing"))?.clone();
                memo.insert(key, top);
            }
            b'h' | b'j' | b'g' => {
                let key = match op {
                    b'h' => r.le(1)?,
                    b'j' => r.le(4)?,
                    _ => r.line()?.parse().map_err(|_| err("bad GET"))?,
                };
                stack.push(
                    memo.get(&key)
                        .cloned()
                        .ok_or_else(|| err(format!("memo {key} missing")))?,
                );
            }
            b'0' => {
                pop(&mut stack)?;
            }
            b'2' => {
                let top = stack.last().ok_or_else(|| err("DUP of nothing"))?.clone();
                stack.push(top);
            }
            other => return Err(err(format!("unsupported opcode 0x{other:02x} at byte {}", r.pos - 1))),
        }
    }
}

/// The elements of a pickled NumPy object array (`ndarray` rebuilt by
/// `_reconstruct` and `__setstate__((version, shape, dtype, fortran, data))`).
pub fn numpy_object_array(v: &Value) -> Result<Vec<Value>> {
    let Value::Built(obj, state) = v else {
        return Err(err("not a pickled NumPy array"));
    };
    let is_ndarray = matches!(&**obj, Value::Call(f, _) if matches!(&**f, Value::Global(_, n) if n == "_reconstruct"));
    let Value::Tuple(st) = &**state else {
        return Err(err("NumPy array state is not a tuple"));
    };
    match (is_ndarray, st.last()) {
        (true, Some(Value::List(items))) => Ok(items.borrow().clone()),
        _ => Err(err("not a NumPy object array (no list of objects in its state)")),
    }
}

/// A pickled list of ints as `Vec<i64>`.
pub fn int_list(v: &Value) -> Result<Vec<i64>> {
    match v {
        Value::List(l) => l
            .borrow()
            .iter()
            .map(|x| match x {
                Value::Int(i) => Ok(*i),
                _ => Err(err("expected a list of integers")),
            })
            .collect(),
        _ => Err(err("expected a list")),
    }
}
