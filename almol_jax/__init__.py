"""almol_jax: ALMol (CPO-aligned language<->molecule translation LLMs) in JAX/Flax NNX.

Public entry points are imported lazily so that `import almol_jax` has no side effects and
does not pull in JAX until a function is used.
"""

__version__ = "0.1.0"
__all__ = ["load_model"]


def load_model(path_or_repo_id, **options):
    """Loads a LLaMA-family Hugging Face checkpoint as an NNX model; see almol_jax.model.build."""
    from almol_jax.model.build import load_model as _load_model

    return _load_model(path_or_repo_id, **options)
