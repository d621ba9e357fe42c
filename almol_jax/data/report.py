"""The data report: what was read, dropped and truncated, per split; never silent.

One :class:`DataReport` collects counts while sources.py reads and tokenize.py tokenises; the loop
logs ``summary()`` and writes ``to_json(run_dir / "data_report.json")``. Up to ``max_origins``
example origins ("file:line") are kept per drop reason so a user can find the offending rows.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class DataReport:
    """Counters of the data pipeline, keyed by split."""

    max_origins: int = 5  # example origins kept per (split, reason)
    files: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    dropped: dict[str, Counter] = dataclasses.field(default_factory=lambda: defaultdict(Counter))
    drop_examples: dict[str, dict[str, list[str]]] = dataclasses.field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )
    truncated: dict[str, Counter] = dataclasses.field(default_factory=lambda: defaultdict(Counter))
    examples: dict[str, Counter] = dataclasses.field(default_factory=lambda: defaultdict(Counter))
    lengths: dict[str, dict[str, list[int]]] = dataclasses.field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )
    batching: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def file_read(self, split: str, spec: str, fmt: str, rows: int, kept: int) -> None:
        """Records one file: its rows and how many examples survived."""
        self.files.append(
            {"split": split, "file": spec, "format": fmt, "rows": rows, "examples": kept}
        )

    def drop(self, split: str, reason: str, origin: str) -> None:
        """Counts a dropped example (reason e.g. empty_chosen) and remembers where it was."""
        self.dropped[split][reason] += 1
        kept = self.drop_examples[split][reason]
        if len(kept) < self.max_origins:
            kept.append(origin)

    def truncate(self, split: str, what: str) -> None:
        """Counts a truncation (what: prompt, chosen_response, rejected_response)."""
        self.truncated[split][what] += 1

    def example(self, split: str, direction: str, prompt_len: int, row_lens: list[int]) -> None:
        """Counts a tokenised example and its lengths (prompt incl. BOS; rows prompt+response)."""
        self.examples[split][direction] += 1
        self.lengths[split]["prompt"].append(prompt_len)
        self.lengths[split]["row"].extend(row_lens)

    def set_batching(self, split: str, info: dict[str, Any]) -> None:
        """Bucket use, padding pairs and padding share of a split's batch plan."""
        self.batching[split] = info

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (length lists reduced to min/mean/max)."""

        def stats(values: list[int]) -> dict[str, float]:
            if not values:
                return {}
            return {
                "min": min(values),
                "mean": round(sum(values) / len(values), 2),
                "max": max(values),
            }

        splits = sorted(set(self.examples) | set(self.dropped) | set(self.truncated))
        return {
            "files": self.files,
            "splits": {
                s: {
                    "examples": dict(self.examples[s]),
                    "total_examples": sum(self.examples[s].values()),
                    "dropped": dict(self.dropped[s]),
                    "dropped_where": {k: list(v) for k, v in self.drop_examples[s].items()},
                    "truncated": dict(self.truncated[s]),
                    "lengths": {k: stats(v) for k, v in self.lengths[s].items()},
                    "batching": self.batching.get(s, {}),
                }
                for s in splits
            },
        }

    def summary(self) -> str:
        """One line per split for the log."""
        lines = []
        for split, info in self.to_dict()["splits"].items():
            lines.append(
                f"data[{split}]: {info['total_examples']} examples {info['examples']}, "
                f"dropped {info['dropped'] or 0}, truncated {info['truncated'] or 0}"
            )
        return "\n".join(lines)

    def to_json(self, path: str | Path) -> None:
        """Writes the report (data_report.json in the run directory) and logs its summary."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        for line in self.summary().splitlines():
            logger.info(line)
