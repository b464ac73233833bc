// Just enough of CUDA C to run kernels/elmo.cu on a CPU: the tests' way of
// checking the kernels' source (index arithmetic, bounds, the launch shapes
// src/backend/cuda/mod.rs computes, barriers) on machines without a GPU. Not a model of
// the hardware: one OS thread runs every CUDA thread of a launch, block
// after block, so it checks what a kernel computes, not how fast.
//
// What it checks beyond the arithmetic (see elmo_emu.cpp), each stopping
// the test with the kernel's name:
//   - every buffer is copied next to an inaccessible page, read-only where
//     the kernel takes it `const`: a read past the end, or a write to an
//     input, faults; canaries before a written buffer catch a write before
//     its start, and an output every thread must write starts as canaries,
//     so an element left unwritten shows;
//   - launch shapes within CUDA's limits (1024 threads per block, grid x up
//     to 2^31 - 1, y/z up to 65535, 48 KiB of dynamic shared memory without
//     opting in);
//   - __syncthreads: threads of a block run as fibers (ucontext, each stack
//     above a guard page) that switch at each barrier; either all threads
//     end or all wait at the same barrier (a barrier some threads skip, or
//     wait at elsewhere, is undefined behaviour in CUDA);
//   - shared memory starts as signalling NaNs with FE_INVALID trapping, so
//     arithmetic on an element no thread wrote (or past the launch's size)
//     faults; a write past the launch's size is caught after the block.
//
// emu_selftest runs deliberately wrong kernels, one per check, which the
// tests expect to be caught.
#pragma once

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define __global__
#define __device__
#define __forceinline__ inline
// Shared memory is per block; blocks run one after another on one OS thread
// per launch, so thread-local storage is per block in effect (and parallel
// tests, each on its own OS thread, do not share it).
#define __shared__ thread_local

struct dim3 {
    unsigned x, y, z;
};

namespace emu {
extern thread_local dim3 thread_idx, block_idx, block_dim, grid_dim;
void syncthreads(int line);
}  // namespace emu

#define threadIdx (emu::thread_idx)
#define blockIdx (emu::block_idx)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)
#define __syncthreads() emu::syncthreads(__LINE__)

// CUDA's device-side integer min.
static inline int min(int a, int b) { return a < b ? a : b; }

static inline float __int_as_float(int i) {
    float f;
    memcpy(&f, &i, sizeof f);
    return f;
}
