//! Any bytes as a PyTorch state dict (zip or legacy serialisation): the
//! restricted unpickler and the storage reader must give an error or
//! tensors, never panic, run away in memory or loop.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let _ = elmo::io::torch::read_state_dict_bytes(Path::new("fuzz.pt"), data);
});
