//! Arbitrary token-id tensors through the ElmoEmbedding layer (tiny model,
//! a small vocabulary with gaps): every mode, stateless and stateful.
#![no_main]
use elmo::ElmoModel;
use elmo::layer::{ElmoEmbedding, OutputMode, TokenIds};
use elmo::model_file::ModelFile;
use elmo::tensor::Bytes;
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

fn layers() -> &'static Vec<ElmoEmbedding> {
    static L: OnceLock<Vec<ElmoEmbedding>> = OnceLock::new();
    L.get_or_init(|| {
        let bytes = include_bytes!("../../weights/bilm-tf-test.safetensors").to_vec();
        let file = ModelFile::from_bytes("tiny".as_ref(), Arc::new(Bytes::Owned(bytes))).expect("tiny model");
        let model = Arc::new(ElmoModel::from_file(file).expect("tiny model"));
        let vocab: HashMap<i64, String> = [(1, "a"), (2, "bb"), (5, "Zürich"), (9, "."), (300, "long-word-here")]
            .map(|(k, v)| (k, v.to_string()))
            .into();
        let mut v: Vec<ElmoEmbedding> = ["default", "word_emb", "lstm_outputs1", "lstm_outputs2", "elmo", "all"]
            .iter()
            .map(|m| ElmoEmbedding::new(model.clone(), vocab.clone(), m.parse::<OutputMode>().unwrap(), true).unwrap())
            .collect();
        v.push(
            ElmoEmbedding::builder(model, vocab, OutputMode::Elmo, false)
                .layer_norm(true)
                .stateful(8)
                .build()
                .unwrap(),
        );
        v
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let (b, t) = ((data[0] % 9) as usize, (data[1] % 17) as usize);
    let ids: Vec<i64> = (0..b * t)
        .map(|i| {
            let x = data.get(2 + i).copied().unwrap_or(0);
            match x % 8 {
                0 => 0,
                1 => -(x as i64),
                2 => i64::MAX - x as i64,
                _ => (x % 12) as i64,
            }
        })
        .collect();
    let Ok(ids) = TokenIds::new(&[b, t], ids) else { return };
    let layer = &layers()[data[2] as usize % layers().len()];
    if let Ok(out) = layer.call(&ids) {
        assert_eq!(out.shape(), layer.output_shape(&[b, t]).unwrap().as_slice());
        assert!(out.value().data().iter().all(|v| v.is_finite()));
    }
});
