"""Benchmark: score both MolT5-large ChEBI-20 prediction files (all metrics except FCD).

    python bench/eval_metrics.py [--data ../shared/data] [--num-workers N] [--reference] [--floor]

Prints the wall time of almol_jax.eval on caption2smiles and smiles2caption. With
``--reference`` it also times a serial re-run of what MolT5's scripts do (nltk corpus_bleu,
InChI exact match, Levenshtein, legacy RDKit fingerprints; BertTokenizerFast tokens, nltk
METEOR, rouge_score) in the same process and checks the numbers agree to 1e-12, so the
speed-up is measured under the same machine load. The reference way reads WordNet with the
evaluator's fast-starting reader (nltk's own takes ~8 s to build), so it times the scoring.

``--floor`` times, in this process alone, the RDKit work no exact evaluator can skip on the
caption2smiles file: parsing each distinct string, the InChI of each molecule in a row where
both sides parse, and the MACCS, path and Morgan fingerprints of each molecule compared with a
different one. Divided by the cores, that bounds the molecule side's wall time from below.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _clock() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and its finished children)."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    return time.perf_counter(), cpu


def reference_caption2smiles(refs, outs) -> dict:
    """MolT5 mol_translation_metrics.py + fingerprint_metrics.py, serially."""
    import numpy as np
    from Levenshtein import distance as lev
    from nltk.translate.bleu_score import corpus_bleu
    from rdkit import Chem, DataStructs, RDLogger
    from rdkit.Chem import AllChem, MACCSkeys

    RDLogger.DisableLog("rdApp.*")
    bleu = corpus_bleu([[list(r)] for r in refs], [list(o) for o in outs])
    exact = bad = 0
    levs = []
    for gt, out in zip(refs, outs, strict=True):
        try:
            if Chem.MolToInchi(Chem.MolFromSmiles(out)) == Chem.MolToInchi(Chem.MolFromSmiles(gt)):
                exact += 1
        except Exception:  # noqa: BLE001 - the reference's bare except
            bad += 1
        levs.append(lev(out, gt))
    maccs, rdk, morgan = [], [], []
    for gt, out in zip(refs, outs, strict=True):
        g, o = Chem.MolFromSmiles(gt), Chem.MolFromSmiles(out)
        if o is None or g is None:
            continue
        maccs.append(
            DataStructs.TanimotoSimilarity(MACCSkeys.GenMACCSKeys(g), MACCSkeys.GenMACCSKeys(o))
        )
        rdk.append(DataStructs.TanimotoSimilarity(Chem.RDKFingerprint(g), Chem.RDKFingerprint(o)))
        morgan.append(
            DataStructs.TanimotoSimilarity(
                AllChem.GetMorganFingerprint(g, 2), AllChem.GetMorganFingerprint(o, 2)
            )
        )
    return {
        "bleu": bleu,
        "exact_match": exact / len(outs),
        "levenshtein": float(np.mean(levs)),
        "validity": 1 - bad / len(outs),
        "maccs_fts": float(np.mean(maccs)),
        "rdk_fts": float(np.mean(rdk)),
        "morgan_fts": float(np.mean(morgan)),
    }


def reference_smiles2caption(refs, outs, vocab_dir) -> dict:
    """MolT5 text_translation_metrics.py, serially (nltk's default WordNet on nltk.data.path)."""
    import numpy as np
    from nltk.translate.bleu_score import corpus_bleu
    from nltk.translate.meteor_score import meteor_score
    from rouge_score import rouge_scorer
    from transformers import BertTokenizerFast

    from almol_jax.eval.resources import find_wordnet, load_wordnet

    wordnet = load_wordnet(find_wordnet())
    tok = BertTokenizerFast.from_pretrained(str(vocab_dir))
    drop = {"[PAD]", "[CLS]", "[SEP]"}
    references, hypotheses, meteors = [], [], []
    for gt, out in zip(refs, outs, strict=True):
        out = out[6:] if out.startswith("[CLS] ") else out
        g = [t for t in tok.tokenize(gt)[:512] if t not in drop]
        o = [t for t in tok.tokenize(out)[:512] if t not in drop]
        references.append([g])
        hypotheses.append(o)
        meteors.append(meteor_score([g], o, wordnet=wordnet))
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    rs = [
        scorer.score(out[6:] if out.startswith("[CLS] ") else out, gt)
        for gt, out in zip(refs, outs, strict=True)
    ]
    return {
        "bleu2": corpus_bleu(references, hypotheses, weights=(0.5, 0.5)),
        "bleu4": corpus_bleu(references, hypotheses, weights=(0.25, 0.25, 0.25, 0.25)),
        "meteor": float(np.mean(meteors)),
        "rouge1": float(np.mean([r["rouge1"].fmeasure for r in rs])),
        "rouge2": float(np.mean([r["rouge2"].fmeasure for r in rs])),
        "rougeL": float(np.mean([r["rougeL"].fmeasure for r in rs])),
    }


def rdkit_floor(refs, outs) -> dict[str, float]:
    """CPU seconds of the RDKit calls any exact caption2smiles scorer must make (see --floor)."""
    from rdkit import Chem
    from rdkit.Chem import MACCSkeys, rdFingerprintGenerator
    from rdkit.rdBase import BlockLogs

    rdk_gen = rdFingerprintGenerator.GetRDKitFPGenerator()
    morgan_gen = rdFingerprintGenerator.GetMorganGenerator(radius=2)
    seconds = {}
    with BlockLogs():
        start = time.process_time()
        mols = {s: Chem.MolFromSmiles(s) for s in sorted(set(refs) | set(outs))}
        seconds["parse"] = time.process_time() - start
        valid = [(r, o) for r, o in zip(refs, outs, strict=True) if mols[r] and mols[o]]
        in_valid_rows = sorted({s for pair in valid for s in pair})
        compared = sorted({s for r, o in valid if r != o for s in (r, o)})
        for name, fn, strings in (
            ("InChI", Chem.MolToInchi, in_valid_rows),
            ("MACCS", MACCSkeys.GenMACCSKeys, compared),
            ("RDK", rdk_gen.GetFingerprint, compared),
            ("Morgan", morgan_gen.GetSparseCountFingerprint, compared),
        ):
            start = time.process_time()
            for smiles in strings:
                fn(mols[smiles])
            seconds[name] = time.process_time() - start
    return seconds


def main(argv=None) -> int:
    from almol_jax.eval import EvalOptions, read_predictions, score

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--reference", action="store_true", help="also time the reference way")
    parser.add_argument("--floor", action="store_true", help="also time the unavoidable RDKit work")
    args = parser.parse_args(argv)
    data = Path(args.data)
    pred_dir = data / "chebi-20-molt5-predictions"
    vocab = data / "scibert_scivocab_uncased" / "vocab.txt"
    options = EvalOptions(fcd=False, scibert_vocab=str(vocab), num_workers=args.num_workers)
    total = [0.0, 0.0]
    results = {}
    for task in ("caption2smiles", "smiles2caption"):
        p = read_predictions(pred_dir / f"molt5-large-{task}.txt", task)
        wall, cpu = _clock()
        metrics, _, _ = score(task, p.sources, p.references, p.outputs, options=options)
        wall, cpu = (a - b for a, b in zip(_clock(), (wall, cpu), strict=True))
        total = [total[0] + wall, total[1] + cpu]
        results[task] = (p, metrics)
        print(
            f"almol_jax.eval {task}: {wall:.2f} s wall, {cpu:.2f} s CPU ({len(p)} rows)", flush=True
        )
    print(f"almol_jax.eval total: {total[0]:.2f} s wall, {total[1]:.2f} s CPU", flush=True)
    if args.reference:
        ref_total = [0.0, 0.0]
        for task, (p, metrics) in results.items():
            wall, cpu = _clock()
            if task == "caption2smiles":
                want = reference_caption2smiles(p.references, p.outputs)
            else:
                want = reference_smiles2caption(p.references, p.outputs, vocab.parent)
            wall, cpu = (a - b for a, b in zip(_clock(), (wall, cpu), strict=True))
            ref_total = [ref_total[0] + wall, ref_total[1] + cpu]
            worst = max(abs(metrics[k] - v) for k, v in want.items())
            print(
                f"reference way {task}: {wall:.2f} s wall, {cpu:.2f} s CPU; max |difference| {worst:.1e}",
                flush=True,
            )
            if worst > 1e-12:
                print(f"MISMATCH {task}: {want} vs {metrics}", flush=True)
                return 1
        print(
            f"reference way total: {ref_total[0]:.2f} s wall, {ref_total[1]:.2f} s CPU; "
            f"speed-up {ref_total[0] / total[0]:.2f}x wall, {ref_total[1] / total[1]:.2f}x CPU"
        )
    if args.floor:
        from almol_jax.eval.parallel import default_num_workers

        p = results["caption2smiles"][0]
        seconds = rdkit_floor(p.references, p.outputs)
        cpu = sum(seconds.values())
        cores = args.num_workers or default_num_workers()
        parts = ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items())
        print(
            f"RDKit floor caption2smiles: {parts} = {cpu:.2f} s CPU; "
            f">= {cpu / cores:.2f} s wall on {cores} cores",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
