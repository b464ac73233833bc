//! The CUDA backend proper (feature `cuda`): cudarc, the PTX, cuBLAS.

use super::*;
use crate::io::model_file::ModelFile;
use crate::options::Options;
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, sys as blas_sys};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DriverError, LaunchConfig, PinnedHostSlice, PushKernelArg,
    sys as drv_sys,
};
use std::sync::{Arc, Mutex};

/// Device memory kept free beyond the weights for a batch's activations
/// (checked at upload, so a model that leaves no room fails there).
const WORKING_MARGIN: usize = 256 << 20;

fn unavailable(msg: String) -> Error {
    Error::CudaUnavailable(msg)
}

/// Checks the driver library is there before cudarc touches it (cudarc
/// panics when it is missing).
fn driver_present() -> Result<()> {
    // SAFETY: only tries to open the library by its candidate names.
    if unsafe { drv_sys::is_culib_present() } {
        Ok(())
    } else {
        Err(unavailable(
            "no CUDA driver library (libcuda.so) on this machine: install the NVIDIA driver (550 or newer)".into(),
        ))
    }
}

fn driver_version() -> Result<i32> {
    let mut v = 0i32;
    // SAFETY: the driver library is loaded (driver_present) and v is a
    // valid out-pointer.
    let r = unsafe { drv_sys::cuDriverGetVersion(&mut v) };
    r.result()
        .map_err(|e| unavailable(format!("cuDriverGetVersion failed: {e}")))?;
    Ok(v)
}

pub fn devices() -> Result<Vec<String>> {
    driver_present()?;
    let n = CudaContext::device_count().map_err(|e| unavailable(format!("cuInit/cuDeviceGetCount: {e}")))?;
    // Names without creating contexts (each would hold device memory).
    (0..n.max(0))
        .map(|i| {
            cudarc::driver::result::device::get(i)
                .and_then(cudarc::driver::result::device::get_name)
                .map_err(|e| unavailable(format!("cuda:{i}: {e}")))
        })
        .collect()
}

/// The loaded kernels.
struct Kernels {
    char_cnn: CudaFunction,
    add_bias: CudaFunction,
    highway: CudaFunction,
    gather_rows: CudaFunction,
    lstm_cell: CudaFunction,
    lstm_project_out: CudaFunction,
}

/// What runs need exclusively: the stream and the cuBLAS handle on it.
struct Exec {
    /// Two streams (lanes), each with its cuBLAS handle: the forward
    /// direction runs on the first, the backward on the second, so
    /// their small per-step kernels overlap (see [`Backend::lane`]).
    streams: [Arc<CudaStream>; 2],
    blas: [CudaBlas; 2],
    /// Page-locked host memory that downloads land in (grown as needed,
    /// kept): a DMA at the bus's speed, then a parallel copy out,
    /// instead of the driver's staged copy into pageable memory.
    staging: std::cell::RefCell<Option<PinnedHostSlice<f32>>>,
}

/// The model's weights on one CUDA device, with its kernels loaded.
pub struct GpuModel {
    ordinal: usize,
    name: String,
    options: Options,
    ctx: Arc<CudaContext>,
    exec: Mutex<Exec>,
    k: Kernels,
    w: Weights<CudaSlice<f32>>,
}

impl fmt::Debug for GpuModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GpuModel")
            .field("ordinal", &self.ordinal)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Drop for GpuModel {
    /// cudarc frees buffers without making their context current: bind
    /// it first, so a model dropped on another thread frees its
    /// weights instead of leaking them.
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
    }
}

fn elementwise(n: usize) -> LaunchConfig {
    config(Launch::elementwise(n))
}

fn config(l: Launch) -> LaunchConfig {
    LaunchConfig {
        grid_dim: l.grid,
        block_dim: l.block,
        shared_mem_bytes: l.smem,
    }
}

/// A size as the kernels' `int` ([`forward`] checks every size fits).
fn int(v: usize) -> i32 {
    v as i32
}

/// The CUDA backend of [`forward`]: one model's kernels on its stream.
struct Cuda<'a> {
    m: &'a GpuModel,
    ex: &'a Exec,
    /// The lane that work goes to.
    lane: std::cell::Cell<usize>,
}

impl<'a> Cuda<'a> {
    fn new(m: &'a GpuModel, ex: &'a Exec) -> Self {
        Cuda {
            m,
            ex,
            lane: std::cell::Cell::new(0),
        }
    }
    fn s(&self) -> &Arc<CudaStream> {
        &self.ex.streams[self.lane.get()]
    }
    fn b(&self) -> &CudaBlas {
        &self.ex.blas[self.lane.get()]
    }
    /// Makes lane `to` wait for the work queued so far on lane `from`.
    fn order(&self, from: usize, to: usize) -> Result<()> {
        let flags = Some(drv_sys::CUevent_flags::CU_EVENT_DISABLE_TIMING);
        let e = self.ex.streams[from].record_event(flags).map_err(self.err("event"))?;
        self.ex.streams[to].wait(&e).map_err(self.err("event"))
    }
    fn err(&self, what: &'static str) -> impl Fn(DriverError) -> Error + '_ {
        move |e| match e.0 {
            drv_sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => Error::Cuda(format!(
                "cuda:{} ({}): out of device memory ({what}): use smaller batches",
                self.m.ordinal, self.m.name
            )),
            _ => Error::Cuda(format!("cuda:{} ({}): {what}: {e}", self.m.ordinal, self.m.name)),
        }
    }
}

impl Upload for Cuda<'_> {
    type F = CudaSlice<f32>;
    fn up_f32(&self, v: &[f32]) -> Result<Self::F> {
        self.s().clone_htod(v).map_err(self.err("upload"))
    }
}

impl Backend for Cuda<'_> {
    type I = CudaSlice<i32>;
    type C = CudaSlice<u16>;
    fn up_i32(&self, v: &[i32]) -> Result<Self::I> {
        self.s().clone_htod(v).map_err(self.err("upload"))
    }
    fn up_u16(&self, v: &[u16]) -> Result<Self::C> {
        self.s().clone_htod(v).map_err(self.err("upload"))
    }
    fn zeros(&self, n: usize) -> Result<Self::F> {
        self.s().alloc_zeros(n.max(1)).map_err(self.err("alloc"))
    }
    fn down(&self, x: &Self::F) -> Result<Vec<f32>> {
        use rayon::prelude::*;
        // Staging: at most 64 MiB of page-locked memory, larger results
        // go through it in pieces.
        const STAGING: usize = 1 << 24;
        const CHUNK: usize = 1 << 18;
        let n = x.len();
        let mut staging = self.ex.staging.borrow_mut();
        let want = n.min(STAGING).next_power_of_two();
        if staging.as_ref().is_none_or(|s| s.len() < want) {
            *staging = None;
            // Flags 0: cached memory (the default write-combined kind
            // is slow for the CPU to read).
            // SAFETY: the buffer's contents are only read after a copy
            // into it (below) has completed.
            let s = unsafe { self.m.ctx.alloc_pinned_with_flags::<f32>(want, 0) };
            *staging = Some(s.map_err(self.err("page-locked host memory for downloads"))?);
        }
        let s = staging.as_mut().expect("allocated above");
        let mut v = vec![0f32; n];
        for (i, out) in v.chunks_mut(STAGING).enumerate() {
            let k = out.len();
            let piece = x.slice(i * STAGING..i * STAGING + k);
            // A slice of exactly the piece's length (cudarc copies as
            // many values as the destination holds), then a wait: into
            // page-locked memory the copy is asynchronous, and with
            // event tracking off nothing else waits for it.
            let dst = &mut s.as_mut_slice().map_err(self.err("download"))?[..k];
            self.s().memcpy_dtoh(&piece, dst).map_err(self.err("download"))?;
            self.s().synchronize().map_err(self.err("download"))?;
            let src = &s.as_slice().map_err(self.err("download"))?[..k];
            // Large results: the copy out (and the first touch of `v`'s
            // pages) on every thread.
            if k > CHUNK {
                out.par_chunks_mut(CHUNK)
                    .zip(src.par_chunks(CHUNK))
                    .for_each(|(d, s)| d.copy_from_slice(s));
            } else {
                out.copy_from_slice(src);
            }
        }
        Ok(v)
    }
    fn copy_into(&self, x: &Self::F, y: &mut Self::F, at: usize, len: usize) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let mut dst = y.slice_mut(at..at + len);
        self.s()
            .memcpy_dtod(&x.slice(..len), &mut dst)
            .map_err(self.err("copy"))
    }
    fn sync(&self) -> Result<()> {
        for s in &self.ex.streams {
            s.synchronize().map_err(self.err("synchronize"))?;
        }
        Ok(())
    }
    fn lane(&self, d: usize) {
        self.lane.set(d.min(1));
    }
    fn fork(&self) -> Result<()> {
        self.order(0, 1)
    }
    fn join(&self) -> Result<()> {
        self.order(1, 0)
    }
    fn gemm(
        &self,
        (m, n, k): (usize, usize, usize),
        a: (&Self::F, usize),
        lda: usize,
        b: (&Self::F, usize),
        ldb: usize,
        c: &mut Self::F,
        ldc: usize,
    ) -> Result<()> {
        if m == 0 || n == 0 {
            return Ok(());
        }
        // Row-major C = A B is column-major C^T = B^T A^T: cuBLAS's A
        // is our B (see Sgemm).
        let g = Sgemm::row_major((m, n, k), lda, ldb, ldc);
        let cfg = GemmConfig {
            transa: blas_sys::cublasOperation_t::CUBLAS_OP_N,
            transb: blas_sys::cublasOperation_t::CUBLAS_OP_N,
            m: g.m,
            n: g.n,
            k: g.k,
            alpha: 1.0f32,
            lda: g.lda,
            ldb: g.ldb,
            beta: 0.0f32,
            ldc: g.ldc,
        };
        let (av, bv) = (a.0.slice(a.1..), b.0.slice(b.1..));
        // SAFETY: forward passes buffers holding (m-1) lda + k values
        // of A from a.1, (k-1) ldb + n of B from b.1 and (m-1) ldc + n
        // of C, all on this handle's stream.
        unsafe { self.b().gemm(cfg, &bv, &av, c) }
            .map_err(|e| Error::Cuda(format!("cuda:{} ({}): cublasSgemm: {e}", self.m.ordinal, self.m.name)))
    }
    fn char_cnn(
        &self,
        chars: &Self::C,
        table: &Self::F,
        w: &Self::F,
        bias: &Self::F,
        convs: &ConvTable,
        out: &mut Self::F,
        d: CnnDims,
    ) -> Result<()> {
        let (n, c, e, nc, relu) = (int(d.n), int(d.c), int(d.e), int(d.n_chars), i32::from(d.relu));
        let mut bld = self.s().launch_builder(&self.m.k.char_cnn);
        bld.arg(chars)
            .arg(table)
            .arg(w)
            .arg(bias)
            .arg(convs)
            .arg(out)
            .arg(&n)
            .arg(&c)
            .arg(&e)
            .arg(&nc)
            .arg(&relu);
        let cfg = config(Launch::char_cnn(&d, convs));
        // SAFETY: char_cnn(chars (n, C), table (n_chars, E), w (the
        // kernels concatenated as convs says), bias (F), convs by value,
        // out (n, F), ...): buffers as uploaded; ids past the table read
        // zeros.
        unsafe { bld.launch(cfg) }.map(drop).map_err(self.err("char_cnn"))
    }
    fn add_bias(&self, x: &mut Self::F, bias: &Self::F, n: usize, w: usize) -> Result<()> {
        let (ni, wi) = (int(n), int(w));
        let mut bld = self.s().launch_builder(&self.m.k.add_bias);
        bld.arg(x).arg(bias).arg(&ni).arg(&wi);
        // SAFETY: add_bias(x (n, w), bias (w,), n, w).
        unsafe { bld.launch(elementwise(n * w)) }
            .map(drop)
            .map_err(self.err("add_bias"))
    }
    fn highway(
        &self,
        x: &mut Self::F,
        carry: &Self::F,
        trans: &Self::F,
        bc: &Self::F,
        bt: &Self::F,
        n: usize,
        f: usize,
    ) -> Result<()> {
        let (ni, fi) = (int(n), int(f));
        let mut bld = self.s().launch_builder(&self.m.k.highway);
        bld.arg(x).arg(carry).arg(trans).arg(bc).arg(bt).arg(&ni).arg(&fi);
        // SAFETY: highway(x, carry, transform (n, f), bc, bt (f,), n, f).
        unsafe { bld.launch(elementwise(n * f)) }
            .map(drop)
            .map_err(self.err("highway"))
    }
    fn gather_rows(&self, x: &Self::F, y: &mut Self::F, idx: (&Self::I, usize), rows: usize, w: usize) -> Result<()> {
        let iv = idx.0.slice(idx.1..);
        let (ri, wi) = (int(rows), int(w));
        let mut bld = self.s().launch_builder(&self.m.k.gather_rows);
        bld.arg(x).arg(y).arg(&iv).arg(&ri).arg(&wi);
        // SAFETY: gather_rows(x, y (rows, w), idx (rows), rows, w); every
        // index is a row of x (built by forward).
        unsafe { bld.launch(elementwise(rows * w)) }
            .map(drop)
            .map_err(self.err("gather_rows"))
    }
    fn lstm_cell(
        &self,
        zx: &Self::F,
        zx_base: usize,
        zh: &Self::F,
        bias: &Self::F,
        c: &mut Self::F,
        m: &mut Self::F,
        na: usize,
        u: usize,
        clip: Option<f32>,
    ) -> Result<()> {
        let (zb, nai, ui) = (int(zx_base), int(na), int(u));
        let (cc, has) = (clip.unwrap_or(0.0), i32::from(clip.is_some()));
        let mut bld = self.s().launch_builder(&self.m.k.lstm_cell);
        bld.arg(zx)
            .arg(&zb)
            .arg(zh)
            .arg(bias)
            .arg(c)
            .arg(m)
            .arg(&nai)
            .arg(&ui)
            .arg(&cc)
            .arg(&has);
        // SAFETY: lstm_cell(zx (rows, 4U) from row zx_base, zh (na, 4U),
        // bias (4U), c (B, U), m (B, U), na <= B, U, ...).
        unsafe { bld.launch(elementwise(na * u)) }
            .map(drop)
            .map_err(self.err("lstm_cell"))
    }
    fn lstm_project_out(
        &self,
        hp: &Self::F,
        h: &mut Self::F,
        out: &mut Self::F,
        x: &Self::F,
        rows: (&Self::I, usize),
        na: usize,
        p: usize,
        clip: Option<f32>,
        residual: bool,
    ) -> Result<()> {
        let rv = rows.0.slice(rows.1..);
        let (nai, pi) = (int(na), int(p));
        let (pc, has, res) = (clip.unwrap_or(0.0), i32::from(clip.is_some()), i32::from(residual));
        let mut bld = self.s().launch_builder(&self.m.k.lstm_project_out);
        bld.arg(hp)
            .arg(h)
            .arg(out)
            .arg(x)
            .arg(&rv)
            .arg(&nai)
            .arg(&pi)
            .arg(&pc)
            .arg(&has)
            .arg(&res);
        // SAFETY: lstm_project_out(hp (na, P), h (B, P), out, x (N, P),
        // rows (na) < N, na, P, ...).
        unsafe { bld.launch(elementwise(na * p)) }
            .map(drop)
            .map_err(self.err("lstm_project_out"))
    }
}

impl GpuModel {
    /// Uploads the model in `file` to CUDA device `ordinal`, loads the
    /// kernels and runs a warm-up batch.
    ///
    /// Errors ([`Error::CudaUnavailable`]): no driver or cuBLAS library,
    /// no such device, a device older than compute capability 8.0, a
    /// driver too old for the PTX, not enough free device memory.
    pub fn new(file: &ModelFile, ordinal: usize) -> Result<Self> {
        driver_present()?;
        let count = CudaContext::device_count().map_err(|e| unavailable(format!("cuInit/cuDeviceGetCount: {e}")))?;
        if ordinal >= count.max(0) as usize {
            return Err(unavailable(format!(
                "device cuda:{ordinal} does not exist: this machine has {count} CUDA device(s)"
            )));
        }
        let dev = |e: DriverError| unavailable(format!("cuda:{ordinal}: {e}"));
        let ctx = CudaContext::new(ordinal).map_err(dev)?;
        if ctx.has_async_alloc() {
            // A pass allocates and frees its activations (hundreds of
            // MiB at batch 256) on the stream's pool; by default the
            // pool hands memory back to the driver at every
            // synchronisation, and the next pass maps it again. Keep it.
            let mut threshold = u64::MAX;
            // SAFETY: the device is this context's; the attribute takes
            // a pointer to a u64.
            unsafe {
                let mut pool = std::mem::MaybeUninit::uninit();
                drv_sys::cuDeviceGetMemPool(pool.as_mut_ptr(), ctx.cu_device())
                    .result()
                    .and_then(|()| {
                        drv_sys::cuMemPoolSetAttribute(
                            pool.assume_init(),
                            drv_sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                            (&mut threshold as *mut u64).cast(),
                        )
                        .result()
                    })
            }
            .map_err(dev)?;
        }
        let name = ctx.name().map_err(dev)?;
        let cc = ctx.compute_capability().map_err(dev)?;
        if cc < MIN_COMPUTE_CAPABILITY {
            return Err(unavailable(format!(
                "cuda:{ordinal} ({name}) has compute capability {}.{}; the kernels need {}.{} or newer",
                cc.0, cc.1, MIN_COMPUTE_CAPABILITY.0, MIN_COMPUTE_CAPABILITY.1
            )));
        }
        let driver = driver_version()?;
        if driver < MIN_DRIVER_VERSION {
            return Err(unavailable(format!(
                "cuda:{ordinal} ({name}): the driver supports CUDA {}.{}, the kernels' PTX needs CUDA 12.4 \
                 (driver 550.54 or newer)",
                driver / 1000,
                driver % 1000 / 10
            )));
        }
        // SAFETY: only tries to open the library by its candidate names.
        if !unsafe { blas_sys::is_culib_present() } {
            return Err(unavailable(
                "no cuBLAS library found under the names libcublas.so or libcublas.so.12: install CUDA 12's \
                 cuBLAS (e.g. `pip install nvidia-cublas-cu12`) and add its lib folder to LD_LIBRARY_PATH, or \
                 link libcublas.so to CUDA 13's libcublas.so.13 in a folder on LD_LIBRARY_PATH"
                    .into(),
            ));
        }
        let options = file.options.clone();
        // The char CNN keeps a token's C x E embeddings in shared memory:
        // within the 48 KiB every block may use without opting in.
        let smem = 4 * options.char_cnn.max_characters_per_token * options.char_cnn.embedding_dim;
        if smem > 48 << 10 {
            return Err(unavailable(format!(
                "the model's tokens need {smem} bytes of shared memory in the CUDA char CNN (at most 49152)"
            )));
        }
        let need = weight_bytes(&options) + WORKING_MARGIN;
        let (free, _) = ctx.mem_get_info().map_err(dev)?;
        if need > free {
            return Err(unavailable(format!(
                "cuda:{ordinal} ({name}) has {} MiB free; the model needs {} MiB ({} MiB of weights and {} MiB \
                 to work in)",
                free >> 20,
                need >> 20,
                (need - WORKING_MARGIN) >> 20,
                WORKING_MARGIN >> 20
            )));
        }
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_src(PTX))
            .map_err(|e| match e.0 {
                drv_sys::CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION => unavailable(format!(
                    "cuda:{ordinal} ({name}): the driver cannot load the kernels' PTX (ISA 8.4, CUDA 12.4): \
                     update the NVIDIA driver to 550.54 or newer"
                )),
                _ => unavailable(format!("cuda:{ordinal} ({name}): loading the kernels: {e}")),
            })?;
        let f = |n: &str| {
            module
                .load_function(n)
                .map_err(|e| unavailable(format!("cuda:{ordinal}: kernel {n}: {e}")))
        };
        let k = Kernels {
            char_cnn: f("char_cnn")?,
            add_bias: f("add_bias")?,
            highway: f("highway")?,
            gather_rows: f("gather_rows")?,
            lstm_cell: f("lstm_cell")?,
            lstm_project_out: f("lstm_project_out")?,
        };
        // SAFETY: this model's buffers are created after this call and
        // used on its two streams, which `forward` orders explicitly
        // (`fork` and `join`: each buffer one lane writes is read by
        // the other only after such an event, and lives until the
        // pass's end), so cudarc's cross-stream event tracking has
        // nothing to add: it would only record events around every
        // launch and copy.
        unsafe { ctx.disable_event_tracking() };
        let streams = [
            ctx.default_stream(),
            ctx.new_stream()
                .map_err(|e| unavailable(format!("cuda:{ordinal}: creating a stream: {e}")))?,
        ];
        let handle = |s: &Arc<CudaStream>| -> Result<CudaBlas> {
            let blas = CudaBlas::new(s.clone())
                .map_err(|e| unavailable(format!("cuda:{ordinal}: creating a cuBLAS handle: {e}")))?;
            // Full f32 products: no TF32 or other reduced precision.
            // SAFETY: the handle is valid (just created).
            unsafe { blas_sys::cublasSetMathMode(*blas.handle(), blas_sys::cublasMath_t::CUBLAS_DEFAULT_MATH) }
                .result()
                .map_err(|e| unavailable(format!("cuda:{ordinal}: cublasSetMathMode: {e}")))?;
            Ok(blas)
        };
        let ex = Exec {
            blas: [handle(&streams[0])?, handle(&streams[1])?],
            streams,
            staging: Default::default(),
        };
        let w = Weights::upload(
            &Uploader {
                stream: &ex.streams[0],
                ordinal,
            },
            file,
        )?;
        let model = GpuModel {
            ordinal,
            name,
            options,
            ctx,
            exec: Mutex::new(ex),
            k,
            w,
        };
        // Warm-up: one sentence of one token, so cuBLAS and the kernels
        // are loaded before the first request.
        let c = model.options.char_cnn.max_characters_per_token;
        let mut one = vec![crate::chars::PAD_CHAR + 1; c];
        one[0] = crate::chars::BOW_CHAR + 1;
        one[1] = crate::chars::EOW_CHAR + 1;
        model.run(&one, &[(0, 1)], [&[], &[]], (false, true))?;
        Ok(model)
    }

    /// The device's ordinal.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs every kernel of `kernels/elmo.cu` (and the SGEMM) once on
    /// fixed inputs and returns, by name, each one's max abs difference
    /// from the same computation on the host (llm.c's `maxdiff`) and
    /// whether every element is within atol 1e-5 + rtol 1e-4 of it.
    pub fn kernel_maxdiffs(&self) -> Result<Vec<(String, f32, bool)>> {
        let want = kernel_outputs(&HostBackend::default())?;
        let ex = self.exec.lock().unwrap_or_else(|e| e.into_inner());
        self.ctx.bind_to_thread().map_err(|e| {
            Error::Cuda(format!(
                "cuda:{} ({}): binding the context: {e}",
                self.ordinal, self.name
            ))
        })?;
        let got = kernel_outputs(&Cuda::new(self, &ex))?;
        Ok(want
            .into_iter()
            .zip(got)
            .map(|((name, a), (_, b))| {
                let d = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
                // A NaN (never within tolerance) or a length mismatch
                // must not read as agreement.
                let ok = a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= 1e-5 + 1e-4 * x.abs());
                (name.to_string(), if a.len() == b.len() { d } else { f32::INFINITY }, ok)
            })
            .collect())
    }

    /// [`forward`] on this device (one run at a time per model).
    pub(crate) fn run(
        &self,
        chars: &[u16],
        segs: &[(usize, usize)],
        init: [Init<'_>; 2],
        keep: (bool, bool),
    ) -> Result<GpuOut> {
        let ex = self.exec.lock().unwrap_or_else(|e| e.into_inner());
        self.ctx.bind_to_thread().map_err(|e| {
            Error::Cuda(format!(
                "cuda:{} ({}): binding the context: {e}",
                self.ordinal, self.name
            ))
        })?;
        let be = Cuda::new(self, &ex);
        forward(&be, &self.w, &self.options, chars, segs, init, keep, ZX_BYTES)
    }
}

/// The upload-only backend used while the model is being built.
struct Uploader<'a> {
    stream: &'a Arc<CudaStream>,
    ordinal: usize,
}

impl Upload for Uploader<'_> {
    type F = CudaSlice<f32>;
    fn up_f32(&self, v: &[f32]) -> Result<Self::F> {
        self.stream.clone_htod(v).map_err(|e| match e.0 {
            drv_sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => unavailable(format!(
                "cuda:{}: out of device memory uploading the weights",
                self.ordinal
            )),
            _ => Error::Cuda(format!("cuda:{}: uploading the weights: {e}", self.ordinal)),
        })
    }
}

/// Bytes of the weights once uploaded (all f32).
fn weight_bytes(o: &Options) -> usize {
    crate::io::model_file::expected_tensors(o)
        .iter()
        .map(|(_, s)| s.iter().product::<usize>() * 4)
        .sum()
}
