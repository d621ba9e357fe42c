"""Build (once) and cache the embedded default dataset: NCI molecules, RDKit captions, scaffold
splits, nearest-neighbour preference triplets in both directions, and a SentencePiece tokenizer.

``build_demo_dataset(params, cache_dir)`` returns :class:`DemoPaths`. The build lands in
``<cache_dir>/<version hash>`` where the hash covers the parameters, the format version, this
package's source code, the molecule file's bytes and the rdkit/sentencepiece versions, so a changed input builds afresh and an
unchanged one is reused. The build writes to a temporary sibling folder and renames it into place,
so a crashed or concurrent build never leaves a half-written cache entry.

Files (``split`` in train/validation/test):
  ``{split}.jsonl``        preference triplets ``{"source", "chosen", "rejected", "direction"}``,
                           direction ``smiles2caption`` or ``caption2smiles``, two per molecule:
                           the rejection is the nearest neighbour's SMILES, or the neighbour's
                           facts captioned in the molecule's own caption style (captions.py), so
                           chosen and rejected captions differ in facts, not in phrasing;
  ``pairs_{split}.jsonl``  gold pairs ``{"CID", "SMILES", "description"}`` (ChEBI-20's column names,
                           the config's default pair columns; CID is the NCI id) for evaluation;
  ``tokenizer/``           ``tokenizer.model`` + configs (``AutoTokenizer.from_pretrained`` loads it);
  ``report.json``          counts, versions, parameters and timings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import rdkit
import sentencepiece
from rdkit import Chem
from tqdm.auto import tqdm

from almol_jax.data.demo.captions import CaptionStyle, render_caption
from almol_jax.data.demo.facts import compute_facts
from almol_jax.data.demo.molecules import load_molecules, nci_path
from almol_jax.data.demo.neighbours import nearest_neighbours
from almol_jax.data.demo.scaffold_split import SPLITS, murcko_scaffold, scaffold_split
from almol_jax.data.demo.tokenizer_sp import train_sentencepiece
from almol_jax.data.templates import (
    MEDITRON_CAPTION2SMILES,
    MEDITRON_SMILES2CAPTION,
    SOURCE_PLACEHOLDER,
)
from almol_jax.directions import DIRECTIONS

FORMAT_VERSION = 2  # 2: smiles2caption rejections in the chosen caption's style

# The default prompt templates' text (data/templates.py, {source} removed) is added to the
# tokenizer's training text so prompts tokenise compactly; pass a run's own templates as
# DemoParams.extra_texts.
ALMOL_PROMPT_TEXTS: tuple[str, ...] = tuple(
    t.replace(SOURCE_PLACEHOLDER, "") for t in (MEDITRON_SMILES2CAPTION, MEDITRON_CAPTION2SMILES)
)


@dataclasses.dataclass(frozen=True)
class DemoParams:
    """Everything that determines the demo dataset (all of it goes into the cache key)."""

    source: str | None = None  # a SMILES file ("SMILES id" rows); None = RDKit's NCI first_5K.smi
    limit: int | None = None  # read only the first `limit` rows (tests use a few hundred)
    seed: int = 0  # caption phrasings and the scaffold shuffle
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train, validation, test
    vocab_size: int = 1024  # SentencePiece vocabulary (>= 300: 256 byte pieces + specials)
    max_words: int = 60  # caption length cap (optional sentences are dropped first)
    max_groups: int = 4  # functional groups listed per caption
    fp_radius: int = 2  # Morgan radius of the neighbour search
    fp_bits: int = 2048  # Morgan bit-vector size
    extra_texts: tuple[str, ...] = (
        ALMOL_PROMPT_TEXTS  # extra tokenizer training text (prompt templates)
    )

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 10:
            raise ValueError(
                f"limit={self.limit} is too small for three scaffold splits (use >= 10 or None)"
            )
        if self.vocab_size < 300:
            raise ValueError(
                f"vocab_size={self.vocab_size} is below 300 (256 byte-fallback pieces + specials)"
            )
        if self.max_groups < 1:
            raise ValueError(f"max_groups={self.max_groups} must be >= 1")
        object.__setattr__(self, "split_fractions", tuple(float(f) for f in self.split_fractions))
        object.__setattr__(self, "extra_texts", tuple(self.extra_texts))


@dataclasses.dataclass(frozen=True)
class DemoPaths:
    """Where a built demo dataset lives."""

    root: Path
    preferences: dict[str, Path]  # split -> preference triplet JSONL
    pairs: dict[str, Path]  # split -> gold pair JSONL (CID, SMILES, description)
    tokenizer_dir: Path
    report: Path

    @classmethod
    def at(cls, root: Path) -> DemoPaths:
        """The file layout under ``root``."""
        return cls(
            root=root,
            preferences={s: root / f"{s}.jsonl" for s in SPLITS},
            pairs={s: root / f"pairs_{s}.jsonl" for s in SPLITS},
            tokenizer_dir=root / "tokenizer",
            report=root / "report.json",
        )


def default_cache_dir() -> Path:
    """``$ALMOL_JAX_CACHE/demo`` or ``~/.cache/almol_jax/demo``."""
    base = os.environ.get("ALMOL_JAX_CACHE") or Path.home() / ".cache" / "almol_jax"
    return Path(base) / "demo"


def version_hash(params: DemoParams) -> str:
    """Cache key: parameters, format version, source bytes and library versions (16 hex digits)."""
    source = Path(params.source) if params.source else nci_path()
    key = {
        "params": dataclasses.asdict(params),
        "format": FORMAT_VERSION,
        "code_sha256": _code_hash(),
        "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
        "rdkit": rdkit.__version__,
        "sentencepiece": sentencepiece.__version__,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _code_hash() -> str:
    """sha256 of this package's source files, so a code change never reuses a stale cache."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def build_demo_dataset(
    params: DemoParams | None = None, cache_dir: str | Path | None = None, *, progress: bool = True
) -> DemoPaths:
    """Build the demo dataset into ``<cache_dir>/<version hash>`` unless it is there already."""
    params = params or DemoParams()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    paths = DemoPaths.at(cache / version_hash(params))
    if paths.report.is_file():
        return paths
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{paths.root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _build_into(params, DemoPaths.at(tmp), progress=progress)
        try:
            tmp.rename(paths.root)
        except OSError:
            if not paths.report.is_file():  # not a concurrent build that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return paths


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _build_into(params: DemoParams, paths: DemoPaths, *, progress: bool) -> None:
    """Do the build, writing every file of ``paths``."""
    t0 = time.perf_counter()
    paths.root.mkdir(parents=True)
    molecules, counts = load_molecules(params.source, limit=params.limit)
    facts, styles, captions, scaffolds = [], [], [], []
    for m in tqdm(molecules, desc="captions", disable=not progress, leave=False):
        facts.append(compute_facts(Chem.MolFromSmiles(m.smiles)))
        # per molecule: independent of order/subset
        styles.append(CaptionStyle(f"{params.seed}:{m.inchikey}"))
        captions.append(render(facts[-1], styles[-1], params))
        scaffolds.append(murcko_scaffold(m.smiles))
    t_captions = time.perf_counter()
    split_idx = scaffold_split(scaffolds, fractions=params.split_fractions, seed=params.seed)
    corpus = _Corpus(molecules, facts, styles, captions, scaffolds)
    report_splits = {
        split: _write_split(corpus, split_idx[split], split, params, paths, progress=progress)
        for split in SPLITS
    }
    t_neighbours = time.perf_counter()
    train = split_idx["train"]
    train_sentencepiece(
        [captions[i] for i in train]
        + [molecules[i].smiles for i in train]
        + list(params.extra_texts) * max(1, len(train) // 4),  # weighted: every prompt repeats them
        paths.tokenizer_dir,
        vocab_size=params.vocab_size,
    )
    t_tokenizer = time.perf_counter()
    report = _report(corpus, counts, report_splits, params, paths)
    report["seconds"] = {
        "captions": round(t_captions - t0, 3),
        "splits_neighbours": round(t_neighbours - t_captions, 3),
        "tokenizer": round(t_tokenizer - t_neighbours, 3),
        "total": round(time.perf_counter() - t0, 3),
    }
    paths.report.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


@dataclasses.dataclass(frozen=True)
class _Corpus:
    """Every molecule of the build with its facts, caption style, caption and scaffold."""

    molecules: list
    facts: list
    styles: list
    captions: list[str]
    scaffolds: list[str]


def _write_split(
    corpus: _Corpus, idx, split: str, params: DemoParams, paths: DemoPaths, *, progress: bool
) -> dict:
    """Writes one split's preference triplets (nearest-neighbour rejections) and pairs; returns
    the split's entry of the build report."""
    smiles = [corpus.molecules[i].smiles for i in idx]
    caps = [corpus.captions[i] for i in idx]
    triplets: list[dict] = []
    sims = np.zeros(0)
    if len(idx) >= 2:

        def rejected_caption(i: int, j: int) -> str:
            """Molecule j's facts in molecule i's caption style."""
            return render(corpus.facts[idx[j]], corpus.styles[idx[i]], params)

        neighbour_N, sims = nearest_neighbours(
            smiles,
            caps,
            radius=params.fp_radius,
            n_bits=params.fp_bits,
            progress=progress,
            rejected_caption=rejected_caption,
        )
        for i, j in enumerate(neighbour_N):
            triplets.append(
                {
                    "source": smiles[i],
                    "chosen": caps[i],
                    "rejected": rejected_caption(i, int(j)),
                    "direction": DIRECTIONS[0],
                }
            )
            triplets.append(
                {
                    "source": caps[i],
                    "chosen": smiles[i],
                    "rejected": smiles[j],
                    "direction": DIRECTIONS[1],
                }
            )
    _write_jsonl(paths.preferences[split], triplets)
    _write_jsonl(
        paths.pairs[split],
        [
            {"CID": corpus.molecules[i].mol_id, "SMILES": smiles[k], "description": caps[k]}
            for k, i in enumerate(idx)
        ],
    )
    return {
        "molecules": len(idx),
        "scaffolds": len({corpus.scaffolds[i] for i in idx}),
        "acyclic": sum(1 for i in idx if not corpus.scaffolds[i]),
        "triplets": len(triplets),
        "neighbour_tanimoto": _stats(sims),
    }


def _report(corpus: _Corpus, counts, report_splits, params: DemoParams, paths: DemoPaths) -> dict:
    """The build report (report.json) without its timings."""
    sp = sentencepiece.SentencePieceProcessor(
        model_file=str(paths.tokenizer_dir / "tokenizer.model")
    )
    caption_tokens = np.array([len(ids) for ids in sp.encode(corpus.captions)])
    smiles_tokens = np.array([len(ids) for ids in sp.encode([m.smiles for m in corpus.molecules])])
    words = np.array([len(c.split()) for c in corpus.captions])
    return {
        "format_version": FORMAT_VERSION,
        "source": str(Path(params.source) if params.source else nci_path()),
        "params": dataclasses.asdict(params),
        "versions": {"rdkit": rdkit.__version__, "sentencepiece": sentencepiece.__version__},
        "molecules": dataclasses.asdict(counts),
        "scaffolds": len(set(corpus.scaffolds)),
        "splits": report_splits,
        "captions": {"distinct": len(set(corpus.captions)), "words": _stats(words)},
        "tokenizer": {
            "vocab_size": sp.get_piece_size(),
            "dir": "tokenizer",
            "caption_tokens": _stats(caption_tokens),
            "smiles_tokens": _stats(smiles_tokens),
        },
    }


def render(facts, style: CaptionStyle, params: DemoParams) -> str:
    """The caption of ``facts`` in ``style`` with the build's length limits."""
    return render_caption(facts, style, max_words=params.max_words, max_groups=params.max_groups)


def _stats(values: np.ndarray) -> dict[str, float] | None:
    """min / mean / max of a non-empty array, else None."""
    if len(values) == 0:
        return None
    return {
        "min": float(np.min(values)),
        "mean": round(float(statistics.fmean(values)), 4),
        "max": float(np.max(values)),
    }
