"""Folding the edit into o_proj: a hook-free model and a plain Hugging Face checkpoint."""

import pytest
import torch

from jolalens import Backend, JolaConfig, JolaEdit, export_hf_checkpoint, hf_view, merge_edit
from jolalens.errors import ModelError
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


@pytest.mark.parametrize("edit_type", ["both", "multiplicative", "additive"])
def test_gpt2_bridge_export_reloads_with_the_attached_logits(edit_type, tmp_path):
    """GPT-2's fused Conv1D c_proj (with a bias): the edit folds into it, written as GPT-2."""
    from transformers import AutoModelForCausalLM

    from jolalens.testing import tiny_gpt2_model

    model = tiny_gpt2_model()
    edit = _edit(model, edit_type=edit_type)
    with torch.no_grad(), edit.attached(model) as net:
        ref = net(TOKENS)
    out = export_hf_checkpoint(model, edit, tmp_path / "hf")
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(plain).__name__ == "GPT2LMHeadModel"
    with torch.no_grad():
        assert (plain(TOKENS).logits - ref).abs().max() < 1e-4
        assert (plain(TOKENS).logits - model(TOKENS)).abs().max() > 1e-3  # the edit is in there


def _bridge_without_o_proj_bias(arch):
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from jolalens.testing import char_tokenizer

    config_cls, model_cls = {"mistral": (MistralConfig, MistralForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[
        arch
    ]
    tok = char_tokenizer()
    config = config_cls(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    return TransformerBridge.boot_transformers(f"tiny-{arch}", hf_model=model_cls(config).eval(), tokenizer=tok).eval()


@pytest.mark.parametrize("arch", ["mistral", "qwen2"])
def test_no_o_proj_bias_exports_multiplicative_and_says_why_not_additive(arch, tmp_path):
    """Mistral and Qwen2 build o_proj with bias=False whatever the config: an additive edit's
    constant has nowhere to go in their checkpoint (refused, saying why); a multiplicative one does."""
    from transformers import AutoModelForCausalLM

    model = _bridge_without_o_proj_bias(arch)
    edit = _edit(model, edit_type="multiplicative")
    with torch.no_grad(), edit.attached(model, Backend.HOOK_POINTS) as net:
        ref = net(TOKENS)
    plain = AutoModelForCausalLM.from_pretrained(export_hf_checkpoint(model, edit, tmp_path / "m")).eval()
    with torch.no_grad():
        assert (plain(TOKENS).logits - ref).abs().max() < 1e-4
    both = _edit(model)
    with pytest.raises(ModelError, match="builds o_proj without one") as info:
        export_hf_checkpoint(model, both, tmp_path / "a")
    assert "\n" not in str(info.value) and "edit_type='multiplicative'" in str(info.value)
    assert not (tmp_path / "a").exists()
    with torch.no_grad():  # merge_edit still folds it (in memory: the Linear gains a bias)
        with both.attached(model, Backend.HOOK_POINTS) as net:
            want = net(TOKENS)
        assert (merge_edit(model, both)(TOKENS) - want).abs().max() < 1e-5


def test_export_takes_hf_model_only_for_a_hooked_transformer(tiny, tmp_path):
    with pytest.raises(ModelError, match="leave hf_model out"):
        export_hf_checkpoint(tiny, _edit(tiny), tmp_path / "x", hf_model=hf_view(tiny))
