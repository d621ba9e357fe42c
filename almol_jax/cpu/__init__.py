"""The CPU wing: everything that exists only to make the CPU backend fast.

Two doors lead in. The model's kernel table (almol_jax/model/kernels.py, `model.kernels: cpu`, or
`auto` on a one-device float32 CPU run) takes its functions from attention.py (the threaded C++
attention kernel of attention_kernel.py and kernels/cpu_attention.cc, with XLA's
hand-written-backward softmax_attention.py as the fallback), elementwise.py (RMSNorm and SwiGLU
with hand-written backward passes) and lora.py (merged-kernel LoRA of merged_lora.py where it
pays, else the adapters' down-projection with a hand-written backward). Entry points call
runtime.py: before JAX starts (glibc malloc settings, host_allocator.py; the XLA CPU device
count, devices.py) and for per-program XLA:CPU compiler options (compiler_options.py). No
other library code imports from here; the wing imports only almol_jax.ops (plain formulas it
shares with the portable kernels).
"""
