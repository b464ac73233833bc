//! The text of `sentence_to_index`: the JSON object from each sentence to
//! its key, written piece by piece as sentences are done, byte for byte as
//! Python's `json.dumps` writes allennlp's (`", "` and `": "` separators,
//! non-ASCII as `\uXXXX` escapes).
//!
//! A sentence that occurs twice appears twice; `json.loads` keeps the last,
//! which is the key allennlp's dict ends with too.

/// Appends `"text": "key"` (with `", "` before it unless it is the first
/// entry) to `out`.
pub fn push_entry(out: &mut Vec<u8>, first: bool, text: &str, key: u64) {
    if !first {
        out.extend_from_slice(b", ");
    }
    push_string(out, text);
    out.extend_from_slice(b": \"");
    out.extend_from_slice(key.to_string().as_bytes());
    out.push(b'"');
}

/// A JSON string literal as `json.dumps(s)` (ensure_ascii) writes it.
pub fn push_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            // Python escapes everything outside ' '..='~' (its ESCAPE_ASCII).
            c if !(' '..='~').contains(&c) => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.extend_from_slice(format!("\\u{u:04x}").as_bytes());
                }
            }
            c => out.push(c as u8),
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_python_json_dumps() {
        // json.dumps({'a "b"': '0', 'é\t\u0001\x7f😀\\': '1'}) in Python 3.
        let mut out = b"{".to_vec();
        push_entry(&mut out, true, "a \"b\"", 0);
        push_entry(&mut out, false, "é\t\u{1}\u{7f}😀\\", 1);
        out.push(b'}');
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a \"b\"": "0", "\u00e9\t\u0001\u007f\ud83d\ude00\\": "1"}"#
        );
        // And serde_json reads it back.
        let mut out = b"{".to_vec();
        push_entry(&mut out, true, "x\u{2028}y", 7);
        out.push(b'}');
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["x\u{2028}y"], "7");
    }
}
