"""elmo.torch.Elmo: allennlp's module shape on the engine, against the
goldens and TF's mix gradients; token lists and character ids."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import elmo  # noqa: E402
from conftest import VARIANTS, assert_close, golden_batches, record  # noqa: E402
from elmo.torch import Elmo, batch_to_ids  # noqa: E402


@pytest.mark.parametrize("gset", ["tiny", "small"])
def test_representations_and_gradients_match_tensorflow(models, gset):
    m = models[gset]
    for g, gr in zip(golden_batches(gset), golden_batches(gset, "grad_batch_")):
        toks = g.tokens()
        lengths = g["lengths"]
        real = np.arange(g["lm_embeddings"].shape[2])[None, :] < lengths[:, None]
        for name, w, gamma, ln, top in VARIANTS:
            if top:
                continue  # allennlp's ScalarMix has no top-only form
            mod = Elmo(m, num_output_representations=1, do_layer_norm=ln)
            mix = mod.scalar_mixes[0]
            with torch.no_grad():
                for p, v in zip(mix.scalar_parameters, w):
                    p.fill_(v)
                mix.gamma.fill_(gamma)
            out = mod(toks)
            assert out["mask"].dtype == torch.bool
            assert out["mask"].numpy().tolist() == real.tolist()
            rep = out["elmo_representations"][0]
            got = rep.detach().numpy()
            record(f"torch elmo ({name})", gset, assert_close(name, got[real], g[name][real]))
            assert np.all(got[~real] == 0)
            # TF's pooled probe loss: sum over b, d of mean_t(rep) * R2.
            n = torch.clamp(out["mask"].sum(dim=1, keepdim=True), min=1)
            loss = ((rep.sum(dim=1) / n) * torch.from_numpy(gr[f"grad_probe_{name}_mean"])).sum()
            loss.backward()
            gw = torch.cat([p.grad for p in mix.scalar_parameters]).numpy()
            record("torch grad W", gset, assert_close("grad W", gw, gr[f"grad_W_{name}_mean"]))
            record("torch grad gamma", gset, assert_close("grad gamma", mix.gamma.grad.numpy(), gr[f"grad_gamma_{name}_mean"]))


def test_character_ids_give_the_token_answer():
    mod = Elmo(None, num_output_representations=2, dropout=0.0)
    sents = [["The", "cat", "sat", "."], ["Hé", "<S>"], []]
    a = mod(sents)
    b = mod(batch_to_ids(sents))
    assert len(a["elmo_representations"]) == 2 and mod.get_output_dim() == 32
    for x, y in zip(a["elmo_representations"], b["elmo_representations"]):
        assert x.shape == (3, 4, 32)
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    assert torch.equal(a["mask"], b["mask"])
    # Character ids longer than the batch's sentences: padded to their T.
    ids = torch.cat([batch_to_ids(sents), torch.zeros(3, 2, 50, dtype=torch.long)], dim=1)
    c = mod(ids)
    assert c["elmo_representations"][0].shape == (3, 6, 32)
    torch.testing.assert_close(c["elmo_representations"][0][:, :4], a["elmo_representations"][0], rtol=0, atol=0)


def test_trains_the_mixes_only():
    mod = Elmo(None, num_output_representations=1)
    names = [n for n, p in mod.named_parameters() if p.requires_grad]
    assert names == ["scalar_mix_0.gamma"] + [f"scalar_mix_0.scalar_parameters.{i}" for i in range(3)]
    opt = torch.optim.SGD(mod.parameters(), lr=0.5)
    before = [p.detach().clone() for p in mod.parameters()]
    loss = mod([["good", "film"]])["elmo_representations"][0].pow(2).sum()
    loss.backward()
    opt.step()
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, mod.parameters()))
    fixed = Elmo(None, scalar_mix_parameters=[1.0, 0.0, -1.0])
    assert not any(p.requires_grad for p in fixed.parameters())


def test_other_dtypes_pickling_and_allennlps_scalar_mix_call(tmp_path):
    import copy

    sents = [["The", "cat", "."], ["Hi"]]
    want = Elmo(None)(sents)["elmo_representations"][0]
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        got = Elmo(None).to(dtype)(sents)["elmo_representations"][0]
        assert got.dtype == dtype
        torch.testing.assert_close(got.float(), want, rtol=1e-2, atol=1e-2)
    # deepcopy and torch.save of the whole module (the engine's Model pickles).
    mod = Elmo(None, num_output_representations=2)
    torch.testing.assert_close(copy.deepcopy(mod)(sents)["elmo_representations"][1], mod(sents)["elmo_representations"][1])
    torch.save(mod, tmp_path / "m.pt")
    back = torch.load(tmp_path / "m.pt", weights_only=False)
    torch.testing.assert_close(back(sents)["elmo_representations"][0], mod(sents)["elmo_representations"][0])
    # allennlp's ScalarMix.forward(list of K (B, T, D) tensors, mask=None).
    layers = mod.layers(sents)  # (B, K, T, D)
    mix = mod.scalar_mixes[0]
    listed = mix([layers[:, k] for k in range(layers.shape[1])])
    w = torch.softmax(torch.cat(list(mix.scalar_parameters)), dim=0)
    torch.testing.assert_close(listed, mix.gamma * torch.einsum("k,bktd->btd", w, layers))
    with pytest.raises(elmo.ElmoError, match="2 tensors for a mixture of 3"):
        mix([layers[:, 0], layers[:, 1]])


def test_bad_input_raises_elmo_error():
    mod = Elmo(None)
    for inputs, msg in [
        (torch.zeros(2, 3, dtype=torch.long), "3-D"),
        (torch.zeros(1, 2, 40, dtype=torch.long), "50"),
        (torch.full((1, 1, 50), 300), "out of range"),
        (torch.full((1, 1, 50), 1.5), "whole numbers"),
        ([["a", 1]], "expected a str"),
        ("a sentence", "got a str"),
    ]:
        with pytest.raises(elmo.ElmoError, match=msg):
            mod(inputs)
    gap = batch_to_ids([["a", "b"]])
    gap[0, 0] = 0
    with pytest.raises(elmo.ElmoError, match="padding"):
        mod(gap)
    with pytest.raises(elmo.ElmoError, match="at least 1"):
        Elmo(None, num_output_representations=0)
