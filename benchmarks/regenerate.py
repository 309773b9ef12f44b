"""Regenerate every results table of README.md, docs/results.md and docs/benchmarks.md from scratch with today's code.

Each table is one benchmark script's output, ``benchmarks/results/<name>.md`` (which names the
commit and the machine that made it), and sits in the docs between the markers
``<!-- table:<name> -->`` and ``<!-- /table:<name> -->``. This script runs the benchmarks in
:data:`TABLES` order (later ones read the runs of earlier ones), then splices each ``.md`` into
its block, so no figure in a table is typed by hand:

    python benchmarks/regenerate.py --list                  # the tables, their commands and rough CPU hours
    python benchmarks/regenerate.py                         # everything, from an empty run store (many hours on a CPU)
    python benchmarks/regenerate.py --only main_job,default_choice --reuse
    python benchmarks/regenerate.py --splice-only           # copy the saved .md files into the docs

From scratch means: the run store ``runs/`` is moved aside (to ``runs.before-<time>/``) first,
unless ``--reuse`` keeps it, and ``benchmarks/results.py`` re-trains with ``--force``; the feature
and functionals caches are kept (they hold the same arrays whatever the code's commit: they are
keyed by their settings). The prose around a table quotes its figures and is not rewritten; after a
regeneration, read it against the new tables. The hours are this project's 2-core CPU's; with a GPU
the image members train about 20x faster.

A table without its saved ``.md`` has no block in the docs (``tests/test_results_docs.py`` fails on a
block that is not its saved output): its section says what was measured and names this script.

Raises (exit 2): a table whose ``.md`` exists but has no block in the docs (add the markers where
its section says the table belongs, then ``--splice-only``).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCS = (ROOT / "README.md", ROOT / "docs" / "results.md", ROOT / "docs" / "benchmarks.md")
MAIN_JOB = "/tmp/ens_main_job/ens"
"""Where ``main_job`` leaves its fresh clone (``--keep``), whose trained default ensemble ``runtimes_default`` times."""


@dataclass(frozen=True)
class Table:
    """One results table: the block ``name`` in the docs, made by ``command`` as ``benchmarks/results/<name>.md``."""

    name: str
    command: tuple[str, ...]
    hours: float


def _recipes(name: str, recipes: str, data_args: str = "", methods: str = "mean", hours: float = 1.0, backbones: str = "") -> Table:
    """A table of recipes' members and blends (``benchmarks/results.py``; ``recipes`` comma-separated
    names under ``recipes/``, ``backbones``: a subset)."""
    paths = ",".join(f"recipes/{r}.toml" for r in recipes.split(","))
    command = ("benchmarks/results.py", "--recipe", paths, "--methods", methods, "--out", f"benchmarks/results/{name}")
    command += ("--data-args", data_args) if data_args else ()
    return Table(name, command + (("--backbones", backbones) if backbones else ()), hours)


TABLES = (
    Table("speaker_ablation", ("benchmarks/speaker_ablation.py",), 1.5),
    Table("functionals_members", ("benchmarks/functionals_members.py",), 0.3),
    Table("functionals_c", ("benchmarks/functionals_c.py", "--grid", "0.01,0.03,0.1,0.3,1,3,10,30"), 0.2),
    Table("functionals_tune", ("benchmarks/functionals_tune.py",), 0.7),
    Table("pseudo_labels", ("benchmarks/pseudo_labels.py",), 0.5),
    Table("audioset", ("benchmarks/audioset_members.py", "--fine-tune", "--backbones", "efficientat_mn04,yamnet", "--norms", "clip,speaker"), 2.0),
    Table("inferred_speakers", ("benchmarks/inferred_speakers.py",), 0.1),
    Table("encoder_members", ("benchmarks/encoder_members.py",), 0.7),
    Table("finetune", ("benchmarks/finetune.py",), 0.5),
    Table("finetune_e6", ("benchmarks/finetune.py", "--epochs", "6", "--tag", "e6"), 0.8),
    Table("default_choice", ("benchmarks/default_choice.py",), 0.6),
    Table("main_job", ("benchmarks/main_job.py", "--keep"), 1.0),
    Table(
        "runtimes_default",
        (
            "benchmarks/runtimes.py",
            *("--recipe", f"{MAIN_JOB}/recipes/ravdess.toml", "--runs-dir", f"{MAIN_JOB}/runs", "--competition", f"{MAIN_JOB}/data/ravdess"),
            *("--threads", "2", "--out", "benchmarks/results/runtimes_default.json"),
        ),
        0.3,
    ),
    Table(
        "bundle",
        (
            "benchmarks/bundle.py",
            *("--recipe", f"{MAIN_JOB}/recipes/ravdess.toml", "--runs-dir", f"{MAIN_JOB}/runs", "--competition", f"{MAIN_JOB}/data/ravdess"),
        ),
        0.1,
    ),
    Table("functionals_threads", ("benchmarks/functionals_threads.py",), 0.05),
    Table("esc50", ("benchmarks/esc50.py",), 0.5),
    _recipes("ravdess_images", "ravdess_images", methods="mean,caruana", backbones="tf_mobilenetv3_small_100,regnetx_002"),
    _recipes("augmentation", "ravdess_aug_none,ravdess_aug_wave,ravdess_aug_spec,ravdess_aug_both", hours=4.0),
    _recipes("seed_systems", "seed_mfcc_cnn,seed_mfcc_noise_shift,seed_deep_cnn,seed_pretrained_ensemble", hours=7.0),
    _recipes("seed_gender_emotion", "seed_gender_emotion", "--labels gender_emotion --out data/ravdess_gender_emotion", hours=0.5),
    _recipes("ravdess_multilabel", "ravdess_multilabel", "--labels emotion_intensity --out data/ravdess_multilabel"),
)
"""Every table, in the order they must run (each reads the runs of those before it)."""


def block(name: str) -> re.Pattern:
    """The markers of a table's block and what lies between them."""
    return re.compile(rf"(<!-- table:{re.escape(name)} -->\n)(.*?)(<!-- /table:{re.escape(name)} -->)", re.S)


def splice(tables: list[Table]) -> list[str]:
    """Copy each table's ``.md`` into its blocks in :data:`DOCS` (atomically per
    file); returns the names of the tables whose ``.md`` does not exist yet (they have no block).

    Raises:
        SystemExit: a table's ``.md`` exists but it has no block in any of :data:`DOCS`.
    """
    sys.path.insert(0, str(ROOT))
    from ensemble.core import atomic

    texts = {path: path.read_text() for path in DOCS}
    unmade = []
    for table in tables:
        made = RESULTS / f"{table.name}.md"
        if not made.is_file():
            unmade.append(table.name)
            continue
        if not any(block(table.name).search(text) for text in texts.values()):
            raise SystemExit(
                f"error: {made} exists but there is no <!-- table:{table.name} --> block in {[str(p) for p in DOCS]}; "
                "add one where its section says the table belongs, then run --splice-only."
            )
        body = made.read_text().strip() + "\n"
        texts = {path: block(table.name).sub(lambda m, body=body: m.group(1) + body + m.group(3), text) for path, text in texts.items()}
    for path, text in texts.items():
        if text != path.read_text():
            atomic.write_text(path, text)
    return unmade


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated table names (default: all)")
    parser.add_argument("--reuse", action="store_true", help="keep the run store (finished runs are reused) instead of moving it aside")
    parser.add_argument("--splice-only", action="store_true", help="run nothing; copy the saved .md files into the docs")
    parser.add_argument("--list", action="store_true", help="print the tables and their commands, run nothing")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = sorted(set(names) - {t.name for t in TABLES})
    if unknown:
        raise SystemExit(f"error: --only names unknown tables {unknown}; see --list.")
    chosen = [t for t in TABLES if not names or t.name in names]
    if args.list:
        for t in chosen:
            print(f"{t.name:28s} ~{t.hours:.1f} h  python {' '.join(t.command)}")
        print(f"total ~{sum(t.hours for t in chosen):.1f} h of this project's 2-core CPU")
        return
    if not args.splice_only:
        runs = ROOT / "runs"
        if runs.exists() and not args.reuse:
            aside = ROOT / f"runs.before-{time.strftime('%Y%m%d-%H%M%S')}"
            runs.rename(aside)
            print(f"moved the run store aside to {aside}", flush=True)
        for t in chosen:
            print(f"== {t.name}: python {' '.join(t.command)}", flush=True)
            started = time.monotonic()
            subprocess.run([sys.executable, *t.command], cwd=ROOT, check=True)
            print(f"== {t.name}: {(time.monotonic() - started) / 60:.1f} min", flush=True)
    unmade = splice(chosen)
    if unmade:
        print(f"not made yet (not shown in the docs until they are): {', '.join(unmade)}")


if __name__ == "__main__":
    main()
