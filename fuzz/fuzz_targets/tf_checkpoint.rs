//! Any bytes as a TF V2 checkpoint index (the data shard is the small
//! fixture's), then the conversion with the hub preset.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;

const PREFIX: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/small/hub_checkpoint/variables/variables"
);

fuzz_target!(|data: &[u8]| {
    if let Ok(ckpt) = elmo::tfckpt::Checkpoint::from_index_bytes(Path::new(PREFIX), data) {
        let _ = elmo::tfckpt::elmo_from_checkpoint(&ckpt, None, Some("tfhub-elmo-2"));
    }
});
