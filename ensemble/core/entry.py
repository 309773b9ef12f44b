"""A recipe's entry, parsed and printed in one place: what names a run folder of the run store.

An entry is ``model``, ``model@seed`` (trained with ``[train].seed = seed``) or either with a
pseudo-labelling round's mark (``model@seed+pl2``: retrained in round 2, :mod:`ensemble.members.pseudo`).
``model`` is a timm model name of ``backbones`` or the name of a ``[[functionals]]`` member; which
kind of member trains it is the recipe's to say (:func:`ensemble.members.kinds.of`). Every other
module reads an entry's parts through :class:`Entry` and never splits the text itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import RecipeError

SEED_MARK = "@"
"""Between a model name and its seed: ``"regnetx_002@43"``."""
ROUND_MARK = "+pl"
"""Before a pseudo-labelling round: ``"regnetx_002@7+pl2"`` is ``regnetx_002@7`` retrained in round 2."""
MAX_SEED = 2**32
"""Seeds are integers in ``[0, MAX_SEED)``: NumPy's seed range."""


class EntryError(RecipeError):
    """A recipe entry whose name or seed is missing or whose seed is not an integer in ``[0, 2**32)``."""


@dataclass(frozen=True)
class Entry:
    """One entry of a recipe (the name of its run folders).

    Attributes:
        model: the timm model name (``backbones``) or the ``[[functionals]]`` member's name.
        seed: the ``[train].seed`` it trains with; None: the recipe's.
        round: its pseudo-labelling round; 0 for an entry trained on the labels alone.
    """

    model: str
    seed: int | None = None
    round: int = 0

    @classmethod
    def parse(cls, text: str) -> Entry:
        """``"a@7+pl2"`` -> ``Entry("a", 7, 2)``, ``"a"`` -> ``Entry("a")``. A ``+pl`` not followed by
        a positive integer is part of the name.

        Raises:
            EntryError: naming the entry, when the name or the seed after ``@`` is missing or the seed
                is not an integer in ``[0, 2**32)``: ``"regnetx_002@"``, ``"regnetx_002@x"``, ``"@43"``.
        """
        base, mark, round_ = text.rpartition(ROUND_MARK)
        if not (mark and base and round_.isascii() and round_.isdigit() and int(round_) > 0):
            base, round_ = text, "0"
        model, at, seed = base.partition(SEED_MARK)
        if not at:
            return cls(base, None, int(round_))
        if not model or not (seed.isascii() and seed.isdigit() and int(seed) < MAX_SEED):
            raise EntryError(f"backbones entry {text!r}: write a timm model name, or name@seed with an integer seed in [0, 2**32), such as 'regnetx_002@43'.")
        return cls(model, int(seed), int(round_))

    def __str__(self) -> str:
        seed = "" if self.seed is None else f"{SEED_MARK}{self.seed}"
        return f"{self.model}{seed}{self.pseudo_mark}"

    @property
    def pseudo_mark(self) -> str:
        """The round's mark, ``"+pl2"``, or ``""`` in round 0."""
        return f"{ROUND_MARK}{self.round}" if self.round else ""

    @property
    def base(self) -> Entry:
        """This entry before pseudo-labelling (its round's teacher): ``a@7+pl2`` -> ``a@7``."""
        return Entry(self.model, self.seed)

    @property
    def member(self) -> str:
        """The blend member it belongs to: the model and the round, without the seed: ``a@7+pl1`` -> ``a+pl1``."""
        return f"{self.model}{self.pseudo_mark}"

    def in_round(self, round_: int) -> Entry:
        """This entry retrained in pseudo-labelling round ``round_``: ``a@7`` -> ``a@7+pl2``."""
        return Entry(self.model, self.seed, round_)


def marks_round(name: str) -> bool:
    """Whether ``name`` holds the pseudo-round mark ``+pl`` (a recipe's own names may not: it marks a round's members)."""
    return ROUND_MARK in name
