"""``lightning_tips.functional``: the pure functions behind the callbacks, in one namespace (#13)."""

from __future__ import annotations

import inspect

from lightning_tips import functional as LF


def test_every_function_is_exported_documented_and_typed() -> None:
    assert len(LF.__all__) >= 40 and sorted(LF.__all__) == LF.__all__
    assert LF.__all__[0] == "Verdict" and inspect.isclass(LF.Verdict)  # the one type the verdicts return
    for name in LF.__all__[1:]:
        fn = getattr(LF, name)
        assert inspect.isfunction(fn), name
        assert fn.__doc__ and len(fn.__doc__.split()) > 8, f"{name} needs a docstring"
        assert "return" in fn.__annotations__, f"{name} needs a return type"


def test_the_verdicts_are_the_callbacks_own_functions() -> None:
    from lightning_tips.checks import _curves, gradients

    assert LF.overfitting_verdict is _curves.overfitting_verdict
    assert LF.exploding_verdict is gradients.exploding_verdict


def test_every_verdict_function_returns_the_one_verdict_type() -> None:
    verdicts = [n for n in LF.__all__ if n.endswith("_verdict")]
    assert len(verdicts) >= 12
    for name in verdicts:
        hint = str(inspect.signature(getattr(LF, name)).return_annotation)
        assert hint.startswith(("Verdict", "NormalizationVerdict")), f"{name} returns {hint}"


def test_activation_findings_is_the_former_name_of_activation_verdicts() -> None:
    from lightning_tips.checks import activations

    assert LF.activation_verdicts is activations.activation_verdicts
    assert LF.activation_findings is LF.activation_verdicts
