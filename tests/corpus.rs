//! Corpus embedding into allennlp's HDF5 layout: the golden values through
//! the file, the layout read back (here with the pure-Rust `hdf5-reader`;
//! the Python suite reads it with h5py), kill-and-resume equality, refusals,
//! bad input, and the memory bound.

mod common;
use common::*;
use elmo::corpus::{CorpusConfig, Input, Layers, embed_corpus, source::Format};
use hdf5_reader::Hdf5File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn elmo(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_elmo"));
    c.args(args);
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().expect("run elmo")
}

/// A deterministic corpus with a realistic length mix: most sentences 5-40
/// tokens, a tail to 200+, some repeated words and a few blank lines.
fn write_corpus(path: &Path, sentences: usize, seed: u64) {
    let words: Vec<String> = (0..400)
        .map(|i| format!("w{}{}", i % 37, "abcdefgh".repeat(i % 3)))
        .collect();
    let mut s = seed | 1;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for _ in 0..sentences {
        let r = next() % 100;
        let n = match r {
            0 => 0,
            1..=3 => 100 + (next() % 160) as usize,
            _ => 5 + (next() % 36) as usize,
        };
        let line: Vec<&str> = (0..n).map(|_| words[(next() % 400) as usize].as_str()).collect();
        writeln!(f, "{}", line.join(" ")).unwrap();
    }
}

/// Two files hold the same bytes (else: where they first differ).
fn assert_same_file(a: &Path, b: &Path, what: &str) {
    let (x, y) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    if x != y {
        let at = x
            .iter()
            .zip(&y)
            .position(|(u, v)| u != v)
            .unwrap_or(x.len().min(y.len()));
        panic!(
            "{what}: {} ({} bytes) and {} ({} bytes) differ from byte {at}",
            a.display(),
            x.len(),
            b.display(),
            y.len()
        );
    }
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The dataset `key` of an HDF5 file: its shape and values.
fn dataset(file: &Hdf5File, key: &str) -> (Vec<usize>, Vec<f32>) {
    let ds = file.dataset(key).unwrap_or_else(|e| panic!("dataset {key}: {e}"));
    let shape: Vec<usize> = ds.shape().iter().map(|&d| d as usize).collect();
    let mut v = vec![0f32; shape.iter().product()];
    ds.read_into(&mut v).unwrap();
    (shape, v)
}

#[test]
fn golden_values_through_the_hdf5_file() {
    let dir = tempfile::tempdir().unwrap();
    for (name, model) in [("tiny", tiny_model(dir.path())), ("small", small_model(dir.path()))] {
        let f = fixture(name);
        let goldens = golden_files(&f, "stateless_batch_");
        for layers in [Layers::All, Layers::Top, Layers::Average] {
            let out = dir.path().join(format!("{name}-{}.hdf5", layers.name()));
            let input = Input::open(&f.join("stateless.jsonl")).unwrap();
            let cfg = CorpusConfig {
                layers,
                batch_size: 3,
                window: 5,
                ..Default::default()
            };
            let s = embed_corpus(&model, input, &out, &cfg, &mut |_| {}).unwrap();
            let file = Hdf5File::open(&out).unwrap();
            let mut key = 0usize;
            let mut worst = 0f32;
            for g in &goldens {
                let g = Golden::load(g);
                let (shape, lm) = g.f32("lm_embeddings"); // (B, L + 1, T, 2P)
                let (b, nk, t, d) = (shape[0], shape[1], shape[2], shape[3]);
                for (bi, tokens) in g.tokens().iter().enumerate() {
                    let n = tokens.len();
                    let at = |k: usize, j: usize| &lm[((bi * nk + k) * t + j) * d..][..d];
                    let mut want = Vec::new();
                    match layers {
                        Layers::All => (0..nk).for_each(|k| (0..n).for_each(|j| want.extend_from_slice(at(k, j)))),
                        Layers::Top => (0..n).for_each(|j| want.extend_from_slice(at(nk - 1, j))),
                        Layers::Average => (0..n).for_each(|j| {
                            want.extend((0..d).map(|c| (0..nk).map(|k| at(k, j)[c]).sum::<f32>() / nk as f32))
                        }),
                    }
                    let (got_shape, got) = dataset(&file, &key.to_string());
                    let want_shape = match layers {
                        Layers::All => vec![nk, n, d],
                        _ => vec![n, d],
                    };
                    assert_eq!(got_shape, want_shape, "{name} dataset {key}");
                    worst = worst.max(assert_close(&format!("{name} {key}"), &got, &want, 1e-5, 1e-4));
                    key += 1;
                }
                let _ = b;
            }
            assert_eq!(s.sentences as usize, key);
            println!("{name} {}: {key} sentences, max abs error {worst:.2e}", layers.name());
            // sentence_to_index maps each sentence's text to its key.
            let index = file.dataset("sentence_to_index").unwrap().read_strings().unwrap();
            assert_eq!(index.len(), 1);
            let map: serde_json::Value = serde_json::from_str(&index[0]).unwrap();
            let first = Golden::load(&goldens[0]).tokens()[0].join(" ");
            assert_eq!(map[&first], "0", "{first}");
        }
    }
}

/// `elmo embed` into `out` with the tiny model.
fn embed(input: &Path, out: &Path, extra: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut args = vec!["embed", "--input", p(input), "--out", p(out), "--window", "300"];
    args.extend_from_slice(extra);
    elmo(&args, envs)
}

#[test]
fn killed_runs_resume_to_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c.txt");
    write_corpus(&corpus, 3000, 7);
    let whole = dir.path().join("whole.hdf5");
    let o = embed(&corpus, &whole, &[], &[]);
    assert!(o.status.success(), "{}", stderr(&o));

    // Aborted in the middle of a window (after 0, 1 and 4 committed ones),
    // then resumed; once more interrupted during the resumed run.
    for crash in ["0", "1", "4"] {
        let out = dir.path().join(format!("crash{crash}.hdf5"));
        let o = embed(&corpus, &out, &[], &[("ELMO_TEST_CRASH_AFTER_WINDOWS", crash)]);
        assert!(!o.status.success());
        assert!(!out.exists(), "no final file before the run completes");
        assert!(dir.path().join(format!("crash{crash}.hdf5.partial")).exists());
        let o = embed(&corpus, &out, &["--resume"], &[("ELMO_TEST_CRASH_AFTER_WINDOWS", "1")]);
        assert!(!o.status.success());
        let o = embed(&corpus, &out, &["--resume"], &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stderr(&o).contains("continuing"), "{}", stderr(&o));
        assert_same_file(&out, &whole, &format!("crash after {crash}"));
        for scratch in [".partial", ".partial.journal", ".partial.index"] {
            assert!(!dir.path().join(format!("crash{crash}.hdf5{scratch}")).exists());
        }
    }

    // SIGKILL at an arbitrary moment: as soon as a window is committed.
    let big = dir.path().join("big.txt");
    write_corpus(&big, 12_000, 9);
    let big_whole = dir.path().join("big-whole.hdf5");
    assert!(embed(&big, &big_whole, &[], &[]).status.success());
    let out = dir.path().join("killed.hdf5");
    let journal = dir.path().join("killed.hdf5.partial.journal");
    let mut child = Command::new(env!("CARGO_BIN_EXE_elmo"))
        .args(["embed", "--input", p(&big), "--out", p(&out), "--window", "300"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while std::fs::read(&journal)
        .map(|j| j.iter().filter(|&&b| b == b'\n').count())
        .unwrap_or(0)
        < 3
    {
        assert!(t0.elapsed().as_secs() < 60, "no commit within 60 s");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!out.exists(), "killed before the end (the corpus is 40 windows)");
    let o = embed(&big, &out, &["--resume"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_same_file(&out, &big_whole, "killed and resumed");
}

#[test]
fn resume_refuses_another_model_input_or_layer_flag() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c.txt");
    write_corpus(&corpus, 1000, 3);
    let out = dir.path().join("o.hdf5");
    let crash = [("ELMO_TEST_CRASH_AFTER_WINDOWS", "1")];
    assert!(!embed(&corpus, &out, &[], &crash).status.success());
    // A plain rerun does not overwrite an interrupted one.
    assert_one_line_error(&embed(&corpus, &out, &[], &[]), "--resume");
    assert_one_line_error(
        &embed(&corpus, &out, &["--resume", "--top"], &[]),
        "layers written (was all, now top)",
    );
    assert_one_line_error(
        &embed(&corpus, &out, &["--resume", "--batch-size", "8"], &[]),
        "--batch-size (was 64, now 8)",
    );
    let other = dir.path().join("other.txt");
    write_corpus(&other, 1000, 4);
    assert_one_line_error(&embed(&other, &out, &["--resume"], &[]), "differ from the input");
    let small = convert_small(dir.path());
    assert_one_line_error(
        &embed(&corpus, &out, &["--resume", "--model", p(&small)], &[]),
        "the model (",
    );
    // The right settings still continue it.
    let o = embed(&corpus, &out, &["--resume"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_one_line_error(&embed(&corpus, &out, &["--resume"], &[]), "nothing to resume");
}

fn convert_small(dir: &Path) -> PathBuf {
    let f = fixture("small");
    let out = dir.join("small.safetensors");
    let o = elmo(
        &[
            "convert",
            "--options",
            p(&f.join("options.json")),
            "--hdf5",
            p(&f.join("lm_weights.hdf5")),
            "--out",
            p(&out),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    out
}

#[test]
fn bad_input_is_named_and_what_was_done_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.txt");
    write_corpus(&good, 900, 5);
    let mut bytes = std::fs::read(&good).unwrap();
    // Line 700 gets an invalid byte.
    let at = bytes
        .iter()
        .enumerate()
        .filter(|&(_, &b)| b == b'\n')
        .nth(698)
        .unwrap()
        .0;
    bytes.insert(at + 1, 0xff);
    let bad = dir.path().join("c.txt");
    std::fs::write(&bad, &bytes).unwrap();
    let out = dir.path().join("o.hdf5");
    let o = embed(&bad, &out, &[], &[]);
    assert_one_line_error(&o, "line 700: invalid UTF-8");
    assert!(stderr(&o).contains("--resume"), "{}", stderr(&o));
    assert!(!out.exists());
    // Fixed, it continues and matches a run on the fixed input.
    std::fs::write(&bad, std::fs::read(&good).unwrap()).unwrap();
    assert!(embed(&bad, &out, &["--resume"], &[]).status.success());
    let whole = dir.path().join("whole.hdf5");
    assert!(embed(&good, &whole, &[], &[]).status.success());
    assert_same_file(&out, &whole, "resumed after a fixed input");

    // Malformed JSON at line 2.
    let j = dir.path().join("c.jsonl");
    std::fs::write(&j, "[\"a\", \"b\"]\n{\"no\": 1}\n").unwrap();
    assert_one_line_error(&embed(&j, &dir.path().join("j.hdf5"), &[], &[]), "line 2");
    // A folder that does not exist.
    let missing = dir.path().join("nope").join("o.hdf5");
    assert_one_line_error(&embed(&good, &missing, &[], &[]), "does not exist");
    // Flags of the other format.
    assert_one_line_error(&embed(&good, &out, &["--stateful"], &[]), "applies to .npz");
    assert_one_line_error(
        &embed(&good, &dir.path().join("x.npz"), &["--top"], &[]),
        "applies to .hdf5",
    );
}

#[test]
fn blank_lines_huge_tokens_and_long_lines() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let megabyte_token = "x".repeat(1 << 20);
    let long_line = vec!["word"; 100_000].join(" ");
    let text = format!("a b\n\n{megabyte_token} c\n{long_line}\nlast\n");
    let out = dir.path().join("o.hdf5");
    let input = Input::from_reader(Box::new(std::io::Cursor::new(text.into_bytes())), Format::Text, "mem");
    let cfg = CorpusConfig {
        layers: Layers::Top,
        ..Default::default()
    };
    let s = embed_corpus(&model, input, &out, &cfg, &mut |_| {}).unwrap();
    assert_eq!((s.sentences, s.tokens), (5, 2 + 2 + 100_000 + 1));
    let file = Hdf5File::open(&out).unwrap();
    let d = 2 * model.options().projection_dim();
    assert_eq!(dataset(&file, "1").0, vec![0, d], "a blank line is a dataset of n = 0");
    assert_eq!(dataset(&file, "3").0, vec![100_000, d]);
    // Each sentence alone gives the same vectors.
    for (key, sentence) in [(2usize, vec![megabyte_token.as_str(), "c"]), (4, vec!["last"])] {
        let alone = model.embed(std::slice::from_ref(&sentence)).unwrap();
        let top: Vec<f32> = (0..sentence.len())
            .flat_map(|j| alone.vector(0, alone.n_layers - 1, j).to_vec())
            .collect();
        assert!(dataset(&file, &key.to_string()).1 == top, "dataset {key}");
    }
}

#[test]
fn memory_does_not_grow_with_the_corpus() {
    // Peak resident memory of `elmo embed` (its summary reports VmHWM) on
    // 4,000 and 40,000 sentences, the tiny model.
    let dir = tempfile::tempdir().unwrap();
    let mut peaks = Vec::new();
    for n in [4_000usize, 40_000] {
        let corpus = dir.path().join(format!("c{n}.txt"));
        write_corpus(&corpus, n, 11);
        let out = dir.path().join(format!("o{n}.hdf5"));
        let o = embed(&corpus, &out, &[], &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        let e = stderr(&o);
        let peak: f64 = e
            .split("peak memory ")
            .nth(1)
            .and_then(|s| s.split(" MiB").next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no peak memory in: {e}"));
        peaks.push(peak);
        std::fs::remove_file(&out).unwrap();
    }
    println!("peak memory: 4k sentences {:.0} MiB, 40k {:.0} MiB", peaks[0], peaks[1]);
    assert!(peaks[1] < 512.0);
    assert!(peaks[1] <= peaks[0] * 1.25 + 8.0, "{peaks:?}");
}

/// Mounts a tmpfs of `size` (with `opts`) at `dir`; false where this user
/// may not mount (the test then says so and checks nothing more).
fn mount_tmpfs(dir: &Path, opts: &str) -> bool {
    std::fs::create_dir_all(dir).unwrap();
    Command::new("mount")
        .args(["-t", "tmpfs", "-o", opts, "tmpfs", p(dir)])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn umount(dir: &Path) {
    let _ = Command::new("umount").arg(p(dir)).status();
}

#[test]
fn a_full_disk_or_a_read_only_folder_is_one_line_and_keeps_the_partial_output() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c.txt");
    write_corpus(&corpus, 3000, 13);
    let full = dir.path().join("full");
    if !mount_tmpfs(&full, "size=1m") {
        println!("skipped: mounting a tmpfs is not permitted here");
        return;
    }
    let out = full.join("o.hdf5");
    // Windows of 50 sentences (~0.5 MB): the first is committed, the
    // second fills the disk.
    let o = elmo(
        &["embed", "--input", p(&corpus), "--out", p(&out), "--window", "50"],
        &[],
    );
    let kept = full.join("o.hdf5.partial.journal").exists();
    // One window of 300 (~3 MB): nothing committed, so nothing is kept
    // (the space is freed, and a plain rerun is not refused).
    let o_first = embed(&corpus, &full.join("p.hdf5"), &[], &[]);
    let names: Vec<_> = std::fs::read_dir(&full)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("p.hdf5"))
        .collect();
    umount(&full);
    assert_one_line_error(&o, "No space left on device");
    assert!(stderr(&o).contains("--resume"), "{}", stderr(&o));
    assert!(kept, "the partial output is kept");
    assert_one_line_error(&o_first, "No space left on device");
    assert!(!stderr(&o_first).contains("--resume"), "{}", stderr(&o_first));
    assert!(names.is_empty(), "left behind: {names:?}");

    let ro = dir.path().join("ro");
    assert!(mount_tmpfs(&ro, "size=1m,ro"));
    let o = embed(&corpus, &ro.join("o.hdf5"), &[], &[]);
    umount(&ro);
    assert_one_line_error(&o, "Read-only file system");
}

#[test]
fn progress_lines_when_not_a_terminal_and_none_when_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c.txt");
    write_corpus(&corpus, 1000, 17);
    let every = [("ELMO_PROGRESS_SECONDS", "0")];
    let o = embed(&corpus, &dir.path().join("a.hdf5"), &[], &every);
    assert!(o.status.success());
    let e = stderr(&o);
    let lines: Vec<&str> = e.lines().filter(|l| l.starts_with("embedding: ")).collect();
    assert!(lines.len() >= 4, "{e}");
    assert!(
        lines[0].contains("sentences") && lines[0].contains("tok/s") && lines[0].contains("% of the input"),
        "{e}"
    );
    assert!(e.lines().last().unwrap().starts_with("wrote "), "{e}");
    let o = embed(&corpus, &dir.path().join("b.hdf5"), &["--quiet"], &every);
    assert!(o.status.success() && o.stderr.is_empty(), "{}", stderr(&o));
}

/// Refusals that come before any work, and leave nothing behind: an
/// output that is a folder, an input that is a folder or invalid from its
/// first line, a line without end; and the advice a refused resume gives
/// is advice that works.
#[test]
fn refusals_leave_no_files_and_say_how_to_start_over() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // `embed` without its --window.
    let embed = |input: &Path, out: &Path, extra: &[&str], envs: &[(&str, &str)]| {
        let mut args = vec!["embed", "--input", p(input), "--out", p(out)];
        args.extend_from_slice(extra);
        elmo(&args, envs)
    };
    let corpus = d.join("c.txt");
    write_corpus(&corpus, 400, 21);
    let leftovers = |stem: &str| -> Vec<String> {
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(stem) && n != stem)
            .collect()
    };
    std::fs::create_dir(d.join("folder.hdf5")).unwrap();
    assert_one_line_error(
        &embed(&corpus, &d.join("folder.hdf5"), &[], &[]),
        "is a folder; --out names",
    );
    assert_one_line_error(&embed(d, &d.join("a.hdf5"), &[], &[]), "is a folder, not an input file");
    assert!(leftovers("a.hdf5").is_empty(), "{:?}", leftovers("a.hdf5"));
    let bad = d.join("bad.jsonl");
    std::fs::write(&bad, "[[\"a\"\n").unwrap();
    assert_one_line_error(&embed(&bad, &d.join("b.hdf5"), &[], &[]), "line 1: malformed JSON");
    assert!(leftovers("b.hdf5").is_empty(), "{:?}", leftovers("b.hdf5"));
    // Fixed, a plain run is not refused.
    std::fs::write(&bad, "[[\"a\"]]\n").unwrap();
    assert!(embed(&bad, &d.join("b.hdf5"), &["--quiet"], &[]).status.success());
    // A line longer than the reader takes (no newline in 64 MiB).
    let endless = d.join("endless.txt");
    std::fs::write(&endless, vec![b'x'; elmo::corpus::source::MAX_LINE + 1]).unwrap();
    assert_one_line_error(
        &embed(&endless, &d.join("e.hdf5"), &[], &[]),
        "line 1: longer than 64 MiB",
    );
    std::fs::remove_file(&endless).unwrap();

    // An interrupted run: each refusal names the files to delete, and
    // deleting them does start over.
    let out = d.join("o.hdf5");
    let crash = [("ELMO_TEST_CRASH_AFTER_WINDOWS", "1")];
    assert!(!embed(&corpus, &out, &["--window", "100"], &crash).status.success());
    let start_over = "to start over, delete";
    let o = embed(&corpus, &out, &["--window", "100"], &[]);
    assert_one_line_error(&o, "continue it with --resume, or to start over, delete");
    let o = embed(&corpus, &out, &["--resume", "--window", "50"], &[]);
    assert_one_line_error(&o, "--window (was 100, now 50)");
    assert!(
        stderr(&o).contains(start_over) && stderr(&o).contains("o.hdf5.partial.journal"),
        "{}",
        stderr(&o)
    );
    let mut other = std::fs::read(&corpus).unwrap();
    other[0] ^= 1;
    let other_path = d.join("other.txt");
    std::fs::write(&other_path, other).unwrap();
    assert_one_line_error(
        &embed(&other_path, &out, &["--resume", "--window", "100"], &[]),
        start_over,
    );
    // Another process writing the output (here: holding the journal's lock).
    let journal = d.join("o.hdf5.partial.journal");
    let held = std::fs::File::open(&journal).unwrap();
    held.lock().unwrap();
    let busy = "another run is writing this output now";
    let o = embed(&corpus, &out, &["--resume", "--window", "100"], &[]);
    assert_one_line_error(&o, busy);
    assert!(!stderr(&o).contains(start_over), "a live run's files: {}", stderr(&o));
    assert_one_line_error(&embed(&corpus, &out, &["--window", "100"], &[]), busy);
    drop(held);
    // The index gone: resuming cannot work, and it says so.
    let index = d.join("o.hdf5.partial.index");
    let saved = std::fs::read(&index).unwrap();
    std::fs::remove_file(&index).unwrap();
    let o = embed(&corpus, &out, &["--resume", "--window", "100"], &[]);
    assert_one_line_error(
        &o,
        "o.hdf5.partial.index is missing, so the interrupted run cannot continue",
    );
    assert!(stderr(&o).contains(start_over), "{}", stderr(&o));
    std::fs::write(&index, saved).unwrap();
    // Following the advice starts over.
    for f in ["o.hdf5.partial", "o.hdf5.partial.index", "o.hdf5.partial.journal"] {
        std::fs::remove_file(d.join(f)).unwrap();
    }
    let o = embed(&corpus, &out, &["--window", "100", "--quiet"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let whole = d.join("whole.hdf5");
    assert!(
        embed(&corpus, &whole, &["--window", "100", "--quiet"], &[])
            .status
            .success()
    );
    assert_same_file(&out, &whole, "started over");
    // A negative progress interval is ignored, not a panic.
    let o = embed(&corpus, &d.join("p.hdf5"), &[], &[("ELMO_PROGRESS_SECONDS", "-1")]);
    assert!(o.status.success(), "{}", stderr(&o));
}
