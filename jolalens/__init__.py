"""jolalens: JoLA activation editing on TransformerLens ``hook_z``, and where it happens."""

from .errors import DataError, EditLoadError, JolaError, ModelError, TrainingError
from .models import (
    DEFAULT_MODEL,
    EMBEDDED_MODELS,
    ModelDims,
    load_model,
    model_dims,
    model_identity,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDED_MODELS",
    "DataError",
    "EditLoadError",
    "JolaError",
    "ModelDims",
    "ModelError",
    "TrainingError",
    "__version__",
    "load_model",
    "model_dims",
    "model_identity",
]
