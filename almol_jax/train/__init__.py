"""Training: losses, log-probs, optimizer, the jitted step, checkpoints, the loop (import the submodules)."""
