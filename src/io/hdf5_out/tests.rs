//! Files written here are read back three ways: by the `hdf5-reader` crate,
//! by a lookup that walks the group's B-tree as libhdf5 does (so wrong keys
//! fail even without h5py), and by h5py through scripts/check_hdf5_out.py
//! when python3 has h5py (required when `ELMO_REQUIRE_H5PY=1`).

use super::names::NameOrder;
use super::*;
use hdf5_reader::{ByteOrder, Datatype, Hdf5File, StringEncoding, VarLenKind};
use std::fs::File;
use std::io::{BufWriter, Cursor, SeekFrom};
use std::path::PathBuf;

/// Symbol table nodes of 2 entries and B-tree nodes of 2 children: deep
/// trees from few datasets.
const TINY: Params = Params {
    leaf_k: 1,
    internal_k: 1,
};
/// Sizes that divide nothing evenly.
const ODD: Params = Params {
    leaf_k: 3,
    internal_k: 2,
};

/// Element `i` of dataset `key`, as bits (the Python check computes the same).
fn value_bits(key: u64, i: u64) -> u32 {
    (key.wrapping_mul(2_654_435_761).wrapping_add(i.wrapping_mul(40_503)) & 0xFFFF_FFFF) as u32
}

fn dataset_bytes(layout: &Layout, key: u64, n: u64) -> Vec<u8> {
    let words = layout.data_len(n).unwrap() / 4;
    (0..words).flat_map(|i| value_bits(key, i).to_le_bytes()).collect()
}

struct Built {
    path: PathBuf,
    layout: Layout,
    ns: Vec<u64>,
    json: Vec<u8>,
    end_of_data: u64,
    len: u64,
}

/// Appends the datasets' data in reverse key order (offsets need not follow
/// keys), then 3 bytes more (so metadata needs aligning), then finishes.
fn build(path: PathBuf, layout: Layout, ns: &[u64], json: &[u8], params: Params) -> Built {
    let mut file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let (offsets, end_of_data) = write_data(&mut file, &layout, ns);
    let manifest = Manifest {
        layout,
        end_of_data,
        count: ns.len() as u64,
        json_len: json.len() as u64,
    };
    let entries = offsets.iter().zip(ns).enumerate().map(|(k, (&offset, &n))| {
        Ok(DatasetEntry {
            key: k as u64,
            offset,
            n,
        })
    });
    let len = finish_with(&mut file, &path, &manifest, entries, &mut &json[..], params).unwrap();
    assert_eq!(file.metadata().unwrap().len(), len);
    assert_eq!(len, Plan::new(&path, &manifest, params).unwrap().end);
    Built {
        path,
        layout,
        ns: ns.to_vec(),
        json: json.to_vec(),
        end_of_data,
        len,
    }
}

fn write_data(file: &mut File, layout: &Layout, ns: &[u64]) -> (Vec<u64>, u64) {
    file.seek(SeekFrom::Start(DATA_START)).unwrap();
    let mut w = BufWriter::new(file);
    let mut offsets = vec![0; ns.len()];
    let mut pos = DATA_START;
    for k in (0..ns.len()).rev() {
        let bytes = dataset_bytes(layout, k as u64, ns[k]);
        offsets[k] = pos;
        w.write_all(&bytes).unwrap();
        pos += bytes.len() as u64;
    }
    w.write_all(b"end").unwrap();
    w.flush().unwrap();
    (offsets, pos + 3)
}

fn expected_names(count: u64) -> Vec<String> {
    let mut names: Vec<String> = (0..count).map(|k| k.to_string()).collect();
    names.push(SENTENCE_TO_INDEX.to_string());
    names.sort();
    names
}

/// Reads the file with the `hdf5-reader` crate: every name, every dataset's
/// shape, dtype and bytes, the JSON.
fn check_reader(b: &Built) {
    let f = Hdf5File::open(&b.path).unwrap();
    let (groups, datasets) = f.root_group().unwrap().members().unwrap();
    assert!(groups.is_empty());
    let mut names: Vec<String> = datasets.iter().map(|d| d.name().to_string()).collect();
    names.sort();
    assert_eq!(names, expected_names(b.ns.len() as u64));
    for d in &datasets {
        if d.name() == SENTENCE_TO_INDEX {
            assert_eq!(d.shape(), &[1]);
            assert!(
                matches!(
                    d.dtype(),
                    Datatype::VarLen {
                        kind: VarLenKind::String,
                        encoding: StringEncoding::Utf8,
                        ..
                    }
                ),
                "{:?}",
                d.dtype()
            );
            assert_eq!(
                d.read_strings().unwrap(),
                vec![String::from_utf8(b.json.clone()).unwrap()]
            );
            continue;
        }
        let k: u64 = d.name().parse().unwrap();
        let n = b.ns[k as usize];
        assert_eq!(d.shape(), b.layout.shape(n).as_slice(), "dataset {k}");
        assert!(
            matches!(
                d.dtype(),
                Datatype::FloatingPoint {
                    size: 4,
                    byte_order: ByteOrder::LittleEndian
                }
            ),
            "{:?}",
            d.dtype()
        );
        assert!(
            d.read_raw_bytes().unwrap() == dataset_bytes(&b.layout, k, n),
            "dataset {k}"
        );
    }
}

fn u16_at(f: &[u8], at: u64) -> u64 {
    u64::from(u16::from_le_bytes(f[at as usize..at as usize + 2].try_into().unwrap()))
}

fn u64_at(f: &[u8], at: u64) -> u64 {
    u64::from_le_bytes(f[at as usize..at as usize + 8].try_into().unwrap())
}

/// The group's name heap and B-tree root, from the superblock.
fn group_of<'a>(f: &'a [u8]) -> (impl Fn(u64) -> &'a [u8], u64) {
    assert_eq!(&f[..8], SIGNATURE);
    let (btree, heap) = (u64_at(f, 80), u64_at(f, 88));
    assert_eq!(&f[heap as usize..heap as usize + 4], b"HEAP");
    let data = u64_at(f, heap + 24);
    let name = move |off: u64| {
        let s = &f[(data + off) as usize..];
        &s[..s.iter().position(|&c| c == 0).unwrap()]
    };
    (name, btree)
}

/// Looks `name` up as libhdf5 does: in each node, the child `i` with
/// `key[i] < name <= key[i+1]`, then a scan of the symbol table node.
/// Returns the object header address.
fn lookup(f: &[u8], name: &str) -> Option<u64> {
    let (heap_name, mut node) = group_of(f);
    let name = name.as_bytes();
    loop {
        assert_eq!(&f[node as usize..node as usize + 4], b"TREE");
        let (level, used) = (f[node as usize + 5], u16_at(f, node + 6));
        let key = |i: u64| heap_name(u64_at(f, node + 24 + 16 * i));
        let i = (0..used).find(|&i| key(i) < name && name <= key(i + 1))?;
        let child = u64_at(f, node + 24 + 16 * i + 8);
        if level > 0 {
            node = child;
            continue;
        }
        assert_eq!(&f[child as usize..child as usize + 4], b"SNOD");
        return (0..u16_at(f, child + 6))
            .map(|e| child + 8 + 40 * e)
            .find(|&e| heap_name(u64_at(f, e)) == name)
            .map(|e| u64_at(f, e + 8));
    }
}

/// Walks every level of the B-tree along its sibling links: each level's
/// keys increase, its first key is "" and its last the last name, and each
/// node's keys are its children's outer keys; the leaves' symbol table nodes
/// hold all names in order. Returns the number of levels.
fn check_tree(f: &[u8], count: u64) -> usize {
    let (heap_name, root) = group_of(f);
    let mut level_start = root;
    let mut levels = 0;
    loop {
        levels += 1;
        let level = f[level_start as usize + 5];
        assert_eq!(u64_at(f, level_start + 8), UNDEF, "leftmost node has no left sibling");
        let mut keys: Vec<&[u8]> = vec![b""];
        let mut names: Vec<&[u8]> = Vec::new();
        let (mut node, mut prev) = (level_start, UNDEF);
        while node != UNDEF {
            assert_eq!(&f[node as usize..node as usize + 4], b"TREE");
            assert_eq!(f[node as usize + 5], level);
            assert_eq!(u64_at(f, node + 8), prev);
            let used = u16_at(f, node + 6);
            assert!(used >= 1);
            assert_eq!(heap_name(u64_at(f, node + 24)), *keys.last().unwrap(), "shared key");
            for i in 0..used {
                let right = heap_name(u64_at(f, node + 24 + 16 * (i + 1)));
                assert!(*keys.last().unwrap() < right, "keys increase");
                keys.push(right);
                let child = u64_at(f, node + 24 + 16 * i + 8);
                if level == 0 {
                    for e in 0..u16_at(f, child + 6) {
                        names.push(heap_name(u64_at(f, child + 8 + 40 * e)));
                    }
                    assert_eq!(*names.last().unwrap(), right, "right key is the child's last name");
                }
            }
            prev = node;
            node = u64_at(f, node + 16);
        }
        if level == 0 {
            let want = expected_names(count);
            assert!(
                names
                    .iter()
                    .map(|n| std::str::from_utf8(n).unwrap())
                    .eq(want.iter().map(String::as_str))
            );
            return levels;
        }
        assert_eq!(*keys.last().unwrap(), SENTENCE_TO_INDEX.as_bytes());
        level_start = u64_at(f, level_start + 24 + 8);
    }
}

fn have_h5py() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import h5py"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let why = "python3 with h5py not found: the h5py checks are skipped";
        assert!(
            std::env::var_os("ELMO_REQUIRE_H5PY").is_none(),
            "{why} (ELMO_REQUIRE_H5PY is set)"
        );
        eprintln!("{why}");
    }
    ok
}

/// Runs scripts/check_hdf5_out.py on the file (see there for what it checks).
fn check_h5py(b: &Built, check: Option<&[u64]>, absent: &[&str]) {
    if !have_h5py() {
        return;
    }
    let json_file = b.path.with_extension("expected.json");
    std::fs::write(&json_file, &b.json).unwrap();
    let spec = serde_json::json!({
        "file": b.path,
        "count": b.ns.len(),
        "lead": b.layout.lead,
        "dim": b.layout.dim,
        "ns": b.ns,
        "check": check,
        "absent": absent,
        "json_file": json_file,
        "json": serde_json::from_slice::<serde_json::Value>(&b.json).is_ok(),
    });
    let spec_file = b.path.with_extension("spec.json");
    std::fs::write(&spec_file, spec.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check_hdf5_out.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(&spec_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "h5py check of {} failed:\n{}{}",
        b.path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprint!("{}", String::from_utf8_lossy(&out.stdout));
}

fn json_for(count: u64) -> Vec<u8> {
    let map: serde_json::Map<String, serde_json::Value> = (0..count)
        .map(|k| (format!("sentence {k} é"), k.to_string().into()))
        .collect();
    serde_json::to_vec(&map).unwrap()
}

fn pattern(count: u64) -> Vec<u64> {
    (0..count).map(|k| (k * 7 + 3) % 5).collect()
}

/// All three readers on every dataset.
fn check_all(b: &Built) {
    check_reader(b);
    let f = std::fs::read(&b.path).unwrap();
    let count = b.ns.len() as u64;
    check_tree(&f, count);
    for name in expected_names(count) {
        assert!(lookup(&f, &name).is_some(), "{name}");
    }
    for absent in ["", "00", "-1", "01", "sentence", "sentence_to_indexx", "~"] {
        assert_eq!(lookup(&f, absent), None, "{absent:?}");
    }
    assert_eq!(lookup(&f, &count.to_string()), None);
    check_h5py(b, None, &["00", "01", &count.to_string(), "sentence"]);
}

#[test]
fn name_order_is_byte_order() {
    for count in (0..=130).chain([999, 1000, 1001, 12_345]) {
        let mut want: Vec<(String, Name)> = (0..count).map(|k| (k.to_string(), Name::Key(k))).collect();
        want.push((SENTENCE_TO_INDEX.into(), Name::SentenceToIndex));
        want.sort_by(|a, b| a.0.cmp(&b.0));
        let order: Vec<Name> = NameOrder::new(count).collect();
        assert!(order.iter().eq(want.iter().map(|(_, n)| n)), "count {count}");
        let plan = Plan::new(
            Path::new("t"),
            &Manifest {
                layout: Layout::rank2(1),
                end_of_data: DATA_START,
                count,
                json_len: 0,
            },
            Params::DEFAULT,
        )
        .unwrap();
        for (pos, name) in order.iter().enumerate() {
            assert_eq!(plan.name_at(pos as u64), *name, "count {count} position {pos}");
        }
    }
    // Heap offsets: 8 for "", then each name's digits and NUL padded to 8.
    for k in [0u64, 1, 9, 10, 9_999_999, 10_000_000, 99_999_999, 100_000_000] {
        let slot = (k.to_string().len() as u128 + 1).div_ceil(8) * 8;
        assert_eq!(name_offset(k + 1) - name_offset(k), slot, "{k}");
    }
    assert_eq!(name_offset(0), 8);
    assert_eq!(name_offset(10), 8 + 10 * 8);
    assert_eq!(name_offset(10_000_001), 8 + 10_000_000 * 8 + 16);
    // The largest keys: no overflow, and the k-th of a huge range.
    assert_eq!(kth_lexicographic(1, u64::MAX / 10), 10);
    assert_eq!(kth_lexicographic(0, 5), 1);
    assert_eq!(kth_lexicographic(4, 5), 5);
}

#[test]
fn small_counts_rank2_and_rank3() {
    let dir = tempfile::tempdir().unwrap();
    for count in [0u64, 1, 9, 10, 11] {
        for (layout, params, tag) in [
            (Layout::rank3(3, 4), Params::DEFAULT, "r3"),
            (Layout::rank2(5), Params::DEFAULT, "r2"),
            (Layout::rank3(2, 3), TINY, "r3tiny"),
            (Layout::rank2(1), ODD, "r2odd"),
        ] {
            let path = dir.path().join(format!("c{count}{tag}.h5"));
            let b = build(path, layout, &pattern(count), &json_for(count), params);
            check_all(&b);
        }
    }
}

#[test]
fn a_thousand_datasets_and_deep_trees() {
    let dir = tempfile::tempdir().unwrap();
    for (params, tag, levels) in [(Params::DEFAULT, "default", 1), (TINY, "tiny", 9), (ODD, "odd", 4)] {
        let path = dir.path().join(format!("k{tag}.h5"));
        let b = build(path, Layout::rank3(3, 2), &pattern(1000), &json_for(1000), params);
        check_all(&b);
        assert_eq!(check_tree(&std::fs::read(&b.path).unwrap(), 1000), levels, "{tag}");
    }
}

#[test]
fn two_hundred_thousand_datasets() {
    let dir = tempfile::tempdir().unwrap();
    let count = 200_000u64;
    let ns: Vec<u64> = (0..count).map(|k| k % 2).collect();
    let sample = [0u64, 1, 2, 9, 10, 99_999, 100_000, 123_456, 199_998, 199_999];
    for (params, tag, levels) in [(Params::DEFAULT, "default", 2), (ODD, "odd", 8)] {
        let path = dir.path().join(format!("big{tag}.h5"));
        let b = build(path, Layout::rank2(2), &ns, b"{\"a\": 1}", params);
        // Not the hdf5-reader crate: it opens every member of a group to
        // list it (half a minute here); the thousand-dataset test has it.
        let f = std::fs::read(&b.path).unwrap();
        assert_eq!(check_tree(&f, count), levels, "{tag}");
        for k in (0..count).step_by(997).chain(sample) {
            assert_eq!(lookup(&f, &k.to_string()), Some(header_of(&b, params, k)), "{k}");
        }
        assert_eq!(lookup(&f, "200000"), None);
        check_h5py(&b, Some(&sample), &["200000", "0123456"]);
    }
}

/// Where dataset `k`'s header is (what the B-tree must lead to).
fn header_of(b: &Built, params: Params, k: u64) -> u64 {
    let m = Manifest {
        layout: b.layout,
        end_of_data: b.end_of_data,
        count: b.ns.len() as u64,
        json_len: b.json.len() as u64,
    };
    Plan::new(&b.path, &m, params).unwrap().header_address(Name::Key(k))
}

/// A reader that hands out at most `step` bytes a call, so UTF-8 sequences
/// are split between reads.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.step.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        self.step = self.step % 7 + 1;
        Ok(n)
    }
}

#[test]
fn megabytes_of_non_ascii_json() {
    let dir = tempfile::tempdir().unwrap();
    let mut map = serde_json::Map::new();
    let words = [
        "naïve café",
        "日本語の文",
        "emoji 🎉🦀",
        "Ελληνικά",
        "plain ascii",
        "\"quoted\" \\ back",
    ];
    for k in 0..100_000u64 {
        map.insert(format!("{} {k}", words[k as usize % words.len()]), k.into());
    }
    let json = serde_json::to_vec(&map).unwrap();
    assert!(json.len() > 2_500_000, "{}", json.len());
    let b = build(
        dir.path().join("json.h5"),
        Layout::rank2(3),
        &pattern(4),
        &json,
        Params::DEFAULT,
    );
    check_all(&b);
    // The same file again from a reader that splits characters.
    let path = dir.path().join("trickle.h5");
    std::fs::copy(&b.path, &path).unwrap();
    let mut file = File::options().read(true).write(true).open(&path).unwrap();
    let entries = entries_of(&b);
    let manifest = manifest_of(&b);
    let mut json = Trickle { data: &b.json, step: 1 };
    finish(&mut file, &path, &manifest, entries, &mut json).unwrap();
    assert!(std::fs::read(&path).unwrap() == std::fs::read(&b.path).unwrap());
}

#[test]
fn empty_json_text() {
    let dir = tempfile::tempdir().unwrap();
    let b = build(dir.path().join("e.h5"), Layout::rank2(2), &[1, 0], b"", Params::DEFAULT);
    check_all(&b);
}

/// Recovers the entries of a built file from its data layout.
fn entries_of(b: &Built) -> Vec<Result<DatasetEntry>> {
    let mut pos = DATA_START;
    let mut offsets = vec![0; b.ns.len()];
    for k in (0..b.ns.len()).rev() {
        offsets[k] = pos;
        pos += b.layout.data_len(b.ns[k]).unwrap();
    }
    (0..b.ns.len())
        .map(|k| {
            Ok(DatasetEntry {
                key: k as u64,
                offset: offsets[k],
                n: b.ns[k],
            })
        })
        .collect()
}

fn manifest_of(b: &Built) -> Manifest {
    Manifest {
        layout: b.layout,
        end_of_data: b.end_of_data,
        count: b.ns.len() as u64,
        json_len: b.json.len() as u64,
    }
}

#[test]
fn deterministic_and_data_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let ns = pattern(300);
    let json = json_for(300);
    let one = build(
        dir.path().join("one.h5"),
        Layout::rank3(3, 4),
        &ns,
        &json,
        Params::DEFAULT,
    );
    let two = build(
        dir.path().join("two.h5"),
        Layout::rank3(3, 4),
        &ns,
        &json,
        Params::DEFAULT,
    );
    let bytes = std::fs::read(&one.path).unwrap();
    assert!(bytes == std::fs::read(&two.path).unwrap(), "two finishes differ");
    assert_eq!(file_len(&manifest_of(&one)).unwrap(), one.len);

    // The data region is what was appended, bit for bit.
    let mut data = Vec::new();
    for k in (0..ns.len()).rev() {
        data.extend(dataset_bytes(&one.layout, k as u64, ns[k]));
    }
    data.extend_from_slice(b"end");
    assert!(bytes[DATA_START as usize..one.end_of_data as usize] == data[..]);

    // Finishing again over a finished file (as a resume after a crash in
    // `finish` would, with the old metadata still there) changes nothing;
    // so does finish_file over a file with garbage past the end.
    let mut file = File::options().read(true).write(true).open(&one.path).unwrap();
    finish(
        &mut file,
        &one.path,
        &manifest_of(&one),
        entries_of(&one),
        &mut &json[..],
    )
    .unwrap();
    drop(file);
    assert!(std::fs::read(&one.path).unwrap() == bytes);
    let mut file = File::options().read(true).write(true).open(&one.path).unwrap();
    file.seek(SeekFrom::End(0)).unwrap();
    file.write_all(&[0xAB; 10_000]).unwrap();
    file.seek(SeekFrom::Start(0)).unwrap();
    file.write_all(&[0xCD; 96]).unwrap();
    let len = finish_file(
        &mut file,
        &one.path,
        &manifest_of(&one),
        entries_of(&one),
        &mut &json[..],
    )
    .unwrap();
    drop(file);
    assert_eq!(len, one.len);
    assert!(std::fs::read(&one.path).unwrap() == bytes);

    // In memory, through a Cursor, the same bytes.
    let mut cursor = Cursor::new(bytes[..one.end_of_data as usize].to_vec());
    finish(
        &mut cursor,
        &one.path,
        &manifest_of(&one),
        entries_of(&one),
        &mut &json[..],
    )
    .unwrap();
    assert!(cursor.into_inner() == bytes);
}

/// Runs `finish` with changed inputs on a copy of `b` (its superblock and
/// data); returns the error, the bytes before and after, after checking
/// that the data is untouched and the superblock invalid or untouched.
#[track_caller]
fn finish_err(
    b: &Built,
    manifest: Manifest,
    entries: Vec<Result<DatasetEntry>>,
    json: &[u8],
) -> (Error, Vec<u8>, Vec<u8>) {
    let mut data = std::fs::read(&b.path).unwrap();
    data.truncate(b.end_of_data as usize);
    let before = data.clone();
    let mut cursor = Cursor::new(data);
    let e = finish(&mut cursor, &b.path, &manifest, entries, &mut &json[..]).unwrap_err();
    let after = cursor.into_inner();
    let data = DATA_START as usize..b.end_of_data as usize;
    assert!(
        after[data.clone()] == before[data],
        "data changed by a failed finish: {e}"
    );
    assert!(
        after[..8] != SIGNATURE[..] || after == before,
        "superblock valid after {e}"
    );
    (e, before, after)
}

fn assert_msg(e: &Error, parts: &[&str]) {
    let msg = e.to_string();
    assert!(matches!(e, Error::Hdf5Write(_)), "{e:?}");
    for p in parts {
        assert!(msg.contains(p), "{msg:?} lacks {p:?}");
    }
}

#[test]
fn inconsistent_inputs_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let b = build(
        dir.path().join("ok.h5"),
        Layout::rank2(2),
        &[2, 0, 1, 3],
        b"{}",
        Params::DEFAULT,
    );
    let good = || entries_of(&b);
    let m = manifest_of(&b);
    let name = "ok.h5";

    let mut swapped = good();
    swapped.swap(1, 2);
    let (e, _, after) = finish_err(&b, m, swapped, b"{}");
    assert_msg(&e, &[name, "dataset key 1 is missing", "next key given is 2"]);
    assert_eq!(after[..8], [0; 8], "the old superblock's signature is cleared");

    let mut dup = good();
    let first = *dup[1].as_ref().unwrap();
    dup[2] = Ok(first);
    assert_msg(&finish_err(&b, m, dup, b"{}").0, &["key 1 given after key 1"]);

    let mut missing = good();
    let _ = missing.remove(0);
    assert_msg(
        &finish_err(&b, m, missing, b"{}").0,
        &["dataset key 0 is missing", "next key given is 1"],
    );

    let short = good().into_iter().take(3).collect();
    assert_msg(&finish_err(&b, m, short, b"{}").0, &["only 3 datasets given", "says 4"]);

    let mut long = good();
    long.push(Ok(DatasetEntry {
        key: 4,
        offset: 0,
        n: 0,
    }));
    assert_msg(&finish_err(&b, m, long, b"{}").0, &["more than 4 datasets", "key 4"]);

    // An error from the entries comes back as it is.
    let mut failing = good();
    failing[2] = Err(Error::Input("journal is corrupt".into()));
    let e = finish_err(&b, m, failing, b"{}").0;
    assert!(matches!(&e, Error::Input(m) if m == "journal is corrupt"), "{e:?}");

    for (offset, n) in [(b.end_of_data - 8, 2), (DATA_START - 4, 1), (u64::MAX - 4, 1)] {
        let mut outside = good();
        outside[3] = Ok(DatasetEntry { key: 3, offset, n });
        assert_msg(
            &finish_err(&b, m, outside, b"{}").0,
            &["dataset 3", "not within the data"],
        );
    }
    // An empty dataset's offset is not looked at.
    let mut empty = good();
    empty[1] = Ok(DatasetEntry {
        key: 1,
        offset: u64::MAX,
        n: 0,
    });
    let mut cursor = Cursor::new(std::fs::read(&b.path).unwrap());
    finish(&mut cursor, &b.path, &m, empty, &mut &b"{}"[..]).unwrap();

    let huge = Ok(DatasetEntry {
        key: 0,
        offset: DATA_START,
        n: u64::MAX / 2,
    });
    let mut e = good();
    e[0] = huge;
    assert_msg(&finish_err(&b, m, e, b"{}").0, &["dataset 0", "more than 2^64 bytes"]);

    // JSON: short, not UTF-8 (in the middle; a character cut at the end).
    assert_msg(
        &finish_err(&b, Manifest { json_len: 5, ..m }, good(), b"{}").0,
        &["JSON ended after 2 of 5 bytes"],
    );
    assert_msg(
        &finish_err(&b, Manifest { json_len: 4, ..m }, good(), b"{\xff}x").0,
        &["not UTF-8 (at byte 1)"],
    );
    assert_msg(
        &finish_err(&b, Manifest { json_len: 2, ..m }, good(), &"{é".as_bytes()[..2]).0,
        &["ends inside a character, at byte 1"],
    );
    for bad in [
        Manifest {
            json_len: MAX_JSON_LEN + 1,
            ..m
        },
        Manifest {
            end_of_data: DATA_START - 1,
            ..m
        },
        Manifest {
            layout: Layout::rank3(0, 2),
            ..m
        },
        Manifest {
            layout: Layout::rank2(0),
            ..m
        },
        Manifest {
            end_of_data: u64::MAX - 3,
            ..m
        },
        Manifest { count: u64::MAX, ..m },
    ] {
        let e = file_len(&bad).unwrap_err();
        assert!(matches!(e, Error::Hdf5Write(_)), "{e:?}");
        let (e, before, after) = finish_err(&b, bad, good(), b"{}");
        assert!(matches!(e, Error::Hdf5Write(_)), "{e:?}");
        assert!(after == before, "a refused manifest writes nothing: {e}");
    }
}

/// Fails every write after `budget` bytes.
struct FailingFile {
    inner: Cursor<Vec<u8>>,
    budget: usize,
}

impl Write for FailingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.len() > self.budget {
            return Err(std::io::Error::other("disk full"));
        }
        self.budget -= buf.len();
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Seek for FailingFile {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(pos)
    }
}

struct FailingRead;

impl Read for FailingRead {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        Err(std::io::Error::other("pipe broke"))
    }
}

#[test]
fn io_errors_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let b = build(
        dir.path().join("io.h5"),
        Layout::rank3(2, 2),
        &pattern(50),
        &json_for(50),
        TINY,
    );
    // The writes: the old signature cleared (8 bytes), the metadata, the
    // superblock region. Every budget short of all of them fails cleanly.
    let meta = 8 + (b.len - b.end_of_data) as usize;
    let all = meta + DATA_START as usize;
    for budget in [0, 7, 8, 100, meta / 2, meta - 1, meta, all - 1, all] {
        let mut file = FailingFile {
            inner: Cursor::new(vec![0; b.end_of_data as usize]),
            budget,
        };
        let json = b.json.clone();
        let done = finish_with(
            &mut file,
            &b.path,
            &manifest_of(&b),
            entries_of(&b),
            &mut &json[..],
            TINY,
        );
        if budget == all {
            // Metadata and superblock as in the file (the data here is zeros).
            let (got, want) = (file.inner.into_inner(), std::fs::read(&b.path).unwrap());
            let (start, data) = (DATA_START as usize, b.end_of_data as usize);
            assert!(got[..start] == want[..start] && got[data..] == want[data..]);
            continue;
        }
        let e = done.unwrap_err();
        assert!(matches!(&e, Error::Io { path, .. } if path == &b.path), "{e:?}");
        assert!(e.to_string().contains("disk full"), "{e}");
    }
    let e = finish(
        &mut Cursor::new(Vec::new()),
        &b.path,
        &manifest_of(&b),
        entries_of(&b),
        &mut FailingRead,
    )
    .unwrap_err();
    assert_msg(
        &e,
        &["io.h5", "reading the sentence_to_index JSON after 0 of", "pipe broke"],
    );
}
