"""Checks: each file holds pure verdict functions, then one thin Callback.

Every check observes only — with two explicit exceptions, the *guards*, which act when (and only when)
you ask them to:

- :class:`~lightning_tips.checks.nonfinite.NonFiniteGuard` — ``action="stop"`` stops every rank,
  ``"skip"`` drops the non-finite update, ``"raise"`` raises :class:`~lightning_tips.TipError`
  (``"warn"`` only observes);
- :class:`~lightning_tips.checks.lr_decay.LRDecayGuard` — ``floor=...`` clamps the learning rate
  (without ``floor`` it only observes).

The pre-flight machinery is ``_preflight.py`` (runner, card, work plan, cross-rank verdicts) and
``_trace.py`` (re-running the user's ``training_step`` on a copy and recording its loss calls).
"""
