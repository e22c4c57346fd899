"""The side-by-side benchmarks' helpers: FLOP counting, the machine rate, workers, edit import."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


machine = _load("_machine")


def _tiny_llama(attn: str = "eager"):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=97,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def test_body_params_count_every_decoder_matmul_weight():
    hf = _tiny_llama()
    shape = machine.ModelShape.from_hf_config(hf.config)
    in_layers = sum(m.weight.numel() for m in hf.model.layers.modules() if isinstance(m, torch.nn.Linear))
    assert machine.body_params(shape) == in_layers


def test_forward_flops_match_torch_flop_counter_for_one_unpadded_row():
    from torch.utils.flop_counter import FlopCounterMode

    hf = _tiny_llama("eager")  # eager attention multiplies the full n x n score matrix
    shape = machine.ModelShape.from_hf_config(hf.config)
    n = 11
    ids = torch.randint(0, shape.vocab, (1, n))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        hf(input_ids=ids)
    assert machine.forward_flops(shape, tokens=n, unembedded=n, keys=n * n) == counter.get_total_flops()


def test_causal_keys_count_cached_and_new_keys():
    assert machine.causal_keys(3) == 1 + 2 + 3
    assert machine.causal_keys(3, cached=2) == 3 + 4 + 5
    assert machine.causal_keys(0, cached=5) == 0


def test_model_shape_rejects_a_zero_size():
    with pytest.raises(ValueError, match=">= 1"):
        machine.ModelShape(n_layers=0, d_model=8, n_heads=2, n_kv_heads=1, d_head=4, d_mlp=16, vocab=10)


def test_matmul_rate_reports_a_positive_rate_at_the_current_threads():
    rate = machine.matmul_rate(n=64, seconds=0.05)
    assert rate["gflops_best"] >= rate["gflops_median"] > 0
    assert rate["threads"] == torch.get_num_threads() and rate["chunks"] >= 3
    assert rate["gflops_per_cpu_s_best"] > 0


def test_median_after_warmup_drops_the_first_steps():
    assert machine.median_after_warmup([100.0, 1.0, 3.0, 2.0], warmup=1) == 2.0
    with pytest.raises(ValueError, match="no timed steps"):
        machine.median_after_warmup([1.0], warmup=1)


def test_run_worker_reads_the_last_json_line_and_reports_failures():
    out = machine.run_worker([sys.executable, "-c", "print('log line'); print('{\"a\": 1}'); print('{\"a\": 2}')"])
    assert out["a"] == 2 and out["process_wall_s"] > 0
    with pytest.raises(RuntimeError, match="exit code 3"):
        machine.run_worker([sys.executable, "-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"])
    with pytest.raises(RuntimeError, match="no JSON"):
        machine.run_worker([sys.executable, "-c", "print('nothing')"])


def test_released_edit_imports_as_the_same_function(tiny):
    """attn_A/attn_v/log_g2/log_g1 of jola==0.0.1 land on jolalens' multiplicative/additive edit and gates."""
    peer = _load("peer_jola")
    from jolalens import model_dims

    dims = model_dims(tiny)
    gen = torch.Generator().manual_seed(1)
    tensors = {
        "attn_A": torch.randn(dims.n_layers, dims.n_heads, dims.d_head, generator=gen),
        "attn_v": torch.randn(dims.n_layers, dims.n_heads, dims.d_head, generator=gen),
        "log_g1": torch.randn(dims.n_layers, dims.n_heads, generator=gen) * 3,
        "log_g2": torch.randn(dims.n_layers, dims.n_heads, generator=gen) * 3,
    }
    edit = peer.released_edit_to_jolalens(tiny, tensors)
    z = torch.randn(2, 5, dims.n_heads, dims.d_head, generator=gen)

    def gate(log_alpha):  # the released code's evaluation gate
        return (torch.sigmoid(log_alpha) * 1.2 - 0.1).clamp(0, 1)[:, None]

    for layer in range(dims.n_layers):
        g1, g2 = gate(tensors["log_g1"][layer]), gate(tensors["log_g2"][layer])
        released = (tensors["attn_A"][layer] * g2 + 1) * z + g1 * tensors["attn_v"][layer]
        torch.testing.assert_close(edit.apply(z, layer), released)


def test_train_speed_summary_and_table():
    speed = _load("train_speed")
    run = {
        "epochs": 2,
        "wall_s": 20.0,
        "cpu_s": 10.0,
        "tokens": 75,
        "padded_tokens": 100,
        "useful_gflop": 400.0,
        "final_val_ce": 0.5,
        "peak_rss_mb": 900.0,
    }
    s = speed.summarise([run, {**run, "cpu_s": 12.0, "peak_rss_mb": 950.0}], ceiling_per_cpu_s=80.0)
    assert s["cpu_s_per_epoch"] == pytest.approx(5.5)  # the median of 5 and 6
    assert s["padding_share"] == pytest.approx(0.25)
    assert s["useful_gflop_per_cpu_s"] == pytest.approx(200 / 5.5)
    assert s["fraction_of_matmul"] == pytest.approx(200 / 5.5 / 80)
    assert s["peak_rss_mb"] == 950.0
    result = {
        "task": "arc_easy",
        "protocol": "label",
        "n_train": 16,
        "command": "python benchmarks/train_speed.py",
        "machine": {"platform": "x", "torch": "2"},
        "threads": 1,
        "matmul": {"gflops_per_cpu_s_best": 80.0},
        "summary": {"plain": s, "checkpointed": {**s, "cpu_s_per_epoch": 11.0}},
    }
    table = speed.markdown(result)
    assert "| checkpointed | 11.0 | 0.50x | 25% |" in table
    assert speed.variant_options("grouped+checkpointed", 4) == {"length_grouping": 4, "checkpoint_activations": True}
    with pytest.raises(SystemExit):
        speed.parse_args(["--variants", "plain,turbo"])


def test_write_report_writes_both_files_whole(tmp_path, capsys):
    out = tmp_path / "sub" / "report"
    machine.write_report(out, {"a": 1}, "# table\n")
    assert (tmp_path / "sub" / "report.json").read_text() == '{\n  "a": 1\n}\n'
    assert (tmp_path / "sub" / "report.md").read_text() == "# table\n"
    assert "# table" in capsys.readouterr().out
    with pytest.raises(TypeError):  # not JSON-serialisable: the earlier report stays as it was
        machine.write_report(out, {"a": object()}, "# other\n")
    assert (tmp_path / "sub" / "report.json").read_text() == '{\n  "a": 1\n}\n'
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["report.json", "report.md"]
    assert (
        machine.command_line("/x/benchmarks/train_speed.py", ["--n", "2"]) == "python benchmarks/train_speed.py --n 2"
    )
