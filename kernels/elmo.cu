// CUDA kernels of the GPU backend (src/backend/cuda/). Compiled to kernels/elmo.ptx
// by kernels/build_ptx.py with NVRTC; the PTX is committed and embedded with
// include_str!, so users need no CUDA compiler.
//
// Everything is float32 and row-major. The large matrix products (highway,
// projections, LSTM input/recurrent/projection products) are cuBLAS SGEMMs
// issued from Rust; these kernels are the parts between them, each fused so
// that its inputs are read once and its outputs written once. Every kernel
// has a CPU reference in src/backend/cpu/ or src/model/ computing the same
// formula (named beside it), and the GPU tests compare the two.
//
// Numerics: expf/tanhf are NVRTC's accurate versions (no --use_fast_math),
// so results agree with the CPU path to float32 rounding, not bitwise.

extern "C" {

__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

// The filter widths of the char CNN, passed by value (a kernel parameter,
// no upload): convolution i has width[i] and filters first[i] ..
// first[i + 1] (first[n] = F), its kernel at woff[i] in the concatenated
// weights. Mirrors struct ConvTable in src/backend/cuda/ops.rs.
#define MAX_CONVS 16
struct ConvTable {
    int n;
    int width[MAX_CONVS];
    int first[MAX_CONVS + 1];
    int woff[MAX_CONVS];
};

// Character CNN, every filter width in one launch, fused: embedding lookup,
// convolution over the characters, max over positions (one window of the
// padding), bias, activation.
// (CPU: ElmoModel::token_chunk, the loop over self.convs.)
//
//   chars (n, C)        character ids of each token
//   table (n_chars, E)  character embeddings
//   w                   the kernels, concatenated: convolution i's is
//                       (width*E, nf_i) at woff[i], row (j*E + e) = char offset j, dim e
//   bias  (F)           the biases, concatenated
//   out   (n, F)
//   relu  1 = relu, 0 = tanh
//
// Grid (n, ceil(F / blockDim.x)): one token per block column (x: up to
// 2^31 - 1 tokens), one filter per thread. The token's C x E embeddings sit
// in shared memory (C*E floats, dynamic), loaded once for all widths; each
// thread's dot products run over p = j*E + e in order, as the CPU's fma
// chains do.
__global__ void char_cnn(const unsigned short* __restrict__ chars, const float* __restrict__ table,
                         const float* __restrict__ w, const float* __restrict__ bias,
                         const ConvTable convs, float* __restrict__ out, int n, int C, int E,
                         int n_chars, int relu) {
    extern __shared__ float emb[];  // (C, E)
    const int t = blockIdx.x;
    if (t >= n) return;
    for (int q = threadIdx.x; q < C * E; q += blockDim.x) {
        int id = chars[(long)t * C + q / E];
        // Ids past the table (impossible from the encoder) read row 0, zeros.
        emb[q] = id < n_chars ? table[(long)id * E + q % E] : 0.0f;
    }
    __syncthreads();
    const int F = convs.first[convs.n];
    const int f = blockIdx.y * blockDim.x + threadIdx.x;
    if (f >= F) return;
    int i = 0;
    while (i + 1 < convs.n && convs.first[i + 1] <= f) ++i;
    const int width = convs.width[i];
    const int nf = convs.first[i + 1] - convs.first[i];
    const int j = f - convs.first[i];
    const float* wi = w + convs.woff[i];
    const int k = width * E;
    // The windows starting at or after `run`, where the token's trailing run
    // of equal ids (its padding) begins, are all the same window: one of
    // them is computed (same bits; CPU: ElmoModel::conv_token).
    const unsigned short* ct = chars + (long)t * C;
    int run = C - 1;
    while (run > 0 && ct[run - 1] == ct[C - 1]) --run;
    const int windows = min(C - width + 1, run + 1);
    float best = -__int_as_float(0x7f800000);  // -inf
    for (int pos = 0; pos < windows; ++pos) {
        const float* x = emb + pos * E;
        float s = 0.0f;
        for (int p = 0; p < k; ++p) s = fmaf(x[p], wi[(long)p * nf + j], s);
        best = fmaxf(best, s);
    }
    // max(conv + b) == max(conv) + b: adding a constant is monotone.
    float v = best + bias[f];
    out[(long)t * F + f] = relu ? fmaxf(v, 0.0f) : tanhf(v);
}

// Adds a bias row to every row of x (n, w). (CPU: cpu::add_bias.)
__global__ void add_bias(float* __restrict__ x, const float* __restrict__ bias, int n, int w) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)n * w) return;
    x[i] += bias[i % w];
}

// Highway blend in place, both gates' epilogue fused:
//   g = sigmoid(carry + bc), t = relu(transform + bt), x = g t + (1 - g) x
// carry and transform are the two products x Wc, x Wt without bias.
// (CPU: add_bias + cpu::highway_blend.)
__global__ void highway(float* __restrict__ x, const float* __restrict__ carry,
                        const float* __restrict__ transform, const float* __restrict__ bc,
                        const float* __restrict__ bt, int n, int f) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)n * f) return;
    int j = i % f;
    float g = sigmoidf_(carry[i] + bc[j]);
    float t = fmaxf(transform[i] + bt[j], 0.0f);
    x[i] = g * t + (1.0f - g) * x[i];
}

// y[r] = x[idx[r]] for rows of width w: reversal within sentence lengths,
// the gather of a step's input rows, the scatter back to natural order.
// (CPU: reverse_segments in src/model/pass.rs.)
__global__ void gather_rows(const float* __restrict__ x, float* __restrict__ y,
                            const int* __restrict__ idx, int rows, int w) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)rows * w) return;
    long r = i / w;
    y[i] = x[(long)idx[r] * w + i % w];
}

// One LSTM step's cell for the first `na` sentences of the (length-sorted)
// batch, gates i, j, f, o in that order, forget bias +1.0 at run time:
//   z = zx[zx_base + r] + zh[r] + b
//   c = clip(sigmoid(z_f + 1) c + sigmoid(z_i) tanh(z_j)),  m = sigmoid(z_o) tanh(c)
// zx (rows, 4U): input-side products of a block of steps, this step's na
// rows from zx_base on; zh (na, 4U): this step's recurrent products;
// c (B, U) is updated in place; m (na, U) feeds the projection.
// (CPU: cpu::lstm_cell / lstm_cell_ref.)
__global__ void lstm_cell(const float* __restrict__ zx, int zx_base,
                          const float* __restrict__ zh, const float* __restrict__ bias,
                          float* __restrict__ c, float* __restrict__ m, int na, int u,
                          float cell_clip, int has_clip) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)na * u) return;
    int r = i / u, k = i % u;
    const float* zxr = zx + (long)(zx_base + r) * 4 * u;
    const float* zhr = zh + (long)r * 4 * u;
    float gi = zxr[k] + zhr[k] + bias[k];
    float gj = zxr[u + k] + zhr[u + k] + bias[u + k];
    float gf = zxr[2 * u + k] + zhr[2 * u + k] + bias[2 * u + k];
    float go = zxr[3 * u + k] + zhr[3 * u + k] + bias[3 * u + k];
    float cn = sigmoidf_(gf + 1.0f) * c[i] + sigmoidf_(gi) * tanhf(gj);
    if (has_clip) cn = fminf(fmaxf(cn, -cell_clip), cell_clip);
    c[i] = cn;
    m[i] = sigmoidf_(go) * tanhf(cn);
}

// The projection's epilogue for one step: h = clip(hp) becomes the state
// of sentence r and its output at row rows[r]; with the skip connection
// (layers >= 1) the output also adds the layer's input row.
//   hp (na, P) = m W_P;  h (B, P) state;  out, x (N, P)
// (CPU: the end of ElmoModel::lstm_group's step.)
__global__ void lstm_project_out(const float* __restrict__ hp, float* __restrict__ h,
                                 float* __restrict__ out, const float* __restrict__ x,
                                 const int* __restrict__ rows, int na, int p, float proj_clip,
                                 int has_clip, int residual) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)na * p) return;
    int r = i / p, k = i % p;
    float v = hp[i];
    if (has_clip) v = fminf(fmaxf(v, -proj_clip), proj_clip);
    h[i] = v;
    long o = (long)rows[r] * p + k;
    out[o] = residual ? v + x[o] : v;
}

}  // extern "C"
