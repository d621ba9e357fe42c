"""Benchmark: beam search with the SMILES grammar, with and without the final RDKit check.

    python bench/beam_rdkit_check.py --checkpoint runs/demo [--step N] [--limit 100] [--beams 4]
        [--out /tmp/beam_rdkit_check] [--reuse]

Runs `eval.py --checkpoint RUN --directions caption2smiles --limit N --set generation.num_beams=W`
three times in a row, in this order: grammar off (the reference), grammar on with
`smiles_rdkit_check=off`, grammar on with the check on, and prints one markdown table: parses
(RDKit `sanitize=False`), validity, Morgan / MACCS FTS (molt5 / lpm24), exact match, BLEU,
Levenshtein, and the report's decode seconds (`generation.seconds`: tables, compile, decode and
the check, all measured under the same machine load within this run).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DIRECTION = "caption2smiles"
RUNS = (  # (label, --set overrides)
    ("grammar off", ("generation.smiles_grammar=off",)),
    (
        "grammar on, check off",
        ("generation.smiles_grammar=on", "generation.smiles_rdkit_check=off"),
    ),
    ("grammar on, check on", ("generation.smiles_grammar=on", "generation.smiles_rdkit_check=on")),
)


def parses(smiles: str) -> bool:
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    return Chem.MolFromSmiles(smiles, sanitize=False) is not None


def run_one(args, label: str, sets: tuple[str, ...]) -> dict:
    out = Path(args.out) / label.replace(", ", "_").replace(" ", "_")
    cmd = [sys.executable, str(REPO / "eval.py"), "--checkpoint", args.checkpoint]
    cmd += ["--directions", DIRECTION, "--limit", str(args.limit), "--output-dir", str(out)]
    cmd += ["--no-plots", "--no-progress", "--no-fcd"]
    cmd += [] if args.step is None else ["--step", args.step]
    for s in (f"generation.num_beams={args.beams}", *sets):
        cmd += ["--set", s]
    print("$", " ".join(cmd), flush=True)
    if not (args.reuse and (out / DIRECTION / "metrics.json").is_file()):
        subprocess.run(cmd, check=True, cwd=REPO)
    metrics = json.loads((out / DIRECTION / "metrics.json").read_text())
    with open(out / DIRECTION / "predictions.tsv", encoding="utf-8", newline="") as f:
        outputs = [
            row["output"] for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        ]
    metrics["parses"] = sum(parses(o) for o in outputs)
    metrics["rows"] = len(outputs)
    return metrics


def _f(value, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def row(label: str, m: dict) -> str:
    gen = m["generation"]
    cells = [
        label,
        f"{m['parses']} / {m['rows']}",
        _f(m["validity"], 2),
        f"{_f(m['morgan_fts_molt5'], 3)} / {_f(m['morgan_fts_lpm24'], 3)}",
        f"{_f(m['maccs_fts_molt5'], 3)} / {_f(m['maccs_fts_lpm24'], 3)}",
        _f(m["exact_match"], 2),
        _f(m["bleu"], 3),
        _f(m["levenshtein"], 1),
        _f(gen["seconds"], 0),
        f"{gen.get('smiles_rdkit_check')}",
    ]
    return "| " + " | ".join(cells) + " |"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--step", default=None)
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--beams", type=int, default=4)
    p.add_argument("--out", default="/tmp/beam_rdkit_check")
    p.add_argument("--reuse", action="store_true", help="reprint the reports already under --out")
    args = p.parse_args(argv)
    results = [(label, run_one(args, label, sets)) for label, sets in RUNS]
    print(f"\nbeam {args.beams}, {args.limit} test captions, checkpoint {args.checkpoint}")
    print(
        "| decoding | parses | validity | Morgan FTS molt5 / lpm24 | MACCS FTS molt5 / lpm24 "
        "| exact | BLEU | Levenshtein | decode s | check acted |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for label, m in results:
        print(row(label, m))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
