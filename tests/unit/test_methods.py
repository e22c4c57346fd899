"""The method registry (jolalens.methods): a method added through it runs in `jolalens compare`,
the command line offers it, and the registry agrees with the edit-class registry of load_edit."""

import json
from typing import Any

import pandas as pd
import pytest
import torch
from torch import Tensor, nn

import jolalens.tasks
from jolalens import TrainConfig, load_edit, methods
from jolalens import edit as edit_module
from jolalens.cli import _methods_help, build_parser
from jolalens.compare import METHODS as COMPARE_METHODS
from jolalens.compare import CompareConfig, run_compare
from jolalens.edit import Edit, ModuleHook, register_method
from jolalens.errors import JolaError
from jolalens.hf_view import o_proj_modules
from jolalens.methods import METHODS, MethodSpec, default_methods, fit_trained, get_method, register, unregister
from jolalens.models import ModelDims, hook_z_name, model_dims, model_identity
from jolalens.testing import choice_splits

DIMS = ModelDims(n_layers=2, n_heads=4, n_kv_heads=2, d_head=8, d_model=32, d_mlp=64)


@pytest.fixture
def clean_registries(monkeypatch):
    """Whatever a test registers (edit classes, methods) is gone afterwards."""
    monkeypatch.setattr(jolalens.tasks, "load_task_splits", choice_splits)
    edits, specs = dict(edit_module._METHODS), dict(METHODS)
    yield
    edit_module._METHODS.clear()
    edit_module._METHODS.update(edits)
    METHODS.clear()
    METHODS.update(specs)


def _last_layer_bias_class() -> type[Edit]:
    """A small method of the test's own: a trained bias on every head's z in the last layer."""

    @register_method
    class LastLayerBias(Edit):
        method = "test_last_layer_bias"

        def __init__(self, n_layers: int, n_heads: int, d_head: int) -> None:
            super().__init__()
            self.layer = n_layers - 1
            self.bias = nn.Parameter(torch.zeros(n_heads, d_head))
            self.model_identity: dict[str, Any] | None = None

        @classmethod
        def for_model(cls, model: nn.Module) -> "LastLayerBias":
            dims = model_dims(model)
            edit = cls(dims.n_layers, dims.n_heads, dims.d_head)
            edit.model_identity = model_identity(model)
            return edit

        def fwd_hooks(self):
            return [(hook_z_name(self.layer), lambda z, hook=None: z + self.bias.to(z.dtype))]

        def hf_hooks(self, view: nn.Module):
            def pre(module: nn.Module, args: tuple[Tensor, ...]):
                return (args[0] + self.bias.flatten().to(args[0].dtype), *args[1:])

            return [ModuleHook(o_proj_modules(view)[self.layer], pre)]

        def config_dict(self) -> dict[str, Any]:
            n_heads, d_head = self.bias.shape
            return {"n_layers": self.layer + 1, "n_heads": n_heads, "d_head": d_head}

        @classmethod
        def from_config_dict(cls, model: nn.Module, config: dict[str, Any]) -> "LastLayerBias":
            return cls(**config)

    return LastLayerBias


def test_a_method_added_through_the_registry_runs_in_compare(tiny, tmp_path, clean_registries):
    cls = _last_layer_bias_class()
    register(
        MethodSpec(
            name="last_bias",
            description="a bias on the last layer's heads (test method)",
            edit_class=cls,
            fit=fit_trained(lambda model, hp, cfg: cls.for_model(model)),
            search_space=lambda dims: [{"lr": 1e-2}, {"lr": 5e-2}, {"lr": 1e-1}],
        )
    )
    assert COMPARE_METHODS["last_bias"] is METHODS["last_bias"]  # compare reads the registry itself
    assert "last_bias" in _methods_help() and "last_bias" not in default_methods()

    train = TrainConfig(epochs=1, batch_size=4, warmup_steps=1, progress=False, max_length=64)
    config = CompareConfig(
        methods=("last_bias", "zeroshot"),
        tasks=("arc_easy",),
        n_train=9,
        n_valid=6,
        n_test=6,
        budget=2,
        train=train,
    )
    results = run_compare(tiny, config, tmp_path / "cmp", log=lambda s: None)

    row = results.set_index("method").loc["last_bias"]
    dims = model_dims(tiny)
    assert row["status"] == "done" and row["task"] == "arc_easy" and 0 <= row["score"] <= 1
    assert row["trainable_parameters"] == dims.n_heads * dims.d_head
    assert json.loads(row["hyperparameters"])["lr"] in (1e-2, 5e-2)  # the budget's two points only
    assert json.loads(row["info"])["best_epoch"] == 1
    run = tmp_path / "cmp" / "runs" / "arc_easy" / "last_bias" / "seed0"
    assert list(pd.read_csv(run / "search.csv")["lr"]) == [1e-2, 5e-2]
    assert isinstance(load_edit(run / "edit", tiny), cls)
    assert "| last_bias |" in (tmp_path / "cmp" / "summary.md").read_text()


def test_the_registry_and_the_edit_classes_agree():
    assert list(METHODS)[:7] == list(default_methods())
    for name, spec in METHODS.items():
        assert spec.name == name and spec.description
        assert edit_module._METHODS[spec.edit_class.method] is spec.edit_class, name  # load_edit reloads it
        assert spec.search_space(DIMS)  # at least one point
        assert spec.ablation_of is None or spec.ablation_of in METHODS
    own = {c for c in edit_module._METHODS.values() if c.__module__.startswith("jolalens.")}
    assert own == {spec.edit_class for spec in METHODS.values()}  # every edit class of jolalens is a method


def test_register_refuses_duplicates_and_unloadable_edit_classes(clean_registries):
    red = METHODS["red"]
    with pytest.raises(JolaError, match="'red' is already registered"):
        register(red)
    with pytest.raises(JolaError, match="not registered for load_edit"):
        register(MethodSpec(name="plain", description="x", edit_class=Edit, fit=red.fit, search_space=red.search_space))
    with pytest.raises(JolaError, match="names run directories"):
        register(
            MethodSpec(
                name="a,b", description="x", edit_class=red.edit_class, fit=red.fit, search_space=red.search_space
            )
        )
    with pytest.raises(JolaError, match="ablates 'nope'"):
        register(
            MethodSpec(
                name="red2",
                description="x",
                edit_class=red.edit_class,
                fit=red.fit,
                search_space=red.search_space,
                ablation_of="nope",
            )
        )
    assert unregister("red") is red and "red" not in METHODS
    register(red)
    assert "red" in METHODS


def test_get_method_names_the_choices_in_one_line():
    assert get_method("jola") is METHODS["jola"]
    with pytest.raises(JolaError) as err:
        get_method("prefix")
    message = str(err.value)
    assert "\n" not in message and "'prefix'" in message and "jola, iti" in message
    with pytest.raises(JolaError, match="unknown method"):
        unregister("prefix")


def test_cli_compare_defaults_and_help_come_from_the_registry():
    args = build_parser().parse_args(["compare", "--tasks", "arc_easy", "--out", "x"])
    assert args.methods == default_methods() == ("jola", "iti", "red", "lofit", "lora", "bitfit", "zeroshot")
    text = _methods_help()
    assert all(name in text for name in METHODS)
    assert methods.METHODS is COMPARE_METHODS
