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

/// Converts a fixture model with the CLI into `dir/<name>.safetensors`.
fn convert_fixture(dir: &Path, folder: &str, name: &str) -> String {
    let f = fixture(folder);
    let out = dir.join(format!("{name}.safetensors"));
    let (opts, h5) = (f.join("options.json"), f.join("lm_weights.hdf5"));
    let args = [
        "convert",
        "--options",
        opts.to_str().unwrap(),
        "--hdf5",
        h5.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let o = elmo(&args, dir);
    assert!(o.status.success(), "{}", stderr(&o));
    out.to_str().unwrap().to_owned()
}

fn convert_tiny(dir: &Path) -> String {
    convert_fixture(dir, "bilm-tf-fixture", "tiny")
}

fn convert_small(dir: &Path) -> String {
    convert_fixture(dir, "small", "small")
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
    assert_one_line_error(&run(b"a\n", "a.txt", &["--device", "gpu"]), "unknown device 'gpu'");
    // A device that cannot be used: one line naming why (no CUDA in this
    // build, no driver, or no such device), never a panic.
    assert_one_line_error(&run(b"a\n", "a.txt", &["--device", "cuda:9999"]), "cuda");
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

/// Every output mode and mix variant through the CLI, against the goldens
/// of the stateless batches (one .jsonl line = one golden batch, so layer
/// norm sees the same batches as TensorFlow did).
fn check_modes(set: &str, model: &str, dir: &Path) -> f32 {
    let input = fixture(&format!("{set}/stateless.jsonl"));
    let variants: [(&str, &[&str]); 5] = [
        ("elmo_default", &[]),
        ("elmo_default_ln", &["--layer-norm"]),
        ("elmo_custom", &["--mix-weights", "0.3,-0.7,1.1", "--gamma", "0.8"]),
        (
            "elmo_custom_ln",
            &["--mix-weights=0.3,-0.7,1.1", "--gamma", "0.8", "--layer-norm"],
        ),
        ("elmo_top_only", &["--top-only", "--gamma", "0.8"]),
    ];
    let mut worst = 0f32;
    for (variant, flags) in variants {
        let out = dir.join(format!("{variant}.npz"));
        let mut args = vec![
            "embed",
            "--model",
            model,
            "--input",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--outputs",
            "word_emb,lstm_outputs1,lstm_outputs2,elmo,default,all",
        ];
        args.extend_from_slice(flags);
        let o = elmo(&args, dir);
        assert!(o.status.success(), "{variant}: {}", stderr(&o));
        let got = elmo::npz::read_npz(&out).unwrap();
        let names: Vec<&String> = got.keys().collect();
        assert_eq!(
            names,
            [
                "all",
                "default",
                "elmo",
                "lengths",
                "lstm_outputs1",
                "lstm_outputs2",
                "word_emb"
            ]
        );
        let t = got["elmo"].shape[1];
        let d = got["elmo"].shape[2];
        let p = d / 2;
        assert_eq!(got["word_emb"].shape[2], p);
        let arr = |k: &str| got[k].to_f32().unwrap();
        let (elmo_a, default_a, all_a, w_a, l1, l2) = (
            arr("elmo"),
            arr("default"),
            arr("all"),
            arr("word_emb"),
            arr("lstm_outputs1"),
            arr("lstm_outputs2"),
        );
        let mut row = 0;
        for f in golden_files(&fixture(set), "stateless_batch_") {
            let g = Golden::load(&f);
            let (s, want) = g.f32(variant);
            let (_, mean) = g.f32(&format!("{variant}_mean"));
            let (_, lm) = g.f32("lm_embeddings");
            for (b, &len) in g.get("lengths").to_i64().unwrap().iter().enumerate() {
                let tag = format!("{set} {variant} {} row {b}", g.name);
                worst = worst.max(assert_close(
                    &tag,
                    &default_a[row * d..(row + 1) * d],
                    &mean[b * d..(b + 1) * d],
                    ATOL,
                    RTOL,
                ));
                for j in 0..t {
                    let ours = &elmo_a[(row * t + j) * d..][..d];
                    if j < len as usize {
                        let o = (b * s[1] + j) * d;
                        worst = worst.max(assert_close(&tag, ours, &want[o..o + d], ATOL, RTOL));
                        let lmo = |k: usize| ((b * 3 + k) * s[1] + j) * d;
                        assert_close(
                            &tag,
                            &w_a[(row * t + j) * p..][..p],
                            &lm[lmo(0)..lmo(0) + p],
                            ATOL,
                            RTOL,
                        );
                        assert_close(&tag, &l1[(row * t + j) * d..][..d], &lm[lmo(1)..lmo(1) + d], ATOL, RTOL);
                        assert_close(&tag, &l2[(row * t + j) * d..][..d], &lm[lmo(2)..lmo(2) + d], ATOL, RTOL);
                        for k in 0..3 {
                            let ours = &all_a[((row * 3 + k) * t + j) * d..][..d];
                            assert_close(&tag, ours, &lm[lmo(k)..lmo(k) + d], ATOL, RTOL);
                        }
                    } else {
                        assert!(ours.iter().all(|&x| x == 0.0), "{tag}: padding");
                    }
                }
                row += 1;
            }
        }
    }
    worst
}

#[test]
fn embed_output_modes_match_goldens_tiny() {
    let dir = tempfile::tempdir().unwrap();
    let model = convert_tiny(dir.path());
    let e = check_modes("tiny", &model, dir.path());
    eprintln!("CLI modes, tiny: max abs error {e:e}");
}

#[test]
fn embed_output_modes_match_goldens_small() {
    let dir = tempfile::tempdir().unwrap();
    let model = convert_small(dir.path());
    let e = check_modes("small", &model, dir.path());
    eprintln!("CLI modes, small: max abs error {e:e}");
}

#[test]
fn embed_mode_flags_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = convert_tiny(d);
    std::fs::write(d.join("in.txt"), "a b\n").unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["embed", "--model", &model, "--input", "in.txt", "--out", "o.npz"];
        args.extend_from_slice(extra);
        elmo(&args, d)
    };
    assert_one_line_error(&run(&["--outputs", "bogus"]), "unknown output mode 'bogus'");
    assert_one_line_error(&run(&["--outputs", "lstm_outputs3"]), "2 LSTM layers");
    assert_one_line_error(&run(&["--mix-weights", "1,2"]), "2 values");
    assert_one_line_error(&run(&["--gamma", "NaN"]), "finite");
    let o = run(&["--outputs", "default"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = elmo::npz::read_npz(&d.join("o.npz")).unwrap();
    assert_eq!(got.keys().collect::<Vec<_>>(), ["default", "lengths"]);
}

#[test]
fn convert_tf_checkpoint_and_inspect() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ckpt = fixture("small/hub_checkpoint");
    let out = d.join("hub.safetensors");
    let o = elmo(
        &[
            "convert",
            "--tf-checkpoint",
            ckpt.to_str().unwrap(),
            "--preset",
            "tfhub-elmo-2",
            "--out",
            out.to_str().unwrap(),
        ],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // Without options or preset: one line saying what is missing.
    assert_one_line_error(
        &elmo(
            &[
                "convert",
                "--tf-checkpoint",
                ckpt.to_str().unwrap(),
                "--out",
                "x.safetensors",
            ],
            d,
        ),
        "--preset",
    );
    assert_one_line_error(&elmo(&["convert", "--out", "x.safetensors"], d), "--tf-checkpoint");
    // The mix starts from the checkpoint's aggregation values: `elmo` is elmo_custom.
    let input = fixture("small/stateless.jsonl");
    let npz = d.join("o.npz");
    let o = elmo(
        &[
            "embed",
            "--model",
            out.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--out",
            npz.to_str().unwrap(),
            "--outputs",
            "elmo",
        ],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let got = elmo::npz::read_npz(&npz).unwrap();
    let (t, dd) = (got["elmo"].shape[1], got["elmo"].shape[2]);
    let ours = got["elmo"].to_f32().unwrap();
    let g = Golden::load(&fixture("small/stateless_batch_00.npz"));
    let (s, want) = g.f32("elmo_custom");
    for (b, &len) in g.get("lengths").to_i64().unwrap().iter().enumerate() {
        for j in 0..len as usize {
            let o = (b * s[1] + j) * dd;
            assert_close(
                "elmo_custom via checkpoint",
                &ours[(b * t + j) * dd..][..dd],
                &want[o..o + dd],
                ATOL,
                RTOL,
            );
        }
    }
    // inspect: all three kinds of file.
    for (path, needle) in [
        (out.clone(), "aggregation/weights\t[3]\tF32"),
        (ckpt.clone(), "bilm/CNN_proj/W_proj\t[176, 32]\tfloat32"),
        (fixture("small/lm_weights.hdf5"), "CNN_proj/W_proj\t[176, 32]\tfloat32"),
    ] {
        let o = elmo(&["inspect", path.to_str().unwrap()], d);
        assert!(o.status.success(), "{}", stderr(&o));
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains(needle), "{needle} not in {text}");
    }
    assert!(String::from_utf8_lossy(&elmo(&["inspect", out.to_str().unwrap()], d).stdout).contains("version 2"));
    assert_one_line_error(&elmo(&["inspect", "/nonexistent"], d), "nonexistent");
}

/// `elmo bench` follows the anchors' command contract: one JSON line with
/// the listed fields, consistent with each other; bad arguments are
/// one-line errors.
#[test]
fn bench_follows_the_command_contract() {
    let dir = tempfile::tempdir().unwrap();
    let model = convert_tiny(dir.path());
    let input = dir.path().join("X.jsonl");
    std::fs::write(
        &input,
        "[[\"a\", \"rose\", \"is\", \"a\", \"rose\"], [\"x\"]]\n[[\"one\", \"two\", \"three\"]]\n",
    )
    .unwrap();
    let run = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["bench", "--model", &model, "--input", input.to_str().unwrap()];
        args.extend_from_slice(extra);
        let o = elmo(&args, dir.path());
        assert!(o.status.success(), "{}", stderr(&o));
        let out = String::from_utf8(o.stdout).unwrap();
        let lines: Vec<&str> = out.lines().filter(|l| l.starts_with('{')).collect();
        assert_eq!(lines.len(), 1, "one JSON line: {out}");
        serde_json::from_str(lines[0]).unwrap()
    };
    for (extra, output, sharing, batch) in [
        (&["--runs", "3", "--warmup", "1"][..], "layers", true, 2),
        (
            &["--runs", "2", "--warmup", "0", "--no-word-sharing"][..],
            "layers",
            false,
            2,
        ),
        (
            &["--runs", "1", "--output", "elmo", "--batch-size", "1"][..],
            "elmo",
            true,
            1,
        ),
    ] {
        let j = run(extra);
        let f = |k: &str| j[k].as_f64().unwrap_or_else(|| panic!("{k} missing in {j}"));
        assert_eq!(j["runner"], "rust");
        assert_eq!(j["output"], output);
        assert_eq!(j["workload"], "X");
        assert_eq!(j["word_sharing"], sharing);
        assert_eq!(j["device"], "cpu");
        let runs: f64 = extra[1].parse().unwrap();
        assert_eq!(f("runs"), runs);
        assert_eq!(f("n_tokens"), 9.0);
        assert_eq!(f("batch_size"), batch as f64);
        let (min, med, max) = (f("min_s"), f("median_s"), f("max_s"));
        assert!(0.0 < min && min <= med && med <= max, "{j}");
        assert!((f("tokens_per_s_median") * med / 9.0 - 1.0).abs() < 1e-3, "{j}");
        assert!(f("load_s") > 0.0 && f("peak_rss_mib") > 0.0, "{j}");
    }
    let bench = |extra: &[&str]| {
        let mut args = vec!["bench", "--model", &model, "--input", input.to_str().unwrap()];
        args.extend_from_slice(extra);
        elmo(&args, dir.path())
    };
    assert_one_line_error(&bench(&["--runs", "0"]), "--runs");
    assert_one_line_error(&bench(&["--output", "all"]), "--output");
    assert_one_line_error(&bench(&["--batch-size", "0"]), "--batch-size");
    assert_one_line_error(&bench(&["--device", "tpu"]), "tpu");
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "[[]]\n").unwrap();
    let o = elmo(
        &["bench", "--model", &model, "--input", empty.to_str().unwrap()],
        dir.path(),
    );
    assert_one_line_error(&o, "no tokens");
}

/// `elmo devices` lists the CPU and the CUDA devices or why there are none;
/// `--check` runs every kernel against its CPU reference on each device, and
/// where there is none it fails with one line saying why.
#[test]
fn devices_lists_the_cpu_and_cuda_or_why_not() {
    let dir = tempfile::tempdir().unwrap();
    let o = elmo(&["devices"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("cpu ") && lines[0].contains(" threads"), "{out}");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // The level in use and the CPU's levels (tests/simd.rs checks which).
        assert!(
            ["SIMD avx2", "SIMD avx512", "SIMD amx"]
                .iter()
                .any(|l| lines[0].contains(l)),
            "{out}"
        );
        assert!(lines[0].contains("this CPU: scalar, avx2"), "{out}");
    }
    assert!(
        lines.len() >= 2 && lines[1..].iter().all(|l| l.starts_with("cuda")),
        "{out}"
    );
    let has_gpu = lines[1].starts_with("cuda:");
    let check = elmo(&["devices", "--check"], dir.path());
    if has_gpu {
        assert!(check.status.success(), "{}", stderr(&check));
        let out = String::from_utf8_lossy(&check.stdout).into_owned();
        assert!(out.contains("char_cnn relu") && out.contains(" ok"), "{out}");
        assert!(!out.contains("FAIL"), "{out}");
    } else {
        assert!(
            lines[1].starts_with("cuda     unavailable: ") || lines[1].contains("none"),
            "{out}"
        );
        assert_one_line_error(&check, "cuda");
    }
    // --model only with --check.
    let o = elmo(&["devices", "--model", "x.safetensors"], dir.path());
    assert!(!o.status.success());
}

/// What a reader that went away, a full disk or a typo must not do: a
/// backtrace, an overwritten input, a half-written output, a silently
/// smaller model, a flag ignored.
#[test]
fn the_cli_never_destroys_an_input_nor_ignores_a_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = convert_tiny(d);
    let run_to = |args: &[&str], stdout: std::process::Stdio| {
        Command::new(env!("CARGO_BIN_EXE_elmo"))
            .args(args)
            .current_dir(d)
            .stdout(stdout)
            .stderr(std::process::Stdio::piped())
            .output()
            .expect("run elmo")
    };
    // Standard output closed by its reader (`| head -0`): quiet, status 0.
    for args in [&["inspect", &model][..], &["devices"][..]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let o = run_to(args, writer.into());
        assert!(o.status.success() && stderr(&o).is_empty(), "{args:?}: {}", stderr(&o));
        // A full disk: one line.
        if Path::new("/dev/full").exists() {
            let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
            assert_one_line_error(&run_to(args, full.into()), "standard output: No space left");
        }
    }

    // --out naming an input: refused, the input untouched.
    let f = fixture("small");
    let h5 = d.join("w.hdf5");
    std::fs::copy(f.join("lm_weights.hdf5"), &h5).unwrap();
    let before = std::fs::read(&h5).unwrap();
    let opts = f.join("options.json");
    let convert = |opts: &Path, out: &str| {
        elmo(
            &[
                "convert",
                "--options",
                opts.to_str().unwrap(),
                "--hdf5",
                "w.hdf5",
                "--out",
                out,
            ],
            d,
        )
    };
    assert_one_line_error(&convert(&opts, "./w.hdf5"), "is the --hdf5 file");
    assert_eq!(std::fs::read(&h5).unwrap(), before);
    std::fs::write(d.join("in.npz"), "a b\n").unwrap();
    let embed = |extra: &[&str]| {
        let mut args = vec!["embed", "--model", &model];
        args.extend_from_slice(extra);
        elmo(&args, d)
    };
    assert_one_line_error(&embed(&["--input", "in.npz", "--out", "in.npz"]), "is the --input file");
    assert_eq!(std::fs::read(d.join("in.npz")).unwrap(), b"a b\n");

    // An options.json with a typo'd key: a notice naming it, and a file
    // with more layers than the options say is refused, not cut down.
    let mut o: serde_json::Value = serde_json::from_slice(&std::fs::read(&opts).unwrap()).unwrap();
    let layers = o["lstm"].as_object_mut().unwrap().remove("n_layers").unwrap();
    o["lstm"]["n_layer"] = layers;
    std::fs::write(d.join("typo.json"), o.to_string()).unwrap();
    let r = convert(&d.join("typo.json"), "t.safetensors");
    assert!(
        stderr(&r).contains("notice: options: lstm.n_layer is not a setting"),
        "{}",
        stderr(&r)
    );
    assert!(
        stderr(&r).contains("more LSTM layers than the options' lstm.n_layers = 1"),
        "{}",
        stderr(&r)
    );
    assert!(!r.status.success() && !d.join("t.safetensors").exists());

    // The output format from the extension, in any case; others refused.
    std::fs::write(d.join("in.txt"), "a b\nc\n").unwrap();
    let r = embed(&["--input", "in.txt", "--out", "UP.HDF5", "--quiet"]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(std::fs::read(d.join("UP.HDF5")).unwrap().starts_with(b"\x89HDF"));
    assert_one_line_error(
        &embed(&["--input", "in.txt", "--out", "o.txt"]),
        ".npz (padded arrays) or .hdf5/.h5",
    );
    // Flags of the corpus layout with .npz output.
    for flag in [&["--window", "8"][..], &["--batch-tokens", "64"][..], &["--all"][..]] {
        let mut args = vec!["--input", "in.txt", "--out", "o.npz"];
        args.extend_from_slice(flag);
        assert_one_line_error(&embed(&args), &format!("{} applies to .hdf5/.h5", flag[0]));
    }
    // A missing argument is named.
    assert_one_line_error(&elmo(&["embed", "--input", "in.txt"], d), "--out <OUT>");
    // A mix that overflows float32 (values above 1 in the small model).
    let small = convert_small(d);
    let r = elmo(
        &[
            "embed", "--model", &small, "--input", "in.txt", "--out", "o.npz", "--gamma", "3.4e38",
        ],
        d,
    );
    assert_one_line_error(&r, "the mix overflows float32");
    assert_one_line_error(
        &elmo(&["inspect", "nope.safetensors"], d),
        "nope.safetensors: No such file",
    );
    std::fs::write(d.join("w.jsonl"), "[[\"a\", \"b\"]]\n").unwrap();
    for t in ["0", "100000"] {
        let r = elmo(
            &[
                "bench",
                "--model",
                &model,
                "--input",
                "w.jsonl",
                "--threads",
                t,
                "--runs",
                "1",
            ],
            d,
        );
        assert_one_line_error(&r, &format!("--threads must be 1 to 4096, got {t}"));
    }
}

/// An .npz write that fails (here the file size limit, `ulimit -f`) says
/// so in one line and leaves the earlier file as it was, and nothing else.
#[test]
fn a_failed_npz_write_keeps_the_earlier_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = convert_tiny(d);
    let few: String = (0..3).map(|i| format!("w{i} x\n")).collect();
    let many: String = (0..400).map(|i| format!("word{i} and more words {i}\n")).collect();
    std::fs::write(d.join("few.txt"), few).unwrap();
    std::fs::write(d.join("many.txt"), many).unwrap();
    let o = elmo(&["embed", "--model", &model, "--input", "few.txt", "--out", "o.npz"], d);
    assert!(o.status.success(), "{}", stderr(&o));
    let before = std::fs::read(d.join("o.npz")).unwrap();
    assert!(before.len() < 32 << 10, "{} bytes", before.len());
    // SIGXFSZ ignored (kept across exec): writes past the limit fail with EFBIG.
    let script = format!(
        "trap '' XFSZ; ulimit -f 64; exec '{}' embed --model '{model}' --input many.txt --out o.npz",
        env!("CARGO_BIN_EXE_elmo")
    );
    let o = Command::new("sh")
        .args(["-c", &script])
        .current_dir(d)
        .output()
        .unwrap();
    assert_one_line_error(&o, "o.npz: File too large");
    assert!(!stderr(&o).contains("ZipWriter"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(d.join("o.npz")).unwrap(),
        before,
        "the earlier file changed"
    );
    let mut names: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("o.npz"))
        .collect();
    names.sort();
    assert_eq!(names, ["o.npz"], "a temporary file was left");
}
