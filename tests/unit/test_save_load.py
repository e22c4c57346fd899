"""Edits on disk: readable keys, strict loading, refusal of other models and overwrites."""

import json

import pytest
import torch
from safetensors.torch import load_file

import jolalens
from jolalens import Backend, EditLoadError, JolaConfig, JolaEdit, load_edit
from jolalens.testing import tiny_model


def _trained_like(model, **cfg):
    edit = JolaEdit.for_model(model, JolaConfig(init_std=0.3, **cfg)).eval()
    with torch.no_grad():
        edit.log_alpha_additive.normal_(0, 2)
    return edit


def test_round_trip_bit_exact(tiny, tmp_path):
    edit = _trained_like(tiny)
    edit.save(tmp_path / "e")
    meta = json.loads((tmp_path / "e" / "jola_config.json").read_text())
    assert meta["method"] == "jola" and meta["jolalens_version"] == jolalens.__version__
    assert meta["model"]["n_heads"] == 4 and meta["config"]["edit_type"] == "both"
    keys = set(load_file(str(tmp_path / "e" / "jola_weights.safetensors")))
    assert "blocks.1.attn.hook_z.additive" in keys and "blocks.0.attn.hook_z.log_alpha_multiplicative" in keys
    loaded = load_edit(tmp_path / "e", tiny)
    assert isinstance(loaded, JolaEdit)
    assert not loaded.training, "a loaded edit uses deterministic gates"
    for (n1, p1), (n2, p2) in zip(edit.named_parameters(), loaded.named_parameters(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2)
    tokens = torch.randint(4, 100, (2, 7))
    with torch.no_grad():
        with edit.attached(tiny, Backend.HOOK_POINTS) as net:
            a = net(tokens)
        with loaded.eval().attached(tiny, Backend.HOOK_POINTS) as net:
            b = net(tokens)
    assert torch.equal(a, b)


def test_round_trip_of_ablation_variants(tiny, tmp_path):
    edit = JolaEdit.for_model(tiny, JolaConfig(layers=(1,), edit_type="additive", gate_mode="shared"))
    edit.save(tmp_path / "v")
    loaded = JolaEdit.load(tmp_path / "v", tiny)
    assert loaded.layers == (1,) and loaded.gate_names == ("shared",)
    assert torch.equal(loaded.log_alpha_shared, edit.log_alpha_shared)


def test_refuses_existing_directory(tiny, tmp_path):
    edit = _trained_like(tiny)
    edit.save(tmp_path / "e")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        edit.save(tmp_path / "e")
    edit.save(tmp_path / "e", overwrite=True)


def test_refuses_other_model_shape(tiny, tmp_path):
    _trained_like(tiny).save(tmp_path / "e")
    other = tiny_model(n_heads=2, n_kv_heads=1, d_head=16)
    with pytest.raises(EditLoadError, match="another model.*n_heads"):
        load_edit(tmp_path / "e", other)


def test_refuses_other_model_identity_same_shape(tiny, tmp_path):
    _trained_like(tiny).save(tmp_path / "e")
    other = tiny_model(n_layers=2)
    other.cfg.model_name = "some-other-model"
    with pytest.raises(EditLoadError, match="model_name"):
        load_edit(tmp_path / "e", other)


def test_attaching_to_another_model_is_refused(tiny):
    edit = _trained_like(tiny)
    other = tiny_model(n_layers=3)
    with pytest.raises(EditLoadError, match="n_layers"):
        edit.attach(other, Backend.HOOK_POINTS)


def test_missing_files_and_bad_json(tiny, tmp_path):
    with pytest.raises(EditLoadError, match="not a saved jolalens edit"):
        load_edit(tmp_path, tiny)
    _trained_like(tiny).save(tmp_path / "e")
    (tmp_path / "e" / "jola_config.json").write_text("{not json")
    with pytest.raises(EditLoadError, match="invalid JSON"):
        load_edit(tmp_path / "e", tiny)


def test_tampered_weights_rejected(tiny, tmp_path):
    from safetensors.torch import save_file

    _trained_like(tiny).save(tmp_path / "e")
    weights = load_file(str(tmp_path / "e" / "jola_weights.safetensors"))
    weights.pop("blocks.1.attn.hook_z.additive")
    save_file(weights, str(tmp_path / "e" / "jola_weights.safetensors"))
    with pytest.raises(EditLoadError, match="does not match the checksum"):
        load_edit(tmp_path / "e", tiny)
    meta = json.loads((tmp_path / "e" / "jola_config.json").read_text())
    del meta["weights_sha256"]  # an edit saved before checksums: the key check still catches it
    (tmp_path / "e" / "jola_config.json").write_text(json.dumps(meta))
    with pytest.raises(EditLoadError, match="lack 'blocks.1.attn.hook_z.additive'"):
        load_edit(tmp_path / "e", tiny)


def test_unknown_method_rejected(tiny, tmp_path):
    _trained_like(tiny).save(tmp_path / "e")
    meta = json.loads((tmp_path / "e" / "jola_config.json").read_text())
    meta["method"] = "mystery"
    (tmp_path / "e" / "jola_config.json").write_text(json.dumps(meta))
    with pytest.raises(EditLoadError, match="unknown method 'mystery'"):
        load_edit(tmp_path / "e", tiny)


_EVERY_METHOD = [
    lambda m: _trained_like(m),
    lambda m: jolalens.baselines.RedEdit.for_model(m),
    lambda m: jolalens.baselines.BitFitEdit.for_model(m),
    lambda m: jolalens.baselines.LoraEdit.for_model(m, jolalens.baselines.LoraConfig(r=4, alpha=8)),
    lambda m: jolalens.baselines.LofitEdit.for_model(m),
    lambda m: jolalens.baselines.ItiEdit.for_model(m),
]


@pytest.mark.parametrize("make", _EVERY_METHOD, ids=["jola", "red", "bitfit", "lora", "lofit", "iti"])
def test_loaded_edit_follows_the_model_device(tiny, tmp_path, make):
    """Weights load on the CPU; a model on another device (here ``meta``) gets the edit there."""
    import copy

    make(tiny).save(tmp_path / "e")
    elsewhere = copy.deepcopy(tiny).to("meta")
    loaded = load_edit(tmp_path / "e", elsewhere)
    devices = {t.device.type for t in (*loaded.parameters(), *loaded.buffers())}
    assert devices == {"meta"}


def test_attaching_across_devices_names_the_fix(tiny):
    edit = _trained_like(tiny).to("meta")
    with pytest.raises(ValueError, match=r"edit is on meta but the model is on cpu.*edit.to\('cpu'\)"):
        edit.attach(tiny)
