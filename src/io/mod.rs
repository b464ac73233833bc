//! Files in and out: the memory-mapped model file ([`model_file`]),
//! bilm-tf's HDF5 weights ([`convert`]), ELMoForManyLangs folders ([`efml`]),
//! PyTorch state dicts ([`torch`]: ELMoForManyLangs' weights, read without
//! running the pickles), TensorFlow checkpoints ([`tfckpt`]),
//! `.npy`/`.npz` ([`npz`]), the CLI's input files ([`input`])
//! and the HDF5 layout of allennlp's `elmo` command ([`hdf5_out`]: one
//! dataset per sentence and `sentence_to_index`, written without libhdf5,
//! metadata at the end so that a long run can resume).

pub mod convert;
pub mod efml;
pub mod hdf5_out;
pub mod input;
pub mod model_file;
pub mod npz;
pub mod tfckpt;
pub mod torch;
mod zip_entry;
