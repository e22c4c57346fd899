"""Folding the edit into o_proj: a hook-free model and a plain Hugging Face checkpoint."""

import pytest
import torch

from jolalens import Backend, JolaConfig, JolaEdit, export_hf_checkpoint, hf_view, merge_edit
from jolalens.testing import tiny_model


def _edit(model, **cfg):
    edit = JolaEdit.for_model(model, JolaConfig(init_std=0.4, **cfg)).eval()
    with torch.no_grad():
        for name in edit.gate_names:
            getattr(edit, f"log_alpha_{name}").normal_(0, 3)
    return edit


TOKENS = torch.randint(4, 100, (2, 9), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("cfg", [{}, {"edit_type": "multiplicative"}, {"layers": (0,), "gate_mode": "shared"}])
@pytest.mark.parametrize("tie", [False, True])
def test_merged_and_exported_match_hooked(cfg, tie, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model(tie_word_embeddings=tie)
    edit = _edit(model, **cfg)
    with torch.no_grad():
        base = model(TOKENS)
        with edit.attached(model, Backend.HOOK_POINTS) as net:
            ref = net(TOKENS)
        merged = merge_edit(model, edit)
        assert (merged(TOKENS) - ref).abs().max() < 1e-5
        assert (hf_view(merged)(TOKENS).logits - ref).abs().max() < 1e-5
        assert torch.equal(model(TOKENS), base), "merge_edit(inplace=False) must not touch the input"
    out = export_hf_checkpoint(model, edit, tmp_path / "hf")
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        assert (plain(TOKENS).logits - ref).abs().max() < 1e-4
    assert (out / "jolalens_export.json").is_file() and (out / "tokenizer.json").is_file()


def test_merge_inplace(tiny):
    edit = _edit(tiny)
    with torch.no_grad():
        with edit.attached(tiny, Backend.HOOK_POINTS) as net:
            ref = net(TOKENS)
        assert merge_edit(tiny, edit, inplace=True) is tiny
        assert (tiny(TOKENS) - ref).abs().max() < 1e-5


def test_export_refuses_existing_dir(tiny, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("keep me")
    with pytest.raises(FileExistsError):
        export_hf_checkpoint(tiny, _edit(tiny), tmp_path / "x")
    assert (tmp_path / "x" / "f").read_text() == "keep me"
