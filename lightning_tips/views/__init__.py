"""Views: pictures and tables for people, logged through the one logger adapter.

- :class:`~lightning_tips.views.first_batch.FirstBatchView` — the first batch as it enters the net (R2.10);
- :class:`~lightning_tips.views.filters.FirstLayerFilters` — the first layer's filters (R4.11, P14);
- :class:`~lightning_tips.views.predictions.FixedBatchPredictions` — predictions on a fixed batch (R2.11).

Imported lazily, like the package's top level: importing one view does not import the others.
"""

from typing import TYPE_CHECKING

from lightning_tips._lazy import lazy_exports

if TYPE_CHECKING:  # pragma: no cover - the real imports, for type checkers
    from lightning_tips.views.filters import FirstLayerFilters
    from lightning_tips.views.first_batch import FirstBatchView
    from lightning_tips.views.predictions import FixedBatchPredictions

_EXPORTS = {
    "FirstBatchView": "lightning_tips.views.first_batch",
    "FirstLayerFilters": "lightning_tips.views.filters",
    "FixedBatchPredictions": "lightning_tips.views.predictions",
}

__all__ = ["FirstBatchView", "FirstLayerFilters", "FixedBatchPredictions"]


__getattr__, __dir__ = lazy_exports("lightning_tips.views", _EXPORTS, globals())
