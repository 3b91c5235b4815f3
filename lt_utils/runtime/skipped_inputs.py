"""Counting the inputs a reader could not use, by reason, so none is dropped silently.

A paper-scale corpus of millions of documents always holds a few broken ones
(a record without its text field, bytes that are not UTF-8, an empty or a
runaway document); a stage skips them rather than dying hours in, and reports
how many it skipped and why in its metrics, with the first place each reason
occurred so a reader can look.
"""

from __future__ import annotations

from collections import Counter


class Rejects:
    """Skipped inputs: a count per reason and the first location (file:line) of each."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.first: dict[str, str] = {}

    def add(self, reason: str, where: str) -> None:
        self.counts[reason] += 1
        self.first.setdefault(reason, where)

    def __len__(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict:
        """{"total", "by_reason", "first"} with reasons sorted, ready for a metrics record or stats.json."""
        return {"total": len(self), "by_reason": dict(sorted(self.counts.items())),
                "first": dict(sorted(self.first.items()))}
