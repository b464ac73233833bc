"""Type stubs of the Rust extension (python/src/lib.rs)."""

import os
import pathlib
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union, overload

import numpy as np
import numpy.typing as npt

__version__: str

_Path = Union[str, "os.PathLike[str]"]
_Weights = Union[Sequence[float], npt.NDArray[np.floating[Any]]]

class ElmoError(ValueError):
    """Every error of the engine, with the library's message."""

class Vocab:
    """An idx2word table (int id >= 1 -> word), built once per layer."""

    def __init__(self, idx2word: Dict[int, str], unk_token: str = "<UNK>", out_of_range_unk: bool = False) -> None: ...
    def __len__(self) -> int: ...
    @property
    def max_id(self) -> int: ...

class Model:
    """A loaded ELMo biLM, shared by every thread that uses it.

    >>> m = Model()                                   # the bundled tiny model
    >>> m.embed([["The", "first", "sentence", "."], ["Second"]]).shape
    (2, 3, 4, 32)
    """

    def __init__(self, path: Optional[_Path] = None, device: str = "cpu", threads: Optional[int] = None) -> None: ...
    @property
    def path(self) -> Optional[pathlib.Path]: ...
    @property
    def device(self) -> str: ...
    @property
    def threads(self) -> Optional[int]: ...
    @property
    def projection_dim(self) -> int: ...
    @property
    def n_layers(self) -> int: ...
    @property
    def max_characters_per_token(self) -> int: ...
    @property
    def default_mix(self) -> Tuple[npt.NDArray[np.float32], float]: ...
    @property
    def options(self) -> Dict[str, Any]: ...
    @property
    def _weights_id(self) -> int: ...
    @overload
    def embed(
        self,
        sentences: Sequence[Sequence[str]],
        output: str = "all",
        *,
        mix_weights: Optional[_Weights] = None,
        gamma: Optional[float] = None,
        layer_norm: bool = False,
        top_only: bool = False,
        return_lengths: Literal[False] = False,
    ) -> npt.NDArray[np.float32]: ...
    @overload
    def embed(
        self,
        sentences: Sequence[Sequence[str]],
        output: str = "all",
        *,
        mix_weights: Optional[_Weights] = None,
        gamma: Optional[float] = None,
        layer_norm: bool = False,
        top_only: bool = False,
        return_lengths: Literal[True],
    ) -> Tuple[npt.NDArray[np.float32], npt.NDArray[np.int32]]: ...
    @overload
    def embed(
        self,
        sentences: Sequence[Sequence[str]],
        output: str = "all",
        *,
        mix_weights: Optional[_Weights] = None,
        gamma: Optional[float] = None,
        layer_norm: bool = False,
        top_only: bool = False,
        return_lengths: bool,
    ) -> Union[npt.NDArray[np.float32], Tuple[npt.NDArray[np.float32], npt.NDArray[np.int32]]]: ...
    def __reduce__(self) -> Tuple[type, Tuple[Optional[pathlib.Path], str, Optional[int]]]: ...
    def _layers_for_ids(self, ids: npt.NDArray[np.int64], vocab: Vocab) -> npt.NDArray[np.float32]: ...
    def _layers_for_char_ids(self, char_ids: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]: ...

def convert(
    out: _Path,
    *,
    options: Optional[_Path] = None,
    hdf5: Optional[_Path] = None,
    tf_checkpoint: Optional[_Path] = None,
    preset: Optional[str] = None,
    elmoformanylangs: Optional[_Path] = None,
    dtype: str = "f32",
) -> pathlib.Path: ...
def devices() -> List[str]:
    """The CPU (threads, SIMD level, the levels this CPU has) and the CUDA
    devices, one line each, as `elmo devices`; raises `ElmoError` when
    `ELMO_SIMD` names a level this CPU or build cannot run."""
    ...
