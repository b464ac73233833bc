//! One model shared by many threads: every answer is bitwise the answer the
//! same request gets alone, and stateful streams owned by different threads
//! do not see each other's state.

mod common;
use common::*;
use elmo::{ElmoModel, LstmState};
use std::sync::Arc;

fn request(seed: usize) -> Vec<Vec<String>> {
    // 1 to 3 sentences of 1 to 200 tokens, words of varied lengths.
    let words = [
        "a",
        "of",
        "the",
        "market",
        "Zürich",
        "日本",
        "co-operation",
        "1,234.56",
        "!",
        "ELMo",
        "x",
    ];
    let n_sent = 1 + seed % 3;
    (0..n_sent)
        .map(|s| {
            let len = 1 + (seed * 37 + s * 101) % 200;
            (0..len)
                .map(|i| words[(seed + i * 7 + s) % words.len()].to_string())
                .collect()
        })
        .collect()
}

#[test]
fn eight_threads_five_hundred_requests_each_bitwise_equal_to_alone() {
    let dir = tempfile::tempdir().unwrap();
    let model: Arc<ElmoModel> = Arc::new(small_model(dir.path()));
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ElmoModel>();
    let distinct = 40;
    let alone: Arc<Vec<_>> = Arc::new((0..distinct).map(|i| model.embed(&request(i)).unwrap()).collect());
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let (model, alone) = (Arc::clone(&model), Arc::clone(&alone));
            std::thread::spawn(move || {
                for k in 0..500 {
                    let i = (t * 131 + k * 17) % distinct;
                    let got = model.embed(&request(i)).unwrap();
                    assert!(
                        got == alone[i],
                        "thread {t} request {k} ({i}) differs from the same request alone"
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("a worker failed");
    }
}

#[test]
fn stateful_streams_in_different_threads_are_independent() {
    let dir = tempfile::tempdir().unwrap();
    let model = Arc::new(tiny_model(dir.path()));
    // The sequence each stream would produce alone, in one thread.
    let sequence = |stream: usize| -> Vec<Vec<Vec<String>>> { (0..20).map(|k| request(stream * 20 + k)).collect() };
    let expected: Vec<Vec<_>> = (0..4)
        .map(|s| {
            let mut st = LstmState::new(&model, 3).unwrap();
            sequence(s)
                .iter()
                .map(|b| model.embed_stateful(b, &mut st).unwrap())
                .collect()
        })
        .collect();
    let expected = Arc::new(expected);
    let handles: Vec<_> = (0..4)
        .map(|s| {
            let (model, expected) = (Arc::clone(&model), Arc::clone(&expected));
            std::thread::spawn(move || {
                let mut st = LstmState::new(&model, 3).unwrap();
                for (k, b) in sequence(s).iter().enumerate() {
                    assert!(
                        model.embed_stateful(b, &mut st).unwrap() == expected[s][k],
                        "stream {s} batch {k}"
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("a stream failed");
    }
}
