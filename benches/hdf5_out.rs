//! `io::hdf5_out::finish`: the metadata of an allennlp-layout HDF5 file for
//! many datasets of shape (3, 1, 1024); the raw data is the caller's, so
//! every dataset points at one 12 KiB block and the file is mostly metadata.
//!
//! `cargo bench --bench hdf5_out`. Prints the metadata bytes per dataset once
//! per count; `ELMO_BENCH_HDF5_COUNT` replaces the counts with one (e.g.
//! 50000000, to watch the peak memory with `/usr/bin/time -v`).

use divan::Bencher;
use elmo::io::hdf5_out::{DATA_START, DatasetEntry, Layout, Manifest, file_len, finish};
use std::fs::File;

fn main() {
    divan::main();
}

fn counts() -> Vec<u64> {
    match std::env::var("ELMO_BENCH_HDF5_COUNT") {
        Ok(v) => vec![v.parse().expect("ELMO_BENCH_HDF5_COUNT: a number")],
        Err(_) => vec![100_000, 1_000_000],
    }
}

#[divan::bench(args = counts(), sample_count = 3, sample_size = 1)]
fn finish_metadata(bencher: Bencher, count: u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.h5");
    let layout = Layout::rank3(3, 1024);
    let data = layout.data_len(1).unwrap();
    let manifest = Manifest {
        layout,
        end_of_data: DATA_START + data,
        count,
        json_len: 2,
    };
    let len = file_len(&manifest).unwrap();
    eprintln!(
        "{count} datasets: {} bytes of metadata, {:.1} per dataset",
        len - manifest.end_of_data,
        (len - manifest.end_of_data) as f64 / count as f64
    );
    bencher.bench_local(|| {
        let mut file = File::create(&path).unwrap();
        let entries = (0..count).map(|key| {
            Ok(DatasetEntry {
                key,
                offset: DATA_START,
                n: 1,
            })
        });
        finish(&mut file, &path, &manifest, entries, &mut &b"{}"[..]).unwrap()
    });
}
