"""The base of every error ens raises on purpose.

Each module keeps its own error class (``RecipeError``, ``CompetitionError``, ``AudioError``, ...),
named after what went wrong and documented where it is raised; all of them derive from
:class:`EnsError`, so a caller catches ens's refusals with one ``except EnsError`` and the ``ens``
command prints their messages as ``error: ...`` (exit code 2), while any other exception, a bug,
keeps its traceback. Most also derive from ``ValueError`` (bad input) or ``RuntimeError`` (a state
on disk), as they did before this base existed.
"""

from __future__ import annotations


class EnsError(Exception):
    """An input, setting or state ens refuses; the message names the file, row or option and the fix."""


class OptionError(EnsError, ValueError):
    """A library function was given a value it does not take (a fold number, a policy, a method name)."""


class RecipeError(EnsError, ValueError):
    """A recipe file is missing, unreadable, or has an unknown key or a bad value (raised by :mod:`ensemble.core.recipe`
    and :mod:`ensemble.core.entry`)."""


class BackboneError(EnsError, ValueError):
    """A backbone that cannot be built: not a timm model, or its pretrained weights in neither the local weights folder nor the hub
    (raised by :mod:`ensemble.members.models` and :mod:`ensemble.members.audioset`)."""
