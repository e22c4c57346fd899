"""LoReFT on the tiny model: the spec's parameter counts, the prompt-window rule (padding,
KV-cached generation), backend agreement, orthogonality through training, save/load."""

import pytest
import torch
from safetensors.torch import load_file

import jolalens
from jolalens import Backend, Example, ModelDims, TrainConfig, hf_view, train_edit
from jolalens.baselines.loreft import LoreftConfig, LoreftEdit, prompt_windows
from jolalens.data import answer_mask, collate
from jolalens.edit import answer_positions
from jolalens.evaluate import score_choices

LLAMA_8B = ModelDims(n_layers=32, n_heads=32, n_kv_heads=8, d_head=128, d_model=4096, d_mlp=14336)
QWEN_7B = ModelDims(n_layers=28, n_heads=28, n_kv_heads=4, d_head=128, d_model=3584, d_mlp=18944)
SMALL = LoreftConfig(rank=2, first_n=2, last_n=2)


def _perturbed(model, config=SMALL, scale=0.3):
    edit = LoreftEdit.for_model(model, config)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for unit in edit.interventions:
            unit.learned_source.weight.add_(torch.randn(unit.learned_source.weight.shape, generator=gen) * scale)
    return edit


def _rows(prompt_lens, answer_len=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for n in prompt_lens:
        ids = torch.randint(5, 60, (n + answer_len,), generator=gen).tolist()
        rows.append((ids, [-100] * n + ids[n:]))
    return rows


# ---- parameter counts: the spec's table (section 6 and 9) ----------------------------------
@pytest.mark.parametrize(
    ("dims", "shared", "expected"),
    [
        (LLAMA_8B, True, 2_097_408),
        (LLAMA_8B, False, 4_194_816),
        (QWEN_7B, True, 1_605_856),
        (QWEN_7B, False, 3_211_712),
    ],
)
def test_parameter_counts_match_spec(dims, shared, expected):
    config = LoreftConfig(rank=8, shared=shared)
    assert config.n_parameters(dims) == expected
    # the trainer's count of a built edit follows the same formula (a small shape: building the
    # orthogonal parametrisation at d=4096 takes ~10 s per layer on a CPU)
    small = ModelDims(n_layers=3, n_heads=4, n_kv_heads=2, d_head=16, d_model=64, d_mlp=128)
    assert (
        LoreftEdit(small, config).n_trainable()
        == config.n_parameters(small)
        == 3 * (2 * 8 * 64 + 8) * (1 if shared else 2)
    )


# ---- which positions are edited ---------------------------------------------------------------
def test_prompt_windows_cap_and_padding():
    index = torch.arange(12).expand(1, 12)
    real = torch.ones(1, 12, dtype=torch.bool)
    answer = torch.zeros(1, 12, dtype=torch.bool)
    answer[0, 8:11] = True  # the last prompt token is position 8: a 9-token prompt
    first, last = prompt_windows(index, real, answer, 0, 7, 7)
    assert first[0].nonzero().flatten().tolist() == [0, 1, 2, 3]  # capped at 9 // 2 (pyreft)
    assert last[0].nonzero().flatten().tolist() == [5, 6, 7, 8]
    first, last = prompt_windows(index, real, answer, 0, 2, 3)
    assert first[0].nonzero().flatten().tolist() == [0, 1] and last[0].nonzero().flatten().tolist() == [6, 7, 8]
    # left padding: indices from the attention mask, pads never edited
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1]])
    first, last = prompt_windows(mask.cumsum(-1) - 1, mask.bool(), None, 0, 2, 2)
    assert first[0].nonzero().flatten().tolist() == [2, 3] and last[0].nonzero().flatten().tolist() == [6, 7]
    # a cached decoding step holds no prompt token
    first, last = prompt_windows(torch.tensor([[6]]), torch.ones(1, 1, dtype=torch.bool), None, 6, 2, 2)
    assert not first.any() and not last.any()


def test_only_prompt_windows_change_and_padding_sides_agree(tiny):
    edit = _perturbed(tiny)
    view = hf_view(tiny)
    captured = {}
    # the input of layer 1 is layer 0's output after the edit's hook
    hook = view.model.layers[1].register_forward_pre_hook(lambda m, args: captured.__setitem__("h", args[0]))
    results = {}
    try:
        for side in ("right", "left"):
            batch = collate(_rows([9, 5]), 3, side)
            kw = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)
            with torch.no_grad(), answer_positions(answer_mask(batch.labels)):
                base = view(**kw).logits
                h0 = captured["h"]
                with edit.attached(tiny) as net:
                    logits = net(**kw).logits
                h1 = captured["h"]
            real = batch.attention_mask.bool()
            results[side] = [logits[r][real[r]] for r in range(2)]
            changed = ((h1 - h0).abs().amax(-1) > 0) & real
            # positions counted within each row's real tokens
            offset = (~real).sum(-1) if side == "left" else torch.zeros(2, dtype=torch.long)
            got = [(changed[r].nonzero().flatten() - offset[r]).tolist() for r in range(2)]
            assert got == [[0, 1, 7, 8], [0, 1, 3, 4]], side  # f2 + l2 of a 9- and a 5-token prompt
            assert (logits - base).abs().max() > 1e-3
    finally:
        hook.remove()
    for a, b in zip(results["right"], results["left"], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_backends_agree(tiny):
    edit = _perturbed(tiny, LoreftConfig(rank=2, first_n=2, last_n=3, shared=False))
    batch = collate(_rows([9, 6]), 3, "right")
    with torch.no_grad(), answer_positions(answer_mask(batch.labels)):
        with edit.attached(tiny, Backend.HOOK_POINTS) as net:
            hooked = net(batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)
        with edit.attached(tiny, Backend.HF_VIEW) as net:
            viewed = net(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids
            ).logits
    real = batch.attention_mask.bool()
    torch.testing.assert_close(hooked[real], viewed[real], atol=1e-5, rtol=1e-5)
    assert not tiny.blocks[0].hook_resid_post.fwd_hooks


def test_generation_with_kv_cache_edits_the_prompt_only(tiny):
    """Batched, left-padded, cached greedy decoding equals decoding each prompt without a cache
    where the prompt is declared (TransformerLens backend: a whole forward per step)."""
    edit = _perturbed(tiny, LoreftConfig(rank=2, first_n=3, last_n=3), scale=1.0)
    prompts = [r[0][:n] for r, n in zip(_rows([10, 6], seed=4), [10, 6], strict=True)]
    width = max(map(len, prompts))
    ids = torch.full((2, width), 3)
    mask = torch.zeros((2, width), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, width - len(p) :] = torch.tensor(p)
        mask[r, width - len(p) :] = 1
    steps = 5
    with torch.no_grad(), edit.attached(tiny) as view:
        out = view.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=steps,
            min_new_tokens=steps,
            pad_token_id=3,
            eos_token_id=None,
            temperature=None,
            top_p=None,
            top_k=None,
        )
    for r, p in enumerate(prompts):
        seq = list(p)
        for _ in range(steps):
            declared = torch.zeros((1, len(seq)), dtype=torch.bool)
            declared[0, len(p) - 1 :] = True  # from the last prompt token on
            with torch.no_grad(), answer_positions(declared), edit.attached(tiny, Backend.HOOK_POINTS) as net:
                seq.append(int(net(torch.tensor([seq]))[0, -1].argmax()))
        assert out[r, width:].tolist() == seq[len(p) :], r


def test_training_keeps_R_orthonormal_and_learns(tiny):
    before = {n: p.detach().clone() for n, p in tiny.named_parameters()}
    edit = LoreftEdit.for_model(tiny, LoreftConfig(rank=2, first_n=2, last_n=2))
    init = {k: v.clone() for k, v in edit.to_safetensors().items()}
    letters = "abcdef"
    data = [Example(f"repeat {letters[i % 6]}", letters[i % 6] * 2) for i in range(12)]
    cfg = TrainConfig(epochs=2, batch_size=4, warmup_steps=1, progress=False, lr=5e-2)
    result = train_edit(tiny, edit, data, data[:6], config=cfg)
    after = result.edit.to_safetensors()
    assert any(not torch.allclose(init[k], after[k]) for k in init if k.endswith(".R"))
    assert any(not torch.allclose(init[k], after[k]) for k in init if k.endswith(".W"))
    for key, R in after.items():
        if key.endswith(".R"):
            torch.testing.assert_close(R @ R.T, torch.eye(R.shape[0]), atol=1e-5, rtol=0)
    assert result.history["val_ce"].min() < result.history["val_ce"].iloc[0] or result.best_epoch >= 1
    for n, p in tiny.named_parameters():
        assert torch.equal(p, before[n]), n


@pytest.mark.parametrize("shared", [True, False])
def test_save_load_round_trip(tiny, tmp_path, shared):
    edit = _perturbed(tiny, LoreftConfig(rank=2, first_n=2, last_n=2, shared=shared))
    path = edit.save(tmp_path / "loreft")
    keys = set(load_file(str(path / jolalens.edit.WEIGHTS_FILE)))
    site = "blocks.1.hook_resid_post" + ("" if shared else ".last")
    assert {f"{site}.R", f"{site}.W", f"{site}.b"} <= keys and len(keys) == 3 * 2 * (1 if shared else 2)
    loaded = jolalens.load_edit(path, tiny)
    assert isinstance(loaded, LoreftEdit) and loaded.config == edit.config
    batch = collate(_rows([8, 6]), 3, "right")
    kw = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)
    with torch.no_grad(), answer_positions(answer_mask(batch.labels)):
        with edit.attached(tiny) as net:
            a = net(**kw).logits
        with loaded.attached(tiny) as net:
            b = net(**kw).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_scoring_runs_each_prompt_whole(tiny):
    """The shared-prefix scorer would split prompts; for LoReFT both scorers give the packed result."""
    edit = _perturbed(tiny)
    examples = [Example(f"pick one of these {i}", "a", choices=("a", "bc")) for i in range(3)]
    fast = score_choices(tiny, examples, edit=edit, share_prefix=True, progress=False)
    packed = score_choices(tiny, examples, edit=edit, share_prefix=False, progress=False)
    plain = score_choices(tiny, examples, edit=None, share_prefix=False, progress=False)
    torch.testing.assert_close(torch.tensor(fast), torch.tensor(packed), atol=1e-5, rtol=1e-5)
    assert (torch.tensor(fast) - torch.tensor(plain)).abs().max() > 1e-3


def test_config_validation():
    with pytest.raises(ValueError, match="rank"):
        LoreftConfig(rank=0)
    with pytest.raises(ValueError, match="position"):
        LoreftConfig(first_n=0, last_n=0)
    with pytest.raises(ValueError, match="dropout"):
        LoreftConfig(dropout=1.0)
