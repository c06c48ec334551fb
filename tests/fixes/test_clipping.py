"""GradientClipping (T8): norm, value and adaptive clipping on Lightning's path, its findings and state."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_tips.fixes.clipping import GradientClipping, clip_figures, clip_gradients_, percentile_threshold
from tests.helpers.data import DigitsDataModule
from tests.helpers.fitting import fit
from tests.helpers.loop_models import GradRecorder
from tests.helpers.models import Classifier, ManualClassifier, mlp
from tests.helpers.probes import file_scalars


def _fit(make_trainer, *callbacks, model=None, **kwargs) -> pl.Trainer:
    """Seed 0, 12 train batches (override any), no validation; ``model`` by default a fresh MLP classifier."""
    return fit(make_trainer, model or (lambda: Classifier(mlp(hidden=32), lr=1e-2)), DigitsDataModule(batch_size=32),
               callbacks=callbacks, warns="pass", limit_val_batches=0, **{"limit_train_batches": 12, **kwargs}).trainer


_scalars = file_scalars


# --- pure functions --------------------------------------------------------------------------------
def _params(*grads: torch.Tensor) -> list[torch.nn.Parameter]:
    ps = []
    for g in grads:
        p = torch.nn.Parameter(torch.zeros_like(g))
        p.grad = g.clone()
        ps.append(p)
    return ps


def test_clip_gradients_norm_matches_torch_reference():
    torch.manual_seed(0)
    grads = [torch.randn(5, 3) * 4, torch.randn(7)]
    ours, ref = _params(*grads), _params(*grads)
    total = clip_gradients_(ours, 1.5, "norm")
    ref_total = torch.nn.utils.clip_grad_norm_(ref, 1.5)
    assert torch.equal(total, ref_total)
    for a, b in zip(ours, ref):
        assert torch.equal(a.grad, b.grad)


def test_clip_gradients_tensor_bound_equals_float_bound():
    torch.manual_seed(1)
    grads = [torch.randn(4, 4) * 3, torch.randn(2)]
    a, b = _params(*grads), _params(*grads)
    ta = clip_gradients_(a, torch.tensor(0.7), "norm", norm_type=2.0)
    tb = clip_gradients_(b, 0.7, "norm")
    assert torch.allclose(ta, tb)
    for pa, pb in zip(a, b):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6)
    assert math.isclose(float(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in a]))), 0.7, rel_tol=1e-4)


def test_clip_gradients_value_and_no_grads():
    ps = _params(torch.tensor([0.1, -5.0, 2.0]))
    assert float(clip_gradients_(ps, 1.0, "value")) == 5.0
    assert torch.equal(ps[0].grad, torch.tensor([0.1, -1.0, 1.0]))
    no_grad = torch.nn.Parameter(torch.zeros(2))
    assert float(clip_gradients_([no_grad], 1.0)) == 0.0
    with pytest.raises(TypeError, match="float bound"):
        clip_gradients_(_params(torch.ones(2)), torch.tensor(1.0), "value")


def test_percentile_threshold_matches_numpy_and_ignores_nan():
    torch.manual_seed(2)
    x = torch.rand(200) * 10
    buf = torch.cat([x, torch.full((50,), math.nan)])
    for q in (10.0, 50.0, 90.0):
        assert math.isclose(float(percentile_threshold(buf, q)), float(np.percentile(x.numpy(), q)), rel_tol=1e-5)
    assert math.isinf(float(percentile_threshold(torch.full((4,), math.nan), 10.0)))


def test_clip_figures():
    f = clip_figures(0, 0, 0.0, 0, 0.0)
    assert f["clip_rate"] == 0.0 and math.isnan(f["mean_preclip"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "both"}, "mode"),
        ({"max_norm": None}, "max_norm"),
        ({"max_norm": -1.0}, "max_norm"),
        ({"adaptive": True, "mode": "value"}, "adaptive"),
        ({"percentile": 0.0}, "percentile"),
        ({"history": 0}, "history"),
        ({"norm_type": 0.0}, "norm_type"),
        ({"every_n_steps": -1}, "every_n_steps"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GradientClipping(**kwargs)


# --- through Trainer.fit ---------------------------------------------------------------------------
def test_norm_mode_optimizer_never_sees_norm_above_bound(make_trainer, tmp_path):
    clip, seen = GradientClipping(max_norm=0.25, every_n_steps=4), GradRecorder()
    _fit(make_trainer, clip, seen)
    assert len(seen.norms) == 12
    assert max(seen.norms) <= 0.25 * (1 + 1e-4)
    [finding] = clip.findings
    assert finding.code == "gradient-clipping" and finding.severity.value == "warning"
    assert finding.figures["steps"] == 12 and finding.figures["clip_rate"] > 0.5
    assert finding.figures["max_preclip"] > 0.25
    scalars = _scalars(tmp_path)  # no logger: scalars land in <root>/tips/scalars.csv
    assert len(scalars["tips/grad_norm_preclip"]) == 3  # steps 0, 4, 8
    assert all(v > 0.25 for v in scalars["tips/grad_norm_preclip"])
    assert 0.5 < scalars["tips/clip_fraction"][-1] <= 1.0


def test_norm_mode_loose_bound_is_info_and_leaves_training_unchanged(make_trainer):
    pl.seed_everything(0)
    plain = Classifier(mlp(hidden=32), lr=1e-2)
    _fit(make_trainer, model=plain)
    clip = GradientClipping(max_norm=1e4, every_n_steps=0)
    pl.seed_everything(0)
    clipped = Classifier(mlp(hidden=32), lr=1e-2)
    _fit(make_trainer, clip, model=clipped)
    [finding] = clip.findings
    assert finding.severity.value == "info" and finding.figures["clip_rate"] == 0.0
    # a bound never reached multiplies by exactly 1.0: the weights are bit-identical
    for a, b in zip(plain.parameters(), clipped.parameters()):
        assert torch.equal(a, b)


def test_value_mode_bounds_every_element(make_trainer):
    clip, seen = GradientClipping(mode="value", max_norm=0.01, every_n_steps=5), GradRecorder()
    _fit(make_trainer, clip, seen)
    assert max(seen.max_abs) <= 0.01
    [finding] = clip.findings
    assert "max |g|" in finding.message and finding.figures["max_preclip"] > 0.01


@pytest.mark.parametrize(("percentile", "low", "high"), [(10.0, 0.7, 0.97), (90.0, 0.03, 0.25)])
def test_adaptive_mode_clips_about_100_minus_percentile(make_trainer, percentile, low, high):
    clip = GradientClipping(adaptive=True, max_norm=None, percentile=percentile, history=1000, every_n_steps=10)
    before, after = GradRecorder(), GradRecorder()  # hooks run in list order: before, clip, after
    # a tiny SGD lr keeps the weights ~fixed: the norms are stationary batch-to-batch noise, as AutoClip assumes
    model = Classifier(mlp(hidden=32), lr=1e-6, optimizer="sgd")
    _fit(make_trainer, before, clip, after, model=model, limit_train_batches=47)
    [finding] = clip.findings
    assert finding.severity.value == "info"  # adaptive: the rate is set by the percentile
    assert low <= finding.figures["clip_rate"] <= high
    assert clip._buffer is not None and int(torch.isfinite(clip._buffer).sum()) == 47
    # AutoClip reference: step k is clipped at the percentile of the pre-clip norms 0..k
    pre = np.array(before.norms)
    for k, post in enumerate(after.norms):
        threshold = np.percentile(pre[: k + 1], percentile)
        assert math.isclose(post, min(pre[k], threshold), rel_tol=1e-4)


def test_refuses_to_run_with_gradient_clip_val(make_trainer):
    with pytest.raises(ValueError, match="gradient_clip_val"):
        _fit(make_trainer, GradientClipping(), gradient_clip_val=1.0)


def test_bf16_mixed_on_cpu(make_trainer):
    clip, seen = GradientClipping(max_norm=0.25, every_n_steps=3), GradRecorder()
    _fit(make_trainer, clip, seen, precision="bf16-mixed")
    assert max(seen.norms) <= 0.25 * (1 + 1e-3)
    assert clip.findings[0].figures["clip_rate"] > 0.5


def test_manual_optimization_is_skipped_with_info(make_trainer):
    clip = GradientClipping(max_norm=0.01)
    _fit(make_trainer, clip, model=ManualClassifier(mlp(hidden=16), report_loss=True))
    [finding] = clip.findings
    assert finding.severity.value == "info" and "manual optimization" in finding.message
    assert clip._steps == 0


def test_state_round_trip_through_checkpoint(make_trainer, tmp_path):
    clip = GradientClipping(adaptive=True, max_norm=None, percentile=50.0, history=16, every_n_steps=0)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    _fit(make_trainer, clip, ckpt, limit_train_batches=6, enable_checkpointing=True)
    state = clip.state_dict()
    assert state["steps"] == 6 and int(torch.isfinite(state["buffer"]).sum()) == 6
    assert state["findings"]

    resumed = GradientClipping(adaptive=True, max_norm=None, percentile=50.0, history=16, every_n_steps=0)
    trainer = make_trainer(callbacks=[resumed], limit_train_batches=6, limit_val_batches=0, max_epochs=3)
    trainer.fit(Classifier(mlp(hidden=32), lr=1e-2), DigitsDataModule(batch_size=32), ckpt_path=ckpt.last_model_path)
    assert resumed._steps == 18  # 6 restored + 12 new
    assert resumed._buffer is not None and int(torch.isfinite(resumed._buffer).sum()) == 16  # ring buffer wrapped
    assert resumed.findings[-1].figures["steps"] == 18
    # the restored prefix of the history is the one saved
    direct = GradientClipping(adaptive=True, max_norm=None, percentile=50.0, history=16)
    direct.load_state_dict(state)
    assert direct._buffer is not None and torch.equal(direct._buffer[:6], state["buffer"][:6])
    assert direct._steps == 6 and int(direct._clipped) == int(state["clipped"])
