//! Any bytes as an allennlp/bilm-tf HDF5 weight file for the tiny model.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn options() -> &'static elmo::Options {
    static O: OnceLock<elmo::Options> = OnceLock::new();
    O.get_or_init(|| {
        elmo::Options::from_json(include_str!("../../tests/fixtures/bilm-tf-fixture/options.json")).expect("options")
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = elmo::convert::read_hdf5_weights_from_bytes(options(), data, "fuzz.hdf5".as_ref());
});
