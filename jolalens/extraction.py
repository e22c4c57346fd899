"""Reading the answer out of a generated continuation (``Protocol.GEN``).

The paper keeps the first line of the output and reads it with an extractor; the ones here are
anchored and whole-word, avoiding the released code's bugs (B6: "Based on..." is not answer B;
BoolQ is case-insensitive), and a line that names two different labels lists the options
rather than choosing one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .tasks.registry import Extraction, Task, get_task

__all__ = ["extract_answer", "first_line", "labels_named"]


def first_line(text: str) -> str:
    """The first non-empty line of a continuation, stripped (the paper keeps the first line)."""
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def _join_spaced_labels(labels: Sequence[str], line: str) -> str:
    """``line`` with every word-and-number label written with a space ("option 2") joined up."""
    for lab in labels:
        m = re.fullmatch(r"([A-Za-z]+)(\d+)", lab)
        if m:
            line = re.sub(rf"\b{m.group(1)}\s+{m.group(2)}\b", lab, line, flags=re.IGNORECASE)
    return line


def _labels_named(labels: Sequence[str], line: str, spaced: bool = False) -> set[str]:
    """The labels (lower case) that ``line`` names as whole words.

    A word made of labels run together counts: an edit trained without EOS repeats its answer
    ("solution2solution2…", cut short at the token limit as "…solutio"), while "answer12" or
    "untrue" name no label. ``spaced``: "option 2" also names ``option2``.
    """
    if spaced:
        line = _join_spaced_labels(labels, line)
    alternatives = "|".join(re.escape(lab) for lab in sorted(labels, key=len, reverse=True))
    one, run = re.compile(alternatives, re.IGNORECASE), re.compile(rf"(?:{alternatives})+", re.IGNORECASE)
    words = re.findall(r"[A-Za-z0-9_]+", line)
    cut_short = bool(line) and line[-1].isalnum()
    found: set[str] = set()
    for i, word in enumerate(words):
        m = run.match(word)
        if not m:
            continue
        rest = word[m.end() :].lower()
        if rest and not (cut_short and i == len(words) - 1 and any(lab.lower().startswith(rest) for lab in labels)):
            continue
        found |= {x.lower() for x in one.findall(m.group(0))}
    return found


def _letter_patterns(letters: str) -> list[re.Pattern[str]]:
    cls = f"[{letters}]"
    return [
        # "B", "B.", "B)", "(B)", "B: ..." at the start; "Based on" and "A cat" are not letters
        re.compile(rf"^\s*(?:\(({cls})\)|({cls})(?:[.):,](?:\s|$)|\s*$))"),
        re.compile(rf"(?i:answer\s+is|answer\s*:)\s*\(?({cls})(?![A-Za-z0-9])"),
    ]


def labels_named(
    text: str, task: Task | str, choices: Sequence[str] | None = None, *, spaced_labels: bool = False
) -> set[str]:
    """The labels (lower case) that a generated first line names, to tell an output that lists the
    options (two or more) from one that answers in words (none). Empty for letter and text tasks."""
    task = get_task(task)
    line = first_line(text)
    if task.extraction is Extraction.BOOL:
        return _labels_named(("true", "false"), line)
    if task.extraction is Extraction.LABEL:
        return _labels_named(list(choices or task.labels), line, spaced=spaced_labels)
    return set()


def extract_answer(
    text: str, task: Task | str, choices: Sequence[str] | None = None, *, spaced_labels: bool = False
) -> str | None:
    """The prediction in a generated first line, or None when it holds no valid answer.

    LABEL: the label the line names as a whole word (``answer2`` but not ``answer21``; a run of
    one label such as ``answer2answer2`` gives it), case-insensitive; a line that names two
    different labels ("answer1/answer2/answer3", "true or false", "truefalsefalse") lists the
    options rather than choosing one, so it holds no answer. BOOL: the same for true/false.
    LETTER: a letter alone at the start or after "answer is"/"answer:". TEXT: the line itself.

    ``spaced_labels``: also read a label written with a space before its number ("The answer is
    option 2."). The paper's extractor (LLM-Adapters') does not, and neither does the default
    here, which is the protocol; the lenient reading measures how much that choice costs.
    """
    task = get_task(task)
    line = first_line(text)
    if task.extraction is Extraction.TEXT:
        return line
    labels = list(choices or task.labels)
    if task.extraction is Extraction.LETTER:
        for pattern in _letter_patterns("".join(labels)):
            m = pattern.search(line)
            if m:
                return next(g for g in m.groups() if g)
        return None
    named = labels_named(line, task, choices, spaced_labels=spaced_labels)
    if len(named) != 1:
        return None  # no label, or several: a list of the options is not a choice
    found = named.pop()
    return found if task.extraction is Extraction.BOOL else next(lab for lab in labels if lab.lower() == found)
