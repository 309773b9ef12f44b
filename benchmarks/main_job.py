"""The README's main command on a fresh clone: wall time of each step, the time plan ``ens train``
printed beside what each stage took, and the default blend's scores.

Clones this repository's HEAD into ``--workdir`` (``git clone``: committed files only) with
``../shared`` linked beside it, reads the main command from README.md (the line under "The main
job"), and runs its ``&&``-separated steps one by one in the clone, unchanged, timing each. Then
reads the run store the command wrote: each training stage's measured seconds (the sum of its
folds' epoch seconds in ``log.csv``), the rendering / functionals / voice lines ``ens train``
printed, the blend leaderboard (cross-validated OOF) and the score ``ens score`` printed.

    python benchmarks/main_job.py [--workdir /tmp/ens_main_job] [--keep]

Prints and saves ``benchmarks/results/main_job.{json,md}`` (machine, commit, each figure). Pip's
download cache is off (``PIP_NO_CACHE_DIR=1``) so the install is a fresh machine's; what PyPI's
speed adds to it is in the "install" step alone.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, save  # noqa: E402
from speaker_ablation import hidden_truth  # noqa: E402

import ensemble as ens  # noqa: E402
from ensemble.blending import blend  # noqa: E402
from ensemble.store import runs  # noqa: E402
from ensemble.store import split as split_mod  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"
COLUMNS = ("accuracy", "macro_f1", "uar")


def main_command(readme: Path) -> str:
    """The README's main command: the first indented line starting ``python3 -m venv`` after "The main job".

    Raises:
        ValueError: the README has no such line.
    """
    text = readme.read_text()
    after = text[text.index("The main job") :]
    match = re.search(r"^    (python3 -m venv .*)$", after, re.M)
    if match is None:
        raise ValueError(f"{readme}: no indented 'python3 -m venv ...' line after 'The main job'")
    return match.group(1)


def run_step(step: str, cwd: Path, log, threads: int = 0) -> tuple[float, str]:
    """Run one shell step in ``cwd``, its output streamed to ``log`` and kept; returns (seconds, output).
    ``threads``: ``OMP_NUM_THREADS`` for it (0: not set).

    Raises:
        subprocess.CalledProcessError: the step failed.
    """
    print(f"$ {step}", flush=True)
    started = time.perf_counter()
    env = {**os.environ, "PIP_NO_CACHE_DIR": "1", "PYTHONUNBUFFERED": "1", **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    proc = subprocess.Popen(step, shell=True, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        log.write(line)
        log.flush()
    if proc.wait():
        raise subprocess.CalledProcessError(proc.returncode, step, "".join(lines[-40:]))
    return time.perf_counter() - started, "".join(lines)


def planned(train_output: str) -> dict[str, float]:
    """The plan ``ens train`` printed: stage name -> estimated seconds."""
    out = {}
    for name, value, unit in re.findall(r"^  (.+?)(?: \(.*\))?: ~([\d.]+) (min|s) \(", train_output, re.M):
        out[name] = float(value) * (60 if unit == "min" else 1)
    return out


def measured(train_output: str, runs_dir: Path, plan: dict[str, float]) -> dict[str, float]:
    """What each planned stage took, under the plan's names: the k-th "render features: N clips in
    S s" line is the k-th rendering stage (and likewise "embed voices"), "functionals <set>" lines
    (training, then test clips) add up, and a backbone's training is the sum of its folds' epoch
    seconds in ``log.csv``."""
    out = {}
    for prefix, pattern in (("render", r"^render features: \d+ clips in ([\d.]+) s$"), ("embed voices", r"^embed voices: \d+ clips in ([\d.]+) s$")):
        names = [name for name in plan if name.startswith(prefix)]
        out.update({name: float(seconds) for name, seconds in zip(names, re.findall(pattern, train_output, re.M))})
    for label, seconds in re.findall(r"^(functionals \S+): \d+ clips in ([\d.]+) s$", train_output, re.M):
        out[label] = out.get(label, 0.0) + float(seconds)
    for entry in sorted(p.name for p in runs_dir.iterdir() if (p / "fold0" / "log.csv").exists()):
        out[f"train {entry}"] = float(sum(pd.read_csv(log)["seconds"].sum() for log in (runs_dir / entry).glob("fold*/log.csv")))
    return out


def results_table(clone: Path) -> pd.DataFrame:
    """The README's results table from the clone's run store: each member (pooled OOF; hidden test:
    the mean of its fold models) and the blends of every member by mean, geometric mean, Caruana
    selection and ``auto`` (the method with the best cross-validated ``[train].metric``); blends: cross-validated
    OOF (fitted on the other folds), hidden test fitted on all OOF rows; accuracy, macro-F1 and UAR each. The hidden test labels come from ``solution.csv``."""
    recipe = ens.load_recipe(
        clone / "recipes" / "ravdess.toml",
        {"competition": {"dir": str(clone / "data" / "ravdess")}, "paths": {"runs_dir": str(clone / "runs")}},
    )
    split = split_mod.load_split(recipe)
    task = split.competition.task
    y_test, _ = hidden_truth(split)
    rows = []

    def row(name: str, oof, test) -> None:
        o, t = task.scores(split.y, oof), task.scores(y_test, test)
        rows.append({"model": name, **{f"OOF {k}": o[k] for k in COLUMNS}, **{f"hidden-test {k}": t[k] for k in COLUMNS}})

    for member in runs.members(recipe):
        row(member.name, *runs.read_member(member, split))
    for method in ("mean", "geometric", "caruana", blend.AUTO):
        result = blend.blend(recipe, method=method, split=split)
        label = f"{method}: {result.method}" if method == blend.AUTO else method
        row(f"blend: {label}{' (default)' if method == recipe.blend.method else ''}", result.oof, result.test)
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ens_main_job"))
    parser.add_argument("--keep", action="store_true", help="keep the clone afterwards")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="OMP_NUM_THREADS for every step (0: not set). Set 1 when another job shares the CPU: two torch processes "
        "with a thread per core each slow each other many-fold (OpenMP threads spin at their barriers).",
    )
    args = parser.parse_args()
    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    clone = work / "ens"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    (work / "shared").symlink_to(ROOT.parent / "shared")
    command = main_command(clone / "README.md")
    steps, outputs = [], {}
    started = time.perf_counter()
    with open(work / "main_job.log", "w") as log:
        for step in command.split(" && "):
            seconds, output = run_step(step, clone, log, args.threads)
            steps.append({"step": step, "seconds": round(seconds, 1)})
            outputs[step] = output
    total = time.perf_counter() - started
    train_output = next(out for step, out in outputs.items() if step.endswith("ens train"))
    score_output = next(out for step, out in outputs.items() if " score " in step)
    plan = planned(train_output)
    took = measured(train_output, clone / "runs" / "ravdess", plan)
    table = results_table(clone)
    cpu = machine("cpu")
    result = {
        "commit": subprocess.run(["git", "-C", str(clone), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip(),
        "machine": cpu,
        "command": command,
        "omp_num_threads": args.threads or None,
        "total_seconds": round(total, 1),
        "steps": steps,
        "plan_seconds": plan,
        "measured_seconds": {k: round(v, 1) for k, v in took.items()},
        "finished_line": re.findall(r"^ens train finished in .*$", train_output, re.M),
        "score": score_output.strip().splitlines()[-1],
        "results": table.round(4).to_dict("records"),
    }
    save(result, OUT / "main_job.json", echo=False)
    lines = [
        f"Commit {result['commit']} (the clone's), {cpu['processor']}, {cpu['cpu_count']} cores, load {cpu['load_average_1min']} at the start; "
        f"fresh clone, pip without its cache{f', OMP_NUM_THREADS={args.threads}' if args.threads else ''}. Total {total / 60:.1f} min.",
        "",
        markdown_table(pd.DataFrame(steps), digits=1),
        "",
        "Plan printed by `ens train` (estimates) and what the stages took (rendering, functionals and voice lines from its output; "
        "training: the sum of the folds' epoch seconds in log.csv):",
        "",
        markdown_table(pd.DataFrame({"planned s": pd.Series(plan), "measured s": pd.Series(took)}).round(1).reset_index(names="stage"), digits=1),
        "",
        f"`ens score`: {result['score']}",
        "",
        "Members (pooled OOF; hidden test: the mean of the five fold models) and blends (cross-validated OOF; hidden test: fitted on all "
        "OOF rows). The hidden test chose nothing:",
        "",
        markdown_table(table, digits=4),
    ]
    text = "\n".join(lines) + "\n"
    (OUT / "main_job.md").write_text(text)
    print(text)
    if not args.keep:
        shutil.rmtree(clone, ignore_errors=True)


if __name__ == "__main__":
    main()
