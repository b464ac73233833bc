//! NumPy object arrays (`np.save(..., allow_pickle=True)`, as in Keras'
//! `imdb.npz`) of lists of integers, decoded by the `serde-pickle` crate.
//!
//! Nothing is executed. serde-pickle keeps a global it does not know (NumPy's
//! `_reconstruct` of `numpy.core.multiarray`, `numpy._core` since NumPy 2,
//! `numpy.ndarray`, `numpy.dtype`) as an inert stand-in, `REDUCE` on one gives another stand-in, and `BUILD`
//! replaces an object by its state; a pickled NumPy array thus decodes to the
//! tuple its `__setstate__` receives, `(version, shape, dtype, fortran order,
//! data)`, where an object array's data is the list of its objects. The
//! stored, compressed and protocol-2 (Python 2, Keras' own file) encodings of
//! `tests/fixtures/imdb_mini` all decode so, with the default options.
//!
//! Not for torch state dicts (a later need), as of serde-pickle 1.2: it
//! refuses persistent ids, which torch's pickles use for every tensor's
//! storage (`BINPERSID`: "unsupported opcode 'Q'"), and the
//! `collections.OrderedDict` a state dict is (`REDUCE`, then `SETITEMS` into
//! the stand-in: "invalid stack top, expected dict, got Global(Other)"; the
//! same with `keep_restore_state`, "got Tuple([])"). That needs another crate
//! or a reader of our own.
//!
//! serde-pickle is slower than the hand-written reader this module had: the
//! pickle of 25,000 IMDB-like reviews (21.7 MB) in 0.30-0.51 s against
//! 0.18-0.29 s (medians of 14, several runs); a once-per-load cost.

use crate::error::{Error, Result};

/// A decoded pickle value (serde-pickle's).
pub use serde_pickle::Value;

fn err(m: impl std::fmt::Display) -> Error {
    Error::Input(format!("pickle: {m}"))
}

/// Decodes one pickle (protocols 0 to 5).
pub fn load(bytes: &[u8]) -> Result<Value> {
    serde_pickle::value_from_slice(bytes, serde_pickle::DeOptions::new()).map_err(err)
}

/// The elements of a pickled NumPy object array: the list in its state
/// `(version, shape, dtype, fortran order, [objects])`, as many as the shape
/// says.
pub fn numpy_object_array(v: &Value) -> Result<&[Value]> {
    let Value::Tuple(state) = v else {
        return Err(err("not a pickled NumPy array (its state is not a tuple)"));
    };
    let [
        _version,
        Value::Tuple(shape),
        _dtype,
        Value::Bool(_fortran),
        Value::List(items),
    ] = state.as_slice()
    else {
        return Err(err(
            "not a NumPy object array (no (version, shape, dtype, fortran order, [objects]) state)",
        ));
    };
    let count = shape.iter().try_fold(1u64, |n, d| match d {
        Value::I64(d) => u64::try_from(*d).ok().and_then(|d| n.checked_mul(d)),
        _ => None,
    });
    if count != Some(items.len() as u64) {
        return Err(err(format!(
            "NumPy object array of shape {shape:?} holds {} objects",
            items.len()
        )));
    }
    Ok(items)
}

/// A pickled list of ints as `Vec<i64>`.
pub fn int_list(v: &Value) -> Result<Vec<i64>> {
    match v {
        Value::List(l) => l
            .iter()
            .map(|x| match x {
                Value::I64(i) => Ok(*i),
                Value::Int(_) => Err(err("integer too large")),
                _ => Err(err("expected a list of integers")),
            })
            .collect(),
        _ => Err(err("expected a list")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `pickle.dumps(a, protocol=2)` and `protocol=4` with NumPy 2.4, for the
    /// object array `a` of the lists `[1, 2]` and `[3]`: where the byte of its
    /// shape `(2,)` is.
    const PROTOCOL_2: (&str, usize) = (
        "8002636e756d70792e5f636f72652e6d756c746961727261790a5f7265636f6e7374727563740a7100636e756d70790a6e6461\
         727261790a71014b00857102635f636f646563730a656e636f64650a7103580100000062710458060000006c6174696e3171\
         05867106527107877108527109284b014b0285710a636e756d70790a64747970650a710b58020000004f38710c898887710d\
         52710e284b0358010000007c710f4e4e4e4affffffff4affffffff4b3f74711062895d7111285d7112284b014b02655d7113\
         4b036165747114622e",
        118,
    );
    const PROTOCOL_4: (&str, usize) = (
        "80049597000000000000008c166e756d70792e5f636f72652e6d756c74696172726179948c0c5f7265636f6e737472756374\
         9493948c056e756d7079948c076e6461727261799493944b0085944301629487945294284b014b02859468038c0564747970\
         659493948c024f3894898887945294284b038c017c944e4e4e4affffffff4affffffff4b3f749462895d94285d94284b014b\
         02655d944b0361657494622e",
        89,
    );

    fn unhex(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn reads_numpy_object_arrays_of_int_lists() {
        for (hex, shape_at) in [PROTOCOL_2, PROTOCOL_4] {
            let mut bytes = unhex(hex);
            let v = load(&bytes).unwrap();
            let lists: Vec<Vec<i64>> = numpy_object_array(&v)
                .unwrap()
                .iter()
                .map(|x| int_list(x).unwrap())
                .collect();
            assert_eq!(lists, vec![vec![1, 2], vec![3]]);
            // The shape says 3 objects, the list holds 2.
            assert_eq!(bytes[shape_at], 2);
            bytes[shape_at] = 3;
            let msg = numpy_object_array(&load(&bytes).unwrap()).unwrap_err().to_string();
            assert!(msg.contains("holds 2 objects"), "{msg}");
        }
    }

    #[test]
    fn refuses_what_is_not_an_object_array_of_int_lists() {
        assert!(int_list(&Value::I64(1)).is_err());
        assert!(int_list(&Value::List(vec![Value::F64(1.0)])).is_err());
        assert!(numpy_object_array(&Value::List(vec![])).is_err());
        assert!(numpy_object_array(&Value::Tuple(vec![Value::I64(1)])).is_err());
        // Truncated anywhere, or corrupted: an error or a value, never a panic.
        let good = unhex(PROTOCOL_2.0);
        for cut in 0..good.len() {
            assert!(load(&good[..cut]).is_err(), "prefix of {cut} bytes accepted");
        }
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0xFF;
            let _ = load(&bad).map(|v| numpy_object_array(&v).map(|items| items.len()));
        }
        // Persistent ids (torch's storages) are refused.
        let msg = load(b"\x80\x02X\x03\x00\x00\x00keyq\x00Q.").unwrap_err().to_string();
        assert!(msg.contains("'Q'"), "{msg}");
    }
}
