//! What the GPU forward pass needs of a backend (the [`Backend`] trait:
//! buffers and the kernels of `kernels/elmo.cu`) and the launch parameters
//! every backend shares (filter tables, launch shapes, GEMM shapes, weights).

use super::*;

/// Device memory operations and the kernels of `kernels/elmo.cu`, as the
/// forward pass ([`forward`]) uses them. Buffers are flat; `(buffer, offset)`
/// pairs address a sub-range (a column block, a block of rows).
pub(crate) trait Backend: Upload {
    /// A buffer of i32 (row indices).
    type I;
    /// A buffer of u16 (character ids).
    type C;
    /// Uploads row indices.
    fn up_i32(&self, v: &[i32]) -> Result<Self::I>;
    /// Uploads character ids.
    fn up_u16(&self, v: &[u16]) -> Result<Self::C>;
    /// `n` zeros.
    fn zeros(&self, n: usize) -> Result<Self::F>;
    /// Downloads values.
    fn down(&self, x: &Self::F) -> Result<Vec<f32>>;
    /// `y[at .. at + len] = x[.. len]`, on the device.
    fn copy_into(&self, x: &Self::F, y: &mut Self::F, at: usize, len: usize) -> Result<()>;
    /// Waits for the work queued so far on every lane ([`Trace`] only:
    /// `down` waits by itself).
    fn sync(&self) -> Result<()> {
        Ok(())
    }
    /// Sends the work that follows to lane `d` (0 or 1): two queues that run
    /// side by side where the device can (CUDA streams). Work on one lane
    /// sees the other's only across [`fork`](Self::fork) and
    /// [`join`](Self::join). A backend that runs everything in order
    /// ignores lanes.
    fn lane(&self, _d: usize) {}
    /// Lane 1 waits for everything queued on lane 0 so far.
    fn fork(&self) -> Result<()> {
        Ok(())
    }
    /// Lane 0 waits for everything queued on lane 1 so far.
    fn join(&self) -> Result<()> {
        Ok(())
    }
    /// `c (m, n) = a (m, k) b (k, n)`, row-major with row strides.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        mnk: (usize, usize, usize),
        a: (&Self::F, usize),
        lda: usize,
        b: (&Self::F, usize),
        ldb: usize,
        c: &mut Self::F,
        ldc: usize,
    ) -> Result<()>;
    /// `char_cnn` of elmo.cu: every filter width of `convs` into `out`
    /// `(n, F)`; `w` and `bias` are the convolutions' kernels and biases
    /// concatenated.
    #[allow(clippy::too_many_arguments)]
    fn char_cnn(
        &self,
        chars: &Self::C,
        table: &Self::F,
        w: &Self::F,
        bias: &Self::F,
        convs: &ConvTable,
        out: &mut Self::F,
        dims: CnnDims,
    ) -> Result<()>;
    /// `add_bias` of elmo.cu.
    fn add_bias(&self, x: &mut Self::F, bias: &Self::F, n: usize, w: usize) -> Result<()>;
    /// `highway` of elmo.cu.
    #[allow(clippy::too_many_arguments)]
    fn highway(
        &self,
        x: &mut Self::F,
        carry: &Self::F,
        trans: &Self::F,
        bc: &Self::F,
        bt: &Self::F,
        n: usize,
        f: usize,
    ) -> Result<()>;
    /// `gather_rows` of elmo.cu with indices `idx.0[idx.1 .. idx.1 + rows]`.
    fn gather_rows(&self, x: &Self::F, y: &mut Self::F, idx: (&Self::I, usize), rows: usize, w: usize) -> Result<()>;
    /// `lstm_cell` of elmo.cu.
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<()>;
    /// `lstm_project_out` of elmo.cu with rows `rows.0[rows.1 .. rows.1 + na]`.
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<()>;
}

/// Uploading f32 values: all that building [`Weights`] needs.
pub(crate) trait Upload {
    /// A buffer of f32.
    type F;
    /// Uploads values.
    fn up_f32(&self, v: &[f32]) -> Result<Self::F>;
}

/// Most filter widths the CUDA char CNN takes (bilm-tf's models have 7).
pub(crate) const MAX_CONVS: usize = 16;

/// The char CNN's filter widths, passed to the kernel by value (struct
/// ConvTable of `kernels/elmo.cu`, same layout): convolution `i` has width
/// `width[i]` and filters `first[i] .. first[i + 1]` (`first[n]` = F), its
/// kernel at `woff[i]` in the concatenated weights.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvTable {
    pub(crate) n: i32,
    pub(crate) width: [i32; MAX_CONVS],
    pub(crate) first: [i32; MAX_CONVS + 1],
    pub(crate) woff: [i32; MAX_CONVS],
}

#[cfg(feature = "cuda")]
// SAFETY: a plain #[repr(C)] struct of i32s, the layout of the kernel's
// ConvTable parameter, with no pointers or padding.
unsafe impl cudarc::driver::DeviceRepr for ConvTable {}

impl ConvTable {
    /// The table of `(width, count)` convolutions whose `width * E x count`
    /// kernels are concatenated in order.
    pub(crate) fn new(filters: &[(usize, usize)], e: usize, c: usize) -> Result<Self> {
        if let Some(&(w, _)) = filters.iter().find(|f| f.0 > c) {
            return Err(Error::CudaUnavailable(format!(
                "a filter of width {w} is wider than the {c} characters of a token"
            )));
        }
        if filters.len() > MAX_CONVS {
            return Err(Error::CudaUnavailable(format!(
                "the model has {} filter widths; the CUDA char CNN takes at most {MAX_CONVS}",
                filters.len()
            )));
        }
        let mut t = ConvTable {
            n: filters.len() as i32,
            width: [0; MAX_CONVS],
            first: [0; MAX_CONVS + 1],
            woff: [0; MAX_CONVS],
        };
        let (mut first, mut woff) = (0usize, 0usize);
        for (i, &(w, nf)) in filters.iter().enumerate() {
            let big = |v: usize| i32::try_from(v).map_err(|_| Error::CudaUnavailable("char CNN too large".into()));
            t.width[i] = big(w)?;
            t.first[i] = big(first)?;
            t.woff[i] = big(woff)?;
            first += nf;
            woff += w * e * nf;
        }
        t.first[filters.len()] =
            i32::try_from(first).map_err(|_| Error::CudaUnavailable("char CNN too large".into()))?;
        Ok(t)
    }

    /// Filters in all (F).
    pub(crate) fn filters(&self) -> usize {
        self.first[self.n as usize] as usize
    }

    /// Convolution `i`: (width, first filter, filters, kernel offset).
    pub(crate) fn conv(&self, i: usize) -> (usize, usize, usize, usize) {
        let f0 = self.first[i] as usize;
        (
            self.width[i] as usize,
            f0,
            self.first[i + 1] as usize - f0,
            self.woff[i] as usize,
        )
    }
}

/// Sizes of one char-CNN launch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CnnDims {
    /// Tokens.
    pub n: usize,
    /// Characters per token.
    pub c: usize,
    /// Character embedding size.
    pub e: usize,
    /// Rows of the embedding table.
    pub n_chars: usize,
    /// relu (else tanh).
    pub relu: bool,
}

/// A kernel launch's shape: grid and block as `(x, y, z)`, and the bytes of
/// dynamic shared memory. Computed here, outside the CUDA backend, so the
/// kernel emulator of the tests (`emu.rs`, tests only) launches the kernels
/// with exactly the shapes a GPU gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Launch {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub smem: u32,
}

/// Threads per block of the element-wise kernels.
const BLOCK: u32 = 256;

impl Launch {
    /// One thread per element of `n` (at least one block).
    pub(crate) fn elementwise(n: usize) -> Launch {
        // `forward` keeps n below 2^31; past u32, a grid CUDA refuses
        // rather than one that wraps around and covers too little.
        let blocks = n.div_ceil(BLOCK as usize).max(1);
        Launch {
            grid: (u32::try_from(blocks).unwrap_or(u32::MAX), 1, 1),
            block: (BLOCK, 1, 1),
            smem: 0,
        }
    }

    /// `char_cnn`: a block column per token (grid x), 128 filters per block
    /// (grid y), the token's `C x E` embeddings in shared memory.
    pub(crate) fn char_cnn(d: &CnnDims, convs: &ConvTable) -> Launch {
        Launch {
            grid: (d.n as u32, (convs.filters() as u32).div_ceil(128), 1),
            block: (128, 1, 1),
            smem: (d.c * d.e * 4) as u32,
        }
    }
}

/// The arguments of `cublasSgemm(N, N, m, n, k, 1, A, lda, B, ldb, 0, C,
/// ldc)` (column-major) that compute the row-major `C (rows, cols) = A (rows,
/// depth) B (depth, cols)` of [`Backend::gemm`]: a row-major matrix is its
/// transpose in column-major, and `C^T = B^T A^T`, so cuBLAS's `A` is our
/// `B` and its `m` our column count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sgemm {
    pub m: i32,
    pub n: i32,
    pub k: i32,
    /// Leading dimension of cuBLAS's `A`: our `B`'s row stride.
    pub lda: i32,
    /// Leading dimension of cuBLAS's `B`: our `A`'s row stride.
    pub ldb: i32,
    pub ldc: i32,
}

impl Sgemm {
    /// For our `(rows, cols, depth)` and row strides of `A`, `B`, `C`
    /// ([`forward`] checks every size fits an `i32`).
    pub(crate) fn row_major((rows, cols, depth): (usize, usize, usize), lda: usize, ldb: usize, ldc: usize) -> Sgemm {
        Sgemm {
            m: cols as i32,
            n: rows as i32,
            k: depth as i32,
            lda: ldb as i32,
            ldb: lda as i32,
            ldc: ldc as i32,
        }
    }
}

/// The model's weights in a backend's buffers, all f32, logical layouts.
pub(crate) struct Weights<F> {
    pub(crate) char_embed: F,              // (n_chars, E)
    pub(crate) cnn_w: F,                   // every convolution's (w*E, n) kernel, concatenated
    pub(crate) cnn_b: F,                   // their biases, concatenated: (F,)
    pub(crate) convs: ConvTable,           // where each starts
    pub(crate) highways: Vec<[F; 4]>,      // W_carry (F, F), b_carry, W_transform, b_transform
    pub(crate) projection: Option<(F, F)>, // (F, P), (P,)
    pub(crate) lstm: [Vec<[F; 3]>; 2],     // per direction and layer: W_0 (2P, 4U), B (4U,), W_P_0 (U, P)
    pub(crate) n_chars: usize,
}

impl<F> Weights<F> {
    /// Uploads every weight of `file` (bf16 widened, strips unpacked).
    pub(crate) fn upload<B: Upload<F = F>>(be: &B, file: &crate::io::model_file::ModelFile) -> Result<Self> {
        use crate::io::model_file::lstm_name;
        let o = &file.options;
        if o.word_embedding.is_some() {
            // Refused rather than computed without the words.
            return Err(Error::Input(
                "this ELMoForManyLangs model has a word embedding, which only the CPU pass computes; use the CPU"
                    .into(),
            ));
        }
        let up = |name: &str| -> Result<F> { be.up_f32(&file.values(name)?) };
        let convs = ConvTable::new(
            &o.char_cnn.filters,
            o.char_cnn.embedding_dim,
            o.char_cnn.max_characters_per_token,
        )?;
        let (mut cnn_w, mut cnn_b) = (Vec::new(), Vec::new());
        for i in 0..o.char_cnn.filters.len() {
            cnn_w.extend(file.values(&format!("CNN/W_cnn_{i}"))?);
            cnn_b.extend(file.values(&format!("CNN/b_cnn_{i}"))?);
        }
        let highways = (0..o.char_cnn.n_highway)
            .map(|h| {
                Ok([
                    up(&format!("CNN_high_{h}/W_carry"))?,
                    up(&format!("CNN_high_{h}/b_carry"))?,
                    up(&format!("CNN_high_{h}/W_transform"))?,
                    up(&format!("CNN_high_{h}/b_transform"))?,
                ])
            })
            .collect::<Result<_>>()?;
        let projection = if o.has_projection() {
            Some((up("CNN_proj/W_proj")?, up("CNN_proj/b_proj")?))
        } else {
            None
        };
        let layers = |d: usize| -> Result<Vec<[F; 3]>> {
            (0..o.lstm.n_layers)
                .map(|l| {
                    Ok([
                        up(&lstm_name(d, l, "W_0"))?,
                        up(&lstm_name(d, l, "B"))?,
                        up(&lstm_name(d, l, "W_P_0"))?,
                    ])
                })
                .collect()
        };
        let table = file.values("char_embed")?;
        Ok(Weights {
            n_chars: table.len() / o.char_cnn.embedding_dim.max(1),
            char_embed: be.up_f32(&table)?,
            cnn_w: be.up_f32(&cnn_w)?,
            cnn_b: be.up_f32(&cnn_b)?,
            convs,
            highways,
            projection,
            lstm: [layers(0)?, layers(1)?],
        })
    }
}

/// Where a GPU pass spends its time: with `ELMO_TRACE` set in the
/// environment, [`forward`] waits for the device at the end of each phase
/// and prints one line to stderr with each phase's milliseconds (the waits
/// cost a little overlap, so traced passes run slightly slower).
pub(crate) struct Trace {
    pub(crate) last: Option<std::time::Instant>,
    pub(crate) marks: Vec<(String, f64)>,
}

impl Trace {
    /// A trace that records only when `ELMO_TRACE` is set.
    pub(crate) fn new() -> Self {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let on = *ON.get_or_init(|| std::env::var_os("ELMO_TRACE").is_some());
        Trace {
            last: on.then(std::time::Instant::now),
            marks: Vec::new(),
        }
    }

    /// Ends the phase `what` (waiting for the device's queue first).
    pub(crate) fn mark<B: Backend>(&mut self, be: &B, what: impl FnOnce() -> String) -> Result<()> {
        if let Some(t) = self.last {
            be.sync()?;
            let now = std::time::Instant::now();
            self.marks.push((what(), (now - t).as_secs_f64() * 1e3));
            self.last = Some(now);
        }
        Ok(())
    }

    /// Prints the phases, after `head`.
    pub(crate) fn print(&self, head: &str) {
        if self.last.is_some() {
            let total: f64 = self.marks.iter().map(|m| m.1).sum();
            let phases: Vec<String> = self.marks.iter().map(|(w, ms)| format!("{w} {ms:.3}")).collect();
            eprintln!("trace {head}: {total:.3} ms = {}", phases.join(", "));
        }
    }
}
