"""The TPU wing: Pallas kernels for TPU targets, reached only through the kernel table
(almol_jax/model/kernels.py)."""
