"""EvalOptions built from a RunConfig's eval section (eval_options_from_config) and from eval.py's
command-line flags: the config's resource paths reach the scorer, given flags override them."""

import sys
from dataclasses import replace
from pathlib import Path

import pytest

from almol_jax.config import RunConfig
from almol_jax.eval import EvalOptions, eval_options_from_config
from almol_jax.eval.chrf import ChrfConfig

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import eval as eval_cli  # noqa: E402  (the repo-root entry point)

EVAL_RAW = {
    "fingerprint_averaging": "lpm24",
    "scibert_vocab": "/data/scibert/vocab.txt",
    "wordnet_dir": "/data/nltk",
    "nested_props": "/data/nested_props.json",
    "withheld_combos": "/data/withheld.txt",
    "skip_unavailable": True,
}


def test_default_section_gives_scorer_defaults_with_molt5_headline():
    options = eval_options_from_config(RunConfig().eval)  # fingerprint_averaging: both
    assert options == EvalOptions(fingerprint_averaging="molt5")
    assert RunConfig().eval.fingerprint_averaging == "both"


def test_section_fields_pass_through():
    section = RunConfig.from_dict({"eval": EVAL_RAW}).eval
    options = eval_options_from_config(section)
    assert options == EvalOptions(**EVAL_RAW)


def test_overrides_win_and_none_keeps_the_section_value():
    section = RunConfig.from_dict({"eval": EVAL_RAW}).eval
    options = eval_options_from_config(
        section, scibert_vocab=None, wordnet_dir="/elsewhere", num_workers=3, progress=True
    )
    assert options.scibert_vocab == EVAL_RAW["scibert_vocab"]
    assert options.wordnet_dir == "/elsewhere"
    assert (options.num_workers, options.progress) == (3, True)
    assert options == replace(
        EvalOptions(**EVAL_RAW), wordnet_dir="/elsewhere", num_workers=3, progress=True
    )


def test_unknown_override_is_named():
    with pytest.raises(ValueError, match="wordnet_path"):
        eval_options_from_config(RunConfig().eval, wordnet_path="/x")


def test_withheld_combos_without_nested_props_is_a_config_error():
    with pytest.raises(ValueError, match=r"eval.withheld_combos='/w.txt' needs eval.nested_props"):
        RunConfig.from_dict({"eval": {"withheld_combos": "/w.txt"}})


def _args(*argv):
    return eval_cli.build_parser().parse_args(list(argv))


def test_cli_prediction_mode_defaults_equal_scorer_defaults():
    options = eval_cli.options_from_args(_args("--no-progress"))
    assert options == EvalOptions()


def test_cli_flags_become_options():
    args = _args(
        "--fingerprint-averaging", "lpm24", "--chrf-word-order", "2", "--no-fcd",
        "--skip-unavailable", "--morgan-radius", "3", "--no-progress",
    )  # fmt: skip
    options = eval_cli.options_from_args(args)
    expected = EvalOptions(
        fingerprint_averaging="lpm24",
        chrf=ChrfConfig(char_order=6, word_order=2, beta=2),
        fcd=False,
        skip_unavailable=True,
        morgan_radius=3,
    )
    assert options == expected


def test_cli_checkpoint_mode_keeps_config_paths_unless_given():
    section = RunConfig.from_dict({"eval": EVAL_RAW}).eval
    overrides = eval_cli.option_overrides(_args("--wordnet-dir", "/cli/nltk", "--no-progress"))
    options = eval_options_from_config(section, **overrides)
    assert options.wordnet_dir == "/cli/nltk"
    assert options.scibert_vocab == EVAL_RAW["scibert_vocab"]
    assert options.skip_unavailable is True  # from the config: the flag was not given
    assert options.fingerprint_averaging == "lpm24"
