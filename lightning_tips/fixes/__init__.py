"""Fixes: change the model or the loop, only when the user adds them. In-place function + Callback (+ Mixin)."""
