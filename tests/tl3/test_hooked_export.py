"""A ``HookedTransformer`` from the bridge path's weights, and its edits as Hugging Face checkpoints.

TransformerLens 3.9 environment only (``make tl3-env``); under 4.x these skip.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from jolalens.testing_hooked import hooked_transformer_available

pytestmark = pytest.mark.skipif(
    not hooked_transformer_available(),
    reason="needs TransformerLens 3.x (HookedTransformer); run it in .venv-tl3 (make tl3-env)",
)

from jolalens import JolaConfig, JolaEdit, export_hf_checkpoint, load_edit, load_model  # noqa: E402
from jolalens.errors import ModelError  # noqa: E402
from jolalens.hf_view import hf_view  # noqa: E402
from jolalens.testing import tiny_gpt2_model, tiny_model  # noqa: E402
from jolalens.testing_hooked import hooked_twin  # noqa: E402

TOKENS = torch.randint(4, 100, (2, 9), generator=torch.Generator().manual_seed(5))


def _checkpoint(bridge, path):
    """The bridge's Hugging Face weights and tokenizer as a checkpoint directory."""
    hf_view(bridge).save_pretrained(path)
    bridge.tokenizer.save_pretrained(path)
    return path


def _hf(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


def _edit(model, **cfg):
    edit = JolaEdit.for_model(model, JolaConfig(init_std=0.4, **cfg)).eval()
    with torch.no_grad():
        for name in edit.gate_names:
            getattr(edit, f"log_alpha_{name}").normal_(0, 3)
    return edit


@pytest.fixture(params=["llama", "gpt2"])
def hooked_and_source(request, tmp_path):
    """A HookedTransformer loaded by jolalens from a checkpoint directory, and that directory."""
    bridge = tiny_model(seed=0) if request.param == "llama" else tiny_gpt2_model(seed=0)
    ckpt = _checkpoint(bridge, tmp_path / f"tiny-{request.param}")
    return load_model(str(ckpt), model_class="hooked-transformer"), ckpt


def test_loader_gives_the_hugging_face_logits(hooked_and_source):
    hooked, ckpt = hooked_and_source
    assert type(hooked).__name__ == "HookedTransformer"
    with torch.no_grad():
        torch.testing.assert_close(hooked(TOKENS), _hf(ckpt)(TOKENS).logits, atol=1e-5, rtol=1e-4)


def test_edits_move_between_the_loaded_classes(hooked_and_source, tmp_path):
    hooked, ckpt = hooked_and_source
    bridge = load_model(str(ckpt))
    edit = _edit(bridge)
    on_hooked = load_edit(edit.save(tmp_path / "e"), hooked)  # same name and weights: accepted
    with torch.no_grad():
        with edit.attached(bridge, "hook_points") as net:
            want = net(TOKENS)
        with on_hooked.attached(hooked) as net:
            torch.testing.assert_close(net(TOKENS), want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("edit_type", ["both", "multiplicative", "additive"])
def test_hooked_export_reloads_with_the_attached_logits(hooked_and_source, edit_type, tmp_path):
    hooked, ckpt = hooked_and_source
    edit = _edit(hooked, edit_type=edit_type)
    with torch.no_grad(), edit.attached(hooked) as net:
        want = net(TOKENS)
    out = export_hf_checkpoint(hooked, edit, tmp_path / "hf", hf_model=_hf(ckpt))
    with torch.no_grad():
        got = _hf(out)(TOKENS).logits
    assert (got - want).abs().max() < 1e-4
    assert (out / "tokenizer.json").is_file()
    note = json.loads((out / "jolalens_export.json").read_text())["note"]
    assert ("c_proj" if "gpt2" in ckpt.name else "o_proj") in note


def test_hooked_twin_export_with_its_source_model(tmp_path):
    bridge = tiny_model(seed=0)
    hooked = hooked_twin(bridge)
    edit = _edit(hooked)
    with torch.no_grad(), edit.attached(hooked) as net:
        want = net(TOKENS)
    source = _hf(_checkpoint(bridge, tmp_path / "src"))
    out = export_hf_checkpoint(hooked, edit, tmp_path / "hf", hf_model=source)
    with torch.no_grad():
        assert (_hf(out)(TOKENS).logits - want).abs().max() < 1e-4


@pytest.mark.parametrize("build", [tiny_model, tiny_gpt2_model])
def test_bridge_export_under_tl3(build, tmp_path):
    """TransformerLens 3.9 bridges give lm_head a zero bias; the checkpoint leaves it out."""
    bridge = build(seed=0)
    edit = _edit(bridge)
    with torch.no_grad(), edit.attached(bridge, "hook_points") as net:
        want = net(TOKENS)
    with torch.no_grad():
        assert (_hf(export_hf_checkpoint(bridge, edit, tmp_path / "hf"))(TOKENS).logits - want).abs().max() < 1e-4


def test_hooked_export_refuses_a_missing_or_wrong_source(hooked_and_source, tmp_path):
    from transformers import AutoModelForCausalLM

    hooked, ckpt = hooked_and_source
    edit = _edit(hooked)
    with pytest.raises(ModelError, match="hf_model=") as info:
        export_hf_checkpoint(hooked, edit, tmp_path / "a")
    assert "\n" not in str(info.value)
    source = _hf(ckpt)
    torch.manual_seed(1)
    other = AutoModelForCausalLM.from_config(source.config).eval()  # same shapes, other weights
    with pytest.raises(ModelError, match="does not see what blocks.0.attn.hook_z holds"):
        export_hf_checkpoint(hooked, edit, tmp_path / "b", hf_model=other)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_hooked_export_refuses_value_biases_folded_away(tmp_path):
    """Folding GPT-2's value biases into b_O keeps the logits but changes hook_z: refused."""
    bridge = tiny_gpt2_model(seed=0)
    ckpt = _checkpoint(bridge, tmp_path / "gpt2")
    hooked = load_model(str(ckpt), model_class="hooked-transformer")
    with torch.no_grad():
        for block in hooked.blocks:
            block.attn.b_V.normal_(0, 0.5)
    processed = copy.deepcopy(hooked)
    with torch.no_grad():
        for block in processed.blocks:  # what fold_value_biases does
            attn = block.attn
            attn.b_O += torch.einsum("hd,hdm->m", attn.b_V, attn.W_O)
            attn.b_V.zero_()
        torch.testing.assert_close(processed(TOKENS), hooked(TOKENS), atol=1e-4, rtol=1e-4)
    source = _hf(ckpt)
    with torch.no_grad():  # the source model of `hooked` (its value biases set the same way)
        d = hooked.cfg.d_model
        for layer, block in enumerate(hooked.blocks):
            source.transformer.h[layer].attn.c_attn.bias[2 * d :] = block.attn.b_V.reshape(-1)
    edit = _edit(hooked, edit_type="multiplicative")
    export_hf_checkpoint(hooked, edit, tmp_path / "ok", hf_model=source)  # unprocessed: accepted
    with pytest.raises(ModelError, match="without weight processing"):
        export_hf_checkpoint(processed, edit, tmp_path / "no", hf_model=source)


def test_cli_trains_and_exports_a_hooked_transformer(tmp_path, capsys):
    from jolalens.cli import main

    ckpt = _checkpoint(tiny_model(seed=0), tmp_path / "ckpt")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"say {c}", "answer": c}) + "\n" for c in "abcdefgh"))
    common = ["--model", str(ckpt), "--model-class", "hooked-transformer", "--device", "cpu"]
    run, out = tmp_path / "run", tmp_path / "hf"
    train = ["train", *common, "--train", str(data), "--valid", str(data), "--out", str(run)]
    assert main([*train, "--epochs", "1", "--batch-size", "4", "--no-progress"]) == 0
    assert main(["export", *common, "--edit", str(run / "edit"), "--out", str(out)]) == 0
    hooked = load_model(str(ckpt), model_class="hooked-transformer")
    edit = load_edit(run / "edit", hooked)
    with torch.no_grad(), edit.attached(hooked) as net:
        want = net(TOKENS)
    with torch.no_grad():
        assert (_hf(out)(TOKENS).logits - want).abs().max() < 1e-4
    load_edit(run / "edit", load_model(str(ckpt)))  # the bridge of the same weights takes it too
    capsys.readouterr()
    assert main(["train", *common[:4], "--device-map", "auto", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device-map" in err[0]


@pytest.mark.integration
def test_smollm2_loads_as_a_hooked_transformer(embedded, tmp_path):
    hooked = load_model(model_class="hooked-transformer")
    assert type(hooked).__name__ == "HookedTransformer" and hooked.cfg.n_ctx == 2048
    ids = embedded.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(hooked(ids), hf_view(embedded)(ids).logits, atol=2e-4, rtol=1e-4)
    load_edit(_edit(embedded).save(tmp_path / "edit"), hooked)  # the bridge's edit loads onto it
