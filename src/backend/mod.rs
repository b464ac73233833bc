//! Where the forward pass runs: [`cpu`] (the kernels the CPU path calls,
//! each with its scalar reference) and [`cuda`] (the GPU backend, with the
//! kernel emulator and the lane checker that test its pass on the host).
//! Without the `cuda` feature the CUDA types still exist and return
//! [`crate::Error::CudaNotCompiled`].

pub mod cpu;
pub mod cuda;
