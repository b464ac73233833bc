//! Huge inputs (issue: bounded memory): a 100,000-token sentence, 10,000
//! sentences, a 1 MB token, with the small model; results identical to
//! smaller calls; peak memory printed (VmHWM of this test process).

mod common;
use common::*;

fn peak_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

#[test]
fn huge_inputs_run_with_bounded_memory_and_same_results() {
    let dir = tempfile::tempdir().unwrap();
    let model = small_model(dir.path());
    let words = ["the", "Zürich", "1,234", "co-operation", "!"];
    // Blocking of the input-side products is invisible: a 1,500-step sentence
    // alone (blocks of 1024 steps) and next to another (blocks of 512).
    let long: Vec<&str> = (0..1500).map(|i| words[i % 5]).collect();
    let alone = model.embed(std::slice::from_ref(&long)).unwrap();
    let pair = model.embed(&[long.clone(), vec!["x"]]).unwrap();
    for k in 0..alone.n_layers {
        for t in 0..1500 {
            assert_eq!(alone.vector(0, k, t), pair.vector(0, k, t), "layer {k} token {t}");
        }
    }
    // A 1 MiB budget (blocks of 64 steps, groups of 33 sentences, token
    // work items of 14 tokens for this model) gives the same bits.
    let tight = small_model(dir.path()).with_memory_budget(1 << 20);
    let many_mixed: Vec<Vec<&str>> = (0..300).map(|i| long[..1 + (i * 7) % 90].to_vec()).collect();
    assert_eq!(tight.embed(std::slice::from_ref(&long)).unwrap(), alone);
    assert_eq!(tight.embed(&many_mixed).unwrap(), model.embed(&many_mixed).unwrap());
    let (mut s1, mut s2) = (
        elmo::LstmState::new(&tight, 300).unwrap(),
        elmo::LstmState::new(&model, 300).unwrap(),
    );
    for _ in 0..2 {
        let a = tight.embed_stateful(&many_mixed, &mut s1).unwrap();
        assert_eq!(a, model.embed_stateful(&many_mixed, &mut s2).unwrap());
    }
    assert_eq!((s1.c(), s1.h()), (s2.c(), s2.h()));
    let base = peak_mib();
    let huge: Vec<&str> = (0..100_000).map(|i| words[i % 5]).collect();
    let out = model.embed(&[huge]).unwrap();
    assert_eq!(out.lengths, vec![100_000]);
    // Same prefix: same token layer and same forward LSTM half.
    let half = out.dim / 2;
    assert_eq!(out.vector(0, 0, 10), alone.vector(0, 0, 10));
    assert_eq!(out.vector(0, 2, 10)[..half], alone.vector(0, 2, 10)[..half]);
    let after_long = peak_mib();
    drop(out);
    let many: Vec<Vec<&str>> = (0..10_000).map(|i| vec![words[i % 5], words[(i + 1) % 5]]).collect();
    let out = model.embed(&many).unwrap();
    assert_eq!(out.lengths.len(), 10_000);
    let after_many = peak_mib();
    drop(out);
    let token = "ü".repeat(500_000); // 1 MB
    let out = model.embed(&[vec![token.as_str()]]).unwrap();
    assert_eq!(out.lengths, vec![1]);
    eprintln!(
        "peak memory (VmHWM): before {base:.0} MiB, 100k-token sentence {after_long:.0} MiB, \
         10k sentences {after_many:.0} MiB, 1 MB token {:.0} MiB",
        peak_mib()
    );
    // The output alone of the 100k sentence is 100k x 3 x 64 x 4 B = 73 MiB.
    assert!(after_long < base + 600.0, "memory grew by {} MiB", after_long - base);
}
