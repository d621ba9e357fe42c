"""Plain-jnp building blocks shared by the model and the CPU wing (no custom VJPs, no custom calls,
no question of which backend runs them).

The portable kernel table (model/kernels.py) is made of them, the model's cached (decode)
attention uses the grouped-head layout of ops/attention.py, and the CPU wing (almol_jax/cpu/)
builds its hand-written backward passes around the same forward formulas. This package imports
nothing else from almol_jax, so both the model and the wing can import it.
"""
