"""Where a comparison's cells run: ``local`` (one after another,
:func:`jolalens.compare.run_compare`) or ``ray`` (one Ray task per cell,
:func:`jolalens.engines.ray_engine.run_compare_ray`)."""

from __future__ import annotations

__all__ = ["ENGINES"]

ENGINES = ("local", "ray")
