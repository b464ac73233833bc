//! ELMo (Peters et al. 2018) in Rust: bilm-tf's biLM, computed to within
//! float32 rounding of TensorFlow, from a memory-mapped converted weight file.
//!
//! ```no_run
//! use elmo::ElmoModel;
//! let model = ElmoModel::load("weights/bilm-tf-test.safetensors".as_ref())?;
//! let out = model.embed(&[vec!["The", "first", "sentence", "."], vec!["Second"]])?;
//! assert_eq!(out.data.len(), 2 * 3 * 4 * out.dim); // (B, L + 1, T, 2P)
//! # Ok::<(), elmo::Error>(())
//! ```

pub mod autograd;
pub mod chars;
pub mod convert;
pub mod cpu;
pub mod cuda;
#[cfg(test)]
mod cuda_emu;
pub mod data;
pub mod error;
pub mod input;
#[cfg(test)]
mod lane_check;
pub mod layer;
pub mod mix;
pub mod model;
pub mod model_file;
pub mod nn;
pub mod npz;
pub mod optim;
pub mod options;
pub mod pickle;
pub mod rng;
pub mod tensor;
pub mod tfckpt;
pub mod train;

pub use chars::{CharIds, encode_batch};
pub use cuda::Device;
pub use error::{Error, Result};
pub use model::{BiLmOutput, ElmoModel, Intermediates, LstmState};
pub use options::Options;
pub use tensor::Tensor;
