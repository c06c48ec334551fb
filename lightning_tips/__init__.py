"""lightning_tips: the advice for training neural networks, as Lightning callbacks.

Checks give findings (stable codes, :class:`TipWarning`), fixes change the model or the loop
when asked, views show the training in W&B, TensorBoard or files. :class:`Recipe` composes them all.

Example:
    >>> import lightning_tips as lt
    >>> "nonfinite-loss" in lt.CODES
    True
    >>> callbacks = [lt.Recipe()]
"""

from typing import TYPE_CHECKING

from lightning_tips._lazy import lazy_exports

if TYPE_CHECKING:  # pragma: no cover - the real imports, for type checkers
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
    from lightning_tips.findings import CODES, Finding, Severity, TipError, TipWarning, explain
    from lightning_tips.fixes.clipping import GradientClipping
    from lightning_tips.fixes.early_stopping import EarlyStopping
    from lightning_tips.fixes.forget_gate import ForgetGateBias, ForgetGateBiasMixin, set_forget_gate_bias_
    from lightning_tips.fixes.init import WeightInit, init_weights_
    from lightning_tips.fixes.output_bias import OutputBiasInit, OutputBiasInitMixin, init_output_bias_
    from lightning_tips.fixes.sampler import BalancedSampler, balanced_sampler
    from lightning_tips.fixes.snapshot import SnapshotEnsemble
    from lightning_tips.preflight import Preflight
    from lightning_tips.recipe import Recipe
    from lightning_tips.views.filters import FirstLayerFilters
    from lightning_tips.views.first_batch import FirstBatchView
    from lightning_tips.views.predictions import FixedBatchPredictions

# Lazy: ``import lightning_tips`` (and the ``lightning-tips`` command) does not import Lightning or
# torch until a callback is used.
_EXPORTS = {
    "TipCallback": "lightning_tips._callback",
    "TipComposite": "lightning_tips._callback",
    "report": "lightning_tips._report",
    "ActivationStats": "lightning_tips.checks.activations",
    "BatchMixingCheck": "lightning_tips.checks.batch_mixing",
    "batch_mixing": "lightning_tips.checks.batch_mixing",
    "LearningCurves": "lightning_tips.checks.curves",
    "DataChecks": "lightning_tips.checks.data",
    "GradientStats": "lightning_tips.checks.gradients",
    "InitialLossCheck": "lightning_tips.checks.init_loss",
    "InputIndependenceCheck": "lightning_tips.checks.input_independence",
    "LRDecayGuard": "lightning_tips.checks.lr_decay",
    "MissingBiasCheck": "lightning_tips.checks.missing_bias",
    "NonFiniteGuard": "lightning_tips.checks.nonfinite",
    "OutputActivationCheck": "lightning_tips.checks.output_activation",
    "OverfitBatchCheck": "lightning_tips.checks.overfit_batch",
    "Preflight": "lightning_tips.preflight",
    "CODES": "lightning_tips.findings",
    "Finding": "lightning_tips.findings",
    "Severity": "lightning_tips.findings",
    "TipError": "lightning_tips.findings",
    "TipWarning": "lightning_tips.findings",
    "explain": "lightning_tips.findings",
    "GradientClipping": "lightning_tips.fixes.clipping",
    "EarlyStopping": "lightning_tips.fixes.early_stopping",
    "ForgetGateBias": "lightning_tips.fixes.forget_gate",
    "ForgetGateBiasMixin": "lightning_tips.fixes.forget_gate",
    "set_forget_gate_bias_": "lightning_tips.fixes.forget_gate",
    "WeightInit": "lightning_tips.fixes.init",
    "init_weights_": "lightning_tips.fixes.init",
    "OutputBiasInit": "lightning_tips.fixes.output_bias",
    "OutputBiasInitMixin": "lightning_tips.fixes.output_bias",
    "init_output_bias_": "lightning_tips.fixes.output_bias",
    "BalancedSampler": "lightning_tips.fixes.sampler",
    "balanced_sampler": "lightning_tips.fixes.sampler",
    "SnapshotEnsemble": "lightning_tips.fixes.snapshot",
    "Recipe": "lightning_tips.recipe",
    "FirstLayerFilters": "lightning_tips.views.filters",
    "FirstBatchView": "lightning_tips.views.first_batch",
    "FixedBatchPredictions": "lightning_tips.views.predictions",
}


__getattr__, __dir__ = lazy_exports("lightning_tips", _EXPORTS, globals())

__version__ = "0.1.0"

__all__ = [
    "CODES",
    "ActivationStats",
    "BalancedSampler",
    "BatchMixingCheck",
    "DataChecks",
    "EarlyStopping",
    "Finding",
    "FirstBatchView",
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
