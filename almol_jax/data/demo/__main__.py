"""CLI: build (or find in the cache) the embedded demo dataset and print its report.

python -m almol_jax.data.demo [--limit N] [--seed S] [--vocab-size V] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import json

from almol_jax.data.demo.build import DemoParams, build_demo_dataset, default_cache_dir


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, build, print the paths and the report's counts."""
    parser = argparse.ArgumentParser(
        prog="python -m almol_jax.data.demo",
        description="Build the embedded demo dataset (RDKit NCI molecules, RDKit-fact captions, scaffold "
        "splits, nearest-neighbour preference triplets, SentencePiece tokenizer); reused from the cache.",
    )
    parser.add_argument(
        "--source", default=None, help="SMILES file ('SMILES id' rows); default: RDKit's NCI set"
    )
    parser.add_argument("--limit", type=int, default=None, help="read only the first N molecules")
    parser.add_argument(
        "--seed", type=int, default=0, help="caption phrasing and split seed (default 0)"
    )
    parser.add_argument(
        "--vocab-size", type=int, default=1024, help="SentencePiece vocabulary size (default 1024)"
    )
    parser.add_argument(
        "--cache-dir", default=None, help=f"cache folder (default {default_cache_dir()})"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    params = DemoParams(
        source=args.source, limit=args.limit, seed=args.seed, vocab_size=args.vocab_size
    )
    paths = build_demo_dataset(params, args.cache_dir, progress=not args.quiet)
    report = json.loads(paths.report.read_text(encoding="utf-8"))
    print(f"demo dataset: {paths.root}")
    print(
        json.dumps(
            {
                k: report[k]
                for k in ("molecules", "scaffolds", "splits", "captions", "tokenizer", "seconds")
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
