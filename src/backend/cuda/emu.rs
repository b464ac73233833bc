//! The CUDA C of `kernels/elmo.cu` run on the CPU (tests only): a backend
//! of the GPU forward pass whose kernels are the real kernel source,
//! compiled with the machine's C++ compiler against a small CUDA emulation
//! (`kernels/emu/`), and whose products follow cuBLAS's column-major
//! contract with the arguments the CUDA backend passes ([`Sgemm`]).
//!
//! The host backend ([`crate::backend::cuda::HostBackend`]) checks the forward pass's
//! orchestration with each kernel re-written in Rust; this checks the
//! kernels themselves where there is no GPU: their index arithmetic, the
//! launch shapes ([`Launch`]) within CUDA's limits, and what
//! compute-sanitizer would report: reads past a buffer, writes to an input
//! or before a buffer, output elements no thread wrote, barriers in
//! divergent code, shared memory used before it is written (see
//! `kernels/README.md`; `emu_selftest` proves each check on a deliberately
//! wrong kernel).
//!
//! Built without fma contraction, the emulated kernels compute bitwise
//! what the host backend computes with its scalar references (libm's
//! `expf`/`tanhf`), which the tests assert; against the CPU path (its
//! vectorised sigmoid and tanh) they agree to float32 rounding, as a GPU's
//! kernels do.

use crate::backend::cuda::{Backend, CnnDims, ConvTable, Launch, Sgemm};
use crate::error::{Error, Result};
use std::ffi::{c_char, c_int, c_void};
use std::sync::{Arc, OnceLock};

/// `EmuLaunch` of `kernels/emu/elmo_emu.cpp`.
#[repr(C)]
struct EmuLaunch {
    grid: [u32; 3],
    block: [u32; 3],
    smem: u32,
}

impl From<Launch> for EmuLaunch {
    fn from(l: Launch) -> Self {
        EmuLaunch {
            grid: [l.grid.0, l.grid.1, l.grid.2],
            block: [l.block.0, l.block.1, l.block.2],
            smem: l.smem,
        }
    }
}

/// `EmuBuf`: a buffer as the kernel sees its pointer parameter.
#[repr(C)]
struct EmuBuf {
    p: *mut c_void,
    bytes: usize,
}

/// A read-only buffer (the emulator copies it next to a guard page and
/// maps the copy read-only; it never writes through `p`).
fn inp<T>(v: &[T]) -> EmuBuf {
    EmuBuf {
        p: v.as_ptr() as *mut c_void,
        bytes: std::mem::size_of_val(v),
    }
}

/// A buffer the kernel writes (copied back after the launch).
fn out<T>(v: &mut [T]) -> EmuBuf {
    EmuBuf {
        p: v.as_mut_ptr() as *mut c_void,
        bytes: std::mem::size_of_val(v),
    }
}

type Err = (*mut c_char, usize);

/// The library's entry points, resolved once.
struct Lib {
    _lib: libloading::Library,
    check: unsafe extern "C" fn(*const EmuLaunch, *mut c_char, usize) -> c_int,
    no_core_dumps: unsafe extern "C" fn(),
    selftest: unsafe extern "C" fn(c_int, *mut c_char, usize) -> c_int,
    #[allow(clippy::type_complexity)]
    char_cnn: unsafe extern "C" fn(
        *const EmuLaunch,
        EmuBuf,
        EmuBuf,
        EmuBuf,
        EmuBuf,
        ConvTable,
        EmuBuf,
        c_int,
        c_int,
        c_int,
        c_int,
        c_int,
        *mut c_char,
        usize,
    ) -> c_int,
    add_bias: unsafe extern "C" fn(*const EmuLaunch, EmuBuf, EmuBuf, c_int, c_int, *mut c_char, usize) -> c_int,
    #[allow(clippy::type_complexity)]
    highway: unsafe extern "C" fn(
        *const EmuLaunch,
        EmuBuf,
        EmuBuf,
        EmuBuf,
        EmuBuf,
        EmuBuf,
        c_int,
        c_int,
        *mut c_char,
        usize,
    ) -> c_int,
    gather_rows:
        unsafe extern "C" fn(*const EmuLaunch, EmuBuf, EmuBuf, EmuBuf, c_int, c_int, *mut c_char, usize) -> c_int,
    #[allow(clippy::type_complexity)]
    lstm_cell: unsafe extern "C" fn(
        *const EmuLaunch,
        EmuBuf,
        c_int,
        EmuBuf,
        EmuBuf,
        EmuBuf,
        EmuBuf,
        c_int,
        c_int,
        f32,
        c_int,
        *mut c_char,
        usize,
    ) -> c_int,
    #[allow(clippy::type_complexity)]
    lstm_project_out: unsafe extern "C" fn(
        *const EmuLaunch,
        EmuBuf,
        EmuBuf,
        EmuBuf,
        EmuBuf,
        EmuBuf,
        c_int,
        c_int,
        f32,
        c_int,
        c_int,
        *mut c_char,
        usize,
    ) -> c_int,
}

/// Why there is no emulator.
#[derive(Debug, Clone)]
pub(crate) enum Unavailable {
    /// No C++ compiler here (tests skip, unless `ELMO_REQUIRE_CXX` is set).
    NoCompiler(String),
    /// The sources did not build or load: always a failure.
    Broken(String),
}

/// The kernels of `kernels/elmo.cu` on the CPU, behind the forward pass's
/// backend trait.
#[derive(Clone)]
pub(crate) struct EmuBackend(Arc<Lib>);

impl EmuBackend {
    /// Builds `kernels/emu/elmo_emu.cpp` with `$CXX` (default `g++`) once
    /// per process and loads it.
    pub(crate) fn new() -> std::result::Result<Self, Unavailable> {
        static LIB: OnceLock<std::result::Result<Arc<Lib>, Unavailable>> = OnceLock::new();
        LIB.get_or_init(|| build().map(Arc::new)).clone().map(EmuBackend)
    }

    /// Whether CUDA accepts launch shape `l` (`Err` says why not).
    pub(crate) fn check(&self, l: Launch) -> Result<()> {
        let mut e = [0 as c_char; 256];
        let l = EmuLaunch::from(l);
        // SAFETY: `l` lives across the call; `e` is 256 writable bytes.
        let rc = unsafe { (self.0.check)(&l, e.as_mut_ptr(), e.len()) };
        status("launch", rc, &e)
    }
}

/// Builds the emulator library, or finds it built: it is kept beside the
/// test executable under a name hashing the sources, the compiler and its
/// flags, so later runs (and the tests' child processes) load it at once.
fn build() -> std::result::Result<Lib, Unavailable> {
    use std::hash::{Hash, Hasher};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("kernels/emu/elmo_emu.cpp");
    // `$CXX` may carry arguments (`ccache g++`).
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".into());
    let mut words = cxx.split_whitespace();
    let program = words.next().unwrap_or("g++");
    // No contraction of a * b + c into fma (nvcc's --fmad and g++'s default
    // do contract): each kernel is then its formula's exact operations,
    // bitwise those of the host backend's scalar references, so the tests
    // compare bitwise.
    let mut flags: Vec<&str> = words.collect();
    flags.extend([
        "-std=c++17",
        "-O2",
        "-ffp-contract=off",
        "-Wall",
        "-Wextra",
        "-shared",
        "-fPIC",
    ]);
    // Warnings are errors in CI (a compiler of another version may warn
    // about something new: that should not fail a user's test run).
    if std::env::var_os("ELMO_REQUIRE_CXX").is_some() {
        flags.push("-Werror");
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (program, &flags).hash(&mut h);
    for f in ["kernels/emu/elmo_emu.cpp", "kernels/emu/cuda_emu.h", "kernels/elmo.cu"] {
        std::fs::read(root.join(f))
            .map_err(|e| Unavailable::Broken(format!("{f}: {e}")))?
            .hash(&mut h);
    }
    let exe = std::env::current_exe().map_err(|e| Unavailable::Broken(format!("current_exe: {e}")))?;
    let so = exe
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .join(format!("libelmo_emu-{:016x}.so", h.finish()));
    if !so.exists() {
        // Built under a name of its own, then renamed: processes building
        // it at once never load a half-written file.
        let part = so.with_extension(format!("so.{}", std::process::id()));
        let run = std::process::Command::new(program)
            .args(&flags)
            .arg(&src)
            .arg("-o")
            .arg(&part)
            .output();
        let run = match run {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Unavailable::NoCompiler(format!("no C++ compiler '{cxx}' (set CXX)")));
            }
            Err(e) => return Err(Unavailable::Broken(format!("{cxx}: {e}"))),
        };
        if !run.status.success() {
            let _ = std::fs::remove_file(&part);
            return Err(Unavailable::Broken(format!(
                "{cxx} {}: {}",
                src.display(),
                String::from_utf8_lossy(&run.stderr)
            )));
        }
        std::fs::rename(&part, &so).map_err(|e| Unavailable::Broken(format!("{}: {e}", so.display())))?;
    }
    let broken = |e: libloading::Error| Unavailable::Broken(format!("{}: {e}", so.display()));
    // SAFETY: the library is ours, built from this checkout's sources (the
    // name hashes them); its initialisers only set up globals.
    let lib = unsafe { libloading::Library::new(&so) }.map_err(broken)?;
    // SAFETY (each symbol): the Rust signature is the C signature of the
    // entry point of that name in elmo_emu.cpp (EmuLaunch, EmuBuf and
    // ConvTable are #[repr(C)] with the C structs' fields).
    unsafe {
        Ok(Lib {
            check: *lib.get(b"emu_check").map_err(broken)?,
            no_core_dumps: *lib.get(b"emu_no_core_dumps").map_err(broken)?,
            selftest: *lib.get(b"emu_selftest").map_err(broken)?,
            char_cnn: *lib.get(b"emu_char_cnn").map_err(broken)?,
            add_bias: *lib.get(b"emu_add_bias").map_err(broken)?,
            highway: *lib.get(b"emu_highway").map_err(broken)?,
            gather_rows: *lib.get(b"emu_gather_rows").map_err(broken)?,
            lstm_cell: *lib.get(b"emu_lstm_cell").map_err(broken)?,
            lstm_project_out: *lib.get(b"emu_lstm_project_out").map_err(broken)?,
            _lib: lib,
        })
    }
}

/// An entry point's status as a Result.
fn status(what: &str, rc: c_int, e: &[c_char]) -> Result<()> {
    if rc == 0 {
        return Ok(());
    }
    let bytes: Vec<u8> = e.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    Err(Error::Cuda(format!(
        "emulated {what}: {}",
        String::from_utf8_lossy(&bytes)
    )))
}

/// Runs `f` with an error buffer and turns its status into a Result.
fn call(what: &str, f: impl FnOnce(Err) -> c_int) -> Result<()> {
    let mut e = [0 as c_char; 256];
    let rc = f((e.as_mut_ptr(), e.len()));
    status(what, rc, &e)
}

fn int(v: usize) -> c_int {
    v as c_int
}

/// `cublasSgemm(N, N, ...)` with beta 0, column-major, on host slices (`a`,
/// `b` from their offsets): cuBLAS's argument checks, then every read and
/// write inside the buffers (a GPU would read past them silently).
fn sgemm_col_major(g: Sgemm, a: &[f32], b: &[f32], c: &mut [f32]) -> Result<()> {
    let bad = |why: String| Err(Error::Cuda(format!("emulated cublasSgemm {g:?}: {why}")));
    if g.m < 0 || g.n < 0 || g.k < 0 || g.lda < g.m.max(1) || g.ldb < g.k.max(1) || g.ldc < g.m.max(1) {
        return bad("CUBLAS_STATUS_INVALID_VALUE".into());
    }
    let [m, n, k, lda, ldb, ldc] = [g.m, g.n, g.k, g.lda, g.ldb, g.ldc].map(|v| v as usize);
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k > 0 && (k - 1) * lda + m > a.len() {
        return bad(format!("A needs {} values, has {}", (k - 1) * lda + m, a.len()));
    }
    if k > 0 && (n - 1) * ldb + k > b.len() {
        return bad(format!("B needs {} values, has {}", (n - 1) * ldb + k, b.len()));
    }
    if (n - 1) * ldc + m > c.len() {
        return bad(format!("C needs {} values, has {}", (n - 1) * ldc + m, c.len()));
    }
    for j in 0..n {
        for i in 0..m {
            let mut s = 0f32;
            for p in 0..k {
                s = a[i + p * lda].mul_add(b[p + j * ldb], s);
            }
            c[i + j * ldc] = s;
        }
    }
    Ok(())
}

crate::backend::cuda::host_upload!(EmuBackend);

impl Backend for EmuBackend {
    crate::backend::cuda::host_buffers!();
    fn gemm(
        &self,
        (m, n, k): (usize, usize, usize),
        a: (&Vec<f32>, usize),
        lda: usize,
        b: (&Vec<f32>, usize),
        ldb: usize,
        c: &mut Vec<f32>,
        ldc: usize,
    ) -> Result<()> {
        // As the CUDA backend: nothing for an empty product, else cuBLAS
        // with our B as its A.
        if m == 0 || n == 0 {
            return Ok(());
        }
        let g = Sgemm::row_major((m, n, k), lda, ldb, ldc);
        sgemm_col_major(g, &b.0[b.1..], &a.0[a.1..], c)
    }
    fn char_cnn(
        &self,
        chars: &Vec<u16>,
        table: &Vec<f32>,
        w: &Vec<f32>,
        bias: &Vec<f32>,
        convs: &ConvTable,
        y: &mut Vec<f32>,
        d: CnnDims,
    ) -> Result<()> {
        let l = EmuLaunch::from(Launch::char_cnn(&d, convs));
        call("char_cnn", |(e, el)| {
            // SAFETY: the signature of emu_char_cnn; the buffers outlive
            // the call, `y` is exclusively borrowed.
            unsafe {
                (self.0.char_cnn)(
                    &l,
                    inp(chars),
                    inp(table),
                    inp(w),
                    inp(bias),
                    *convs,
                    out(y),
                    int(d.n),
                    int(d.c),
                    int(d.e),
                    int(d.n_chars),
                    c_int::from(d.relu),
                    e,
                    el,
                )
            }
        })
    }
    fn add_bias(&self, x: &mut Vec<f32>, bias: &Vec<f32>, n: usize, w: usize) -> Result<()> {
        let l = EmuLaunch::from(Launch::elementwise(n * w));
        // SAFETY: the signature of emu_add_bias; buffers outlive the call.
        call("add_bias", |(e, el)| unsafe {
            (self.0.add_bias)(&l, out(x), inp(bias), int(n), int(w), e, el)
        })
    }
    fn highway(
        &self,
        x: &mut Vec<f32>,
        carry: &Vec<f32>,
        trans: &Vec<f32>,
        bc: &Vec<f32>,
        bt: &Vec<f32>,
        n: usize,
        f: usize,
    ) -> Result<()> {
        let l = EmuLaunch::from(Launch::elementwise(n * f));
        // SAFETY: the signature of emu_highway; buffers outlive the call.
        call("highway", |(e, el)| unsafe {
            (self.0.highway)(
                &l,
                out(x),
                inp(carry),
                inp(trans),
                inp(bc),
                inp(bt),
                int(n),
                int(f),
                e,
                el,
            )
        })
    }
    fn gather_rows(
        &self,
        x: &Vec<f32>,
        y: &mut Vec<f32>,
        (idx, o): (&Vec<i32>, usize),
        rows: usize,
        w: usize,
    ) -> Result<()> {
        let l = EmuLaunch::from(Launch::elementwise(rows * w));
        // SAFETY: the signature of emu_gather_rows; buffers outlive the call.
        call("gather_rows", |(e, el)| unsafe {
            (self.0.gather_rows)(&l, inp(x), out(y), inp(&idx[o..]), int(rows), int(w), e, el)
        })
    }
    fn lstm_cell(
        &self,
        zx: &Vec<f32>,
        zx_base: usize,
        zh: &Vec<f32>,
        bias: &Vec<f32>,
        c: &mut Vec<f32>,
        m: &mut Vec<f32>,
        na: usize,
        u: usize,
        clip: Option<f32>,
    ) -> Result<()> {
        let l = EmuLaunch::from(Launch::elementwise(na * u));
        let (cc, has) = (clip.unwrap_or(0.0), c_int::from(clip.is_some()));
        // SAFETY: the signature of emu_lstm_cell; buffers outlive the call.
        call("lstm_cell", |(e, el)| unsafe {
            (self.0.lstm_cell)(
                &l,
                inp(zx),
                int(zx_base),
                inp(zh),
                inp(bias),
                out(c),
                out(m),
                int(na),
                int(u),
                cc,
                has,
                e,
                el,
            )
        })
    }
    fn lstm_project_out(
        &self,
        hp: &Vec<f32>,
        h: &mut Vec<f32>,
        y: &mut Vec<f32>,
        x: &Vec<f32>,
        (rows, o): (&Vec<i32>, usize),
        na: usize,
        p: usize,
        clip: Option<f32>,
        residual: bool,
    ) -> Result<()> {
        let l = EmuLaunch::from(Launch::elementwise(na * p));
        let (pc, has) = (clip.unwrap_or(0.0), c_int::from(clip.is_some()));
        // SAFETY: the signature of emu_lstm_project_out; buffers outlive
        // the call.
        call("lstm_project_out", |(e, el)| unsafe {
            (self.0.lstm_project_out)(
                &l,
                inp(hp),
                out(h),
                out(y),
                inp(x),
                inp(&rows[o..]),
                int(na),
                int(p),
                pc,
                has,
                c_int::from(residual),
                e,
                el,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{EmuBackend, Unavailable};
    use crate::backend::cuda::tests::{both, models, on_batches};
    use crate::backend::cuda::{CnnDims, ConvTable, HostBackend, Launch, ZX_BYTES, kernel_outputs};
    use crate::{ElmoModel, LstmState};
    use std::ffi::c_char;

    const ATOL: f32 = 1e-5;
    const RTOL: f32 = 1e-4;

    /// The emulator, or `None` (printing why) on a machine without a C++
    /// compiler, unless `ELMO_REQUIRE_CXX` is set (CI). A build failure is
    /// always a failure.
    fn emu() -> Option<EmuBackend> {
        match EmuBackend::new() {
            Ok(e) => Some(e),
            Err(Unavailable::NoCompiler(why)) => {
                assert!(std::env::var_os("ELMO_REQUIRE_CXX").is_none(), "{why}");
                eprintln!("skipped: {why}");
                None
            }
            Err(Unavailable::Broken(why)) => panic!("kernel emulator: {why}"),
        }
    }

    /// Equal values (0.0 == -0.0: `fmaxf` and `f32::max` may pick either
    /// zero).
    fn same(what: &str, a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
            assert!(x == y, "{what}[{i}]: {x} vs {y}");
        }
    }

    /// Max abs difference, after asserting `|a - b| <= atol + rtol |b|`
    /// everywhere.
    fn close(what: &str, a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        let mut worst = 0f32;
        for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
            let d = (x - y).abs();
            assert!(d <= ATOL + RTOL * y.abs(), "{what}[{i}]: {x} vs {y}");
            worst = worst.max(d);
        }
        worst
    }

    /// Every kernel, from the CUDA C source: bitwise the host backend's
    /// scalar formulas, and within tolerance of the CPU path's vectorised
    /// ones (printing each maxdiff), on the inputs a device's
    /// `kernel_maxdiffs` uses (awkward sizes, offsets, clips that fire).
    #[test]
    #[cfg_attr(miri, ignore = "runs a C++ compiler")]
    fn emulated_kernels_match_the_host_backend() {
        let Some(emu) = emu() else { return };
        let e = kernel_outputs(&emu).unwrap();
        let s = kernel_outputs(&HostBackend { scalar: true }).unwrap();
        let v = kernel_outputs(&HostBackend::default()).unwrap();
        assert_eq!((e.len(), s.len()), (v.len(), v.len()));
        for ((name, a), ((ns, b), (nv, c))) in e.iter().zip(s.iter().zip(&v)) {
            assert_eq!((name, name), (ns, nv));
            same(name, a, b);
            println!("{name}: maxdiff vs the CPU path {:.3e}", close(name, a, c));
        }
    }

    /// The GPU forward pass with the kernels of `elmo.cu` (emulated) and
    /// cuBLAS's contract: bitwise the same pass with the host backend's
    /// scalar formulas (every output and intermediate, stateless and
    /// stateful, on the tiny model and the small one with its skip
    /// connections and clips that fire, in f32 and with bf16 LSTM matrices,
    /// with and without word sharing,
    /// whole and in small blocks of steps), and within atol 1e-5 + rtol
    /// 1e-4 of the CPU path on the stateless batches.
    ///
    /// (Not on the stateful ones: carried over three batches, the small
    /// model's random LSTM amplifies rounding. Its final cell states after
    /// the 42 steps of batch 2 move by up to 3e-5 (relative 2e-4) when only
    /// the CPU path's own vectorised sigmoid and tanh are swapped for
    /// libm's; the GPU's differ from both.)
    #[test]
    #[cfg_attr(miri, ignore = "runs a C++ compiler")]
    fn gpu_forward_with_emulated_kernels_matches_the_cpu_path() {
        let Some(emu) = emu() else { return };
        let dir = tempfile::tempdir().unwrap();
        let mut worst = 0f32;
        for path in models(dir.path()) {
            for (zx, share) in [(ZX_BYTES, true), (ZX_BYTES, false), (40 << 10, true)] {
                let load = || ElmoModel::load(&path).unwrap().with_word_sharing(share);
                let gpu = load().with_test_backend(emu.clone(), zx).unwrap();
                let host = load().with_test_backend(HostBackend { scalar: true }, zx).unwrap();
                let tag = format!("{} zx {zx} share {share}", path.display());
                on_batches(&gpu, &host, &tag, |name, _, a, b| same(name, a, b));
                let cpu = super::super::tests::cpu_reference(&path).with_word_sharing(share);
                on_batches(&gpu, &cpu, &format!("{tag} vs cpu"), |name, stateful, a, b| {
                    if !stateful {
                        worst = worst.max(close(name, a, b));
                    }
                });
            }
        }
        println!("emulated GPU pass vs CPU path (stateless): maxdiff {worst:.3e}");
    }

    /// The device test `gpu_matches_cpu_on_every_golden_set` (tests/cuda.rs)
    /// with the emulated kernels: on every golden set of the tiny and small
    /// models, stateless and stateful with states carried, the GPU pass
    /// within atol 1e-5 + rtol 1e-4 of the CPU path (outputs, every
    /// intermediate, states). The emulator's `expf`/`tanhf` are libm's, not
    /// CUDA's, so this says the tolerance has room, not what a GPU gives.
    #[test]
    #[cfg_attr(miri, ignore = "runs a C++ compiler")]
    fn emulated_gpu_pass_on_every_golden_set_is_within_tolerance() {
        let Some(emu) = emu() else { return };
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = tempfile::tempdir().unwrap();
        let [tiny, small, _] = models(dir.path());
        let golden = |set: &str, prefix: &str| -> Vec<std::path::PathBuf> {
            let mut v: Vec<_> = std::fs::read_dir(root.join("tests/fixtures").join(set))
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| {
                    let n = p.file_name().unwrap().to_string_lossy();
                    n.starts_with(prefix) && n.ends_with(".npz")
                })
                .collect();
            v.sort();
            assert!(!v.is_empty(), "no {prefix}*.npz in {set}");
            v
        };
        let ids = |path: &std::path::Path| {
            let a = crate::io::npz::read_npz(path).unwrap().remove("char_ids").unwrap();
            let v: Vec<u16> = a.to_i64().unwrap().iter().map(|&x| x as u16).collect();
            crate::CharIds::from_ids(a.shape[0], a.shape[1], a.shape[2], v).unwrap()
        };
        for (set, model) in [("tiny", tiny), ("small", small)] {
            let cpu = ElmoModel::load(&model).unwrap();
            let gpu = ElmoModel::load(&model)
                .unwrap()
                .with_test_backend(emu.clone(), ZX_BYTES)
                .unwrap();
            let mut worst = 0f32;
            for f in golden(set, "stateless_batch_") {
                for (name, a, b) in both(&gpu, &cpu, &ids(&f), None, &f.display().to_string()) {
                    worst = worst.max(close(&name, &a, &b));
                }
            }
            let files = golden(set, "stateful_batch_");
            let cap = crate::io::npz::read_npz(&files[0]).unwrap()["state_c_after"].shape[2];
            let (mut sg, mut sc) = (LstmState::new(&gpu, cap).unwrap(), LstmState::new(&cpu, cap).unwrap());
            for f in files {
                let states = Some((&mut sg, &mut sc));
                for (name, a, b) in both(&gpu, &cpu, &ids(&f), states, &f.display().to_string()) {
                    worst = worst.max(close(&name, &a, &b));
                }
                worst = worst.max(close("state c", sg.c(), sc.c()));
                worst = worst.max(close("state h", sg.h(), sc.h()));
            }
            println!("{set}: emulated GPU pass vs CPU path on the golden sets: maxdiff {worst:.3e}");
        }
    }

    /// The launch shapes the CUDA backend computes cover their work and
    /// stay within CUDA's limits at the full model's sizes and the largest
    /// sizes `forward` allows (every element count below 2^31), and the
    /// emulator refuses shapes a GPU would refuse.
    #[test]
    #[cfg_attr(miri, ignore = "runs a C++ compiler")]
    fn launch_shapes_are_within_cuda_limits() {
        let Some(emu) = emu() else { return };
        let covers = |l: Launch, n: usize| {
            let blocks = l.grid.0 as u64 * l.grid.1 as u64 * l.grid.2 as u64;
            assert!(
                blocks * (l.block.0 * l.block.1 * l.block.2) as u64 >= n as u64,
                "{l:?} for {n}"
            );
        };
        // bilm-tf's full model: 2048 filters of widths 1..7, C = 50, E = 16.
        let filters = [(1, 32), (2, 32), (3, 64), (4, 128), (5, 256), (6, 512), (7, 1024)];
        let convs = ConvTable::new(&filters, 16, 50).unwrap();
        for n in [1, 1000, (i32::MAX as usize) / 4096] {
            let d = CnnDims {
                n,
                c: 50,
                e: 16,
                n_chars: 262,
                relu: true,
            };
            let l = Launch::char_cnn(&d, &convs);
            emu.check(l).unwrap();
            assert_eq!((l.grid.0 as usize, l.grid.1 * l.block.0), (n, 2048), "{l:?}");
            // The tokens' (n, 4U) gate products: the largest element-wise size.
            let l = Launch::elementwise(n * 4096);
            emu.check(l).unwrap();
            covers(l, n * 4096);
        }
        for n in [0, 1, 255, 256, 257, i32::MAX as usize] {
            let l = Launch::elementwise(n);
            emu.check(l).unwrap();
            covers(l, n);
        }
        let bad = |l: Launch, why: &str| {
            let e = emu.check(l).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        };
        let ok = Launch::elementwise(10);
        bad(
            Launch {
                block: (2048, 1, 1),
                ..ok
            },
            "threads per block must be 1..1024",
        );
        bad(
            Launch {
                grid: (1, 70_000, 1),
                ..ok
            },
            "y and z at most 65535",
        );
        bad(
            Launch {
                grid: (1 << 31, 1, 1),
                ..ok
            },
            "x must be at most 2^31 - 1",
        );
        bad(Launch { grid: (0, 1, 1), ..ok }, "a grid dimension is zero");
        bad(
            Launch { smem: 64 << 10, ..ok },
            "more than 48 KiB of dynamic shared memory",
        );
        // Past what forward allows, a grid CUDA refuses, not one that wraps.
        bad(Launch::elementwise(1 << 40), "x must be at most 2^31 - 1");
    }

    /// What the emulator must catch, each stopping the process with its
    /// message: run in child processes (`emulator_bug_child`), stderr read.
    /// Cases 0-5 are deliberately wrong kernels of `elmo_emu.cpp`; case 6
    /// is `gather_rows` of `elmo.cu` given an index one row past `x`.
    #[test]
    #[cfg_attr(miri, ignore = "runs a C++ compiler")]
    fn the_emulator_catches_kernel_bugs() {
        if emu().is_none() {
            return;
        }
        let exe = std::env::current_exe().unwrap();
        for (case, want) in [
            (0, "bad_read_past: access outside its buffers"),
            (
                1,
                "bad_uninitialised_shared: arithmetic on shared memory it did not write",
            ),
            (
                2,
                "bad_divergent_barrier: 1 of 100 threads of block (0,0,0) ended while others wait",
            ),
            (3, "bad_missed_write: left element 99 of its output y unwritten"),
            (4, "bad_write_before: wrote before the start of its buffer y"),
            (5, "bad_shared_past: wrote past the launch's dynamic shared memory"),
            (6, "gather_rows: access outside its buffers"),
        ] {
            let child = std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "backend::cuda::emu::tests::emulator_bug_child",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("ELMO_EMU_CHILD", case.to_string())
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&child.stderr);
            assert!(!child.status.success(), "case {case}: the child must die: {err}");
            assert!(err.contains(want), "case {case}: want '{want}' in stderr: {err}");
        }
    }

    /// The child of [`the_emulator_catches_kernel_bugs`]: runs case
    /// `ELMO_EMU_CHILD`. Does nothing unless run by it.
    #[test]
    #[ignore = "run by the_emulator_catches_kernel_bugs in child processes"]
    fn emulator_bug_child() {
        use crate::backend::cuda::Backend;
        let Some(case) = std::env::var("ELMO_EMU_CHILD").ok().and_then(|c| c.parse::<i32>().ok()) else {
            return;
        };
        let emu = emu().unwrap();
        // SAFETY: emu_no_core_dumps takes nothing and only sets a limit.
        unsafe { (emu.0.no_core_dumps)() };
        if case == 6 {
            // 4 rows of 2048 floats (32 KiB: the row past them is past the page).
            let x = vec![1.0f32; 4 * 2048];
            let mut y = vec![0.0f32; 2 * 2048];
            let _ = emu.gather_rows(&x, &mut y, (&vec![0, 4], 0), 2, 2048);
        } else {
            let mut e = [0 as c_char; 256];
            // SAFETY: the signature of emu_selftest; `e` is 256 writable bytes.
            let rc = unsafe { (emu.0.selftest)(case, e.as_mut_ptr(), e.len()) };
            super::status("selftest", rc, &e).unwrap();
        }
        unreachable!("case {case}: the emulator did not stop the kernel");
    }
}
