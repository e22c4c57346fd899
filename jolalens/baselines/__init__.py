"""The methods JoLA is compared with, each an :class:`~jolalens.Edit` like ``JolaEdit``.

See ``../shared/spec/baselines.md`` in the project for where each intervenes and why.
"""

from ._common import Projection, projection_shape
from .bitfit import BitFitConfig, BitFitEdit
from .iti import ItiConfig, ItiEdit, fit_iti, probe_accuracies
from .lofit import LofitConfig, LofitEdit, LofitResult, train_lofit
from .lora import LoraConfig, LoraEdit
from .red import RedConfig, RedEdit
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
    "Projection",
    "RedConfig",
    "RedEdit",
    "ZeroShotConfig",
    "ZeroShotEdit",
    "fit_iti",
    "probe_accuracies",
    "projection_shape",
    "train_lofit",
]
