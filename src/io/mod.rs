//! Files in and out: the memory-mapped model file ([`model_file`]),
//! bilm-tf's HDF5 weights ([`convert`]), TensorFlow checkpoints
//! ([`tfckpt`]), `.npy`/`.npz` ([`npz`]) and the CLI's input files ([`input`]).

pub mod convert;
pub mod input;
pub mod model_file;
pub mod npz;
pub mod tfckpt;
