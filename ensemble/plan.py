"""The time plan of a training grid: how long each stage of ``ens train`` should take on this
machine, said before it starts (:func:`estimate`, :func:`describe`).

Every estimate is calibrated where it runs, in a few seconds, never read from a table of another
machine: rendering times the loading (and waveform augmentation) and rendering of a few real
training clips; functionals and voice embeddings time their extractor on one real clip; a
backbone times three training steps and one evaluation batch of its real input shape on the
recipe's device, then counts the steps its folds take. Work already done costs nothing: cached
images, functionals and embeddings, and finished runs (a ``metrics.json``), are left out. Not
estimated: fitting the functionals members (seconds each with logistic regression or an SVM on
RAVDESS; a LightGBM ``tune`` grid can take many minutes), inferring the training speakers of a
table without a group column (once per competition) and building the competition folder.
The estimates leave out the data pipeline of training (gathering, SpecAugment, EMA), so they tend
to be low; ``benchmarks/main_job.py`` prints each stage's estimate beside its measured time.
"""

from __future__ import annotations

from .core.recipe import Recipe
from .members import guards, kinds
from .members.kind import Stage, vector_stage
from .speaker import speakers
from .store import competition as comp_mod
from .store import runs


def estimate(recipe: Recipe, entries: list[str] | None = None, folds: list[int] | None = None, force: bool = False) -> list[Stage]:
    """The stages the grid :func:`ensemble.train.train` runs for ``entries`` (default: every entry
    of the recipe) x ``folds`` (default: all), each with its calibrated estimate (module docstring);
    with ``force`` finished runs count as to do, as the grid then re-trains them.

    Stages, in the order the grid runs them: voice embeddings (speaker normalisation's inferred
    test speakers), then each member kind's (:meth:`ensemble.members.kind.Kind.stages`: the image kind's
    rendering per feature setting and training per entry, the functionals kind's sets).

    Raises:
        CompetitionError, AudioError, BackboneError, RecipeError: as loading the competition, a clip
            or a backbone raises them (the grid would raise the same).
    """
    entries = recipe.entries() if entries is None else entries
    folds = list(range(recipe.folds.n_splits)) if folds is None else folds
    competition = comp_mod.load(recipe.competition)
    recipe = guards.speaker_norm(recipe, competition).recipe  # as the grid will train it (said there)
    todo = {e: [k for k in folds if force or not (runs.run_dir(recipe, e, k) / runs.METRICS).exists()] for e in entries}
    by_kind = kinds.split(recipe, [e for e in entries if todo[e]])
    stages = []
    given = recipe.speakers.test == "given" or (recipe.speakers.test == "auto" and competition.config.group_col in competition.test.columns)
    if recipe.speakers.norm == "speaker" and recipe.speakers.test != "pool" and not given:
        settings = {kind.reads_at(recipe, e) for kind, listed in by_kind.items() for e in listed}
        cache = speakers.EmbeddingCache(competition.root / ".ens_cache").vectors()
        test_paths = competition.audio_paths(competition.test)
        stages += [vector_stage(f"embed voices at {rate} Hz", cache, test_paths, rate, trim) for rate, trim in sorted(settings)]
    for kind, listed in by_kind.items():
        stages += kind.stages(recipe, competition, {e: todo[e] for e in listed})
    return stages


def describe(stages: list[Stage]) -> str:
    """The plan as lines for a terminal: each stage with its estimate and basis, then the total."""
    lines = [f"  {s.name}: {_minutes(s.seconds)} ({s.basis})" for s in stages]
    total = sum(s.seconds for s in stages)
    return "\n".join(["plan (estimated on this machine; work already done left out):", *lines, f"  total: {_minutes(total)}"])


def _minutes(seconds: float) -> str:
    return f"~{seconds / 60:.1f} min" if seconds >= 60 else f"~{seconds:.0f} s"
