"""Training: losses, log-probs, optimizer, the jitted step, the loop (import the submodules).

A run's setup, checkpoints and restore live in almol_jax.run.
"""
