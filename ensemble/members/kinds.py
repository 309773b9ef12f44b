"""The registry of member kinds (:class:`ensemble.members.kind.Kind`), in the way timm registers models and
:mod:`ensemble.core.tasks` registers tasks: :func:`of` says which kind an entry is, and the grid, the
plan, ``ens predict``, ``ens report`` and ``ens export`` loop over :data:`KINDS`.

Adding a kind is one module with a :class:`~ensemble.members.kind.Kind` subclass and one line in
:data:`KINDS` (or :func:`register` from outside ens, e.g. a test's kind).
"""

from __future__ import annotations

from ..core.entry import Entry
from ..core.errors import RecipeError
from ..core.recipe import Recipe
from .finetune import FinetuneKind
from .image import ImageKind
from .kind import Kind
from .tabular import TabularKind

KINDS: list[Kind] = [ImageKind(), TabularKind(), FinetuneKind()]
"""The kinds, in the order the grid trains a pseudo round's entries and the report shows them. An
entry is of the last registered kind that owns it (:func:`of`): the image kind, first, owns every
entry no later kind claims."""


def register(kind: Kind) -> Kind:
    """Add ``kind`` after the registered kinds (it trains after them and is asked first which entries it owns); returns it."""
    KINDS.append(kind)
    return kind


def of(recipe: Recipe, entry: str) -> Kind:
    """The kind of ``entry`` (a run folder name of ``recipe``).

    Raises:
        RecipeError: a malformed entry (:meth:`ensemble.core.entry.Entry.parse`), or one no kind owns.
    """
    parsed = Entry.parse(entry)
    for kind in reversed(KINDS):
        if kind.owns(recipe, parsed):
            return kind
    raise RecipeError(f"entry {entry!r} is of no registered member kind ({', '.join(k.name for k in KINDS)}); check its name in the recipe.")


def split(recipe: Recipe, entries: list[str]) -> dict[Kind, list[str]]:
    """``entries`` by kind, each kind's in their order, the kinds in :data:`KINDS` order (kinds without entries left out)."""
    mine = {kind: [] for kind in KINDS}
    for entry in entries:
        mine[of(recipe, entry)].append(entry)
    return {kind: listed for kind, listed in mine.items() if listed}
