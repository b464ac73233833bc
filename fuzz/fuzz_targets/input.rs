//! Any bytes as `elmo embed` input: plain text and JSON lines.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = elmo::input::parse_text(data, 4);
    if let Ok(batches) = elmo::input::parse_jsonl(data) {
        for b in batches.iter().take(4) {
            let _ = elmo::encode_batch(b, 20);
        }
    }
});
