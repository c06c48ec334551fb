"""The base class of every lightning_tips callback: findings, state, and the end-of-fit summary."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from lightning_tips import _ddp
from lightning_tips._console import render_table
from lightning_tips._loggers import log_table
from lightning_tips._report import report
from lightning_tips._validate import check_callbacks
from lightning_tips.findings import Finding, FindingsLog, Severity

__all__ = ["TipCallback", "TipComposite", "summary_rows"]

SUMMARY_COLUMNS = ["code", "severity", "skipped", "step", "where", "message", "advice"]


def summary_rows(findings: list[Finding]) -> list[list[Any]]:
    """Rows of the summary table, errors first; ``skipped`` marks a check that could not apply."""
    ordered = sorted(findings, key=lambda f: -f.severity.rank)
    return [[f.code, f.severity.value, "skipped" if f.skipped else "", f.step, f.module or "", f.message, f.advice]
            for f in ordered]


class TipCallback(Callback):
    """Base class: keeps this callback's findings, de-duplicates them, checkpoints them, and — when
    it is the first lightning_tips callback of the Trainer — prints, at ``teardown`` of the fit
    (after every callback's ``on_train_end``/``on_fit_end``), the end-of-fit summary of every
    lightning_tips callback's findings (a table sized to the terminal; also logged as a table, one
    row per finding, to every logger).

    The base owns the lifecycle — ``setup``, ``teardown``, ``on_exception``, ``state_dict`` and
    ``load_state_dict`` — and a subclass may not override those (a ``TypeError`` when the class is
    defined), so none can forget ``super()`` and lose the summary or the checkpointed findings.
    Subclasses call :meth:`report` and override the small named steps instead:

    * :meth:`_begin_fit` — reset per-fit state (at ``setup`` of a fit, after the findings are cleared);
    * :meth:`_end_fit` — release hooks and buffers when the fit ends (``teardown`` of the fit, or
      ``on_exception``), before the summary is printed;
    * :meth:`_extra_state` / :meth:`_load_extra_state` — what the callback adds to its checkpoint state.

    Example:
        >>> class CountSteps(TipCallback):
        ...     def _begin_fit(self, trainer, pl_module):
        ...         self.steps = 0
        ...     def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        ...         self.steps += 1
        ...     def _extra_state(self):
        ...         return {"steps": self.steps}
        >>> class Forgetful(TipCallback):
        ...     def teardown(self, trainer, pl_module, stage):
        ...         pass
        Traceback (most recent call last):
        ...
        TypeError: Forgetful overrides TipCallback.teardown, which the base class owns: override the step `_end_fit` instead.
    """

    _LIFECYCLE_STEPS: ClassVar[dict[str, str]] = {
        "setup": "_begin_fit", "teardown": "_end_fit", "on_exception": "_end_fit",
        "state_dict": "_extra_state", "load_state_dict": "_load_extra_state",
    }
    _owns_lifecycle: ClassVar[bool] = False  # set in a class body that re-implements the lifecycle (composites)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("_owns_lifecycle", False):
            return
        for hook, step in TipCallback._LIFECYCLE_STEPS.items():
            if hook in cls.__dict__:
                raise TypeError(
                    f"{cls.__name__} overrides TipCallback.{hook}, which the base class owns: "
                    f"override the step `{step}` instead."
                )

    def __init__(self) -> None:
        self._findings_log = FindingsLog()
        self._owns_findings_log = True
        self._summarised = False

    @property
    def findings(self) -> list[Finding]:
        """The findings reported this fit, in order."""
        return list(self._findings_log.findings)

    def report(
        self,
        trainer: pl.Trainer | None,
        code: str,
        severity: Severity | str,
        message: str,
        *,
        advice: str = "",
        module: str | None = None,
        figures: Mapping[str, float] | None = None,
        step: int | None = None,
        skipped: bool = False,
    ) -> Finding | None:
        """Build and :func:`~lightning_tips._report.report` a finding; return it as recorded (an
        ``info`` "consequence of [root]" when an earlier finding explains it) if it was new.
        ``skipped=True`` marks an ``info`` that says the check could not apply (no remedy advice)."""
        if step is None and trainer is not None:
            step = trainer.global_step
        finding = Finding(
            code, Severity(severity), message, advice, step, module, figures or {}, skipped=skipped
        )
        return self._findings_log.findings[-1] if report(finding, trainer, self._findings_log) else None

    def _share_findings_log(self, log: FindingsLog) -> None:
        # a composite's log: the composite checkpoints it, once
        self._findings_log = log
        self._owns_findings_log = False

    # --- the steps subclasses override ------------------------------------------------------------
    def _begin_fit(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Reset per-fit state (``setup`` of a fit; a resumed fit reloads the state afterwards)."""

    def _end_fit(self, trainer: pl.Trainer, pl_module: pl.LightningModule, error: BaseException | None) -> None:
        """Release what the fit held (hooks, buffers): at ``teardown`` of the fit (``error`` is
        ``None``) and at ``on_exception``; may run twice (an exception, then teardown)."""

    def _extra_state(self) -> dict[str, Any]:
        """This callback's part of its checkpoint state (beside the findings)."""
        return {}

    def _load_extra_state(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`_extra_state` from a checkpoint (keys may be missing in older checkpoints)."""

    # --- lifecycle (owned by the base) -------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)  # a second base (Lightning's EarlyStopping) has its own
        _ddp.setup(trainer)  # the pack's own process group: every rank, at the same point
        if stage == "fit":
            self._findings_log.clear()
            self._summarised = False
            self._begin_fit(trainer, pl_module)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        # after every callback's on_train_end/on_fit_end: findings reported there are included
        if stage == "fit":
            self._end_fit(trainer, pl_module, None)
            self._summarise(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        self._end_fit(trainer, pl_module, exception)
        self._summarise(trainer)

    def _summarise(self, trainer: pl.Trainer) -> None:
        owners = [cb for cb in trainer.callbacks if isinstance(cb, TipCallback)]  # type: ignore[attr-defined]
        if not owners or owners[0] is not self or self._summarised:
            return
        self._summarised = True
        findings = [f for cb in owners for f in cb.findings]
        if not trainer.is_global_zero:
            return
        rows = summary_rows(findings)
        title = f"lightning_tips: {len(findings)} finding(s)"
        if rows:  # sized to the terminal
            print(render_table(title, SUMMARY_COLUMNS, rows), flush=True)
        else:
            print(f"{title} — nothing to report.", flush=True)
        log_table(trainer, "tips/summary", SUMMARY_COLUMNS, rows)  # to the loggers: one row per finding

    # --- state (owned by the base) -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self._owns_findings_log:
            state.update(self._findings_log.state_dict())
        state.update(self._extra_state())
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if self._owns_findings_log:
            self._findings_log.load_state_dict(state_dict)
        self._load_extra_state(state_dict)


_HOOKS = tuple(
    name
    for name, value in vars(Callback).items()
    if callable(value) and (name.startswith("on_") or name in ("setup", "teardown"))
    and name not in ("teardown", "on_exception", "setup")
)


class TipComposite(TipCallback):
    """A TipCallback made of child callbacks: every Lightning hook is forwarded to the children
    that override it (in order), state is saved per child, findings are the children's.

    ``Recipe`` and ``Preflight`` are composites, so the whole pack is one entry of
    ``Trainer(callbacks=...)`` and one LightningCLI flag.
    """

    _owns_lifecycle: ClassVar[bool] = True  # forwards the lifecycle to its children, then runs the base's

    def __init__(self, children: list[Callback] | None = None) -> None:
        super().__init__()
        check_callbacks("children", children, optional=True)
        self._children: list[Callback] = []
        self._by_hook: dict[str, list[Callback]] = {hook: [] for hook in (*_HOOKS, "setup", "teardown", "on_exception")}
        for child in children or []:
            self.add_child(child)

    def add_child(self, child: Callback) -> None:
        """Compose ``child``; a TipCallback child reports into this composite's findings log, so
        the whole composite de-duplicates as one (two checks giving the same verdict speak once)."""
        self._children.append(child)
        if isinstance(child, TipCallback):
            child._share_findings_log(self._findings_log)
        self._by_hook = {
            hook: [c for c in self._children if getattr(type(c), hook) is not getattr(Callback, hook)]
            for hook in (*_HOOKS, "setup", "teardown", "on_exception")
        }

    @property
    def children(self) -> list[Callback]:
        """The composed callbacks, in the order their hooks run."""
        return list(self._children)

    def _share_findings_log(self, log: FindingsLog) -> None:
        super()._share_findings_log(log)
        for c in self._children:
            if isinstance(c, TipCallback):
                c._share_findings_log(log)

    def child(self, cls: type[Callback]) -> Callback | None:
        """The first child that is an instance of ``cls`` (searching nested composites too)."""
        for c in self._children:
            if isinstance(c, cls):
                return c
            if isinstance(c, TipComposite) and (found := c.child(cls)) is not None:
                return found
        return None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        for c in self._by_hook["setup"]:
            c.setup(trainer, pl_module, stage)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for c in self._by_hook["teardown"]:
            c.teardown(trainer, pl_module, stage)
        super().teardown(trainer, pl_module, stage)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        for c in self._by_hook["on_exception"]:
            c.on_exception(trainer, pl_module, exception)
        super().on_exception(trainer, pl_module, exception)

    def _child_key(self, index: int, child: Callback) -> str:
        return f"{index}:{child.state_key}"

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["children"] = {self._child_key(i, c): c.state_dict() for i, c in enumerate(self._children)}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        saved = state_dict.get("children", {})
        for i, c in enumerate(self._children):
            key = self._child_key(i, c)
            if key in saved:
                c.load_state_dict(saved[key])


def _forwarder(hook: str) -> Any:
    def forward(self: TipComposite, *args: Any, **kwargs: Any) -> None:
        for c in self._by_hook[hook]:
            getattr(c, hook)(*args, **kwargs)

    forward.__name__ = hook
    forward.__qualname__ = f"TipComposite.{hook}"
    forward.__doc__ = f"Forward ``{hook}`` to the children that implement it."
    return forward


for _hook in _HOOKS:
    setattr(TipComposite, _hook, _forwarder(_hook))
