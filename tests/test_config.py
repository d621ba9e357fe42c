"""Config schema and loader: overrides, typo suggestions, type errors, validation, round trips."""

from pathlib import Path

import pytest

from almol_jax.config import (
    RunConfig,
    apply_override,
    config_to_dict,
    dump_config,
    field_docs,
    load_config,
)
from almol_jax.config.loader import parse_yaml

DOCS = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_defaults_are_the_published_recipe():
    cfg = RunConfig()
    assert (cfg.objective.name, cfg.objective.beta, cfg.objective.cpo_alpha) == ("cpo", 0.1, 1.0)
    assert (cfg.train.learning_rate, cfg.train.warmup_ratio, cfg.train.max_grad_norm) == (
        5e-5,
        0.1,
        1.0,
    )
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.target_modules) == (64, 16.0, "all-linear")
    assert cfg.generation.max_new_tokens == 300


def test_default_templates_are_the_meditron_model_card_text():
    """Restated here from ALMOL.md, independently of the schema's constants."""
    head = (
        "Below is an instruction that describes a task, paired with an input that provides further "
        "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
    )
    s2c = (
        head + "You are a researcher. You can come up captions based on your existing knowledge. "
        "Captions are given against the following input. You should be as detailed as possible."
        "\n\n### Input:\nMolecule: {source} \nIn that molecule, could you formulate a caption about?"
        "\n\n\n### Response:"
    )
    c2s = (
        head
        + "You are a researcher. You can come up molecule smile strings based on your existing "
        "knowledge. Molecule smile strings are given against the following input. You should be as "
        "detailed as possible.\n\n### Input:\nCaption: {source} \nIn that caption, could you "
        "generate a molecule smile string?\n\n\n### Response:"
    )
    t = RunConfig().data.templates
    assert t.smiles2caption == s2c
    assert t.caption2smiles == c2s


def test_overrides_parse_yaml_scalars_lists_and_mappings():
    cfg = load_config(
        None,
        [
            "train.steps=20",
            "train.learning_rate=5e-5",
            "data.train_files=a.jsonl,b.jsonl",
            "data.buckets=[64, 128]",
            "model.source=null",
            "model.overrides.vocab_size=260",
            "lora.target_modules=q_proj,v_proj",
            "data.directions=[smiles2caption]",
            "mesh.rules=[[batch, data], [vocab, null]]",
            "output_dir=runs/x=1",
        ],
    )
    assert cfg.train.steps == 20
    assert cfg.train.learning_rate == 5e-5 and isinstance(cfg.train.learning_rate, float)
    assert cfg.data.train_files == ("a.jsonl", "b.jsonl")
    assert cfg.data.buckets == (64, 128)
    assert cfg.model.source is None
    assert cfg.model.overrides == {"vocab_size": 260}
    assert cfg.lora.target_modules == ("q_proj", "v_proj")
    assert cfg.data.directions == ("smiles2caption",)
    assert cfg.mesh.rules == (("batch", "data"), ("vocab", None))
    assert cfg.output_dir == "runs/x=1"
    # A single file for a list field stays a one-element list.
    assert load_config(None, ["data.train_files=[one.jsonl]"]).data.train_files == ("one.jsonl",)


def test_yaml_exponent_floats():
    assert parse_yaml("a: 5e-5\nb: 1e8\nc: 1.0e-3\nd: .5\ne: 12") == {
        "a": 5e-5, "b": 1e8, "c": 1e-3, "d": 0.5, "e": 12,
    }  # fmt: skip


def test_override_on_file_wins(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  steps: 3\n  grad_accum: 4\n")
    cfg = load_config(path, ["train.steps=7"])
    assert (cfg.train.steps, cfg.train.grad_accum) == (7, 4)


@pytest.mark.parametrize(
    ("override", "suggestion"),
    [
        ("train.stpes=3", "train.steps"),
        ("trian.steps=3", "train.steps"),
        ("objective.bta=0.2", "objective.beta"),
        ("lora.rank=8", "lora.r"),
    ],
)
def test_unknown_override_key_suggests_nearest(override, suggestion):
    with pytest.raises(ValueError, match=rf"unknown config key .*did you mean '{suggestion}'"):
        load_config(None, [override])


def test_unknown_yaml_key_names_path_and_suggestion(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("objective:\n  cpo_alhpa: 1.0\n")
    with pytest.raises(
        ValueError, match=r"'objective.cpo_alhpa'.*did you mean 'objective.cpo_alpha'"
    ):
        load_config(path)
    with pytest.raises(ValueError, match=r"unknown config key 'modle'.*did you mean 'model'"):
        RunConfig.from_dict({"modle": {}})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.steps=abc", r"'train.steps': expected int, got 'abc'"),
        ("train.steps=1.5", r"'train.steps': expected int, got 1.5"),
        ("lora.enabled=3", r"'lora.enabled': expected bool, got 3"),
        ("objective.beta=high", r"'objective.beta': expected float, got 'high'"),
        ("objective.name=cpoo", r"'objective.name': 'cpoo' is not one of .*did you mean 'cpo'"),
        ("data.train_files=5", r"'data.train_files': expected"),
        ("model=3", r"section 'model' must be a mapping, got 3"),
    ],
)
def test_wrong_types_name_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("objective.beta=0", r"objective.beta=0.0 must be > 0"),
        (
            "data.max_prompt_length=600",
            r"data.max_prompt_length=600 must be in \[1, data.max_length=512\)",
        ),
        ("data.buckets=[256,128]", r"data.buckets=\[256, 128\] must be strictly ascending"),
        ("data.buckets=[1024]", r"data.buckets entry 1024"),
        ("train.warmup_ratio=1.5", r"train.warmup_ratio=1.5"),
        ("mesh.tensor=0", r"mesh.tensor=0 must be -1"),
        ("mesh.data=-1", r"at most one mesh axis may be -1"),
        ("mesh.rules=[[batch, model]]", r"unknown mesh axis 'model'"),
        ("tokenizer.kind=hf", r"tokenizer.kind='hf' needs tokenizer.path"),
        ("objective.name=dpo", r"needs lora.enabled=true"),
        (
            "data.templates.smiles2caption=no placeholder",
            r"data.templates.smiles2caption=.*\{source\}",
        ),
        ("objective.label_smoothing=0.5", r"label_smoothing=0.5"),
        ("lora.r=0", r"section 'lora': .*r=0 must be >= 1"),
        ("lora.alpha=0", r"section 'lora': .*alpha=0.0 must be > 0"),
        ("lora.dropout=1", r"section 'lora': .*dropout=1.0"),
        ("lora.target_modules=[q_proj,lm_head]", r"section 'lora': .*\['lm_head'\]"),
        ("lora.param_dtype=int8", r"section 'lora': unknown dtype 'int8'"),
    ],
)
def test_validation_names_the_value(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, [override])


def test_empty_section_keeps_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lora:\n  # r: 8\ntrain:\n  steps: 2\n")
    cfg = load_config(path)
    assert cfg.lora == RunConfig().lora and cfg.train.steps == 2


def test_bad_override_syntax():
    with pytest.raises(ValueError, match="must look like key.sub=value"):
        apply_override({}, "train.steps")
    with pytest.raises(ValueError, match="not a section or mapping"):
        apply_override({}, "train.steps.x=1")


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        load_config(path)


def test_dump_round_trip_and_hashable_sections(tmp_path):
    cfg = load_config(None, ["data.buckets=[64,128]", "model.overrides.hidden_size=32", "seed=7"])
    dump_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(tmp_path / "run" / "config.yaml")
    assert again == cfg
    assert config_to_dict(again) == config_to_dict(cfg)
    # Sections (except model, which holds the overrides dict) can be jit static arguments.
    for section in ("objective", "train", "data", "lora", "mesh", "generation"):
        hash(getattr(cfg, section))


def test_configuration_docs_cover_every_field():
    text = DOCS.read_text(encoding="utf-8")
    missing = [key for key, *_ in field_docs() if f"`{key}`" not in text]
    assert not missing, f"docs/configuration.md lacks {missing}"


def test_configuration_docs_reference_is_current():
    from almol_jax.config.reference import reference_markdown

    assert reference_markdown() in DOCS.read_text(encoding="utf-8"), (
        "docs/configuration.md is stale: run python -m almol_jax.config.reference"
    )


def test_on_off_yes_no_stay_strings_and_only_true_false_are_booleans():
    # YAML 1.1 would read `on` as True and reject mesh.distributed=on (a Literal of strings)
    from almol_jax.config import load_config

    cfg = load_config(None, ["mesh.distributed=on", "lora.enabled=true", "data.prefix_sharing=off"])
    assert cfg.mesh.distributed == "on"
    assert cfg.lora.enabled is True
    assert cfg.data.prefix_sharing == "off"
    with pytest.raises(ValueError, match="lora.enabled"):
        load_config(None, ["lora.enabled=yes"])


def test_lora_section_is_the_model_lora_config_plus_the_switch():
    import dataclasses

    from almol_jax.model import LoraConfig

    section = RunConfig().lora
    assert isinstance(section, LoraConfig) and section.enabled is False
    model_fields = {f.name: f.default for f in dataclasses.fields(LoraConfig)}
    section_fields = {f.name: f.default for f in dataclasses.fields(section)}
    assert section_fields == {**model_fields, "enabled": False}
    assert section.for_model() is None
    cfg = load_config(None, ["lora.enabled=true", "lora.r=8", "lora.target_modules=q_proj"])
    adapters = cfg.lora.for_model()
    assert type(adapters) is LoraConfig
    assert adapters == LoraConfig(r=8, target_modules=("q_proj",))


def test_names_and_defaults_come_from_their_homes():
    import typing

    from almol_jax.config.sections import DataSection, EvalSection, MeshSection, ObjectiveSection
    from almol_jax.directions import DIRECTIONS
    from almol_jax.objectives import OBJECTIVES
    from almol_jax.sharding import DEFAULT_RULES, MESH_AXES

    assert MeshSection().rules == DEFAULT_RULES
    assert set(MESH_AXES) <= {f for f in typing.get_type_hints(MeshSection)}
    assert typing.get_args(typing.get_type_hints(ObjectiveSection)["name"]) == OBJECTIVES
    for section in (DataSection, EvalSection):
        tuple_type = typing.get_args(typing.get_type_hints(section)["directions"])[1]
        assert typing.get_args(typing.get_args(tuple_type)[0]) == DIRECTIONS
