// kernels/elmo.cu compiled for the CPU (see cuda_emu.h), with one C entry
// point per kernel taking the launch shape and the buffers. Built and
// loaded by the Rust tests (src/backend/cuda/emu.rs):
//
//   g++ -std=c++17 -O2 -shared -fPIC kernels/emu/elmo_emu.cpp -o libelmo_emu.so
//
// Each entry point returns 0, or 1 with a message in `err` when the launch
// shape breaks a CUDA limit. Faults (a read past a buffer, a write to an
// input, a barrier in divergent code) print the kernel's name and abort:
// on a GPU they are undefined behaviour, here they stop the test.

#include "cuda_emu.h"

#include "../elmo.cu"

#include <fenv.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#include <atomic>
#include <functional>
#include <initializer_list>
#include <mutex>
#include <vector>

// The kernels' dynamic shared memory (`extern __shared__ float emb[]` in
// char_cnn): 48 KiB, the most a block gets without opting in.
static const unsigned SMEM_BYTES = 48 << 10;
extern "C" {
thread_local float emb[SMEM_BYTES / 4];
}

namespace emu {

thread_local dim3 thread_idx, block_idx, block_dim, grid_dim;

namespace {

// The launch running on each OS thread, for messages. Not thread-local
// storage: the fault handler reads it, and a first access to this library's
// TLS can allocate. A fixed table of atomics: OS thread, kernel name.
struct Active {
    std::atomic<long> tid{0};
    std::atomic<const char*> name{nullptr};
};
Active active[64];

long this_tid() { return (long)syscall(SYS_gettid); }

// Marks this thread as running `name` (or no launch, for nullptr).
void set_active(const char* name) {
    const long me = this_tid();
    for (Active& a : active) {
        if (a.tid.load() == me) {
            if (name) {
                a.name.store(name);
            } else {
                a.name.store(nullptr);
                a.tid.store(0);
            }
            return;
        }
    }
    if (!name) return;
    for (Active& a : active) {
        long free = 0;
        if (a.tid.compare_exchange_strong(free, me)) {
            a.name.store(name);
            return;
        }
    }
    // More than 64 threads in launches: messages lose the name, nothing else.
}

const char* active_kernel() {
    const long me = this_tid();
    for (Active& a : active)
        if (a.tid.load() == me) return a.name.load();
    return nullptr;
}

[[noreturn]] void fail(const char* what) {
    const char* k = active_kernel();
    fprintf(stderr, "emulated CUDA kernel %s: %s\n", k ? k : "?", what);
    fflush(stderr);
    abort();
}

// ---- faults: a buffer's neighbouring page is inaccessible (SIGSEGV);
// arithmetic on poisoned shared memory traps (SIGFPE) ----

struct sigaction previous[2];  // SIGSEGV, SIGFPE
thread_local char alt_stack[1 << 16];

// Async-signal-safe output.
void put(const char* s) {
    ssize_t r = write(2, s, strlen(s));
    (void)r;
}

void put_hex(uintptr_t v) {
    char b[19] = "0x";
    for (int i = 0; i < 16; ++i) {
        const int d = (int)((v >> (60 - 4 * i)) & 15);
        b[2 + i] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
    }
    b[18] = 0;
    put(b);
}

void on_fault(int sig, siginfo_t* info, void* ctx) {
    (void)ctx;
    const bool fpe = sig == SIGFPE;
    if (const char* k = active_kernel()) {
        put("emulated CUDA kernel ");
        put(k);
        put(fpe ? ": arithmetic on shared memory it did not write (uninitialised or past the launch's size)"
                : ": access outside its buffers or a write to a const input");
        put(" (address ");
        put_hex((uintptr_t)info->si_addr);
        put(")\n");
    }
    // Hand the fault to whoever handled it before (Rust's runtime, or the
    // default action); the faulting instruction runs again under that.
    sigaction(sig, &previous[fpe], nullptr);
}

void install_handler() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_fault;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, &previous[0]);
        sigaction(SIGFPE, &sa, &previous[1]);
    });
    // Each thread's own stack for the handler: a fault may happen on a
    // fiber's small stack.
    static thread_local bool has_alt = false;
    if (!has_alt) {
        stack_t ss;
        memset(&ss, 0, sizeof ss);
        ss.ss_sp = alt_stack;
        ss.ss_size = sizeof alt_stack;
        sigaltstack(&ss, nullptr);
        has_alt = true;
    }
}

// A quiet NaN with a payload no arithmetic makes: an output element not
// yet written, or the slack before an output buffer.
const uint32_t CANARY = 0x7fc0dea1u;
// A signalling NaN: fresh shared memory (arithmetic on it traps while a
// launch with barriers runs).
const uint32_t POISON = 0x7fa0dea1u;

void fill(void* p, size_t bytes, uint32_t v) {
    for (size_t i = 0; i + 4 <= bytes; i += 4) memcpy((char*)p + i, &v, 4);
}

// The first 4-byte word of [p, p + bytes) still equal to v, or -1.
long find(const void* p, size_t bytes, uint32_t v) {
    for (size_t i = 0; i + 4 <= bytes; i += 4)
        if (memcmp((const char*)p + i, &v, 4) == 0) return (long)(i / 4);
    return -1;
}

// A copy of a caller's buffer whose last byte is followed by an
// inaccessible page; read-only unless the kernel writes to it. Before a
// written buffer, the rest of its first page holds canaries, checked after
// the launch (a write before the start). `must_write`: the first bytes the
// kernel overwrites whatever they held (each thread's output element):
// they start as canaries, and one left means a thread did not write.
struct Guarded {
    char* base = nullptr;
    size_t total = 0, span = 0, bytes = 0, pg = 0, must = 0;
    char* data = nullptr;
    void* caller = nullptr;
    bool writable;
    const char* name;

    Guarded(const char* nm, void* p, size_t n, bool w, size_t must_write = 0)
        : bytes(n), caller(p), writable(w), name(nm) {
        pg = (size_t)sysconf(_SC_PAGESIZE);
        span = (n + pg - 1) / pg * pg;
        total = span + 2 * pg;
        void* m = mmap(nullptr, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) fail("mmap failed");
        base = (char*)m;
        if (span && mprotect(base + pg, span, PROT_READ | PROT_WRITE) != 0) fail("mprotect failed");
        data = base + pg + span - n;
        if (n) memcpy(data, p, n);
        if (w) {
            fill(base + pg, (size_t)(data - (base + pg)), CANARY);
            must = must_write < n ? must_write : n;
            fill(data, must, CANARY);
        }
        if (span && !w && mprotect(base + pg, span, PROT_READ) != 0) fail("mprotect failed");
    }
    // After the launch: the checks, then the results back to the caller.
    void finish() {
        if (!writable) return;
        char msg[160];
        for (char* q = base + pg; q + 4 <= data; q += 4)
            if (memcmp(q, &CANARY, 4) != 0) {
                snprintf(msg, sizeof msg, "wrote before the start of its buffer %s", name);
                fail(msg);
            }
        const long missed = find(data, must, CANARY);
        if (missed >= 0) {
            snprintf(msg, sizeof msg, "left element %ld of its output %s unwritten", missed, name);
            fail(msg);
        }
        if (bytes) memcpy(caller, data, bytes);
    }
    ~Guarded() { munmap(base, total); }
    Guarded(const Guarded&) = delete;
    Guarded& operator=(const Guarded&) = delete;
};

// ---- threads of a block as fibers, for kernels with barriers ----

const size_t FIBER_STACK = 64 << 10;

thread_local bool fiber_mode = false;
thread_local ucontext_t scheduler;
thread_local std::vector<ucontext_t>* fibers;
thread_local std::vector<int>* waiting;  // per fiber: 0 running, > 0 at a barrier (its line), -1 done
thread_local int current = 0;
thread_local const std::function<void()>* body = nullptr;

void fiber_entry() {
    (*body)();
    (*waiting)[current] = -1;
    // uc_link returns to the scheduler.
}

// A fiber that starts at fiber_entry on `stack` and returns to the
// scheduler. (Its own function: getcontext returns twice in principle, and
// the caller's loop variables must not live across it.)
__attribute__((noinline)) void init_fiber(ucontext_t& c, char* stack) {
    if (getcontext(&c) != 0) fail("getcontext failed");
    c.uc_stack.ss_sp = stack;
    c.uc_stack.ss_size = FIBER_STACK;
    c.uc_link = &scheduler;
    makecontext(&c, fiber_entry, 0);
}

// A fiber's stack with an inaccessible page below it (stacks grow down):
// an overflow faults instead of running into a neighbour.
struct Stack {
    char* base;
    explicit Stack() {
        const size_t pg = (size_t)sysconf(_SC_PAGESIZE);
        void* m = mmap(nullptr, FIBER_STACK + pg, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) fail("mmap failed");
        base = (char*)m;
        if (mprotect(base + pg, FIBER_STACK, PROT_READ | PROT_WRITE) != 0) fail("mprotect failed");
    }
    char* data() const { return base + (size_t)sysconf(_SC_PAGESIZE); }
};

void run_block_fibers(unsigned n, const std::function<void()>& f) {
    // Kept for the thread's later launches (at most 1024, 64 KiB each).
    static thread_local std::vector<Stack> stacks;
    while (stacks.size() < n) stacks.emplace_back();
    std::vector<ucontext_t> cs(n);
    std::vector<int> at(n, 0);
    std::vector<dim3> tid(n);
    for (unsigned i = 0; i < n; ++i) {
        tid[i] = dim3{i % block_dim.x, (i / block_dim.x) % block_dim.y, i / (block_dim.x * block_dim.y)};
        init_fiber(cs[i], stacks[i].data());
    }
    fibers = &cs;
    waiting = &at;
    body = &f;
    fiber_mode = true;
    for (;;) {
        // Every thread runs until it ends or reaches a barrier.
        for (unsigned i = 0; i < n; ++i) {
            if (at[i] < 0) continue;
            current = (int)i;
            thread_idx = tid[i];
            at[i] = 0;
            if (swapcontext(&scheduler, &cs[i]) != 0) fail("swapcontext failed");
        }
        // Either every thread has ended, or every thread waits at the same
        // barrier: one that ended, or waits elsewhere, diverged (undefined
        // behaviour in CUDA).
        int line = 0;
        unsigned done = 0;
        for (unsigned i = 0; i < n; ++i) {
            if (at[i] < 0) {
                ++done;
                continue;
            }
            if (line && at[i] != line) {
                char msg[160];
                snprintf(msg, sizeof msg, "threads of block (%u,%u,%u) wait at different __syncthreads (lines %d and %d)",
                         block_idx.x, block_idx.y, block_idx.z, line, at[i]);
                fail(msg);
            }
            line = at[i];
        }
        if (!line) break;
        if (done) {
            char msg[160];
            snprintf(msg, sizeof msg, "%u of %u threads of block (%u,%u,%u) ended while others wait at __syncthreads (line %d)",
                     done, n, block_idx.x, block_idx.y, block_idx.z, line);
            fail(msg);
        }
    }
    fiber_mode = false;
}

}  // namespace

void syncthreads(int line) {
    if (!fiber_mode) fail("__syncthreads in a kernel launched without barriers: list it as one in elmo_emu.cpp");
    (*waiting)[current] = line;
    if (swapcontext(&(*fibers)[current], &scheduler) != 0) fail("swapcontext failed");
}

}  // namespace emu

using emu::Guarded;


extern "C" {

// The launch shape: grid and block as (x, y, z), dynamic shared bytes.
struct EmuLaunch {
    unsigned grid[3];
    unsigned block[3];
    unsigned smem;
};

// A caller's buffer: the kernel parameter is its first byte.
struct EmuBuf {
    void* p;
    size_t bytes;
};

}  // extern "C"

namespace {

// CUDA's limits on a launch shape (compute capability 8.x / 9.0).
bool check(const EmuLaunch& l, char* err, size_t errlen) {
    const unsigned long long threads = (unsigned long long)l.block[0] * l.block[1] * l.block[2];
    const char* why = nullptr;
    if (threads == 0 || threads > 1024)
        why = "threads per block must be 1..1024";
    else if (l.block[2] > 64)
        why = "block z must be at most 64";
    else if (l.grid[0] == 0 || l.grid[1] == 0 || l.grid[2] == 0)
        why = "a grid dimension is zero";
    else if (l.grid[0] > 0x7fffffffu || l.grid[1] > 65535 || l.grid[2] > 65535)
        why = "grid x must be at most 2^31 - 1, y and z at most 65535";
    else if (l.smem > SMEM_BYTES)
        why = "more than 48 KiB of dynamic shared memory";
    if (why) {
        snprintf(err, errlen, "grid (%u,%u,%u) block (%u,%u,%u) smem %u: %s", l.grid[0], l.grid[1], l.grid[2],
                 l.block[0], l.block[1], l.block[2], l.smem, why);
        return false;
    }
    return true;
}

// Runs `f` as every thread of the grid; with `barriers` (the kernels that
// use shared memory), the threads of a block as fibers that switch at
// __syncthreads.
int launch(const char* name, const EmuLaunch& l, bool barriers, char* err, size_t errlen,
           std::initializer_list<Guarded*> outputs, const std::function<void()>& f) {
    if (!check(l, err, errlen)) return 1;
    emu::install_handler();
    emu::set_active(name);
    emu::grid_dim = dim3{l.grid[0], l.grid[1], l.grid[2]};
    emu::block_dim = dim3{l.block[0], l.block[1], l.block[2]};
    const unsigned threads = l.block[0] * l.block[1] * l.block[2];
    // Arithmetic on the signalling NaNs of fresh shared memory traps. (Set
    // before the fibers are made: each context carries the FP state.)
    if (barriers) feenableexcept(FE_INVALID);
    for (unsigned z = 0; z < l.grid[2]; ++z)
        for (unsigned y = 0; y < l.grid[1]; ++y)
            for (unsigned x = 0; x < l.grid[0]; ++x) {
                emu::block_idx = dim3{x, y, z};
                if (barriers) {
                    // Shared memory starts as garbage on a GPU: signalling
                    // NaNs here, so arithmetic on an element read before it
                    // was written, or past the launch's size, traps; a
                    // write past the size is caught below.
                    emu::fill(emb, sizeof emb, emu::POISON);
                    emu::run_block_fibers(threads, f);
                    const size_t used = (l.smem + 3) / 4 * 4;
                    for (size_t i = used; i < sizeof emb; i += 4)
                        if (memcmp((char*)emb + i, &emu::POISON, 4) != 0)
                            emu::fail("wrote past the launch's dynamic shared memory");
                } else {
                    for (unsigned i = 0; i < threads; ++i) {
                        emu::thread_idx = dim3{i % l.block[0], (i / l.block[0]) % l.block[1],
                                               i / (l.block[0] * l.block[1])};
                        f();
                    }
                }
            }
    if (barriers) fedisableexcept(FE_INVALID);
    for (Guarded* g : outputs) g->finish();
    emu::set_active(nullptr);
    return 0;
}

}  // namespace

#define IN(b) Guarded g_##b(#b, (b).p, (b).bytes, false)
#define OUT(b) Guarded g_##b(#b, (b).p, (b).bytes, true)
// An output whose first `n` floats every correct launch overwrites.
#define OUT_ALL(b, n) Guarded g_##b(#b, (b).p, (b).bytes, true, (size_t)((n) > 0 ? (n) : 0) * 4)
#define PTR(T, b) ((T*)g_##b.data)

extern "C" {

// Whether a launch shape is within CUDA's limits (0), else 1 and why.
int emu_check(const EmuLaunch* l, char* err, size_t errlen) { return check(*l, err, errlen) ? 0 : 1; }

// Core dumps off for this process: the tests' child that faults on purpose
// leaves none behind.
void emu_no_core_dumps(void) {
    struct rlimit r = {0, 0};
    setrlimit(RLIMIT_CORE, &r);
}

int emu_char_cnn(const EmuLaunch* l, EmuBuf chars, EmuBuf table, EmuBuf w, EmuBuf bias, ConvTable convs, EmuBuf out,
                 int n, int C, int E, int n_chars, int relu, char* err, size_t errlen) {
    IN(chars);
    IN(table);
    IN(w);
    IN(bias);
    OUT_ALL(out, (long)n * convs.first[convs.n]);
    return launch("char_cnn", *l, true, err, errlen, {&g_out}, [&] {
        char_cnn(PTR(const unsigned short, chars), PTR(const float, table), PTR(const float, w),
                 PTR(const float, bias), convs, PTR(float, out), n, C, E, n_chars, relu);
    });
}

int emu_add_bias(const EmuLaunch* l, EmuBuf x, EmuBuf bias, int n, int w, char* err, size_t errlen) {
    OUT(x);
    IN(bias);
    return launch("add_bias", *l, false, err, errlen, {&g_x},
                  [&] { add_bias(PTR(float, x), PTR(const float, bias), n, w); });
}

int emu_highway(const EmuLaunch* l, EmuBuf x, EmuBuf carry, EmuBuf transform, EmuBuf bc, EmuBuf bt, int n, int f,
                char* err, size_t errlen) {
    OUT(x);
    IN(carry);
    IN(transform);
    IN(bc);
    IN(bt);
    return launch("highway", *l, false, err, errlen, {&g_x}, [&] {
        highway(PTR(float, x), PTR(const float, carry), PTR(const float, transform), PTR(const float, bc),
                PTR(const float, bt), n, f);
    });
}

int emu_gather_rows(const EmuLaunch* l, EmuBuf x, EmuBuf y, EmuBuf idx, int rows, int w, char* err, size_t errlen) {
    IN(x);
    OUT_ALL(y, (long)rows * w);
    IN(idx);
    return launch("gather_rows", *l, false, err, errlen, {&g_y},
                  [&] { gather_rows(PTR(const float, x), PTR(float, y), PTR(const int, idx), rows, w); });
}

int emu_lstm_cell(const EmuLaunch* l, EmuBuf zx, int zx_base, EmuBuf zh, EmuBuf bias, EmuBuf c, EmuBuf m, int na,
                  int u, float cell_clip, int has_clip, char* err, size_t errlen) {
    IN(zx);
    IN(zh);
    IN(bias);
    OUT(c);
    OUT_ALL(m, (long)na * u);
    return launch("lstm_cell", *l, false, err, errlen, {&g_c, &g_m}, [&] {
        lstm_cell(PTR(const float, zx), zx_base, PTR(const float, zh), PTR(const float, bias), PTR(float, c),
                  PTR(float, m), na, u, cell_clip, has_clip);
    });
}

int emu_lstm_project_out(const EmuLaunch* l, EmuBuf hp, EmuBuf h, EmuBuf out, EmuBuf x, EmuBuf rows, int na, int p,
                         float proj_clip, int has_clip, int residual, char* err, size_t errlen) {
    IN(hp);
    OUT_ALL(h, (long)na * p);
    OUT(out);
    IN(x);
    IN(rows);
    return launch("lstm_project_out", *l, false, err, errlen, {&g_h, &g_out}, [&] {
        lstm_project_out(PTR(const float, hp), PTR(float, h), PTR(float, out), PTR(const float, x),
                         PTR(const int, rows), na, p, proj_clip, has_clip, residual);
    });
}

}  // extern "C"

// ---- the emulator's own checks, each on a deliberately wrong kernel ----
//
// emu_selftest(case) runs one; each must stop the process with its
// message (src/backend/cuda/emu.rs runs them in child processes). Returns only if
// the emulator missed the bug.

extern "C" {

// Reads one element past x (n values).
__global__ void bad_read_past(const float* x, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i + 1];
}

// Thread 0 reads shared memory no thread wrote.
__global__ void bad_uninitialised_shared(float* y) {
    extern __shared__ float emb[];
    if (threadIdx.x > 0) emb[threadIdx.x] = 1.0f;
    __syncthreads();
    y[threadIdx.x] = emb[threadIdx.x] * 2.0f;
}

// Thread 0 leaves before the barrier the others wait at.
__global__ void bad_divergent_barrier(float* y) {
    extern __shared__ float emb[];
    if (threadIdx.x == 0) return;
    emb[threadIdx.x] = 1.0f;
    __syncthreads();
    y[threadIdx.x] = emb[threadIdx.x];
}

// Leaves the last output element unwritten.
__global__ void bad_missed_write(float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n - 1) y[i] = 1.0f;
}

// Writes one element before y.
__global__ void bad_write_before(float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i - 1] = 1.0f;
}

// Writes past the launch's dynamic shared memory (blockDim floats).
__global__ void bad_shared_past(float* y) {
    extern __shared__ float emb[];
    emb[blockDim.x + threadIdx.x] = 1.0f;
    __syncthreads();
    y[threadIdx.x] = 0.0f;
}

int emu_selftest(int which, char* err, size_t errlen) {
    const int n = 100;
    float xs[n], ys[n];
    for (int i = 0; i < n; ++i) xs[i] = ys[i] = 0.5f;
    EmuBuf x = {xs, sizeof xs}, y = {ys, sizeof ys};
    const EmuLaunch one = {{1, 1, 1}, {(unsigned)n, 1, 1}, 0};
    const EmuLaunch shared = {{1, 1, 1}, {(unsigned)n, 1, 1}, (unsigned)(n * 4)};
    IN(x);
    OUT_ALL(y, n);
    float* yp = PTR(float, y);
    switch (which) {
        case 0:
            return launch("bad_read_past", one, false, err, errlen, {&g_y},
                          [&] { bad_read_past(PTR(const float, x), yp, n); });
        case 1:
            return launch("bad_uninitialised_shared", shared, true, err, errlen, {&g_y},
                          [&] { bad_uninitialised_shared(yp); });
        case 2:
            return launch("bad_divergent_barrier", shared, true, err, errlen, {&g_y},
                          [&] { bad_divergent_barrier(yp); });
        case 3:
            return launch("bad_missed_write", one, false, err, errlen, {&g_y}, [&] { bad_missed_write(yp, n); });
        case 4:
            return launch("bad_write_before", one, false, err, errlen, {&g_y}, [&] { bad_write_before(yp, n); });
        case 5:
            return launch("bad_shared_past", shared, true, err, errlen, {&g_y}, [&] { bad_shared_past(yp); });
        default:
            snprintf(err, errlen, "no self-test %d", which);
            return 1;
    }
}

}  // extern "C"
