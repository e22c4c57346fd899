"""The methods JoLA is compared with, each an :class:`~jolalens.Edit` like ``JolaEdit``.

See ``../shared/spec/baselines.md`` in the project for where each intervenes and why.
"""

from ._common import Projection, projection_shape
from .bitfit import BitFitConfig, BitFitEdit
from .iti import ItiConfig, ItiEdit, fit_iti, probe_accuracies
from .lofit import LofitConfig, LofitEdit, LofitResult, train_lofit
from .lora import LoraConfig, LoraEdit
from .loreft import LoreftConfig, LoreftEdit
from .red import RedConfig, RedEdit
from .repe import RepeConfig, RepeEdit, fit_repe
from .zeroshot import ZeroShotConfig, ZeroShotEdit

__all__ = [
    "BitFitConfig",
    "BitFitEdit",
    "ItiConfig",
    "ItiEdit",
    "LofitConfig",
    "LofitEdit",
    "LofitResult",
    "LoraConfig",
    "LoraEdit",
    "LoreftConfig",
    "LoreftEdit",
    "Projection",
    "RedConfig",
    "RedEdit",
    "RepeConfig",
    "RepeEdit",
    "ZeroShotConfig",
    "ZeroShotEdit",
    "fit_iti",
    "fit_repe",
    "probe_accuracies",
    "projection_shape",
    "train_lofit",
]
