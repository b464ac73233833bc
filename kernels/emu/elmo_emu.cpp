// kernels/elmo.cu compiled for the CPU (see cuda_emu.h), with one C entry
// point per kernel taking the launch shape and the buffers. Built and
// loaded by the Rust tests (src/cuda_emu.rs):
//
//   g++ -std=c++17 -O2 -shared -fPIC kernels/emu/elmo_emu.cpp -o libelmo_emu.so
//
// Each entry point returns 0, or 1 with a message in `err` when the launch
// shape breaks a CUDA limit. Faults (a read past a buffer, a write to an
// input, a barrier in divergent code) print the kernel's name and abort:
// on a GPU they are undefined behaviour, here they stop the test.

#include "cuda_emu.h"

#include "../elmo.cu"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <functional>
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

// The launch running on this OS thread, for messages.
thread_local const char* kernel = nullptr;

[[noreturn]] void fail(const char* what) {
    fprintf(stderr, "emulated CUDA kernel %s: %s\n", kernel ? kernel : "?", what);
    fflush(stderr);
    abort();
}

// ---- faults: a buffer's neighbouring page is inaccessible ----

struct sigaction previous_segv;
thread_local char alt_stack[1 << 16];

void on_segv(int sig, siginfo_t* info, void* ctx) {
    (void)ctx;
    if (kernel) {
        char msg[256];
        int n = snprintf(msg, sizeof msg,
                         "emulated CUDA kernel %s: access outside its buffers or a write to a const input "
                         "(address %p)\n",
                         kernel, info->si_addr);
        if (n > 0) {
            ssize_t r = write(2, msg, (size_t)n);
            (void)r;
        }
    }
    (void)sig;
    // Hand the fault to whoever handled it before (Rust's runtime); the
    // faulting instruction runs again under that handler.
    sigaction(SIGSEGV, &previous_segv, nullptr);
}

void install_handler() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_segv;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, &previous_segv);
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

// A copy of a caller's buffer whose last byte is followed by an
// inaccessible page (and whose first byte is preceded by one, a page
// rounding away); read-only unless the kernel writes to it.
struct Guarded {
    char* base = nullptr;
    size_t total = 0, span = 0, bytes = 0;
    void* data = nullptr;
    void* caller = nullptr;
    bool writable;

    Guarded(void* p, size_t n, bool w) : bytes(n), caller(p), writable(w) {
        const size_t pg = (size_t)sysconf(_SC_PAGESIZE);
        span = (n + pg - 1) / pg * pg;
        total = span + 2 * pg;
        void* m = mmap(nullptr, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) fail("mmap failed");
        base = (char*)m;
        if (span && mprotect(base + pg, span, PROT_READ | PROT_WRITE) != 0) fail("mprotect failed");
        data = base + pg + span - n;
        if (n) memcpy(data, p, n);
        if (span && !w && mprotect(base + pg, span, PROT_READ) != 0) fail("mprotect failed");
    }
    ~Guarded() {
        if (writable && bytes) memcpy(caller, data, bytes);
        munmap(base, total);
    }
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

void run_block_fibers(unsigned n, const std::function<void()>& f) {
    static thread_local std::vector<std::vector<char>> stacks;
    if (stacks.size() < n) stacks.resize(n, std::vector<char>(FIBER_STACK));
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
        // Those still running must all wait at the same barrier.
        int line = 0;
        for (unsigned i = 0; i < n; ++i) {
            if (at[i] <= 0) continue;
            if (line && at[i] != line) {
                char msg[160];
                snprintf(msg, sizeof msg, "threads of block (%u,%u,%u) wait at different __syncthreads (lines %d and %d)",
                         block_idx.x, block_idx.y, block_idx.z, line, at[i]);
                fail(msg);
            }
            line = at[i];
        }
        if (!line) break;
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

// A quiet NaN with a payload no arithmetic makes: fresh shared memory.
const uint32_t POISON = 0x7fc0dea1u;

// Runs `f` as every thread of the grid; with `barriers` (the kernels that
// use shared memory), the threads of a block as fibers that switch at
// __syncthreads.
int launch(const char* name, const EmuLaunch& l, bool barriers, char* err, size_t errlen,
           const std::function<void()>& f) {
    if (!check(l, err, errlen)) return 1;
    emu::install_handler();
    emu::kernel = name;
    emu::grid_dim = dim3{l.grid[0], l.grid[1], l.grid[2]};
    emu::block_dim = dim3{l.block[0], l.block[1], l.block[2]};
    const unsigned threads = l.block[0] * l.block[1] * l.block[2];
    for (unsigned z = 0; z < l.grid[2]; ++z)
        for (unsigned y = 0; y < l.grid[1]; ++y)
            for (unsigned x = 0; x < l.grid[0]; ++x) {
                emu::block_idx = dim3{x, y, z};
                if (barriers) {
                    // Shared memory starts as garbage on a GPU: a NaN here,
                    // so a read before the write, or past the launch's
                    // size, shows in the results; a write past the size
                    // is caught below.
                    for (unsigned i = 0; i < SMEM_BYTES / 4; ++i) memcpy(&emb[i], &POISON, 4);
                    emu::run_block_fibers(threads, f);
                    for (unsigned i = (l.smem + 3) / 4; i < SMEM_BYTES / 4; ++i)
                        if (memcmp(&emb[i], &POISON, 4) != 0) emu::fail("wrote past the launch's dynamic shared memory");
                } else {
                    for (unsigned i = 0; i < threads; ++i) {
                        emu::thread_idx = dim3{i % l.block[0], (i / l.block[0]) % l.block[1],
                                               i / (l.block[0] * l.block[1])};
                        f();
                    }
                }
            }
    emu::kernel = nullptr;
    return 0;
}

}  // namespace

#define IN(b) Guarded g_##b((b).p, (b).bytes, false)
#define OUT(b) Guarded g_##b((b).p, (b).bytes, true)
#define PTR(T, b) ((T*)g_##b.data)

extern "C" {

// Whether a launch shape is within CUDA's limits (0), else 1 and why.
int emu_check(const EmuLaunch* l, char* err, size_t errlen) { return check(*l, err, errlen) ? 0 : 1; }

int emu_char_cnn(const EmuLaunch* l, EmuBuf chars, EmuBuf table, EmuBuf w, EmuBuf bias, ConvTable convs, EmuBuf out,
                 int n, int C, int E, int n_chars, int relu, char* err, size_t errlen) {
    IN(chars);
    IN(table);
    IN(w);
    IN(bias);
    OUT(out);
    return launch("char_cnn", *l, true, err, errlen, [&] {
        char_cnn(PTR(const unsigned short, chars), PTR(const float, table), PTR(const float, w),
                 PTR(const float, bias), convs, PTR(float, out), n, C, E, n_chars, relu);
    });
}

int emu_add_bias(const EmuLaunch* l, EmuBuf x, EmuBuf bias, int n, int w, char* err, size_t errlen) {
    OUT(x);
    IN(bias);
    return launch("add_bias", *l, false, err, errlen,
                  [&] { add_bias(PTR(float, x), PTR(const float, bias), n, w); });
}

int emu_highway(const EmuLaunch* l, EmuBuf x, EmuBuf carry, EmuBuf transform, EmuBuf bc, EmuBuf bt, int n, int f,
                char* err, size_t errlen) {
    OUT(x);
    IN(carry);
    IN(transform);
    IN(bc);
    IN(bt);
    return launch("highway", *l, false, err, errlen, [&] {
        highway(PTR(float, x), PTR(const float, carry), PTR(const float, transform), PTR(const float, bc),
                PTR(const float, bt), n, f);
    });
}

int emu_gather_rows(const EmuLaunch* l, EmuBuf x, EmuBuf y, EmuBuf idx, int rows, int w, char* err, size_t errlen) {
    IN(x);
    OUT(y);
    IN(idx);
    return launch("gather_rows", *l, false, err, errlen,
                  [&] { gather_rows(PTR(const float, x), PTR(float, y), PTR(const int, idx), rows, w); });
}

int emu_lstm_cell(const EmuLaunch* l, EmuBuf zx, int zx_base, EmuBuf zh, EmuBuf bias, EmuBuf c, EmuBuf m, int na,
                  int u, float cell_clip, int has_clip, char* err, size_t errlen) {
    IN(zx);
    IN(zh);
    IN(bias);
    OUT(c);
    OUT(m);
    return launch("lstm_cell", *l, false, err, errlen, [&] {
        lstm_cell(PTR(const float, zx), zx_base, PTR(const float, zh), PTR(const float, bias), PTR(float, c),
                  PTR(float, m), na, u, cell_clip, has_clip);
    });
}

int emu_lstm_project_out(const EmuLaunch* l, EmuBuf hp, EmuBuf h, EmuBuf out, EmuBuf x, EmuBuf rows, int na, int p,
                         float proj_clip, int has_clip, int residual, char* err, size_t errlen) {
    IN(hp);
    OUT(h);
    OUT(out);
    IN(x);
    IN(rows);
    return launch("lstm_project_out", *l, false, err, errlen, [&] {
        lstm_project_out(PTR(const float, hp), PTR(float, h), PTR(float, out), PTR(const float, x),
                         PTR(const int, rows), na, p, proj_clip, has_clip, residual);
    });
}

}  // extern "C"
