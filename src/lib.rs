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
//!
//! Cargo features: `server` (on by default) adds the HTTP embedding server
//! (`elmo serve`, [`serve::http`]: tokio, axum, tracing); without it the
//! crate has no async stack, and the cross-request [`serve::Batcher`] is
//! there either way. `cuda` adds the CUDA backend.

// One folder per concept; leaves (error, options, tensor, rng) at the top.
pub mod backend;
pub mod chars;
pub mod corpus;
pub mod error;
pub mod io;
pub mod layer;
pub mod layout;
pub mod lexicon;
pub mod model;
pub mod options;
pub mod rng;
pub mod serve;
pub mod tensor;
pub mod train;

// The paths of the flat layout this crate had, kept for its users.
pub use backend::{cpu, cuda};
pub use io::{convert, input, model_file, npz, tfckpt};
pub use layer::mix;
pub use train::{autograd, data, nn, optim, pickle};

pub use chars::{CharIds, encode_batch};
pub use cuda::Device;
pub use error::{Error, Result};
pub use model::{BiLmOutput, ElmoModel, Intermediates, LstmState};
pub use options::Options;
pub use tensor::Tensor;
