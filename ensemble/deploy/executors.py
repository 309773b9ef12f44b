"""Where the grid's image runs train (``ens train --executor local|ray``): one after another in this
process (:class:`Local`, the default), or each (member, fold[, seed]) run as one Ray task
(:class:`Ray`) on a local Ray instance or an existing cluster.

:func:`ensemble.train.train` and the image kind (:mod:`ensemble.members.image`) keep the grid's logic (finished runs skipped, pseudo-labelling rounds
after their teachers, functionals members in the calling process): it hands an executor the
:class:`Job` of each run still to train, one round at a time, and takes the reports back in the
order given. A Ray task loads its feature setting's data from the feature cache the calling
process filled (so the run store and the competition folder, cache included, must be on a
filesystem every node sees at the same path) and calls :func:`ensemble.members.image_fit.train_fold`, which
writes the run folder as it does locally: the results are the same files. Ray retries a task whose
worker died (``max_retries``); the retry resumes the run from its last epoch's ``checkpoint.pt``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from ..core.errors import EnsError, Param
from ..core.recipe import Recipe
from ..store import runs

EXECUTORS = ("local", "ray")
RETRIES = 3
"""How often Ray reruns a run whose worker process died (killed, out of memory, node lost); each rerun resumes from its checkpoint."""


class ExecutorError(EnsError, RuntimeError):
    """An executor that cannot run: an unknown name, Ray not installed, or no Ray cluster at the address."""


@dataclass
class Job:
    """One run of the grid, as its kind hands it over: what ``fit`` is called with, and how a
    worker loads the run's data. Executors run jobs and know nothing of what a run is: the image
    kind (:mod:`ensemble.members.image`) makes them with :func:`ensemble.members.image_fit.train_fold` and
    :func:`ensemble.members.data.load_data` (module-level functions: a Ray task pickles them by name).

    Attributes:
        recipe: the grid's recipe. entry: a ``backbones`` entry (``name``, ``name@S``, ``name+plR``).
        fold: the fold. force, resume, progress: as :func:`ensemble.train.train`'s.
        pseudo: the round's pseudo-labels of this fold (:class:`ensemble.members.pseudo.PseudoLabels`), or None.
        on_error: how loading treats bad clips.
        fit: ``fit(recipe, data, entry, fold, force=, progress=, resume=, pseudo=) -> metrics.json dict``.
        load: ``load(recipe, progress=, on_error=) -> data`` of the entry's recipe (``recipe.for_backbone(entry)``).
    """

    recipe: Recipe
    entry: str
    fold: int
    force: bool
    resume: bool
    progress: bool
    pseudo: object | None
    on_error: str
    fit: Callable[..., dict]
    load: Callable[..., object]

    @property
    def name(self) -> str:
        """``<entry> fold <K>``: how logs name the run."""
        return f"{self.entry} fold {self.fold}"

    def run(self, data) -> dict:
        """Train the run on ``data`` (the :class:`ensemble.members.data.Data` of its feature setting); returns its ``metrics.json`` dict."""
        return self.fit(self.recipe, data, self.entry, self.fold, force=self.force, progress=self.progress, resume=self.resume, pseudo=self.pseudo)


def _run_loading(job: Job) -> dict:
    """``job`` run in a Ray worker: its data loaded from the feature cache (written by the calling process), then trained."""
    return job.run(job.load(job.recipe.for_backbone(job.entry), progress=False, on_error=job.on_error))


class Local:
    """Runs each job in this process, one after another, when its report is asked for (the default executor)."""

    def map(self, jobs: Sequence[Job], data_of: Callable) -> Iterator[dict]:
        """Each job's ``metrics.json`` dict, in order, trained on ``data_of(entry)`` as the iterator reaches it."""
        for job in jobs:
            yield job.run(data_of(job.entry))


class Ray:
    """Runs each job as one Ray task (``ray.remote``, ``num_cpus`` / ``num_gpus`` from ``[runtime]``
    ``run_cpus`` / ``run_gpus``, retried ``RETRIES`` times if its worker dies).

    Args:
        address: an existing Ray cluster (``ray.init(address=...)``, e.g. ``auto`` or
            ``ray://head:10001``); None starts a local Ray instance on this machine, unless this
            process is already connected to one (``ray.init`` called before).
        num_cpus: the CPUs of a local instance (default: every core); ignored with ``address``.

    The workers import this ens (``runtime_env`` ``py_modules``), whatever is installed on the nodes.

    Raises:
        ExecutorError: Ray is not installed (names the pip command), or ``ray.init`` fails.
    """

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
        try:
            import ray
        except ImportError as err:
            raise ExecutorError(
                Param("executor", "ray"), f" needs the ray package ({err}); install it: pip install -e '.[deploy]' (or pip install ray)."
            ) from err
        import ensemble

        self.ray = ray
        if not ray.is_initialized():
            try:
                ray.init(address=address, num_cpus=None if address else num_cpus, runtime_env={"py_modules": [ensemble]}, include_dashboard=False)
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise ExecutorError(
                    "no Ray cluster at ", Param("address", address), f" ({err}); start one (`ray start --head`) or leave out the address."
                ) from err

    def map(self, jobs: Sequence[Job], data_of: Callable) -> Iterator[dict]:
        """Submit every job at once, then yield their ``metrics.json`` dicts in order (each as it
        finishes). ``data_of`` is not used: each task loads its data itself. A job that does not
        resume has its stale checkpoint removed before it is submitted, and every task resumes, so a
        retried task continues from the checkpoint its killed attempt wrote.

        Raises:
            whatever the run raised in its task (``ray.exceptions.RayTaskError`` is unwrapped to the
            run's own exception, such as a ``RunConflictError``). ExecutorError: the task's worker
            died on every try, or the cluster was lost.
        """
        task = self.ray.remote(_run_loading)
        refs = []
        for job in jobs:
            if not job.resume:
                (runs.run_dir(job.recipe, job.entry, job.fold) / runs.CHECKPOINT).unlink(missing_ok=True)
            r = job.recipe.runtime
            options = task.options(num_cpus=r.run_cpus, num_gpus=r.run_gpus, max_retries=RETRIES, name=f"ens {job.name}")
            refs.append(options.remote(dataclasses.replace(job, resume=True)))
        for job, ref in zip(jobs, refs):
            try:
                yield self.ray.get(ref)
            except self.ray.exceptions.RayTaskError as err:
                raise err.as_instanceof_cause() from None
            except self.ray.exceptions.RayError as err:  # the worker died on every try, or the cluster went away
                raise ExecutorError(
                    f"{job.name}: its Ray task failed {RETRIES + 1} times ({type(err).__name__}: {str(err)[:300]}); "
                    "see the workers' logs, then run ens train again (with ",
                    Param("resume", True),
                    " to continue from its checkpoint).",
                ) from err


def get(name: str, address: str | None = None) -> Local | Ray:
    """The executor named ``name`` (``local`` or ``ray``; ``address`` for Ray, :class:`Ray`).

    Raises:
        ExecutorError: an unknown name, or ``address`` without ``ray``; and what :class:`Ray` raises.
    """
    if name not in EXECUTORS:
        raise ExecutorError(f"executor {name!r} is not one of {', '.join(EXECUTORS)}.")
    if name == "local":
        if address is not None:
            raise ExecutorError(Param("address", address), " is for ", Param("executor", "ray"), "; leave it out for the local executor.")
        return Local()
    return Ray(address)
