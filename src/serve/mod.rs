//! Serving: the cross-request [`Batcher`] (always built; threads and a
//! condition variable, no async runtime) and, with the `server` feature,
//! the HTTP server of `elmo serve` ([`http`]).
//!
//! ```no_run
//! use elmo::serve::{Batcher, BatcherConfig};
//! use std::sync::Arc;
//! let model = Arc::new(elmo::ElmoModel::load("weights/bilm-tf-test.safetensors".as_ref())?);
//! let batcher = Arc::new(Batcher::new(model, BatcherConfig::default())?);
//! // From any number of threads: each gets what `model.embed` gives its request alone.
//! let out = batcher.embed(vec![vec!["Hello".to_string(), "world".to_string()]])?;
//! assert_eq!(out.lengths, vec![2]);
//! # Ok::<(), elmo::Error>(())
//! ```

pub mod batcher;
#[cfg(feature = "server")]
pub mod http;

pub use batcher::{Batcher, BatcherConfig, BatcherStats, Embedded, Histogram, Ticket};
