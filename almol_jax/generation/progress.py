"""A tqdm bar over decode batches, fed by `generate_texts`' on_batch(done, total) callback.

Kept beside the decoder it reports on, so callers (the checkpoint evaluator) only switch it on.
"""

from __future__ import annotations


class BatchProgressBar:
    """Counts decoded batches of one direction; the total is known after bucketing."""

    def __init__(self, direction: str, num_prompts: int):
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=None, desc=f"generating {direction} ({num_prompts} prompts)", unit="batch"
        )

    def update_to(self, done: int, total: int) -> None:
        self._bar.total = total
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        self._bar.close()
