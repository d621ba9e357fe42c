"""Experiments: the paper's comparative design as one command (docs/experiments.md).

``python -m almol_jax.experiments almol-mini [--quick] [--seeds N] [--config EXP.yaml]
--output-dir DIR`` writes one train.py config per arm into DIR, runs train.py and eval.py on them
as they are, resumes finished arms on a re-run, and writes report.json, report.md and plots.
Importing this package is side-effect free; the modules load when a command runs.
"""
