"""Per-clip vs per-speaker normalisation of the images, with the test speakers true, inferred or pooled.

Trains (or reuses, when finished with the same configuration) two recipes on the same folds:
``recipes/ravdess_images.toml`` (per-clip images) and ``recipes/ravdess_speaker.toml`` (speaker-level
CMVN, test speakers inferred), each with ``--backbones``; then scores, for each backbone and
their mean blend, the pooled OOF (validation speakers are always normalised with their own,
true, speakers: folds are grouped by actor) and the hidden test set. For the speaker recipe the
test set is scored three ways from the same fold models: test speakers **inferred** (what
training wrote: the speaker encoder + clustering), **true** (``solution.csv``'s actor column:
metadata a competition does not give, for reference) and **pool** (the test set as one speaker).
Settings are chosen on OOF only; the hidden-test columns are reported, never used to choose.

    python benchmarks/speaker_ablation.py            # trains what is missing, then scores

Prints a Markdown table and saves ``benchmarks/results/speaker_ablation.{md,json}`` with the
commit and the machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table  # noqa: E402
from results import commit  # noqa: E402

import ensemble as ens  # noqa: E402
from ensemble.core import atomic  # noqa: E402
from ensemble.members import data as data_mod  # noqa: E402
from ensemble.members import loop, models, runtime  # noqa: E402
from ensemble.speaker import speaker_groups, speakers  # noqa: E402
from ensemble.store import runs  # noqa: E402
from ensemble.store import split as split_mod  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("accuracy", "macro_f1", "uar")


def hidden_truth(split: split_mod.Split) -> tuple[np.ndarray, np.ndarray]:
    """The hidden test labels (encoded) and actors, in ``test.csv`` order, from ``solution.csv``."""
    comp = split.competition
    solution = pd.read_csv(comp.root / "solution.csv", dtype=str).set_index("id").loc[comp.test[comp.config.id_col]]
    return comp.encode(solution["label"]), solution["group"].to_numpy()


def refit_test(recipe, member: runs.Member, x_test: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """The member's test probabilities ``(n_test, classes)`` (mean over folds) with the test images
    normalised per ``groups``, from its saved fold weights."""
    made_with = runs.stored_recipe(member.runs(member.entries[0])[0], "re-train it")
    made_with.train.pretrained = False
    images = speaker_groups.to_unit(speakers.SpeakerNorm(pooled_axes=(-1,)).fit_transform(x_test, groups))
    device = runtime.resolve_device("cpu")
    task = ens.load_competition(recipe.competition).task
    probas = []
    for entry in member.entries:
        for run in member.runs(entry):
            model = models.build(made_with, entry, len(recipe.competition.classes))
            model.load_state_dict(load_file(run / runs.MODEL))
            probas.append(loop.predict(runtime.to_device(model, device).eval(), images, device, task.activation, shifts=made_with.train.tta_shifts))
    return np.mean(probas, axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="tf_mobilenetv3_small_100,regnetx_002")
    args = parser.parse_args()
    backbones = args.backbones.split(",")
    clip = ens.load_recipe(ROOT / "recipes" / "ravdess_images.toml", {"backbones": backbones})
    speaker = ens.load_recipe(ROOT / "recipes" / "ravdess_speaker.toml", {"backbones": backbones})
    for recipe in (clip, speaker):
        ens.train_runs(recipe)  # finished runs with the same configuration are skipped
    split = split_mod.load_split(clip)
    task = split.competition.task
    y_test, actors = hidden_truth(split)
    raw_test = data_mod.load_data(clip, progress=False).x_test  # per-clip images: the speaker variants normalise them
    found = speaker_groups.test_speakers(split.competition, speaker.speakers, speaker.features, progress=False)
    ari = float(speakers.adjusted_rand(actors, found.groups))  # here, not in ens: only the benchmark reads solution.csv

    rows = []
    pooled = np.full(len(raw_test), "pool", dtype=object)
    # test speakers -> groups to re-normalise the test images with, or None: the test tables training wrote
    studies = (("per-clip", clip, {"-": None}), ("per-speaker", speaker, {"inferred": None, "true": actors, "pool": pooled}))
    for name, recipe, variants in studies:
        members = runs.members(recipe)
        tables = [runs.read_member(m, split) for m in members]
        for variant, groups in variants.items():
            tests = [test if groups is None else refit_test(recipe, member, raw_test, groups) for member, (_, test) in zip(members, tables)]
            for label, oof, test in [
                *((m.name, o, t) for m, (o, _), t in zip(members, tables, tests)),
                ("mean blend", np.mean([o for o, _ in tables], axis=0), np.mean(tests, axis=0)),
            ]:
                oof_scores, test_scores = task.scores(split.y, oof), task.scores(y_test, test)
                rows.append(
                    {
                        "normalisation": name,
                        "test speakers": variant,
                        "model": label,
                        **{f"OOF {k}": round(oof_scores[k], 4) for k in COLUMNS},
                        **{f"test {k}": round(test_scores[k], 4) for k in COLUMNS},
                    }
                )
    table = pd.DataFrame(rows)
    cpu = machine("cpu")
    header = (
        f"Commit {commit()}, {cpu['processor']}, {cpu['cpu_count']} cores. Inferred test speakers: {found.k} clusters, "
        f"silhouette {found.silhouette:.3f}, adjusted Rand index {ari:.3f} against the true actors.\n\n"
    )
    markdown = header + markdown_table(table)
    print(markdown)
    out = ROOT / "benchmarks" / "results"
    atomic.write_text(out / "speaker_ablation.md", markdown + "\n")
    atomic.write_json(out / "speaker_ablation.json", {"commit": commit(), "machine": cpu, "ari": ari, "k": found.k, "rows": rows})


if __name__ == "__main__":
    main()
