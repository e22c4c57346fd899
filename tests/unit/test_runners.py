"""The runner abstraction: HF view and hook points give the same logits, losses and gradients."""

from __future__ import annotations

import logging

import pytest
import torch

from jolalens import JolaConfig, JolaEdit
from jolalens.data import Example, collate
from jolalens.edit import Backend
from jolalens.errors import EditLoadError, ModelError
from jolalens.models import identity_mismatches, model_identity
from jolalens.runners import has_hf_view, is_hooked_transformer, resolve_backend, runner_for
from jolalens.train import TrainConfig, validation_ce


def _rows(seed: int = 0, n: int = 4) -> list[tuple[list[int], list[int]]]:
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        ids = torch.randint(4, 90, (5 + 3 * i,), generator=gen).tolist()
        labels = [-100] * (len(ids) - 2) + ids[-2:]
        rows.append((ids, labels))
    return rows


def _random_edit(model, seed: int = 1) -> JolaEdit:
    edit = JolaEdit.for_model(model, JolaConfig(seed=seed))
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in edit.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return edit.eval()


def test_auto_backend_is_hf_view_on_a_llama_bridge(tiny):
    assert has_hf_view(tiny)
    assert resolve_backend(tiny) is Backend.HF_VIEW
    assert resolve_backend(tiny, "auto") is Backend.HF_VIEW
    assert resolve_backend(tiny, "hook_points") is Backend.HOOK_POINTS
    assert not is_hooked_transformer(tiny)


@pytest.mark.parametrize("side", ["right", "left"])
def test_both_backends_give_the_same_logits_with_an_edit(tiny, side):
    batch = collate(_rows(), pad_id=3, padding_side=side)
    edit = _random_edit(tiny)
    out = {}
    for backend in (Backend.HF_VIEW, Backend.HOOK_POINTS):
        runner = runner_for(tiny, backend)
        with torch.no_grad(), runner.attached(edit):
            logits = runner(batch.input_ids, batch.attention_mask, batch.position_ids)
        out[backend] = logits[batch.attention_mask.bool()]
    base = runner_for(tiny)(batch.input_ids, batch.attention_mask, batch.position_ids)
    assert not torch.allclose(base[batch.attention_mask.bool()], out[Backend.HF_VIEW], atol=1e-3)
    torch.testing.assert_close(out[Backend.HF_VIEW], out[Backend.HOOK_POINTS], atol=2e-4, rtol=1e-4)


def test_both_backends_give_the_same_gradients(tiny):
    batch = collate(_rows(2), pad_id=3, padding_side="right")
    where = torch.zeros_like(batch.attention_mask, dtype=torch.bool)
    where[:, :-1] = batch.labels[:, 1:] != -100
    targets = batch.labels[:, 1:][batch.labels[:, 1:] != -100]
    grads = {}
    for backend in (Backend.HF_VIEW, Backend.HOOK_POINTS):
        edit = _random_edit(tiny)
        runner = runner_for(tiny, backend)
        with runner.attached(edit):
            logits = runner.logits_where(batch.input_ids, batch.attention_mask, batch.position_ids, where)
            torch.nn.functional.cross_entropy(logits, targets).backward()
        grads[backend] = torch.cat([p.grad.flatten() for p in edit.parameters() if p.grad is not None])
    assert grads[Backend.HF_VIEW].abs().sum() > 0
    torch.testing.assert_close(grads[Backend.HF_VIEW], grads[Backend.HOOK_POINTS], atol=1e-5, rtol=1e-3)


def test_validation_ce_agrees_across_backends(tiny):
    data = [Example(f"say {c}", c) for c in "abcdef"]
    edit = _random_edit(tiny)
    ce = {
        b: validation_ce(tiny, edit, data, config=TrainConfig(backend=b, progress=False, padding_side="left"))
        for b in ("hf_view", "hook_points", None)
    }
    assert ce["hf_view"] == pytest.approx(ce["hook_points"], rel=1e-4)
    assert ce[None] == ce["hf_view"]


def test_train_config_backend_defaults_to_automatic():
    assert TrainConfig().backend is None
    assert TrainConfig(backend="auto").backend is None
    assert TrainConfig(backend="hook_points").backend is Backend.HOOK_POINTS


def test_hf_view_error_names_the_real_argument():
    from jolalens.hf_view import hf_view

    with pytest.raises(ModelError, match="backend='hook_points'"):
        hf_view(torch.nn.Linear(2, 2))


def test_identity_is_the_weights_not_the_class():
    from jolalens.testing import tiny_model

    a, same, other = tiny_model(seed=0), tiny_model(seed=0), tiny_model(seed=1)
    ida, idsame, idother = model_identity(a), model_identity(same), model_identity(other)
    assert len(ida["weights_fingerprint"]) == 64
    org_name = f"some-org/{ida['model_name'].upper()}"  # HookedTransformer names drop the org
    assert identity_mismatches(ida, dict(idsame, model_name=org_name, architecture="HT")) == []
    assert "model_name" in identity_mismatches(ida, dict(idsame, model_name="another"))[0]
    assert identity_mismatches(ida, idother) and "weights differ" in identity_mismatches(ida, idother)[0]
    edit = JolaEdit.for_model(a)
    edit.attach(same).remove()
    with pytest.raises(EditLoadError, match="weights differ"):
        edit.attach(other)


def test_identity_survives_a_change_of_precision_but_not_of_weights():
    from jolalens.testing import tiny_model

    model = tiny_model(seed=0)
    edit = JolaEdit.for_model(model)
    for dtype in (torch.bfloat16, torch.float16):
        copy = tiny_model(seed=0).to(dtype)
        assert identity_mismatches(edit.model_identity, model_identity(copy)) == [], dtype
    nudged = tiny_model(seed=0)
    with torch.no_grad():
        nudged.W_E.mul_(1.05)  # a 5% change of the embedding is another model
    assert "weights differ" in identity_mismatches(edit.model_identity, model_identity(nudged))[0]


def test_legacy_identity_without_fingerprint_loads_with_a_warning(tiny, tmp_path, caplog):
    import json

    edit = _random_edit(tiny)
    path = edit.save(tmp_path / "e")
    meta = json.loads((path / "jola_config.json").read_text())
    del meta["model"]["weights_fingerprint"]
    (path / "jola_config.json").write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="jolalens.models"):
        loaded = JolaEdit.load(path, tiny)
    assert "without a weights fingerprint" in caplog.text
    assert "weights_fingerprint" in loaded.model_identity
    meta["model"]["model_name"] = "some-other-model"
    (path / "jola_config.json").write_text(json.dumps(meta))
    with pytest.raises(EditLoadError, match="model_name"):
        JolaEdit.load(path, tiny)
