//! Round trips, numpy's own files, and corrupt archives and headers refused.

use super::*;

fn f32_array(shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    (0..n).map(|i| i as f32 * 0.5 - 3.25).collect()
}

fn i32_array(shape: &[usize]) -> Vec<i32> {
    let n: usize = shape.iter().product();
    (0..n).map(|i| i as i32 * 7 - 11).collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

const SHAPES: &[&[usize]] = &[&[], &[5], &[2, 3, 4], &[0], &[2, 0, 3]];

/// The signatures of the ZIP64 end records and, with its 16-byte size, of
/// a local header's ZIP64 extra field.
const SIG_ZIP64_EOCD: &[u8] = b"PK\x06\x06";
const SIG_ZIP64_LOCATOR: &[u8] = b"PK\x06\x07";
const ZIP64_LOCAL_EXTRA: &[u8] = &[0x01, 0x00, 0x10, 0x00];

fn writer() -> NpzWriter<Cursor<Vec<u8>>> {
    NpzWriter::new(Cursor::new(Vec::new()))
}

fn finish(w: NpzWriter<Cursor<Vec<u8>>>) -> Vec<u8> {
    w.finish().unwrap().into_inner()
}

fn sample_archive(force_zip64: bool) -> Vec<u8> {
    let mut w = writer();
    w.force_zip64 = force_zip64;
    for (i, shape) in SHAPES.iter().enumerate() {
        w.add_f32(&format!("f{i}"), shape, &f32_array(shape)).unwrap();
        w.add_i32(&format!("i{i}"), shape, &i32_array(shape)).unwrap();
    }
    finish(w)
}

fn check_sample(arrays: &BTreeMap<String, NpyArray>) {
    assert_eq!(arrays.len(), 2 * SHAPES.len());
    for (i, shape) in SHAPES.iter().enumerate() {
        let f = &arrays[&format!("f{i}")];
        assert_eq!(f.shape, shape.to_vec());
        assert_eq!(f.data, NpyData::F32(f32_array(shape)));
        let n = &arrays[&format!("i{i}")];
        assert_eq!(n.shape, shape.to_vec());
        assert_eq!(n.data, NpyData::I32(i32_array(shape)));
        assert_eq!(n.len(), shape.iter().product::<usize>());
    }
    assert_eq!(arrays["f0"].len(), 1);
    assert!(arrays["f3"].is_empty());
    assert!(arrays["i4"].is_empty());
}

#[test]
fn npz_round_trip() {
    let bytes = sample_archive(false);
    check_sample(&read_npz_bytes(&bytes).unwrap());
    // No ZIP64 records in a small archive.
    assert!(!contains(&bytes, SIG_ZIP64_EOCD));
    assert!(!contains(&bytes, ZIP64_LOCAL_EXTRA));
}

#[test]
fn npz_round_trip_zip64_sizes() {
    let bytes = sample_archive(true);
    assert!(contains(&bytes, ZIP64_LOCAL_EXTRA));
    check_sample(&read_npz_bytes(&bytes).unwrap());
}

/// More entries than the classic end record counts: the writer adds the
/// ZIP64 end records, the reader follows them.
#[test]
#[cfg_attr(miri, ignore = "65,536 entries: too slow under Miri")]
fn npz_with_zip64_end_records() {
    let n = 65_536;
    let mut w = writer();
    for i in 0..n {
        w.add_i32(&format!("a{i}"), &[1], &[i]).unwrap();
    }
    let bytes = finish(w);
    assert!(contains(&bytes, SIG_ZIP64_EOCD));
    assert!(contains(&bytes, SIG_ZIP64_LOCATOR));
    let arrays = read_npz_bytes(&bytes).unwrap();
    assert_eq!(arrays.len(), n as usize);
    assert_eq!(arrays["a65535"].data, NpyData::I32(vec![65535]));
}

#[test]
fn npz_round_trip_through_file() {
    let dir = std::env::temp_dir().join(format!("elmo-npz-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("round_trip.npz");
    let mut w = NpzWriter::create(&path).unwrap();
    w.add_f32("x", &[2, 2], &[1.0, 2.0, 3.0, 4.0]).unwrap();
    w.add_i32("ünïcode", &[1], &[9]).unwrap();
    w.finish().unwrap();
    let arrays = read_npz(&path).unwrap();
    assert_eq!(arrays["x"].to_f32().unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
    assert_eq!(arrays["ünïcode"].to_i64().unwrap(), vec![9]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(matches!(read_npz(&path), Err(Error::Io { .. })));
}

/// An entry over 4 GiB (ZIP64 sizes) and entries after it (ZIP64
/// offsets), through a file; NumPy reads such an archive of ours too.
#[test]
#[ignore = "writes and reads a 4.4 GB archive (about 5 GB of disk and of memory, a minute)"]
fn npz_over_4_gib() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.npz");
    let n = 1_100_000_000;
    let mut w = NpzWriter::create(&path).unwrap();
    w.add_i32("before", &[3], &[1, 2, 3]).unwrap();
    w.add_f32("big", &[n / 1000, 1000], &vec![0.0; n]).unwrap();
    w.add_f32("after", &[2], &[0.5, -1.5]).unwrap();
    w.finish().unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() > 1 << 32);
    let arrays = read_npz(&path).unwrap();
    assert_eq!(arrays["before"].data, NpyData::I32(vec![1, 2, 3]));
    assert_eq!(arrays["after"].data, NpyData::F32(vec![0.5, -1.5]));
    assert_eq!(arrays["big"].shape, vec![n / 1000, 1000]);
    assert!(matches!(&arrays["big"].data, NpyData::F32(v) if v.len() == n && v.iter().all(|&x| x == 0.0)));
}

#[test]
fn npy_header_layout_matches_numpy() {
    for shape in SHAPES {
        let bytes = npy_bytes_f32(shape, &f32_array(shape)).unwrap();
        let header_len = usize::from(u16::from_le_bytes([bytes[8], bytes[9]]));
        assert_eq!((10 + header_len) % 64, 0);
        assert_eq!(bytes[10 + header_len - 1], b'\n');
        assert_eq!(bytes.len(), 10 + header_len + 4 * f32_array(shape).len());
    }
    let bytes = npy_bytes_i32(&[3], &[1, 2, 3]).unwrap();
    assert!(bytes.starts_with(b"\x93NUMPY\x01\x00v\x00{'descr': '<i4', 'fortran_order': False, 'shape': (3,), }"));
    assert_eq!(bytes.len(), 128 + 12);
    let zero_d = npy_bytes_f32(&[], &[2.5]).unwrap();
    assert!(contains(&zero_d, b"'shape': (), }"));
    let three_d = npy_bytes_f32(&[3, 6, 50], &vec![0.0; 900]).unwrap();
    assert!(contains(&three_d, b"'shape': (3, 6, 50), }"));
}

#[test]
fn npy_writer_rejects_length_mismatch() {
    assert!(npy_bytes_f32(&[2, 3], &[0.0; 5]).is_err());
    assert!(npy_bytes_i32(&[], &[]).is_err());
    assert!(npy_bytes_f32(&[usize::MAX, 2], &[]).is_err());
    let mut w = writer();
    assert!(w.add_i32("a", &[2], &[1]).is_err());
    // A rejected array does not poison the name or the writer.
    w.add_i32("a", &[1], &[1]).unwrap();
    assert!(w.add_f32("a", &[1], &[1.0]).is_err());
    let arrays = read_npz_bytes(&finish(w)).unwrap();
    assert_eq!(arrays["a"].data, NpyData::I32(vec![1]));
}

#[test]
fn parse_npy_variants() {
    let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
    let dict = b"{\"descr\": \"<f8\", \"shape\": (2L,), \"fortran_order\": False}\n";
    v2.extend_from_slice(&(dict.len() as u32).to_le_bytes());
    v2.extend_from_slice(dict);
    v2.extend_from_slice(&1.5f64.to_le_bytes());
    v2.extend_from_slice(&(-2.0f64).to_le_bytes());
    let a = parse_npy(&v2).unwrap();
    assert_eq!(a.shape, vec![2]);
    assert_eq!(a.data, NpyData::F64(vec![1.5, -2.0]));
    assert_eq!(a.to_f32().unwrap(), vec![1.5, -2.0]);
    assert!(a.to_i64().is_err());

    let make = |descr: &str, shape: &str, data: &[u8]| {
        let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}\n");
        let mut v = b"\x93NUMPY\x01\x00".to_vec();
        v.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        v.extend_from_slice(dict.as_bytes());
        v.extend_from_slice(data);
        v
    };
    let b = parse_npy(&make("|b1", "(3,)", &[0, 1, 2])).unwrap();
    assert_eq!(b.data, NpyData::Bool(vec![false, true, true]));
    assert_eq!(b.to_i64().unwrap(), vec![0, 1, 1]);
    assert_eq!(b.to_f32().unwrap(), vec![0.0, 1.0, 1.0]);
    let u = parse_npy(&make("|u1", "(2, 1)", &[7, 255])).unwrap();
    assert_eq!(u.to_i64().unwrap(), vec![7, 255]);
    let s = parse_npy(&make("|i1", "(2,)", &[0xFF, 5])).unwrap();
    assert_eq!(s.data, NpyData::I32(vec![-1, 5]));
    let mut le = Vec::new();
    le.extend_from_slice(&(-5i64).to_le_bytes());
    let l = parse_npy(&make("<i8", "()", &le)).unwrap();
    assert_eq!((l.shape.clone(), l.to_i64().unwrap()), (vec![], vec![-5]));
    assert_eq!(l.to_f32().unwrap(), vec![-5.0]);

    // Unsupported or inconsistent headers.
    assert!(parse_npy(&make(">f4", "(1,)", &[0; 4])).is_err());
    assert!(parse_npy(&make("<c8", "(1,)", &[0; 8])).is_err());
    assert!(parse_npy(&make("<f4", "(1)", &[0; 4])).is_err());
    assert!(parse_npy(&make("<f4", "(1,", &[0; 4])).is_err());
    assert!(parse_npy(&make("<f4", "(-1,)", &[])).is_err());
    assert!(parse_npy(&make("<f4", "(99999999999999999999999,)", &[])).is_err());
    assert!(parse_npy(&make("<f4", "(4294967296, 4294967296, 4294967296)", &[])).is_err());
    assert!(parse_npy(&make("<f4", "(2,)", &[0; 4])).is_err());
    assert!(parse_npy(&make("<f4", "(1,)", &[0; 5])).is_err());
    let fortran = make("<f4", "(1,)", &[0; 4]);
    let fortran = String::from_utf8(fortran[10..].to_vec())
        .unwrap()
        .replace("False", "True ");
    let mut f = make("<f4", "(1,)", &[])[..10].to_vec();
    f.extend_from_slice(fortran.as_bytes());
    assert!(parse_npy(&f).is_err());
    let extra_key = b"\x93NUMPY\x01\x00\x3c\x00{'descr': '<f4', 'fortran_order': False, 'shape': (), 'x': 1}";
    assert!(parse_npy(extra_key).is_err());
}

#[test]
fn parse_npy_rejects_bad_magic_and_truncation() {
    let good = npy_bytes_f32(&[2, 2], &[1.0, 2.0, 3.0, 4.0]).unwrap();
    let mut bad = good.clone();
    bad[1] = b'X';
    assert!(parse_npy(&bad).is_err());
    let mut bad_version = good.clone();
    bad_version[6] = 4;
    assert!(parse_npy(&bad_version).is_err());
    let mut huge_header = good.clone();
    huge_header[8] = 0xFF;
    huge_header[9] = 0xFF;
    assert!(parse_npy(&huge_header).is_err());
    for cut in 0..good.len() {
        assert!(parse_npy(&good[..cut]).is_err(), "prefix of {cut} bytes accepted");
    }
    for i in 0..good.len() {
        for bits in [0x01u8, 0x80, 0xFF] {
            let mut v = good.clone();
            v[i] ^= bits;
            let _ = parse_npy(&v); // must not panic
        }
    }
}

/// Rewrites every entry's compression method in both headers.
fn set_method(bytes: &mut [u8], method: u16) {
    for (sig, offset_in_header) in [(b"PK\x03\x04", 8), (b"PK\x01\x02", 10)] {
        let positions: Vec<usize> = bytes
            .windows(4)
            .enumerate()
            .filter(|(_, w)| *w == sig)
            .map(|(i, _)| i)
            .collect();
        for p in positions {
            bytes[p + offset_in_header..p + offset_in_header + 2].copy_from_slice(&method.to_le_bytes());
        }
    }
}

#[test]
fn corrupt_archives_are_errors() {
    // Under Miri (an interpreter) every 101st position; natively all.
    let step = if cfg!(miri) { 101 } else { 1 };
    for force in [false, true] {
        let good = sample_archive(force);
        // Truncated anywhere.
        for cut in (0..good.len()).step_by(step) {
            assert!(read_npz_bytes(&good[..cut]).is_err(), "prefix of {cut} bytes accepted");
        }
        // Bad CRC: flip a byte of array data (the last f32 of "f2").
        let mut bad = good.clone();
        let npy = npy_bytes_f32(SHAPES[2], &f32_array(SHAPES[2])).unwrap();
        let at = good.windows(npy.len()).position(|w| w == npy.as_slice()).unwrap() + npy.len() - 1;
        bad[at] ^= 0x40;
        let msg = read_npz_bytes(&bad).unwrap_err().to_string();
        assert!(msg.contains("f2.npy") && msg.contains("checksum"), "{msg}");
        // Deflated entry.
        let mut deflated = good.clone();
        set_method(&mut deflated, 8);
        // (stored bytes relabelled as deflate are not a valid deflate stream)
        assert!(read_npz_bytes(&deflated).is_err());
        set_method(&mut deflated, 12);
        assert!(read_npz_bytes(&deflated).is_err());
        // Every single-byte corruption gives a result, never a panic.
        for i in (0..good.len()).step_by(step) {
            let mut v = good.clone();
            v[i] ^= 0xFF;
            let _ = read_npz_bytes(&v);
        }
    }
    assert!(read_npz_bytes(b"").is_err());
    assert!(read_npz_bytes(b"PK\x05\x06").is_err());
    assert!(read_npz_bytes(&[0u8; 100]).is_err());
}

#[test]
fn bad_entries_are_errors() {
    // Not a .npy file inside the archive.
    let mut w = writer();
    w.add_entry("junk.npy", &[b"hello, world"]).unwrap();
    let msg = read_npz_bytes(&finish(w)).unwrap_err().to_string();
    assert!(msg.contains("junk.npy") && msg.contains("magic"), "{msg}");

    // Header shape disagrees with the data size.
    let mut npy = npy_bytes_f32(&[2, 3], &[0.0; 6]).unwrap();
    npy.truncate(npy.len() - 4);
    let mut w = writer();
    w.add_entry("short.npy", &[&npy]).unwrap();
    let msg = read_npz_bytes(&finish(w)).unwrap_err().to_string();
    assert!(msg.contains("short.npy") && msg.contains("needs 24"), "{msg}");

    // Two entries mapping to the same key.
    let one = npy_bytes_i32(&[1], &[1]).unwrap();
    let mut w = writer();
    w.add_entry("k.npy", &[&one]).unwrap();
    w.add_entry("k", &[&one]).unwrap();
    let bytes = finish(w);
    assert!(read_npz_bytes(&bytes).is_err());
    // Two entries of the same name: "j.npy" renamed "k.npy" in both of
    // its headers (names are not covered by the CRC-32).
    let mut w = writer();
    w.add_entry("k.npy", &[&one]).unwrap();
    w.add_entry("j.npy", &[&one]).unwrap();
    let mut same = finish(w);
    let at: Vec<usize> = (0..same.len() - 4)
        .filter(|&i| same[i..].starts_with(b"j.npy"))
        .collect();
    assert_eq!(at.len(), 2);
    for i in at {
        same[i] = b'k';
    }
    let msg = read_npz_bytes(&same).unwrap_err().to_string();
    assert!(msg.contains("duplicate"), "{msg}");
    // The local header names another file than the central directory.
    let mut w = writer();
    w.add_entry("k.npy", &[&one]).unwrap();
    let mut other = finish(w);
    let first = (0..other.len()).find(|&i| other[i..].starts_with(b"k.npy")).unwrap();
    other[first] = b'j';
    assert!(read_npz_bytes(&other).is_err());
}

/// `np.savez('/tmp/np_small.npz', a=np.arange(3, dtype=np.int32),
/// b=np.array(1.5, dtype=np.float32))` with NumPy 2.4.6: local headers
/// carry ZIP64 extra fields (`force_zip64=True`).
const NUMPY_SAVEZ_ZIP64: &[&str] = &[
    "504b03042d00000000000000210002ecbda9ffffffffffffffff05001400612e6e7079010010008c000000000000008c",
    "00000000000000934e554d5059010076007b276465736372273a20273c6934272c2027666f727472616e5f6f72646572",
    "273a2046616c73652c20277368617065273a2028332c292c207d20202020202020202020202020202020202020202020",
    "20202020202020202020202020202020202020202020202020202020202020202020202020200a000000000100000002",
    "000000504b03042d0000000000000021002513e65dffffffffffffffff05001400622e6e707901001000840000000000",
    "00008400000000000000934e554d5059010076007b276465736372273a20273c6634272c2027666f727472616e5f6f72",
    "646572273a2046616c73652c20277368617065273a2028292c207d202020202020202020202020202020202020202020",
    "20202020202020202020202020202020202020202020202020202020202020202020202020202020200a0000c03f504b",
    "01022d032d00000000000000210002ecbda98c0000008c000000050000000000000000000000800100000000612e6e70",
    "79504b01022d032d0000000000000021002513e65d84000000840000000500000000000000000000008001c300000062",
    "2e6e7079504b05060000000002000200660000007e0100000000",
];

fn unhex(parts: &[&str]) -> Vec<u8> {
    let hex: String = parts.concat();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn reads_numpy_savez_with_zip64_local_headers() {
    let bytes = unhex(NUMPY_SAVEZ_ZIP64);
    let arrays = read_npz_bytes(&bytes).unwrap();
    assert_eq!(arrays["a"].shape, vec![3]);
    assert_eq!(arrays["a"].data, NpyData::I32(vec![0, 1, 2]));
    assert_eq!(arrays["b"].shape, Vec::<usize>::new());
    assert_eq!(arrays["b"].data, NpyData::F32(vec![1.5]));
    // Our writer lays out .npy files byte-for-byte like np.save.
    let a = npy_bytes_i32(&[3], &[0, 1, 2]).unwrap();
    let b = npy_bytes_f32(&[], &[1.5]).unwrap();
    assert!(contains(&bytes, &a));
    assert!(contains(&bytes, &b));
}

/// `np.savez_compressed(f, a=np.arange(3, dtype=np.int32),
/// m=np.array([[True, False]]))` with NumPy 2.4.6: deflated entries.
const NUMPY_SAVEZ_COMPRESSED: &[&str] = &[
    "504b03042d00000008000000210002ecbda9ffffffffffffffff05001400612e6e7079010010008c000000000000004c",
    "000000000000009bec17ea1b10c9c850c650ad9e925a9c5ca46ea5a06e9369a2aea3a09e965f54529498179f5f94920a",
    "12774bcc294e058a17672416a402f91ac63a9a3a0ab50a14002e062060046226200600504b03042d0000000800000021",
    "0010193a19ffffffffffffffff050014006d2e6e707901001000820000000000000048000000000000009bec17ea1b10",
    "c9c850c650ad9e925a9c5ca46ea5a05e9364a8aea3a09e965f54529498179f5f94920a12774bcc294e058a17672416a4",
    "02f91a863a0a469a3a0ab50a64032e460600504b01022d032d00000008000000210002ecbda94c0000008c0000000500",
    "00000000000000000000800100000000612e6e7079504b01022d032d00000008000000210010193a1948000000820000",
    "000500000000000000000000008001830000006d2e6e7079504b0506000000000200020066000000020100000000",
];

#[test]
fn reads_numpy_savez_compressed() {
    let bytes = unhex(NUMPY_SAVEZ_COMPRESSED);
    let arrays = read_npz_bytes(&bytes).unwrap();
    assert_eq!(arrays["a"].shape, vec![3]);
    assert_eq!(arrays["a"].data, NpyData::I32(vec![0, 1, 2]));
    assert_eq!(arrays["m"].shape, vec![1, 2]);
    assert_eq!(arrays["m"].data, NpyData::Bool(vec![true, false]));
    let raw = read_npz_raw(&bytes).unwrap();
    assert_eq!(raw[0].1, npy_bytes_i32(&[3], &[0, 1, 2]).unwrap());
    // A flipped bit anywhere (deflate streams included) is refused or
    // changes nothing read (a timestamp, the padding after a stream's
    // last block): never other data, never a panic.
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x10;
        if let Ok(got) = read_npz_bytes(&bad) {
            assert_eq!(got, arrays, "byte {i:#x} flipped");
        }
    }
}

#[test]
fn reads_golden_numpy_file() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/npz_sample/stateless_batch_00.npz"
    );
    let arrays = read_npz(Path::new(path)).unwrap();
    let char_ids = &arrays["char_ids"];
    assert_eq!(char_ids.shape, vec![3, 6, 50]);
    assert!(matches!(char_ids.data, NpyData::I32(_)));
    let lengths = &arrays["lengths"];
    assert_eq!(lengths.shape, vec![3]);
    assert_eq!(lengths.data, NpyData::I32(vec![4, 2, 1]));
    assert_eq!(lengths.to_i64().unwrap(), vec![4, 2, 1]);
    let mask = &arrays["mask"];
    assert_eq!(mask.shape, vec![3, 4]);
    assert!(matches!(mask.data, NpyData::U8(_)));
    assert_eq!(mask.to_i64().unwrap(), vec![1, 1, 1, 1, 1, 1, 0, 0, 1, 0, 0, 0]);
    let lm = &arrays["lm_embeddings"];
    assert_eq!(lm.shape, vec![3, 3, 4, 32]);
    assert!(matches!(lm.data, NpyData::F32(_)));
    assert_eq!(lm.to_f32().unwrap().len(), 3 * 3 * 4 * 32);
}
