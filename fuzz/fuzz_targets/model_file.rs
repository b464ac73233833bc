//! Any bytes as a converted model file: load, and if it loads, embed.
#![no_main]
use elmo::ElmoModel;
use elmo::model_file::ModelFile;
use elmo::tensor::Bytes;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = ModelFile::from_bytes("fuzz.safetensors".as_ref(), Arc::new(Bytes::Owned(data.to_vec()))) else {
        return;
    };
    if file.check_finite().is_err() {
        return;
    }
    // Keep runs short: skip files whose options ask for huge token lengths.
    if file.options.char_cnn.max_characters_per_token > 256 {
        return;
    }
    if let Ok(model) = ElmoModel::from_file(file) {
        let _ = model.embed(&[vec!["fuzz", "é"], vec![]]);
    }
});
