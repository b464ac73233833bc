"""``Elmo``: a PyTorch module in the shape of allennlp's ``Elmo`` (allennlp
is archived), on the Rust engine.

The biLM is a constant computed by the engine; each output representation
has its own trainable scalar mix (``nn.Parameter`` s, as allennlp's
``ScalarMix``), so an optimizer trains the mixes and gradients flow into the
rest of the model.

Example::

    from elmo.torch import Elmo
    elmo = Elmo(None, num_output_representations=2, dropout=0.5)
    out = elmo([["The", "cat", "."], ["Hi"]])
    out["elmo_representations"][0].shape   # (2, 3, 2P)
    out["mask"]                            # (2, 3) bool
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ._common import ModelLike, as_ids, resolve_model
from ._elmo import ElmoError

__all__ = ["Elmo", "ScalarMix"]


class ScalarMix(nn.Module):
    """``gamma * sum_k softmax(w)_k * layer_k``, optionally on layer-normalised
    layers (one mean and variance over the real positions, as allennlp and
    bilm-tf do). ``w`` is a list of K scalar parameters, as allennlp's."""

    def __init__(
        self,
        mixture_size: int,
        do_layer_norm: bool = False,
        initial_scalar_parameters: Optional[Sequence[float]] = None,
        trainable: bool = True,
    ) -> None:
        super().__init__()
        init = [0.0] * mixture_size if initial_scalar_parameters is None else list(initial_scalar_parameters)
        if len(init) != mixture_size:
            raise ElmoError(f"{len(init)} initial scalar parameters for a mixture of {mixture_size} layers")
        self.mixture_size = mixture_size
        self.do_layer_norm = do_layer_norm
        self.scalar_parameters = nn.ParameterList(
            [nn.Parameter(torch.tensor([float(v)]), requires_grad=trainable) for v in init]
        )
        self.gamma = nn.Parameter(torch.tensor([1.0]), requires_grad=trainable)

    def forward(
        self,
        layers: Union[torch.Tensor, Sequence[torch.Tensor]],
        mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """layers (B, K, T, D), or allennlp's list of K (B, T, D) tensors;
        mask (B, T) -> (B, T, D), zero at padding. Without a mask (as
        allennlp allows without layer norm) every position is real.
        Computed in the parameters' dtype (``.double()``, ``.half()``)."""
        if isinstance(layers, (list, tuple)):
            if len(layers) != self.mixture_size:
                raise ElmoError(f"{len(layers)} tensors for a mixture of {self.mixture_size} layers")
            layers = torch.stack(list(layers), dim=1)
        w = torch.softmax(torch.cat(list(self.scalar_parameters)), dim=0)  # (K,)
        layers = layers.to(w.dtype)
        if mask is None:
            if self.do_layer_norm:
                raise ElmoError("do_layer_norm needs the mask of real positions")
            mask = torch.ones(layers.shape[0], layers.shape[2], dtype=torch.bool, device=layers.device)
        m = mask.to(layers.dtype)
        if self.do_layer_norm:
            mm = m[:, :, None]
            n = torch.clamp(m.sum() * layers.shape[-1], min=1.0)
            xs = []
            for k in range(self.mixture_size):
                x = layers[:, k]
                mean = (x * mm).sum() / n
                var = (((x * mm - mean) * mm) ** 2).sum() / n
                xs.append((x - mean) / torch.sqrt(var + 1e-12))
            layers = torch.stack(xs, dim=1)
        mixed = torch.einsum("k,bktd->btd", w, layers)
        return self.gamma * mixed * m[:, :, None]


class Elmo(nn.Module):
    """allennlp's ``Elmo``: ``num_output_representations`` scalar mixes of
    the biLM layers.

    Args:
        model: a model file path, an :class:`elmo.Model`, or None (the bundled
            tiny model).
        num_output_representations: how many independent mixes.
        do_layer_norm: normalise each layer before mixing.
        dropout: dropout on each representation (allennlp's default is 0.5;
            here 0.0).
        requires_grad: unused (the biLM is always frozen); kept for allennlp's
            signature.
        scalar_mix_parameters: fixed (non-trainable) initial mix weights, as
            allennlp's argument of that name.

    ``forward(inputs)`` takes a list of token lists, or allennlp-style
    character ids (B, T, C) from ``batch_to_ids``, and returns
    ``{"elmo_representations": [(B, T, 2P)] * n, "mask": (B, T) bool}``.
    """

    def __init__(
        self,
        model: ModelLike = None,
        num_output_representations: int = 1,
        do_layer_norm: bool = False,
        dropout: float = 0.0,
        requires_grad: bool = False,
        scalar_mix_parameters: Optional[Sequence[float]] = None,
    ) -> None:
        super().__init__()
        self.elmo_model = resolve_model(model)
        if num_output_representations < 1:
            raise ElmoError("num_output_representations must be at least 1")
        k = self.elmo_model.n_layers
        self._dropout = nn.Dropout(p=dropout)
        self._n = num_output_representations
        # Named as allennlp names them, so state dicts line up.
        for i in range(num_output_representations):
            mix = ScalarMix(
                k,
                do_layer_norm=do_layer_norm,
                initial_scalar_parameters=scalar_mix_parameters,
                trainable=scalar_mix_parameters is None,
            )
            self.add_module(f"scalar_mix_{i}", mix)

    @property
    def scalar_mixes(self) -> List[ScalarMix]:
        """The mixes, one per output representation."""
        return [getattr(self, f"scalar_mix_{i}") for i in range(self._n)]

    def get_output_dim(self) -> int:
        """2P, the size of each representation's vectors."""
        return 2 * self.elmo_model.projection_dim

    def layers(self, inputs: Union[Sequence[Sequence[str]], torch.Tensor, np.ndarray]) -> torch.Tensor:
        """Every biLM layer, (B, K, T, 2P), zero at padding (no mix)."""
        if isinstance(inputs, (torch.Tensor, np.ndarray)):
            a = inputs.detach().cpu().numpy() if isinstance(inputs, torch.Tensor) else inputs
            host = self.elmo_model._layers_for_char_ids(as_ids(a, ndim=3, what="character ids"))
        else:
            host = self.elmo_model.embed(inputs, "all")
        return torch.from_numpy(host)

    def forward(self, inputs: Union[Sequence[Sequence[str]], torch.Tensor, np.ndarray]) -> Dict[str, Any]:
        device = self.scalar_mixes[0].gamma.device
        layers = self.layers(inputs).to(device)  # (B, K, T, 2P)
        # (B, T) real positions: from the inputs, not from the vectors.
        if isinstance(inputs, (torch.Tensor, np.ndarray)):
            a = inputs.detach().cpu().numpy() if isinstance(inputs, torch.Tensor) else np.asarray(inputs)
            mask = torch.from_numpy((a > 0).any(axis=-1))
        else:
            lengths = torch.tensor([len(s) for s in inputs], dtype=torch.long)
            mask = torch.arange(layers.shape[2])[None, :] < lengths[:, None]
        mask = mask.to(device)
        reps: List[torch.Tensor] = [self._dropout(mix(layers, mask)) for mix in self.scalar_mixes]
        return {"elmo_representations": reps, "mask": mask}


def batch_to_ids(batch: Sequence[Sequence[str]], max_characters_per_token: int = 50) -> torch.Tensor:
    """allennlp's ``batch_to_ids``: (B, T, C) character ids, +1 shifted,
    without sentence boundaries, zero for padded tokens."""
    t = max((len(s) for s in batch), default=0)
    out = np.zeros((len(batch), t, max_characters_per_token), dtype=np.int64)
    c = max_characters_per_token
    for b, sent in enumerate(batch):
        for j, tok in enumerate(sent):
            if not isinstance(tok, str):
                raise ElmoError(f"input: sentence {b}, token {j}: expected a str, got {type(tok).__name__}")
            row = np.full(c, 261, dtype=np.int64)
            row[0] = 259
            if tok in ("<S>", "</S>"):
                body = [257 if tok == "<S>" else 258]
            else:
                body = [x + 1 for x in tok.encode("utf-8")[: c - 2]]
            row[1 : 1 + len(body)] = body
            row[1 + len(body)] = 260
            out[b, j] = row
    return torch.from_numpy(out)


__all__.append("batch_to_ids")
