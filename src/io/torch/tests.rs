//! The reader on the ELMoForManyLangs fixtures (legacy and zip), on the
//! edge cases of tests/fixtures/efml/make_torch_edge_cases.py (its
//! `expected.json` comes from an independent reader), and on hostile input.

use std::path::{Path, PathBuf};

use super::pickle::{Value, unpickle};
use super::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/efml")
        .join(name)
}

fn bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).expect("fixture")
}

/// The error message of reading `data`, which must fail with `Error::Torch`.
fn torch_err(data: &[u8]) -> String {
    match read_state_dict_bytes(Path::new("x.pt"), data) {
        Err(Error::Torch { path, msg }) => {
            assert_eq!(path, Path::new("x.pt"));
            msg
        }
        Err(other) => panic!("not a torch error: {other}"),
        Ok(t) => panic!("read {} tensors", t.len()),
    }
}

#[test]
fn fixtures_match_the_independent_reader() {
    let expected: serde_json::Value = serde_json::from_slice(&bytes("torch/expected.json")).expect("expected.json");
    let files = expected.as_object().expect("an object");
    assert_eq!(files.len(), 8);
    // (oob_zip.pt is not listed: a_view_past_its_storage_is_an_error.)
    for (file, rows) in files {
        let rows = rows.as_array().expect("rows");
        let result = read_state_dict(&fixture(file));
        if let Some(row) = rows.iter().find(|r| r["dtype"] != "FloatStorage") {
            let msg = result.expect_err(file).to_string();
            let name = row["name"].as_str().expect("name");
            assert!(
                msg.contains(&format!("tensor '{name}' is float64 (torch.DoubleStorage)")),
                "{msg}"
            );
            assert!(msg.contains("only float32 is read"), "{msg}");
            continue;
        }
        let tensors = result.unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(tensors.len(), rows.len(), "{file}");
        for (t, row) in tensors.iter().zip(rows) {
            assert_eq!(t.name, row["name"].as_str().expect("name"), "{file}");
            let shape: Vec<usize> = serde_json::from_value(row["shape"].clone()).expect("shape");
            assert_eq!(t.shape, shape, "{file}: {}", t.name);
            assert_eq!(t.data.len(), shape.iter().product::<usize>(), "{file}: {}", t.name);
            let sum: f64 = t.data.iter().map(|&x| f64::from(x)).sum();
            let want = row["sum"].as_f64().expect("sum");
            assert!(
                (sum - want).abs() <= 1e-9 * want.abs().max(1.0),
                "{file}: {}: {sum} vs {want}",
                t.name
            );
            let first: Vec<f32> = serde_json::from_value(row["first"].clone()).expect("first");
            assert_eq!(&t.data[..first.len()], &first[..], "{file}: {}", t.name);
        }
    }
}

#[test]
fn both_serialisations_name_the_same_tensors() {
    for file in ["encoder.pkl", "token_embedder.pkl"] {
        for dir in ["chars", "words"] {
            let t = read_state_dict(&fixture(&format!("{dir}/{file}"))).expect("reads");
            assert!(t.iter().all(|t| !t.data.is_empty()));
        }
    }
    let names = |dir: &str| -> Vec<String> {
        read_state_dict(&fixture(&format!("{dir}/encoder.pkl")))
            .expect("reads")
            .into_iter()
            .map(|t| t.name)
            .collect()
    };
    assert_eq!(names("chars"), names("words"));
    assert_eq!(names("chars")[0], "forward_layer_0.input_linearity.weight");
}

#[test]
fn views_are_gathered() {
    for file in ["torch/edge_legacy.pt", "torch/edge_zip.pt"] {
        let t = read_state_dict(&fixture(file)).expect("reads");
        let get = |name: &str| t.iter().find(|t| t.name == name).expect(name);
        assert_eq!(get("contig").data, [0.5, 1.5, 2.5, 3.5, 4.5, 5.5]);
        // (3, 2) with strides (1, 3): the transpose of `contig`.
        assert_eq!(get("transposed").shape, [3, 2]);
        assert_eq!(get("transposed").data, [0.5, 3.5, 1.5, 4.5, 2.5, 5.5]);
        assert_eq!(get("offset").data, [-3.0, 4.0, -5.0, 6.0]);
        assert_eq!(get("strided").data, [2.0, 4.0, 6.0]);
        assert_eq!(get("scalar").shape, Vec::<usize>::new());
        assert_eq!(get("scalar").data, [-7.0]);
        assert_eq!(get("empty").shape, [0, 3]);
        assert!(get("empty").data.is_empty());
        assert_eq!(get("size_one_dims").data, [1.5, 3.5]);
        assert_eq!(get("param").data, [3.5, 4.5, 5.5]);
    }
    // A storage view (legacy only): elements 3.. of storage '1', then
    // offset 1, stride 2.
    let t = read_state_dict(&fixture("torch/edge_legacy.pt")).expect("reads");
    assert_eq!((t[0].name.as_str(), &t[0].data[..]), ("view", &[-5.0, -7.0][..]));
}

#[test]
fn a_view_past_its_storage_is_an_error() {
    let msg = read_state_dict(&fixture("torch/oob_zip.pt"))
        .expect_err("oob")
        .to_string();
    assert!(
        msg.ends_with(
            "oob_zip.pt: tensor 'too_far': size [2, 3], stride [3, 1] and offset 0 reach element 5 of a storage of 5"
        ),
        "{msg}"
    );
}

#[test]
fn every_truncation_is_an_error() {
    // Every prefix of the edge-case files (legacy and zip). Of the
    // fixtures (each prefix costs a parse of everything before it): every
    // prefix through the legacy file's pickles (which end at byte 2136),
    // then one length in 17; of the zip one, whose every prefix lacks the
    // central directory, one length in 61; and the last kilobyte of both.
    for (file, dense, step) in [
        ("torch/edge_legacy.pt", usize::MAX, 1),
        ("torch/edge_zip.pt", usize::MAX, 1),
        ("chars/token_embedder.pkl", 2200, 17),
        ("words/token_embedder.pkl", 0, 61),
    ] {
        let data = bytes(file);
        let dense = dense.min(data.len());
        let lens = (0..dense)
            .chain((dense..data.len()).step_by(step))
            .chain(data.len().saturating_sub(1024)..data.len());
        for len in lens {
            let msg = torch_err(&data[..len]);
            assert!(!msg.is_empty());
        }
    }
    let data = bytes("chars/token_embedder.pkl");
    assert!(torch_err(&data[..100]).contains("truncated"));
    let msg = torch_err(&data[..data.len() - 1]);
    assert!(msg.contains("truncated: storage"), "{msg}");
}

#[test]
fn cuda_storages_are_read_as_cpu_ones() {
    // Models saved from a GPU name `torch.cuda.FloatStorage` (location
    // 'cuda:0'): the same bytes. The legacy pickles hold no offsets, so
    // lengthening a GLOBAL line keeps the file valid.
    let data = bytes("torch/edge_legacy.pt");
    let cpu = read_state_dict_bytes(Path::new("x.pt"), &data).expect("cpu");
    let from: &[u8] = b"ctorch\nFloatStorage\n";
    let at = data
        .windows(from.len())
        .position(|w| w == from)
        .expect("the storage type");
    let mut cuda = data[..at].to_vec();
    cuda.extend_from_slice(b"ctorch.cuda\nFloatStorage\n");
    cuda.extend_from_slice(&data[at + from.len()..]);
    assert_eq!(read_state_dict_bytes(Path::new("x.pt"), &cuda).expect("cuda"), cpu);
}

#[test]
fn a_flipped_opcode_is_an_error_naming_it() {
    let mut data = bytes("chars/token_embedder.pkl");
    // Byte 167 is the state dict's REDUCE (of `OrderedDict()`); 'i' is INST.
    assert_eq!(data[167], b'R');
    data[167] = b'i';
    let msg = torch_err(&data);
    assert!(
        msg.contains("pickle at byte 167: opcode 0x69 is not supported"),
        "{msg}"
    );
}

#[test]
fn any_byte_of_the_pickles_may_be_damaged() {
    // The pickles end at byte 2136; after them come the raw storages.
    let data = bytes("chars/token_embedder.pkl");
    for at in 0..2136 {
        for value in [0x00, 0x80, 0xff, data[at] ^ 1] {
            let mut d = data.clone();
            d[at] = value;
            let _ = read_state_dict_bytes(Path::new("x.pt"), &d);
        }
    }
}

/// The legacy file's three header pickles, then `pickle`, as the state dict.
fn legacy_with(pickle: &[u8]) -> Vec<u8> {
    let mut d = bytes("chars/token_embedder.pkl")[..137].to_vec();
    d.extend_from_slice(pickle);
    d
}

#[test]
fn code_is_refused_at_its_global() {
    // GLOBAL 'os system', then input cut short: the global is refused first.
    let msg = torch_err(&legacy_with(b"\x80\x02cos\nsystem\n"));
    assert!(
        msg.contains("pickle at byte 139: global 'os.system' is refused"),
        "{msg}"
    );
    let msg = torch_err(&legacy_with(b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00lsR."));
    assert!(msg.contains("'os.system'"), "{msg}");
    // STACK_GLOBAL 'builtins' 'eval' (protocol 4).
    let msg = torch_err(&legacy_with(
        b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93\x8c\x031+1\x85R.",
    ));
    assert!(msg.contains("global 'builtins.eval' is refused"), "{msg}");
    // As Python pickles them (protocol 2 names them after their modules).
    let msg = read_state_dict(&fixture("torch/evil_legacy.pt"))
        .expect_err("refused")
        .to_string();
    assert!(msg.contains("global 'posix.system' is refused"), "{msg}");
    let msg = read_state_dict(&fixture("torch/evil_zip.pt"))
        .expect_err("refused")
        .to_string();
    assert!(
        msg.contains("evil/data.pkl: pickle at byte 41: global '__builtin__.eval' is refused"),
        "{msg}"
    );
    // A REDUCE on an allowed name that is not a callable of ours.
    let msg = torch_err(&legacy_with(b"\x80\x02ctorch\nFloatStorage\n)R."));
    assert!(msg.contains("storage type torch.FloatStorage called"), "{msg}");
}

#[test]
fn errors_name_the_file() {
    let path = fixture("torch/float64_zip.pt");
    let e = read_state_dict(&path).expect_err("float64");
    assert!(matches!(&e, Error::Torch { path: p, .. } if p == &path), "{e:?}");
    assert!(e.to_string().starts_with(&path.display().to_string()));
    let e = read_state_dict(Path::new("/nonexistent/x.pt")).expect_err("missing");
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    assert!(torch_err(b"").contains("not a torch file"));
    assert!(torch_err(b"PK\x03\x04").contains("zip"));
}

/// Runs one pickle with no persistent ids.
fn run(p: &[u8]) -> std::result::Result<Value, String> {
    unpickle(p, 0, &mut |_| Err("no pid".into()))
        .map(|(v, _)| v)
        .map_err(|e| e.to_string())
}

#[test]
fn pickle_scalars() {
    assert!(matches!(run(b"\x80\x02\x8a\x01\xff."), Ok(Value::Int(-1))));
    assert!(matches!(run(b"\x80\x02\x8a\x00."), Ok(Value::Int(0))));
    assert!(matches!(run(b"\x80\x02J\xfe\xff\xff\xff."), Ok(Value::Int(-2))));
    assert!(matches!(
        run(b"\x80\x02G\x3f\xf8\x00\x00\x00\x00\x00\x00."),
        Ok(Value::Float(1.5))
    ));
    assert!(matches!(run(b"\x80\x02U\x02ab."), Ok(Value::Str(s)) if &*s == "ab"));
    assert!(matches!(run(b"\x80\x02T\x01\x00\x00\x00a."), Ok(Value::Str(s)) if &*s == "a"));
    assert!(matches!(run(b"\x80\x03C\x01z."), Ok(Value::Bytes(b)) if &*b == b"z"));
    // FRAME (protocol 4) and MEMOIZE.
    assert!(matches!(
        run(b"\x80\x04\x95\x03\x00\x00\x00\x00\x00\x00\x00N\x94."),
        Ok(Value::None)
    ));
}

#[test]
fn hostile_pickles_are_errors() {
    let cases: &[(&[u8], &str)] = &[
        (b"", "truncated"),
        (b"\x80\x06N.", "protocol 6"),
        (b"}.", "protocol 2 or later"),
        (b"\x80\x02X\xff\xff\xff\xffab.", "truncated"),
        (b"\x80\x02\x8d\xff\xff\xff\xff\xff\xff\xff\xffab.", "bytes needed"),
        (b"\x80\x02T\xff\xff\xff\xff.", "negative length"),
        (b"\x80\x02h\x05.", "memo entry 5 is not set"),
        (b"\x80\x02.", "STOP with 0 values"),
        (b"\x80\x02NN.", "STOP with 2 values"),
        (b"\x80\x02(N.", "MARK still open"),
        (b"\x80\x02(\x85.", "TUPLE1 with fewer"),
        (b"\x80\x02Ns.", "stack underflow"),
        (b"\x80\x02]NNs.", "SETITEM on a list"),
        (b"\x80\x02}Na.", "APPEND on a dict"),
        (b"\x80\x02NNR.", "REDUCE on a None"),
        (b"\x80\x02}]Ns.", "dict key is a list"),
        (
            b"\x80\x02\x8a\x11\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00.",
            "LONG1 of 17",
        ),
        (b"\x80\x02X\x01\x00\x00\x00\xff.", "not UTF-8"),
        (b"\x80\x02cos", "newline"),
        (b"\x80\x02NQ.", "no pid"),
        (b"\x80\x02\x95\xff\x00\x00\x00\x00\x00\x00\x00N.", "frame of 255 bytes"),
    ];
    for (p, want) in cases {
        let msg = run(p).map(|v| v.kind()).expect_err(want);
        assert!(msg.contains(want), "{p:?}: {msg}");
    }
}

#[test]
fn deep_nesting_is_refused_not_overflowed() {
    let mut p = b"\x80\x02)".to_vec();
    p.extend(std::iter::repeat_n(0x85, 100_000));
    p.push(b'.');
    assert!(run(&p).expect_err("deep").contains("nest deeper than 64"));
    let mut p = b"\x80\x02".to_vec();
    p.extend(std::iter::repeat_n(b'(', 2_000));
    assert!(run(&p).expect_err("marks").contains("open marks"));
}

#[test]
fn shared_containers_cannot_multiply_memory() {
    // A list memoised, then fetched and extended again and again: every
    // APPEND on a shared list copies it, which the budget stops.
    let mut p = b"\x80\x02]".to_vec();
    for _ in 0..200 {
        p.extend_from_slice(b"(NNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNe");
    }
    p.extend_from_slice(b"q\x00");
    for _ in 0..20_000 {
        p.extend_from_slice(b"h\x00Na");
    }
    p.push(b'.');
    let msg = run(&p).expect_err("budget");
    assert!(msg.contains("too many copies"), "{msg}");
}
