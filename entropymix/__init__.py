"""entropymix: EntropyMix and SPEEDLoss for semi-supervised semantic segmentation.

Plug-and-play pieces of *Self Pseudo Entropy Knowledge Distillation for Semi-Supervised
Semantic Segmentation* (SPEED, IEEE TCSVT 2024, doi:10.1109/TCSVT.2024.3375789).
"""

from . import functional
from .functional import pair_within_batch
from .loss import SPEEDLoss, logit_distillation, relation_distillation
from .mix import ClassMix, CutMix, EntropyMix, MixPlan
from .tap import FeatureTap

__version__ = "0.3.0"  # the one place the version is set (setup.cfg reads it); see CHANGELOG.md

__all__ = [
    "EntropyMix", "CutMix", "ClassMix", "MixPlan", "SPEEDLoss", "FeatureTap", "relation_distillation", "logit_distillation",
    "pair_within_batch", "functional", "__version__",
]
