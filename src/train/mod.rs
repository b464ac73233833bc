//! Training in the style of Keras: a plain reverse-mode autodiff
//! ([`autograd`]), layers ([`nn`]), optimizers ([`optim`]), `Sequential`
//! ([`sequential`], re-exported here) and the sentiment data of the examples
//! ([`data`], with Keras' `imdb.npz` pickles read by [`pickle`]).

pub mod autograd;
pub mod data;
pub mod nn;
pub mod optim;
pub mod pickle;
pub mod sequential;

pub use sequential::*;
