//! Every SIMD level this CPU has, run end to end (`ELMO_SIMD`, one process
//! each: the level is per process) against TensorFlow's goldens, with f32
//! model files and with bf16 ones; the level picked by default is the best
//! the CPU has (a test that fails when a build or a dispatch missed the
//! SIMD path it was meant to run); avx2, avx512, avx512bf16 and amx agree
//! bitwise on f32 files, avx2 and avx512 on bf16 files; a level the CPU
//! lacks is refused in one line.

mod common;
use common::*;
use elmo::cpu::{SimdLevel, available_levels};
use std::path::Path;
use std::process::{Command, Output};

fn elmo(args: &[&str], simd: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_elmo"));
    c.args(args).env_remove("ELMO_SIMD");
    if let Some(l) = simd {
        c.env("ELMO_SIMD", l);
    }
    c.output().expect("run elmo")
}

#[test]
fn avx2_and_fma_are_compiled_in_where_the_cpu_has_them() {
    #[cfg(target_arch = "x86_64")]
    {
        let cpu = std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
        let build = cfg!(target_feature = "avx2") && cfg!(target_feature = "fma");
        eprintln!("cpu has avx2+fma: {cpu}; build uses them: {build}");
        assert!(
            !cpu || build,
            "this CPU has AVX2 and FMA but the build does not use them (see .cargo/config.toml)"
        );
        // The library says the same (`elmo devices` prints it, `ELMO_SIMD` refuses with it).
        assert_eq!(elmo::cpu::simd::missing_baseline().is_some(), cpu && !build);
    }
}

#[test]
fn the_default_level_is_the_best_the_cpu_has() {
    let mut want = "scalar";
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            want = "avx2";
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            want = "avx512";
        }
        if want == "avx512"
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512bf16")
        {
            want = "avx512bf16";
        }
        if want == "avx512bf16" && elmo::cpu::amx_usable() {
            want = "amx";
        }
    }
    let o = elmo(&["devices"], None);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    eprintln!("{out}");
    assert!(out.contains(&format!("SIMD {want} ")), "expected SIMD {want}: {out}");
    // And a run of the model used that level's kernels.
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    model.embed(&[vec!["a", "b"]]).unwrap();
    let level: SimdLevel = want.parse().unwrap();
    assert!(elmo::cpu::kernel_calls(level) > 0, "{want}'s kernels did not run");
    // At avx512bf16 (amx) a bf16 file's products ran on vdpbf16ps (AMX
    // tiles) with bf16 activations, not on the widening kernels: its
    // outputs differ from those of the same matrices widened to f32 (which
    // every level computes as the widening kernels do).
    if level.reads_paired_bf16() {
        let bf16 = bf16_file(dir.path(), "tiny");
        let words = [vec!["The", "cat", "sat"], vec!["on", "the", "mat", "today"]];
        let got = elmo::ElmoModel::load(&bf16).unwrap().embed(&words).unwrap();
        let mut file = elmo::model_file::ModelFile::open(&bf16).unwrap();
        assert!(!file.bf16.is_empty());
        for (name, t) in std::mem::take(&mut file.bf16) {
            file.tensors
                .insert(name, elmo::Tensor::from_vec(t.shape(), t.to_f32()).unwrap());
        }
        let widened = elmo::ElmoModel::from_file(file).unwrap().embed(&words).unwrap();
        assert_eq!(got.data.len(), widened.data.len());
        assert!(
            got.data != widened.data,
            "the bf16 file's products did not run on the {level} kernel"
        );
    }
}

/// `set` (`tiny` or `small`) converted with bf16 LSTM matrices into `dir`.
fn bf16_file(dir: &Path, set: &str) -> std::path::PathBuf {
    let f = fixture(if set == "tiny" { "bilm-tf-fixture" } else { set });
    let out = dir.join(format!("{set}-bf16.safetensors"));
    elmo::convert::convert_hdf5_with(
        &f.join("options.json"),
        &f.join("lm_weights.hdf5"),
        &out,
        &mut |_, _, _| {},
        elmo::convert::WeightDtype::Bf16,
    )
    .unwrap();
    out
}

/// The max abs error of `elmo embed`'s HDF5 output `out` against the
/// goldens of `set` (each sentence's `lm_embeddings` at its real
/// positions), each sentence within `atol + rtol |want|`; and the
/// sentences compared.
fn golden_error(set: &Path, out: &Path, what: &str, atol: f32, rtol: f32) -> (f32, usize) {
    let file = hdf5_reader::Hdf5File::open(out).unwrap();
    let (mut key, mut worst) = (0usize, 0f32);
    for g in &golden_files(set, "stateless_batch_") {
        let g = Golden::load(g);
        let (shape, lm) = g.f32("lm_embeddings"); // (B, L + 1, T, 2P)
        let (nk, t, d) = (shape[1], shape[2], shape[3]);
        for (b, tokens) in g.tokens().iter().enumerate() {
            let n = tokens.len();
            let want: Vec<f32> = (0..nk)
                .flat_map(|k| (0..n).flat_map(move |j| ((b * nk + k) * t + j) * d..((b * nk + k) * t + j + 1) * d))
                .map(|i| lm[i])
                .collect();
            let ds = file.dataset(&key.to_string()).unwrap();
            let mut got = vec![0f32; want.len()];
            ds.read_into(&mut got).unwrap();
            worst = worst.max(assert_close(&format!("{what} {key}"), &got, &want, atol, rtol));
            key += 1;
        }
    }
    (worst, key)
}

/// `elmo embed` of a golden set into HDF5 at `level`; the file's bytes.
fn embed_at(level: &str, jsonl: &Path, model: Option<&Path>, out: &Path) -> Vec<u8> {
    let mut args = vec![
        "embed",
        "--input",
        jsonl.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ];
    if let Some(m) = model {
        args.extend(["--model", m.to_str().unwrap()]);
    }
    let o = elmo(&args, Some(level));
    assert!(o.status.success(), "{level}: {}", String::from_utf8_lossy(&o.stderr));
    std::fs::read(out).unwrap()
}

#[test]
fn every_level_matches_the_goldens_and_agrees_bitwise_on_f32_files() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture("small");
    let small = dir.path().join("small.safetensors");
    elmo::convert::convert_hdf5(
        &f.join("options.json"),
        &f.join("lm_weights.hdf5"),
        &small,
        &mut |_, _, _| {},
    )
    .unwrap();
    for (name, model) in [("tiny", None), ("small", Some(small.as_path()))] {
        let set = fixture(name);
        let mut files = Vec::new();
        for level in available_levels() {
            let out = dir.path().join(format!("{name}-{level}.hdf5"));
            let bytes = embed_at(level.name(), &set.join("stateless.jsonl"), model, &out);
            let (worst, key) = golden_error(&set, &out, &format!("{name} {level}"), 1e-5, 1e-4);
            println!("{name} at {level}: max abs error {worst:.2e} over {key} sentences");
            files.push((level, bytes));
        }
        let get = |l: SimdLevel| files.iter().find(|(x, _)| *x == l).map(|(_, b)| b);
        if let (Some(a), Some(b)) = (get(SimdLevel::Avx2), get(SimdLevel::Avx512)) {
            assert!(a == b, "{name}: avx2 and avx512 outputs differ");
        }
        // avx512bf16 and amx run f32 weights on the avx512 kernels.
        for l in [SimdLevel::Avx512Bf16, SimdLevel::Amx] {
            if let (Some(a), Some(b)) = (get(SimdLevel::Avx512), get(l)) {
                assert!(a == b, "{name}: avx512 and {l} outputs differ on an f32 file");
            }
        }
    }
}

/// bf16 files' error against the f32 goldens at every level (tiny and
/// small, stateless), within `BF16_ATOL`. With f32 activations (`scalar`,
/// `avx2`, `avx512`) the error is that of the bf16 weights alone; at
/// `avx512bf16` the activations of the bf16 products are rounded to bf16
/// too. avx2 and avx512 still agree bitwise (the same fma chains).
#[test]
fn bf16_files_at_every_level_are_within_the_documented_tolerance() {
    let dir = tempfile::tempdir().unwrap();
    let mut report = Vec::new();
    for name in ["tiny", "small"] {
        let model = bf16_file(dir.path(), name);
        let set = fixture(name);
        let mut files = Vec::new();
        for level in available_levels() {
            let out = dir.path().join(format!("{name}-bf16-{level}.hdf5"));
            let bytes = embed_at(level.name(), &set.join("stateless.jsonl"), Some(&model), &out);
            let (worst, key) = golden_error(&set, &out, &format!("bf16 {name} {level}"), BF16_ATOL, 0.0);
            report.push(format!(
                "bf16 {name} at {level}: max abs error {worst:.2e} over {key} sentences"
            ));
            files.push((level, bytes));
        }
        let get = |l: SimdLevel| files.iter().find(|(x, _)| *x == l).map(|(_, b)| b);
        if let (Some(a), Some(b)) = (get(SimdLevel::Avx2), get(SimdLevel::Avx512)) {
            assert!(a == b, "{name}: avx2 and avx512 outputs differ on a bf16 file");
        }
    }
    for line in &report {
        println!("{line}");
    }
}

/// The documented bound for bf16 files against the f32 goldens (see
/// docs/performance.md for the measured figures per level).
const BF16_ATOL: f32 = 1e-1;

#[test]
fn a_level_the_cpu_lacks_or_an_unknown_one_is_refused_in_one_line() {
    // Each level this CPU lacks (on an AVX2-only CPU: avx512, avx512bf16
    // and amx), and a name that is no level; each message lists the levels
    // the CPU has.
    let has: Vec<&str> = SimdLevel::ALL
        .into_iter()
        .filter(|l| l.available())
        .map(|l| l.name())
        .collect();
    let has = has.join(", ");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.npz");
    let input = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sentences.txt");
    let args = [
        "embed",
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let mut cases = vec![(
        "sse9".to_string(),
        vec!["unknown SIMD level 'sse9'".to_string(), format!("(this CPU has {has})")],
    )];
    for level in SimdLevel::ALL.into_iter().filter(|l| !l.available()) {
        let name = level.name();
        cases.push((
            name.to_string(),
            vec![format!("this CPU cannot run {name}"), format!("(it has {has})")],
        ));
    }
    eprintln!("refused: {:?}", cases.iter().map(|(l, _)| l).collect::<Vec<_>>());
    for (level, needles) in &cases {
        let o = elmo(&args, Some(level));
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{level} accepted");
        assert_eq!(e.trim_end().lines().count(), 1, "{e}");
        for needle in needles {
            assert!(e.contains(needle.as_str()), "{level}: {e:?} lacks {needle:?}");
        }
    }
}
