//! Forward-pass benchmarks on the committed small models (the full-size model
//! and per-kernel benchmarks with GFLOP/s come with the CPU speed work).
//!
//! `cargo bench --bench forward`

use elmo::ElmoModel;
use std::path::Path;
use std::sync::OnceLock;

fn model(name: &str) -> &'static ElmoModel {
    static TINY: OnceLock<ElmoModel> = OnceLock::new();
    static SMALL: OnceLock<ElmoModel> = OnceLock::new();
    let cell = if name == "tiny" { &TINY } else { &SMALL };
    cell.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        if name == "tiny" {
            return ElmoModel::load(&root.join("weights/bilm-tf-test.safetensors")).expect("default model");
        }
        let f = root.join("tests/fixtures/small");
        let out = std::env::temp_dir().join(format!("elmo-bench-small-{}.safetensors", std::process::id()));
        elmo::convert::convert_hdf5(
            &f.join("options.json"),
            &f.join("lm_weights.hdf5"),
            &out,
            &mut |_, _, _| {},
        )
        .expect("convert small");
        ElmoModel::load(&out).expect("load small")
    })
}

fn sentence(n: usize) -> Vec<String> {
    let words = [
        "The", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", ".",
    ];
    (0..n).map(|i| words[i % words.len()].to_string()).collect()
}

/// One sentence of 10 and of 30 tokens (latency).
#[divan::bench(args = ["tiny", "small"], consts = [10, 30])]
fn one_sentence<const N: usize>(bencher: divan::Bencher, name: &str) {
    let m = model(name);
    let s = vec![sentence(N)];
    bencher.bench(|| m.embed(divan::black_box(&s)).unwrap());
}

/// A batch of 32 sentences of 20 tokens (throughput).
#[divan::bench(args = ["tiny", "small"])]
fn batch_32x20(bencher: divan::Bencher, name: &str) {
    let m = model(name);
    let batch: Vec<Vec<String>> = (0..32).map(|_| sentence(20)).collect();
    bencher
        .counter(divan::counter::ItemsCount::new(32usize * 20))
        .bench(|| m.embed(divan::black_box(&batch)).unwrap());
}

/// Loading a model file (mapping + validation).
#[divan::bench]
fn load_default_model() -> ElmoModel {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    ElmoModel::load(&root.join("weights/bilm-tf-test.safetensors")).unwrap()
}

fn main() {
    divan::main();
}
