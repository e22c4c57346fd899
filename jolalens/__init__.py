"""jolalens: JoLA activation editing on TransformerLens ``hook_z``, and where it happens."""

from . import baselines
from .data import Example, PromptStyle, read_jsonl, write_jsonl
from .edit import Backend, Edit, EditHandle, load_edit
from .errors import DataError, EditLoadError, JolaError, ModelError, TrainingError
from .gates import HardConcrete
from .hf_view import hf_view
from .jola import EditType, GateMode, JolaConfig, JolaEdit, selected_heads
from .merge import export_hf_checkpoint, merge_edit
from .models import (
    DEFAULT_MODEL,
    EMBEDDED_MODELS,
    ModelDims,
    load_model,
    model_dims,
    model_identity,
)
from .train import (
    PenaltyMode,
    SelectionMetric,
    SparsityConfig,
    TrainConfig,
    TrainResult,
    train_edit,
    train_jola,
    validation_ce,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDED_MODELS",
    "Backend",
    "DataError",
    "Edit",
    "EditHandle",
    "EditLoadError",
    "EditType",
    "Example",
    "GateMode",
    "HardConcrete",
    "JolaConfig",
    "JolaEdit",
    "JolaError",
    "ModelDims",
    "ModelError",
    "PenaltyMode",
    "PromptStyle",
    "SelectionMetric",
    "SparsityConfig",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "__version__",
    "export_hf_checkpoint",
    "hf_view",
    "load_edit",
    "load_model",
    "merge_edit",
    "model_dims",
    "model_identity",
    "read_jsonl",
    "selected_heads",
    "baselines",
    "train_edit",
    "train_jola",
    "validation_ce",
    "write_jsonl",
]
