"""The data pipeline: sources (files -> examples), prompts, tokenizer, TRL-style tokenisation,
static-shape batching with a resumable iterator, and the data report.

Import the submodules directly (``from almol_jax.data.batching import BatchIterator``); this
package file imports nothing so that ``almol_jax.data.demo`` stays cheap to import.
"""
