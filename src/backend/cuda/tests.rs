//! The GPU pass on the host backend against the CPU path, and on a device when there is one.

use super::ZX_BYTES;
use crate::{ElmoModel, LstmState, encode_batch};

/// Asserts bitwise equality (the host backend computes every kernel as
/// the CPU path does).
fn same(what: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.to_bits(), y.to_bits(), "{what}[{i}]: {x} vs {y}");
    }
}

#[test]
fn kernel_check_inputs_are_finite_and_fire_the_clips() {
    let outs = super::kernel_outputs(&super::HostBackend::default()).unwrap();
    assert_eq!(outs.len(), 12);
    for (name, v) in &outs {
        assert!(!v.is_empty() && v.iter().all(|x| x.is_finite()), "{name}");
    }
    let get = |n: &str| &outs.iter().find(|o| o.0 == n).unwrap().1;
    assert!(
        get("lstm_cell c").iter().any(|&c| c == 0.5 || c == -0.5),
        "cell clip fires"
    );
    assert!(
        get("lstm_project_out h").iter().any(|&h| h == 0.3 || h == -0.3),
        "projection clip fires"
    );
    assert!(get("char_cnn relu").contains(&0.0), "relu clamps");
}

/// The models the GPU-pass tests run: the tiny one, the small one (skip
/// connections, clips that fire) and the small one with bf16 LSTM
/// matrices, converted into `dir`.
pub(crate) fn models(dir: &std::path::Path) -> [std::path::PathBuf; 3] {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let f = root.join("tests/fixtures/small");
    let (small, small_bf16) = (dir.join("small.safetensors"), dir.join("small-bf16.safetensors"));
    for (path, dtype) in [
        (&small, crate::io::convert::WeightDtype::F32),
        (&small_bf16, crate::io::convert::WeightDtype::Bf16),
    ] {
        crate::io::convert::convert_hdf5_with(
            &f.join("options.json"),
            &f.join("lm_weights.hdf5"),
            path,
            &mut |_, _, _| {},
            dtype,
        )
        .unwrap();
    }
    [root.join("weights/bilm-tf-test.safetensors"), small, small_bf16]
}

/// The CPU path a GPU pass of the model at `path` is checked against: the
/// model itself, except that at the `avx512bf16` and `amx` levels its bf16
/// matrices are widened to f32 first. The GPU widens them on upload, so its
/// products are those of the widening levels (`avx2`, `avx512`);
/// `avx512bf16` and `amx` round the activations of bf16 products to bf16
/// (different results, by design), while their f32 products are `avx512`'s
/// bits.
pub(crate) fn cpu_reference(path: &std::path::Path) -> ElmoModel {
    use crate::backend::cpu::simd_level;
    let mut file = crate::io::model_file::ModelFile::open(path).unwrap();
    if simd_level().reads_paired_bf16() {
        for (name, t) in std::mem::take(&mut file.bf16) {
            let wide = crate::tensor::Tensor::from_vec(t.shape(), t.to_f32()).unwrap();
            file.tensors.insert(name, wide);
        }
    }
    ElmoModel::from_file(file).unwrap()
}

/// The batches the GPU-pass tests run, in this order, stateless and
/// with states carried: sentences of 0 to 40 words (42 steps), empty
/// batches, repeated words.
pub(crate) fn batches() -> Vec<Vec<Vec<String>>> {
    let words = |n: usize, s: usize| -> Vec<String> { (0..n).map(|i| format!("w{}x", (i * 7 + s) % 23)).collect() };
    vec![
        vec![words(5, 0)],
        vec![words(3, 1), vec![], words(9, 2), words(1, 3), words(9, 4)],
        vec![words(40, 5), words(2, 6)],
        vec![],
        vec![words(4, 7), words(6, 8), words(5, 9)],
    ]
}

/// Runs `a` and `b` on `ids` (with their states when carried) and
/// returns every array of the two passes, named and paired: the output,
/// each intermediate (shapes asserted equal) and each highway layer.
pub(crate) fn both(
    a: &ElmoModel,
    b: &ElmoModel,
    ids: &crate::CharIds,
    states: Option<(&mut LstmState, &mut LstmState)>,
    tag: &str,
) -> Vec<(String, Vec<f32>, Vec<f32>)> {
    let (sa, sb) = match states {
        Some((x, y)) => (Some(x), Some(y)),
        None => (None, None),
    };
    // Without intermediates the GPU pass downloads only the output it
    // assembled (and the final states when carried): the same as with
    // them. Run first, on copies of the states.
    let (mut sa, mut sb) = (sa, sb);
    let (mut ca, mut cb) = (sa.as_deref().cloned(), sb.as_deref().cloned());
    let pa = a.forward(ids, ca.as_mut()).unwrap();
    let pb = b.forward(ids, cb.as_mut()).unwrap();
    let (oa, ia) = a.forward_with_intermediates(ids, sa.as_deref_mut()).unwrap();
    let (ob, ib) = b.forward_with_intermediates(ids, sb.as_deref_mut()).unwrap();
    assert_eq!(oa.lengths, ob.lengths, "{tag}");
    assert_eq!(pa.data, oa.data, "{tag}: a's output without intermediates");
    assert_eq!(pb.data, ob.data, "{tag}: b's output without intermediates");
    assert_eq!(
        (pa.n_layers, pa.max_len, pa.dim),
        (oa.n_layers, oa.max_len, oa.dim),
        "{tag}"
    );
    assert_eq!(ca.as_ref(), sa.as_deref(), "{tag}: a's states without intermediates");
    assert_eq!(cb.as_ref(), sb.as_deref(), "{tag}: b's states without intermediates");
    let mut v = vec![(format!("{tag} out"), oa.data, ob.data)];
    for (k, x, y) in [
        ("cnn", &ia.char_cnn, &ib.char_cnn),
        ("tok", &ia.token_embeddings, &ib.token_embeddings),
        ("fwd", &ia.lstm_fwd, &ib.lstm_fwd),
        ("bwd", &ia.lstm_bwd, &ib.lstm_bwd),
        ("c", &ia.final_c, &ib.final_c),
        ("h", &ia.final_h, &ib.final_h),
    ] {
        assert_eq!(x.shape(), y.shape(), "{tag} {k}");
        v.push((format!("{tag} {k}"), x.data().to_vec(), y.data().to_vec()));
    }
    assert_eq!(ia.highway.len(), ib.highway.len(), "{tag} highway layers");
    for (h, (x, y)) in ia.highway.iter().zip(&ib.highway).enumerate() {
        v.push((format!("{tag} highway {h}"), x.data().to_vec(), y.data().to_vec()));
    }
    v
}

/// Every batch of [`batches`] through `a` and `b`, stateless and with
/// states carried from batch to batch: `check(name, stateful, a's, b's)`
/// on every pair of arrays ([`both`]) and, after each batch, on the
/// carried states.
pub(crate) fn on_batches(a: &ElmoModel, b: &ElmoModel, tag: &str, mut check: impl FnMut(&str, bool, &[f32], &[f32])) {
    let c = a.options().char_cnn.max_characters_per_token;
    let (mut sa, mut sb) = (LstmState::new(a, 5).unwrap(), LstmState::new(b, 5).unwrap());
    for (i, batch) in batches().iter().enumerate() {
        let ids = encode_batch(batch, c).unwrap();
        for stateful in [false, true] {
            let states = stateful.then_some((&mut sa, &mut sb));
            for (name, x, y) in both(a, b, &ids, states, &format!("{tag} batch {i} stateful {stateful}")) {
                check(&name, stateful, &x, &y);
            }
        }
        check(&format!("{tag} batch {i} state c"), true, sa.c(), sb.c());
        check(&format!("{tag} batch {i} state h"), true, sa.h(), sb.h());
    }
}

#[test]
fn a_trace_records_each_phase_only_when_on() {
    use super::{HostBackend, Trace};
    let be = HostBackend::default();
    let mut on = Trace {
        last: Some(std::time::Instant::now()),
        marks: Vec::new(),
    };
    on.mark(&be, || "a".into()).unwrap();
    on.mark(&be, || "b".into()).unwrap();
    let names: Vec<&str> = on.marks.iter().map(|m| m.0.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert!(on.marks.iter().all(|m| m.1 >= 0.0));
    let mut off = Trace {
        last: None,
        marks: Vec::new(),
    };
    off.mark(&be, || unreachable!("an idle trace names no phase")).unwrap();
    assert!(off.marks.is_empty());
}

/// The GPU pass's orchestration (length-sorted prefixes, step rows,
/// reversal, blocks of input-side products, state order), run with the
/// host backend, against the CPU path, bitwise: every output and intermediate,
/// stateless and stateful, on the tiny model and on the small one (skip
/// connections, clipping that fires) in f32 and with bf16 LSTM matrices
/// (widened on upload, exactly), whole and in one-step blocks, with and
/// without word sharing.
#[test]
#[cfg_attr(miri, ignore = "maps files")]
fn gpu_forward_on_the_host_backend_matches_the_cpu_path() {
    let dir = tempfile::tempdir().unwrap();
    for path in models(dir.path()) {
        // 40 KiB: blocks of 40 (tiny) or 20 (small) rows, so layer 0's
        // shared products are gathered block by block.
        for (zx, share) in [(ZX_BYTES, true), (ZX_BYTES, false), (1, true), (40 << 10, true)] {
            let cpu = cpu_reference(&path);
            let host = ElmoModel::load(&path)
                .unwrap()
                .with_word_sharing(share)
                .with_host_backend(zx)
                .unwrap();
            let tag = format!("{} zx {zx} share {share}", path.display());
            on_batches(&host, &cpu, &tag, |name, _, a, b| same(name, a, b));
        }
    }
}

/// ELMoForManyLangs models run the GPU pass unchanged when they have no
/// word embedding (their weights are converted into bilm-tf's layout, their
/// lexicon ids are the pass's input), bitwise the CPU path's on the host
/// backend; one with words is refused, never computed without them.
#[test]
#[cfg_attr(miri, ignore = "maps files")]
fn elmoformanylangs_models_on_the_host_backend() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let f32 = crate::io::convert::WeightDtype::F32;
    let chars = dir.path().join("chars.safetensors");
    crate::io::efml::convert_elmoformanylangs(&root.join("tests/fixtures/efml/chars"), &chars, f32).unwrap();
    let cpu = ElmoModel::load(&chars).unwrap();
    let host = ElmoModel::load(&chars).unwrap().with_host_backend(ZX_BYTES).unwrap();
    let batch = vec![
        vec!["Das".to_string(), "ist".into(), "ein".into(), "Test".into()],
        vec![],
        vec!["我们".into(), "😊".into(), "Übergrößenträgerinnenschaftsverband".into()],
    ];
    let ids = cpu.encode(&batch).unwrap();
    for (name, x, y) in both(&host, &cpu, &ids, None, "efml chars") {
        same(&name, &x, &y);
    }
    let words = dir.path().join("words.safetensors");
    crate::io::efml::convert_elmoformanylangs(&root.join("tests/fixtures/efml/words"), &words, f32).unwrap();
    let e = ElmoModel::load(&words)
        .unwrap()
        .with_host_backend(ZX_BYTES)
        .unwrap_err();
    assert!(e.to_string().contains("word embedding"), "{e}");
}
