"""The one seed of a run, split by purpose: every random draw of a run comes from one of these keys.

`seed_keys(seed)` gives {purpose: key} for
  params    the base weights of a random-init model
  lora      the adapters' initial A matrices
  data      reserved for the order of the training data (today: the integer `seed` itself)
  dropout   adapter dropout during training
  sampling  sampled decoding in evaluation and preference building
so changing how one purpose draws never shifts another's numbers. The seed itself is the run's
`seed` config key (saved in config.yaml, in every checkpoint's meta and printed at start).
"""

from __future__ import annotations

import jax

PURPOSES = ("params", "lora", "data", "dropout", "sampling")


def seed_keys(seed: int) -> dict[str, jax.Array]:
    """The one logged seed split by purpose: {purpose: key} (fold_in of the purpose index)."""
    root = jax.random.key(seed)
    return {name: jax.random.fold_in(root, i) for i, name in enumerate(PURPOSES)}
