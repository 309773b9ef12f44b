"""The AudioSet members of ``recipes/ravdess_audioset.toml`` on RAVDESS, with and without
per-speaker normalisation, beside the ImageNet backbones of the same folds.

Members: the frozen-embedding members (``yamnet_emb_lr``, ``mn04_emb_lr``: each pretrained network's
embedding, mean and max over time, + logistic regression per fold) and, with ``--fine-tune``, the
fine-tuned ``yamnet`` / ``efficientat_mn04`` (names with ``--backbones``). Each is trained (or reused
when finished) twice: as the recipe says (``[speakers].norm = "clip"``) and with ``norm = "speaker"``
(recipe ``ravdess_audioset_speaker``; test speakers inferred). Rows: pooled OOF accuracy / macro-F1 /
UAR, hidden-test accuracy / macro-F1 / UAR (reported, never used to choose), and seconds per fold
(image members: the sum of ``log.csv``'s epoch seconds; an interrupted fold resumes from its checkpoint; embedding members: the wall time of the
five folds, which includes computing every clip's embedding once). For comparison the ImageNet
backbones already trained by ``recipes/ravdess_images.toml`` and ``recipes/ravdess_speaker.toml`` are read
(not trained). Nothing is chosen here.

    python benchmarks/audioset_members.py [--fine-tune] [--backbones yamnet,efficientat_mn04] [--norms clip,speaker]

Prints a Markdown table and saves ``benchmarks/results/audioset.{md,json}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table  # noqa: E402
from results import commit  # noqa: E402
from speaker_ablation import hidden_truth  # noqa: E402

import ensemble as ens  # noqa: E402
from ensemble.core import atomic  # noqa: E402
from ensemble.store import runs  # noqa: E402
from ensemble.store import split as split_mod  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("accuracy", "macro_f1", "uar")


def score_rows(recipe, names: list[str], norm: str, seconds: dict[str, float]) -> list[dict]:
    """One row per finished member of ``recipe`` among ``names``."""
    split = split_mod.load_split(recipe)
    task = split.competition.task
    y_test, _ = hidden_truth(split)
    rows = []
    for member in runs.members(recipe):
        if member.name not in names or member.unfinished():
            continue
        oof, test = runs.read_member(member, split)
        o, t = task.scores(split.y, oof), task.scores(y_test, test)
        logs = [run / runs.LOG for run in member.runs(member.entries[0])]
        per_fold = np.mean([pd.read_csv(p)["seconds"].sum() for p in logs]) if all(p.is_file() for p in logs) else seconds.get(member.name, np.nan)
        rows.append(
            {
                "member": member.name,
                "recipe": recipe.name,
                "norm": norm,
                **{f"OOF {k}": o[k] for k in COLUMNS},
                **{f"test {k}": t[k] for k in COLUMNS},
                "s / fold": round(float(per_fold), 1),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fine-tune", action="store_true", help="also fine-tune the AudioSet backbones (slow on a CPU)")
    parser.add_argument("--backbones", default="yamnet,efficientat_mn04", help="the backbones --fine-tune trains")
    parser.add_argument("--norms", default="clip,speaker", help="which [speakers].norm settings to train")
    args = parser.parse_args()
    rows = []
    for norm in args.norms.split(","):
        overrides = {} if norm == "clip" else {"name": "ravdess_audioset_speaker", "speakers": {"norm": "speaker", "test": "auto"}}
        recipe = ens.load_recipe(ROOT / "recipes" / "ravdess_audioset.toml", overrides)
        entries = [m.name for m in recipe.functionals] + (args.backbones.split(",") if args.fine_tune else [])
        seconds = {}
        for entry in entries:
            started = time.monotonic()
            results = ens.train_runs(recipe, backbones=[entry], progress=False, resume=True)  # an interrupted fold continues from its checkpoint
            if not all(r.skipped for r in results):
                seconds[entry] = (time.monotonic() - started) / len(results)
        rows += score_rows(recipe, entries, norm, seconds)
    for name, norm in (("ravdess_images.toml", "clip"), ("ravdess_speaker.toml", "speaker")):  # ImageNet backbones, read only
        recipe = ens.load_recipe(ROOT / "recipes" / name)
        rows += score_rows(recipe, [b for b in recipe.backbones if (runs.root(recipe) / b).is_dir()], norm, {})
    cpu = machine("cpu")
    text = f"Commit {commit()}, {cpu['processor']}, {cpu['cpu_count']} cores.\n\n" + markdown_table(pd.DataFrame(rows))
    print(text)
    out = ROOT / "benchmarks" / "results"
    atomic.write_text(out / "audioset.md", text + "\n")
    atomic.write_json(out / "audioset.json", {"commit": commit(), "machine": cpu, "rows": rows})


if __name__ == "__main__":
    main()
