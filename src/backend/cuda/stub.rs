//! The CUDA backend without the `cuda` feature: the types exist and say so.

use super::*;
use crate::io::model_file::ModelFile;

/// The model's weights on a CUDA device. This build has no CUDA
/// backend: every constructor returns [`Error::CudaNotCompiled`].
#[derive(Debug)]
pub struct GpuModel {
    _private: (),
}

impl GpuModel {
    /// Uploads the model to CUDA device `ordinal` (this build: always
    /// [`Error::CudaNotCompiled`]).
    pub fn new(_file: &ModelFile, _ordinal: usize) -> Result<Self> {
        Err(Error::CudaNotCompiled)
    }

    /// The device's ordinal.
    pub fn ordinal(&self) -> usize {
        0
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        ""
    }

    pub(crate) fn run(&self, _: &[u16], _: &[(usize, usize)], _: [Init<'_>; 2], _: (bool, bool)) -> Result<GpuOut> {
        Err(Error::CudaNotCompiled)
    }

    /// Each kernel's max abs difference from its host reference and
    /// whether it is within tolerance (this build:
    /// [`Error::CudaNotCompiled`]).
    pub fn kernel_maxdiffs(&self) -> Result<Vec<(String, f32, bool)>> {
        Err(Error::CudaNotCompiled)
    }
}

pub fn devices() -> Result<Vec<String>> {
    Err(Error::CudaNotCompiled)
}
