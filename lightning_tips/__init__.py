"""lightning_tips: the advice for training neural networks, as Lightning callbacks.

Checks give findings (stable codes, :class:`TipWarning`), fixes change the model or the loop
when asked, views show the training in W&B, TensorBoard or files. :class:`Recipe` composes them all.

Example:
    >>> import lightning_tips as lt
    >>> "nonfinite-loss" in lt.CODES
    True
    >>> callbacks = [lt.Recipe()]
"""

from lightning_tips._callback import TipCallback, TipComposite
from lightning_tips._report import report
from lightning_tips.checks.activations import ActivationStats
from lightning_tips.checks.batch_mixing import BatchMixingCheck, batch_mixing
from lightning_tips.checks.curves import LearningCurves
from lightning_tips.checks.data import DataChecks
from lightning_tips.checks.gradients import GradientStats
from lightning_tips.checks.init_loss import InitialLossCheck
from lightning_tips.checks.input_independence import InputIndependenceCheck
from lightning_tips.checks.lr_decay import LRDecayGuard
from lightning_tips.checks.missing_bias import MissingBiasCheck
from lightning_tips.checks.nonfinite import NonFiniteGuard
from lightning_tips.checks.output_activation import OutputActivationCheck
from lightning_tips.checks.overfit_batch import OverfitBatchCheck
from lightning_tips.checks.preflight import Preflight
from lightning_tips.findings import CODES, Finding, Severity, TipError, TipWarning, explain
from lightning_tips.fixes.clipping import GradientClipping
from lightning_tips.fixes.early_stopping import EarlyStopping
from lightning_tips.fixes.forget_gate import ForgetGateBias, ForgetGateBiasMixin, set_forget_gate_bias_
from lightning_tips.fixes.init import WeightInit, init_weights_
from lightning_tips.fixes.output_bias import OutputBiasInit, OutputBiasInitMixin, init_output_bias_
from lightning_tips.fixes.sampler import BalancedSampler, balanced_sampler
from lightning_tips.fixes.snapshot import SnapshotEnsemble
from lightning_tips.recipe import Recipe
from lightning_tips.views.filters import FirstLayerFilters
from lightning_tips.views.predictions import FixedBatchPredictions

__version__ = "0.1.0"

__all__ = [
    "CODES",
    "ActivationStats",
    "BalancedSampler",
    "BatchMixingCheck",
    "DataChecks",
    "EarlyStopping",
    "Finding",
    "FirstLayerFilters",
    "FixedBatchPredictions",
    "ForgetGateBias",
    "ForgetGateBiasMixin",
    "GradientClipping",
    "GradientStats",
    "InitialLossCheck",
    "InputIndependenceCheck",
    "LRDecayGuard",
    "LearningCurves",
    "MissingBiasCheck",
    "NonFiniteGuard",
    "OutputActivationCheck",
    "OutputBiasInit",
    "OutputBiasInitMixin",
    "OverfitBatchCheck",
    "Preflight",
    "Recipe",
    "Severity",
    "SnapshotEnsemble",
    "TipCallback",
    "TipComposite",
    "TipError",
    "TipWarning",
    "WeightInit",
    "balanced_sampler",
    "batch_mixing",
    "explain",
    "init_output_bias_",
    "init_weights_",
    "report",
    "set_forget_gate_bias_",
]
