"""load_model: local checkpoint directories offline, wrapped HF models, dtype rules, CLI flags."""

from __future__ import annotations

import json

import pytest
import torch

import jolalens
from jolalens import JolaConfig, JolaEdit, export_hf_checkpoint
from jolalens.hooked_loading import hooked_transformer_available
from jolalens.placement import resolve_dtype


@pytest.fixture
def exported(tiny, tmp_path):
    """The tiny model with a visible JoLA edit folded in, written by export_hf_checkpoint."""
    edit = JolaEdit.for_model(tiny, JolaConfig(init_std=0.1))
    return export_hf_checkpoint(tiny, edit, tmp_path / "ckpt"), edit


def _logits(model):
    tokens = model.tokenizer(["hello there"], return_tensors="pt").input_ids
    with torch.no_grad():
        return model(tokens).float()


def test_local_checkpoint_loads_offline_in_bf16(exported, tiny, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path, edit = exported
    fp32 = jolalens.load_model(path, device="cpu")
    assert next(fp32.parameters()).dtype == torch.float32  # CPU default
    with edit.attached(tiny, "hook_points") as net, torch.no_grad():
        hooked = net(tiny.tokenizer(["hello there"], return_tensors="pt").input_ids)
    assert torch.allclose(_logits(fp32), hooked, atol=1e-4)
    bf16 = jolalens.load_model(str(path), dtype="bfloat16", device="cpu")
    assert next(bf16.parameters()).dtype == torch.bfloat16
    assert (_logits(bf16) - hooked).abs().max() < 3e-2 * hooked.abs().max()
    assert jolalens.model_dims(bf16) == jolalens.model_dims(tiny)


def test_wraps_an_already_loaded_hf_model(tiny):
    from jolalens.testing import char_tokenizer

    hf = type(tiny.original_model)(tiny.original_model.config)  # a fresh random model of the same shape
    bridge = jolalens.load_model("my-tiny", hf_model=hf.eval(), tokenizer=char_tokenizer(), dtype="bf16")
    assert bridge.cfg.model_name == "my-tiny"
    assert next(bridge.parameters()).dtype == torch.bfloat16
    assert jolalens.model_dims(bridge).n_heads == 4


def test_dtype_rules():
    assert resolve_dtype("bf16") is torch.bfloat16
    assert resolve_dtype("torch.float16") is torch.float16
    assert resolve_dtype(torch.float32) is torch.float32
    assert resolve_dtype(None, "cpu") is torch.float32
    assert resolve_dtype("auto", "cpu") is torch.float32
    with pytest.raises(jolalens.ModelError, match="unknown dtype"):
        resolve_dtype("int3")


def test_bad_paths_and_conflicting_options(tmp_path):
    with pytest.raises(jolalens.ModelError, match="no checkpoint directory"):
        jolalens.load_model(str(tmp_path / "nowhere") + "/")
    with pytest.raises(jolalens.ModelError, match="not a Hugging Face checkpoint"):
        jolalens.load_model(tmp_path)
    with pytest.raises(jolalens.ModelError, match="either device or device_map"):
        jolalens.load_model(tmp_path, device="cpu", device_map="auto")


def test_cli_train_on_local_checkpoint_bf16_offline(exported, tmp_path):
    """``jolalens train --model <dir> --dtype bfloat16 --device cpu``: a fresh process, hub off."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    path, _ = exported
    rows = [{"instruction": f"repeat {c}", "answer": c * 3} for c in "abcdefgh"]
    for name in ("train", "valid"):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "jolalens.cli",
            "train",
            "--model",
            str(path),
            "--dtype",
            "bfloat16",
            "--device",
            "cpu",
            "--train",
            str(tmp_path / "train.jsonl"),
            "--valid",
            str(tmp_path / "valid.jsonl"),
            "--out",
            str(tmp_path / "run"),
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--no-progress",
        ],
        cwd=Path(jolalens.__file__).parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "saved to" in done.stdout
    saved = jolalens.load_edit(tmp_path / "run" / "edit", jolalens.load_model(path, dtype="bf16", device="cpu"))
    assert {p.dtype for p in saved.parameters()} == {torch.float32}


@pytest.mark.parametrize(
    "command",
    [
        ["train", "--out", "x"],
        ["eval", "--task", "arc_easy"],
        ["compare", "--tasks", "arc_easy", "--out", "x"],
        ["export", "--edit", "e", "--out", "x"],
        ["demo"],
    ],
)
def test_every_loading_command_has_the_flags(command):
    from jolalens.cli import build_parser, loading_options

    args = build_parser().parse_args(
        [
            *command,
            "--dtype",
            "bfloat16",
            "--device-map",
            '{"model.layers.0": 0}',
            "--max-memory",
            '{"0": "10GiB", "cpu": "20GiB"}',
        ]
    )
    opts = loading_options(args)
    assert opts["dtype"] == "bfloat16" and opts["device"] is None and opts["revision"] is None
    assert opts["device_map"] == {"model.layers.0": 0}
    assert opts["max_memory"] == {0: "10GiB", "cpu": "20GiB"}
    plain = loading_options(build_parser().parse_args([*command, "--device-map", "auto"]))
    assert plain["device_map"] == "auto" and plain["dtype"] == "auto"


def test_model_class_is_checked():
    from jolalens.errors import ModelError

    with pytest.raises(ModelError, match="model_class must be one of bridge, hooked-transformer"):
        jolalens.load_model("anything", model_class="hooked")


@pytest.mark.skipif(
    hooked_transformer_available(),
    reason="this TransformerLens has HookedTransformer (3.x): tests/tl3 covers the class",
)
def test_hooked_transformer_class_needs_transformer_lens_3(tmp_path, capsys):
    from jolalens.cli import main
    from jolalens.errors import ModelError

    assert main(["train", "--out", str(tmp_path / "run"), "--model-class", "hooked-transformer"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs transformer-lens 3.x" in err[0] and "tl3-env" in err[0]
    assert not (tmp_path / "run").exists()
    with pytest.raises(ModelError, match="needs transformer-lens 3.x"):
        jolalens.load_model("smollm2-135m-instruct", model_class="hooked-transformer")
