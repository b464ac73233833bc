//! The `elmo` binary end to end: convert, embed (text and .jsonl, stateless
//! and stateful) against the goldens, and one-line errors on bad input.

mod common;
use common::*;
use std::path::Path;
use std::process::{Command, Output};

fn elmo(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_elmo"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run elmo")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A failed run: non-zero exit and exactly one line on stderr.
fn assert_one_line_error(o: &Output, needle: &str) {
    assert!(!o.status.success(), "expected failure, stderr: {}", stderr(o));
    let e = stderr(o);
    assert_eq!(e.trim_end().lines().count(), 1, "one line expected: {e}");
    assert!(e.contains(needle), "{needle:?} not in {e}");
    assert!(!e.contains("panicked"), "{e}");
}

fn convert_tiny(dir: &Path) -> String {
    let f = fixture("bilm-tf-fixture");
    let out = dir.join("tiny.safetensors");
    let o = elmo(
        &[
            "convert",
            "--options",
            f.join("options.json").to_str().unwrap(),
            "--hdf5",
            f.join("lm_weights.hdf5").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    out.to_str().unwrap().to_owned()
}

/// Runs `embed` on a golden set's .jsonl and compares every sentence with the
/// golden batches (real positions; padding must be zero).
fn check_jsonl_against(set: &str, stateful: bool) {
    let dir = tempfile::tempdir().unwrap();
    let model = convert_tiny(dir.path());
    let prefix = if stateful { "stateful" } else { "stateless" };
    let input = fixture(&format!("{set}/{prefix}.jsonl"));
    let out = dir.path().join("out.npz");
    let mut args = vec![
        "embed",
        "--model",
        &model,
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    if stateful {
        args.push("--stateful");
    }
    let o = elmo(&args, dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let got = elmo::npz::read_npz(&out).unwrap();
    let lm = &got["lm_embeddings"];
    let (n, k, t, d) = (lm.shape[0], lm.shape[1], lm.shape[2], lm.shape[3]);
    let lm = lm.to_f32().unwrap();
    let lengths = got["lengths"].to_i64().unwrap();
    let mut row = 0;
    for f in golden_files(&fixture(set), &format!("{prefix}_batch_")) {
        let g = Golden::load(&f);
        let (s, want) = g.f32("lm_embeddings");
        for (b, &len) in g.get("lengths").to_i64().unwrap().iter().enumerate() {
            assert_eq!(lengths[row], len);
            for layer in 0..k {
                for j in 0..t {
                    let ours = &lm[((row * k + layer) * t + j) * d..][..d];
                    if j < len as usize {
                        let o = ((b * s[1] + layer) * s[2] + j) * s[3];
                        assert_close(&format!("{} sentence {b}", g.name), ours, &want[o..o + d], ATOL, RTOL);
                    } else {
                        assert!(ours.iter().all(|&x| x == 0.0));
                    }
                }
            }
            row += 1;
        }
    }
    assert_eq!(row, n, "every sentence in input order");
}

#[test]
fn embed_jsonl_stateless_matches_goldens() {
    check_jsonl_against("tiny", false);
}

#[test]
fn embed_jsonl_stateful_matches_goldens() {
    check_jsonl_against("tiny", true);
}

#[test]
fn embed_text_with_default_model() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.txt"), "The first sentence .\n\nThird\n").unwrap();
    // Run from the source tree so the default model in weights/ is found.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = dir.path().join("o.npz");
    let o = elmo(
        &[
            "embed",
            "--input",
            dir.path().join("in.txt").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--batch-size",
            "2",
        ],
        root,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("(3, 3, 4, 32)"), "{}", stderr(&o));
    let got = elmo::npz::read_npz(&out).unwrap();
    assert_eq!(got["lengths"].to_i64().unwrap(), vec![4, 0, 1]);
    assert_eq!(got["lm_embeddings"].shape, vec![3, 3, 4, 32]);
    // Same numbers as the library.
    let model = elmo::ElmoModel::load(&root.join("weights/bilm-tf-test.safetensors")).unwrap();
    let lib = model.embed(&[vec!["The", "first", "sentence", "."]]).unwrap();
    let lm = got["lm_embeddings"].to_f32().unwrap();
    assert_eq!(&lm[..lib.data.len()], &lib.data[..]);
}

#[test]
fn bad_input_gives_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = convert_tiny(d);
    let out = d.join("o.npz");
    let out = out.to_str().unwrap();
    let run = |input: &[u8], name: &str, extra: &[&str]| {
        let p = d.join(name);
        std::fs::write(&p, input).unwrap();
        let mut args = vec!["embed", "--model", &model, "--input", p.to_str().unwrap(), "--out", out];
        args.extend_from_slice(extra);
        elmo(&args, d)
    };
    assert_one_line_error(&run(b"fine\nbad \xff\xfe\n", "bad.txt", &[]), "line 2: invalid UTF-8");
    assert_one_line_error(&run(b"[[\"a\"]]\n{\"x\": 1}\n", "bad.jsonl", &[]), "line 2");
    assert_one_line_error(&run(b"a\n", "a.txt", &["--batch-size", "0"]), "batch size");
    assert_one_line_error(
        &elmo(
            &[
                "embed",
                "--model",
                "/nonexistent.safetensors",
                "--input",
                "x",
                "--out",
                out,
            ],
            d,
        ),
        "nonexistent",
    );
    assert_one_line_error(
        &elmo(
            &[
                "embed",
                "--model",
                &fixture("bilm-tf-fixture/options.json").to_string_lossy(),
                "--input",
                "x",
                "--out",
                out,
            ],
            d,
        ),
        "safetensors",
    );
    assert_one_line_error(&elmo(&["embed", "--bogus"], d), "--bogus");
    assert_one_line_error(
        &elmo(&["convert", "--options", "/nope.json", "--hdf5", "x", "--out", "y"], d),
        "nope.json",
    );
    // Empty input: a defined result (empty arrays) and a warning.
    let o = run(b"", "empty.txt", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = elmo::npz::read_npz(Path::new(out)).unwrap();
    assert_eq!(got["lm_embeddings"].shape, vec![0, 3, 0, 32]);
    // Thousands of bytes in one token: fine.
    let o = run(format!("{}\n", "x".repeat(10_000)).as_bytes(), "long.txt", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
}
