"""How the default recipe was chosen: candidate blends of measured members, by cross-validated OOF.

Reads the finished runs of ``recipes/ravdess_speaker.toml`` (two speaker-normalised ImageNet
backbones, four functionals members, and their pseudo-labelling students: ``benchmarks/pseudo_labels.py``)
and of the AudioSet recipe with and without speaker normalisation (``benchmarks/audioset_members.py``),
all on the same speaker-grouped folds, and blends candidate member sets with the mean, the
geometric mean and Caruana selection. The choice rule: the best cross-validated OOF accuracy among
the candidates that one recipe can express (``[speakers].norm`` is recipe-wide) and whose training
fits the 90-minute budget on a 2-core CPU; between candidates within 0.001 the one with fewer
members. The hidden-test columns are reported, never used.

    python benchmarks/default_choice.py

Prints and saves ``benchmarks/results/default_choice.{md,json}``. Trains nothing: run the two
benchmarks above first.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, save  # noqa: E402
from results import commit  # noqa: E402
from speaker_ablation import hidden_truth  # noqa: E402

import ensemble as ens  # noqa: E402
from ensemble import atomic, blend, blenders, runs  # noqa: E402
from ensemble import split as split_mod  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"
METHODS = ("mean", "geometric", "caruana")

S, A, AS = "ravdess_speaker:", "ravdess_audioset:", "ravdess_audioset_speaker:"
IMAGES = [S + "tf_mobilenetv3_small_100", S + "regnetx_002"]
FUNCTIONALS = [S + "compare_lr", S + "egemaps_svm", S + "basic_lr"]
GBM = [S + "basic_gbm"]
MN04, MN04_CLIP = [AS + "efficientat_mn04"], [A + "efficientat_mn04"]
STUDENTS = [S + "tf_mobilenetv3_small_100+pl1", S + "regnetx_002+pl1"]
ALL_STUDENTS = STUDENTS + [S + f"{m}+pl1" for m in ("compare_lr", "egemaps_svm", "basic_lr", "basic_gbm")]
EMBEDDING = [AS + "mn04_emb_lr"]

CANDIDATES = {
    # name: (members, one recipe can express it, note)
    "functionals (4)": (FUNCTIONALS + GBM, True, ""),
    "images + functionals (4)": (IMAGES + FUNCTIONALS + GBM, True, "recipes/ravdess_speaker.toml"),
    "images + functionals (3)": (IMAGES + FUNCTIONALS, True, "without basic_gbm"),
    "images + mn04 + functionals (3)": (IMAGES + MN04 + FUNCTIONALS, True, "recipes/ravdess.toml"),
    "images + mn04 + functionals (4)": (IMAGES + MN04 + FUNCTIONALS + GBM, True, ""),
    "images + mn04 (per-clip norm) + functionals (3)": (IMAGES + MN04_CLIP + FUNCTIONALS, False, "mn04 without speaker norm: [speakers] is recipe-wide"),
    "images + mn04 + mn04 embedding + functionals (4)": (IMAGES + MN04 + EMBEDDING + FUNCTIONALS + GBM, True, ""),
    "images + functionals (4) + image students": (IMAGES + FUNCTIONALS + GBM + STUDENTS, True, "one pseudo round of the image members"),
    "images + mn04 + functionals (4) + image students": (IMAGES + MN04 + FUNCTIONALS + GBM + STUDENTS, True, "one pseudo round of the image members"),
    "images + functionals (4) + all students": (IMAGES + FUNCTIONALS + GBM + ALL_STUDENTS, True, "one pseudo round of every member"),
    "permissive: images + mn04 + basic_lr": (IMAGES + MN04 + [S + "basic_lr"], True, "no openSMILE (research licence)"),
}


def training_minutes(recipe, members: list[str]) -> float:
    """Minutes the image members' training took (the sum of their folds' epoch seconds in ``log.csv``)."""
    seconds = 0.0
    for member in runs.members(dataclasses.replace(recipe, blend=dataclasses.replace(recipe.blend, members=members))):
        for entry in member.entries:
            for run in member.runs(entry):
                if (run / runs.LOG).is_file():
                    seconds += pd.read_csv(run / runs.LOG)["seconds"].sum()
    return seconds / 60


def main() -> None:
    base = ens.load_recipe(ROOT / "recipes" / "ravdess_speaker.toml")
    split = split_mod.load_split(base)
    task = split.competition.task
    y_test, _ = hidden_truth(split)
    rows = []
    for name, (members, expressible, note) in CANDIDATES.items():
        recipe = dataclasses.replace(base, blend=dataclasses.replace(base.blend, members=members))
        row = {
            "candidate": name,
            "members": len(members),
            "one recipe": "yes" if expressible else "no",
            "image training min": round(training_minutes(base, members), 1),
        }
        _, oofs, tests, _ = blend.collect(recipe, split)
        oof, test, options = np.stack(oofs), np.stack(tests), blend.method_options(recipe, task)
        for method in METHODS:  # as ens blend fits and cross-validates each method (ensemble.blend.blend), without the others
            cv_oof = blenders.cross_validate(method, oof, split.y, split.folds["fold"].to_numpy(), **options)
            row[f"CV OOF acc {method}"] = task.scores(split.y, cv_oof)["accuracy"]
            row[f"test acc {method}"] = task.scores(y_test, blenders.fit(method, oof, split.y, **options).combine(test))["accuracy"]
        row["note"] = note
        rows.append(row)
        print(name, {k: round(float(v), 4) for k, v in row.items() if isinstance(v, float)}, flush=True)
    table = pd.DataFrame(rows)
    oof = table[[f"CV OOF acc {m}" for m in METHODS]]
    table["best CV OOF"] = oof.max(axis=1)
    table["best method"] = oof.idxmax(axis=1).str.replace("CV OOF acc ", "")
    eligible = table[table["one recipe"] == "yes"]
    top = eligible["best CV OOF"].max()
    chosen = eligible[eligible["best CV OOF"] >= top - 0.001].sort_values("members").iloc[0]
    cpu = machine("cpu")
    header = (
        f"Commit {commit()}, {cpu['processor']}, {cpu['cpu_count']} cores. Chosen by the rule (best cross-validated OOF accuracy "
        f"among one-recipe candidates, fewer members within 0.001): **{chosen['candidate']}**, {chosen['best method']} blend, "
        f"CV OOF accuracy {chosen['best CV OOF']:.4f}."
    )
    columns = ["candidate", "members", "one recipe", "image training min", *(f"CV OOF acc {m}" for m in METHODS), *(f"test acc {m}" for m in METHODS), "note"]
    text = header + "\n\n" + markdown_table(table[columns], digits=4) + "\n"
    atomic.write_text(OUT / "default_choice.md", text)
    save(
        {"commit": commit(), "machine": cpu, "chosen": chosen["candidate"], "method": chosen["best method"], "rows": rows},
        OUT / "default_choice.json",
        echo=False,
    )
    print(text)


if __name__ == "__main__":
    main()
