"""Preference-data builders: triplets (source, chosen, rejected, direction) plus provenance.

``common`` holds what every builder shares (equivalence, filtering, seeded subsampling, scoring,
writing, summaries); ``from_predictions`` builds triplets from another system's prediction files.
CLI: ``python -m almol_jax.preferences from-predictions --help``.
"""
