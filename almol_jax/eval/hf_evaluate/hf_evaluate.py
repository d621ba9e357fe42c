"""A Hugging Face ``evaluate`` module for the ALMol / MolT5 / L+M-24 translation metrics.

Load it offline from this directory: ``evaluate.load("<repo>/almol_jax/eval/hf_evaluate",
"caption2smiles")`` (or ``"smiles2caption"``), then
``metric.compute(predictions=[...], references=[...], fingerprint_averaging="molt5", fcd=False)``.
It calls :mod:`almol_jax.eval` (which must be importable), so the numbers are the same as
``eval.py``'s; NaN values are returned as None.
"""

import math

import datasets
import evaluate

_DESCRIPTION = """Community-scorer metrics for language<->molecule translation.
caption2smiles: bleu, exact_match, levenshtein, validity, maccs_fts, rdk_fts, morgan_fts,
uniqueness, fcd (needs fcd_torch), chrf. smiles2caption: bleu2, bleu4, rouge1, rouge2, rougeL,
meteor (SciBERT WordPiece tokens, WordNet 3.0), chrf. Both: length-bias statistics."""

_CITATION = """@inproceedings{edwards2022translation, title={Translation between Molecules and
Natural Language}, author={Edwards, Carl and Lai, Tuan and Ros, Kevin and Honke, Garrett and
Cho, Kyunghyun and Ji, Heng}, booktitle={EMNLP}, year={2022}}"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated strings (SMILES for caption2smiles, captions otherwise).
    references: list of reference strings, one per prediction.
    sources: optional list of inputs (only echoed into per-row results).
    Any almol_jax.eval.EvalOptions field as a keyword (fingerprint_averaging, fcd,
    scibert_vocab, wordnet_dir, num_workers, skip_unavailable, ...).
Returns:
    A flat dict of metrics (see docs/evaluation.md).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class HfEvaluate(evaluate.Metric):
    """Metrics of one translation direction, chosen by the config name."""

    BUILDER_CONFIG_NAMES = ("caption2smiles", "smiles2caption")

    def _info(self):
        if self.config_name not in ("caption2smiles", "smiles2caption", "default"):
            raise ValueError(
                f"config_name={self.config_name!r} is not 'caption2smiles' or 'smiles2caption'"
            )
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, sources=None, **option_kwargs):
        from almol_jax.eval import EvalOptions, score
        from almol_jax.eval.chrf import ChrfConfig

        task = "caption2smiles" if self.config_name == "default" else self.config_name
        chrf = option_kwargs.pop("chrf", None)
        if isinstance(chrf, dict):
            chrf = ChrfConfig(**chrf)
        options = EvalOptions(**option_kwargs, **({"chrf": chrf} if chrf else {}))
        metrics, _, _ = score(task, sources, list(references), list(predictions), options=options)
        return {
            k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()
        }
