//! The one error type of the crate.
//!
//! Every fallible public function returns [`Result<T>`]; nothing reachable from
//! input data panics. Messages name the file and, where there is one, the
//! tensor or dataset at fault, so a one-line CLI report is enough to act on.

use std::path::PathBuf;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file being read or written.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The options (`options.json`) are malformed or describe an unsupported model.
    #[error("options: {0}")]
    Options(String),
    /// A weight file (HDF5, safetensors) is malformed, truncated or does not
    /// match the options. `tensor` names the culprit when there is one.
    #[error("{path}: {}{msg}", tensor.as_ref().map(|t| format!("tensor '{t}': ")).unwrap_or_default())]
    Weights {
        /// The file at fault.
        path: PathBuf,
        /// The tensor or dataset at fault, if any.
        tensor: Option<String>,
        /// What is wrong.
        msg: String,
    },
    /// A PyTorch state dict (`torch.save`, zip or legacy serialisation) is
    /// malformed, truncated, not float32, or names code to run (refused).
    /// `msg` names the tensor when there is one (`tensor 'x': ...`) and the
    /// byte offset for pickle errors.
    #[error("{path}: {msg}")]
    Torch {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// Input data (sentences, token ids, input files) is invalid.
    #[error("input: {0}")]
    Input(String),
    /// Shapes of tensors given to an operation do not agree.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A stateful batch is larger than the state's capacity, or the state was
    /// made for another model.
    #[error("state: {0}")]
    State(String),
    /// A `.npy` / `.npz` file is malformed or holds an unsupported dtype.
    #[error("npz: {0}")]
    Npz(String),
    /// An HDF5 output file (`elmo`'s allennlp-compatible embeddings file)
    /// cannot be completed: the datasets described to the writer are
    /// inconsistent (keys out of order or missing, data outside the file),
    /// or the JSON it must hold is too long, short or not UTF-8. The message
    /// names the file. I/O failures on the file itself are [`Error::Io`].
    #[error("hdf5 output: {0}")]
    Hdf5Write(String),
    /// An interrupted corpus run cannot be continued: its partial output was
    /// made with another model, input or settings, or is damaged. The
    /// message names the difference.
    #[error("resume: {0}")]
    Resume(String),
    /// `ELMO_SIMD` names a SIMD level that is unknown or that this CPU
    /// cannot run (the message lists the levels it can).
    #[error("simd: {0}")]
    Simd(String),
    /// The batcher's queue is full: the request was not queued. A server
    /// answers 429 with `Retry-After`; a caller may retry later.
    #[error("overloaded: {queued} requests queued, the queue holds {capacity}")]
    Overloaded {
        /// Requests waiting when this one arrived.
        queued: usize,
        /// The queue's capacity (`BatcherConfig::queue_capacity`).
        capacity: usize,
    },
    /// The batcher is shutting down (or its worker is gone) and takes no
    /// new requests; those already queued are still answered.
    #[error("the batcher is shut down")]
    ShutDown,
    /// The HTTP server cannot start or run: the address cannot be bound,
    /// the runtime cannot be built, the settings are invalid.
    #[error("serve: {0}")]
    Serve(String),
    /// A CUDA device was asked for, but this build has no CUDA backend
    /// (build with `--features cuda`).
    #[error("cuda: this build of elmo has no CUDA backend (rebuild with `--features cuda`)")]
    CudaNotCompiled,
    /// CUDA cannot be used here: no driver library, no such device, a
    /// driver too old for the kernels, a device too small for the model.
    /// The message names the device and what is needed.
    #[error("cuda: {0}")]
    CudaUnavailable(String),
    /// A CUDA call failed while running (the message names the device and
    /// the call).
    #[error("cuda: {0}")]
    Cuda(String),
}

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A weight-file error about the file as a whole.
    pub fn weights(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Weights {
            path: path.into(),
            tensor: None,
            msg: msg.into(),
        }
    }

    /// A weight-file error about one tensor.
    pub fn tensor(path: impl Into<PathBuf>, tensor: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Weights {
            path: path.into(),
            tensor: Some(tensor.into()),
            msg: msg.into(),
        }
    }
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
