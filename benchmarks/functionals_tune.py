"""``[[functionals]].tune`` against the fixed settings on RAVDESS: each functionals member of
``recipes/ravdess_speaker.toml`` trained with ``tune = true`` (each fold chooses its ``C`` or
LightGBM size by an inner speaker-grouped CV on its own training clips, :func:`ensemble.members.tabular.tune`)
beside the same member with the recipe's fixed settings (chosen once by ``benchmarks/functionals_c.py``
on pooled OOF). Pooled OOF accuracy / macro-F1 / UAR of both, the settings each fold chose, and
the seconds of the tuned training (this machine, one process). The hidden test is not read.

    python benchmarks/functionals_tune.py

Tuned runs go to ``runs/tuned/``; prints a Markdown table and saves ``benchmarks/results/functionals_tune.{md,json}``.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table  # noqa: E402
from results import commit  # noqa: E402

import ensemble as ens  # noqa: E402
from ensemble.core import atomic  # noqa: E402
from ensemble.store import runs  # noqa: E402
from ensemble.store import split as split_mod  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("accuracy", "macro_f1", "uar")


def main() -> None:
    fixed = ens.load_recipe(ROOT / "recipes" / "ravdess_speaker.toml")
    ens.train_runs(fixed, backbones=[m.name for m in fixed.functionals], progress=False)
    tuned = dataclasses.replace(
        fixed,
        name="ravdess_speaker_tuned",
        functionals=[dataclasses.replace(m, tune=True) for m in fixed.functionals],
        paths=dataclasses.replace(fixed.paths, runs_dir=str(Path(fixed.paths.runs_dir) / "tuned")),
    )
    split = split_mod.load_split(fixed)
    task = split.competition.task
    rows = []
    for member in fixed.functionals:
        started = time.time()
        results = ens.train_runs(tuned, backbones=[member.name], progress=False)
        seconds = time.time() - started
        chosen = [r.metrics.get("chosen") for r in results]
        for label, recipe in (("fixed", fixed), ("tune", tuned)):
            (m,) = [m for m in runs.members(recipe) if m.name == member.name]
            scores = task.scores(split.y, runs.read_member(m, split)[0])
            row = {"member": member.name, "settings": label, **{f"OOF {k}": scores[k] for k in COLUMNS}}
            if label == "fixed":
                row["chosen per fold"] = ", ".join(f"{k}={getattr(member, k)}" for k in ("c",) if member.model != "lightgbm") or (
                    f"trees={member.trees}, leaves={member.leaves}"
                )
            else:
                row["chosen per fold"] = "; ".join(", ".join(f"{k}={v}" for k, v in c.items()) for c in chosen)
                row["seconds (5 folds)"] = round(seconds, 1) if not all(r.skipped for r in results) else None
            rows.append(row)
        print(rows[-2], rows[-1], flush=True)
    cpu = machine("cpu")
    text = f"Commit {commit()}, {cpu['processor']}, {cpu['cpu_count']} cores.\n\n" + markdown_table(pd.DataFrame(rows))
    print(text)
    out = ROOT / "benchmarks" / "results"
    atomic.write_text(out / "functionals_tune.md", text + "\n")
    atomic.write_json(out / "functionals_tune.json", {"commit": commit(), "machine": cpu, "rows": rows})


if __name__ == "__main__":
    main()
