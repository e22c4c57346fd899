"""Run once in every Ray worker of the tests: the synthetic task data instead of the real loader."""

from __future__ import annotations


def use_choice_splits() -> None:
    import jolalens.tasks
    from jolalens.testing import choice_splits

    jolalens.tasks.load_task_splits = choice_splits
