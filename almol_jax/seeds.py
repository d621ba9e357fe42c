"""The one seed of a run, split by purpose: every random draw of a run comes from one of these keys.

`seed_keys(seed)` gives {purpose: key} for
  params    the base weights of a random-init model
  lora      the adapters' initial A matrices
  data      the order of the training data (`data_seed`: the data iterator's integer seed)
  dropout   adapter dropout during training
  sampling  sampled decoding in evaluation and preference building
so changing how one purpose draws never shifts another's numbers. The seed itself is the run's
`seed` config key (saved in config.yaml, in every checkpoint's meta and printed at start). A module
at the package root: the data pipeline, the model's builder, training and decoding all draw from it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

PURPOSES = ("params", "lora", "data", "dropout", "sampling")


def seed_keys(seed: int) -> dict[str, jax.Array]:
    """The one logged seed split by purpose: {purpose: key} (fold_in of the purpose index)."""
    root = jax.random.key(seed)
    return {name: jax.random.fold_in(root, i) for i, name in enumerate(PURPOSES)}


def data_seed(seed: int) -> int:
    """The integer seed of the training data's order (NumPy's generator), drawn from the run's
    "data" key."""
    return int(jax.random.bits(seed_keys(seed)["data"], dtype=jnp.uint32))
