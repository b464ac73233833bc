//! Every SIMD level this CPU has, run end to end (`ELMO_SIMD`, one process
//! each: the level is per process) against TensorFlow's goldens; the level
//! picked by default is the best the CPU has (a test that fails when a build
//! or a dispatch missed the SIMD path it was meant to run); avx2 and avx512
//! agree bitwise; a level the CPU lacks is refused in one line.

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
fn every_level_matches_the_goldens_and_avx2_avx512_agree_bitwise() {
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
        let goldens = golden_files(&set, "stateless_batch_");
        let mut files = Vec::new();
        for level in available_levels() {
            let out = dir.path().join(format!("{name}-{level}.hdf5"));
            let bytes = embed_at(level.name(), &set.join("stateless.jsonl"), model, &out);
            let file = hdf5_reader::Hdf5File::open(&out).unwrap();
            let (mut key, mut worst) = (0usize, 0f32);
            for g in &goldens {
                let g = Golden::load(g);
                let (shape, lm) = g.f32("lm_embeddings"); // (B, L + 1, T, 2P)
                let (nk, t, d) = (shape[1], shape[2], shape[3]);
                for (b, tokens) in g.tokens().iter().enumerate() {
                    let n = tokens.len();
                    let want: Vec<f32> = (0..nk)
                        .flat_map(|k| {
                            (0..n).flat_map(move |j| ((b * nk + k) * t + j) * d..((b * nk + k) * t + j + 1) * d)
                        })
                        .map(|i| lm[i])
                        .collect();
                    let ds = file.dataset(&key.to_string()).unwrap();
                    let mut got = vec![0f32; want.len()];
                    ds.read_into(&mut got).unwrap();
                    worst = worst.max(assert_close(&format!("{name} {level} {key}"), &got, &want, 1e-5, 1e-4));
                    key += 1;
                }
            }
            println!("{name} at {level}: max abs error {worst:.2e} over {key} sentences");
            files.push((level, bytes));
        }
        let get = |l: SimdLevel| files.iter().find(|(x, _)| *x == l).map(|(_, b)| b);
        if let (Some(a), Some(b)) = (get(SimdLevel::Avx2), get(SimdLevel::Avx512)) {
            assert!(a == b, "{name}: avx2 and avx512 outputs differ");
        }
    }
}

#[test]
fn a_level_the_cpu_lacks_or_an_unknown_one_is_refused_in_one_line() {
    let missing = SimdLevel::ALL.into_iter().find(|l| !l.available());
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
    for (level, needle) in [("sse9", "unknown SIMD level 'sse9'"), ("amx", "no AMX kernels")]
        .into_iter()
        .chain(missing.map(|l| (l.name(), "this CPU cannot run")))
    {
        let o = elmo(&args, Some(level));
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{level} accepted");
        assert_eq!(e.trim_end().lines().count(), 1, "{e}");
        assert!(e.contains(needle) && e.contains("this CPU has scalar"), "{level}: {e}");
    }
}
