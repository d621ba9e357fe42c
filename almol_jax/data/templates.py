"""The default prompt templates: the Meditron L+M-24 model-card prompts, one per direction.

They are the defaults of ``data.templates`` (config/sections.py), quoted from ALMOL.md; a run may
replace them in its YAML. ``{source}`` (SOURCE_PLACEHOLDER) marks where the SMILES
(smiles2caption) or the caption (caption2smiles) goes; data/prompts.py substitutes it.

``data.templates: chat`` (CHAT_TEMPLATES) puts a short instruction as the user's message and lets
the tokenizer's own chat template (data/prompts.py) wrap it, for instruct models.
"""

from __future__ import annotations

SOURCE_PLACEHOLDER = "{source}"

_PREAMBLE = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request."
)
MEDITRON_SMILES2CAPTION = (
    _PREAMBLE + "\n\n### Instruction:\n"
    "You are a researcher. You can come up captions based on your existing knowledge. Captions "
    "are given against the following input. You should be as detailed as possible."
    "\n\n### Input:\n"
    "Molecule: {source} \nIn that molecule, could you formulate a caption about?"
    "\n\n\n### Response:"
)
MEDITRON_CAPTION2SMILES = (
    _PREAMBLE + "\n\n### Instruction:\n"
    "You are a researcher. You can come up molecule smile strings based on your existing "
    "knowledge. Molecule smile strings are given against the following input. You should be as "
    "detailed as possible."
    "\n\n### Input:\n"
    "Caption: {source} \nIn that caption, could you generate a molecule smile string?"
    "\n\n\n### Response:"
)

CHAT = "chat"
# the user's message under data.templates: chat (the tokenizer's chat template wraps it)
CHAT_TEMPLATES = {
    "smiles2caption": "Describe this molecule in one caption.\nMolecule: {source}",
    "caption2smiles": "Write the SMILES string of the molecule described here.\nCaption: {source}",
}
