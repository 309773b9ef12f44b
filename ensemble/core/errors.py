"""The base of every error ens raises on purpose.

Each module keeps its own error class (``RecipeError``, ``CompetitionError``, ``AudioError``, ...),
named after what went wrong and documented where it is raised; all of them derive from
:class:`EnsError`, so a caller catches ens's refusals with one ``except EnsError`` and the ``ens``
command prints their messages as ``error: ...`` (exit code 2), while any other exception, a bug,
keeps its traceback. Most also derive from ``ValueError`` (bad input) or ``RuntimeError`` (a state
on disk), as they did before this base existed.

A message that names a parameter carries it as data (:class:`Param` inside a :class:`Message`): the
library's text reads ``pass force=True``; each front end renders the parameter its own way (the
``ens`` command as its flag, ``pass --force``), from the same message, with no text rewritten.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Param:
    """A library parameter a message names, with its value: ``Param("force", True)`` reads
    ``force=True``; ``shown`` stands for the value when it is a placeholder (``Param("speaker",
    shown="DIR")`` reads ``speaker=DIR``; ``shown=""`` the name alone, ``speaker=``)."""

    name: str
    value: object = True
    shown: str | None = None

    def __str__(self) -> str:
        return f"{self.name}={self.shown if self.shown is not None else repr(self.value)}"


class Message:
    """Words and parameters (:class:`Param`) in order; a nested message is spliced in. ``str()`` is
    the library's text; :meth:`render` lets a front end show each parameter its own way."""

    def __init__(self, *parts: object):
        self.parts = tuple(p for part in parts for p in (part.parts if isinstance(part, Message) else (part,)))

    def render(self, param: Callable[[Param], str] = str) -> str:
        """The text, each parameter as ``param`` shows it (default: the library's ``name=value``)."""
        return "".join(param(p) if isinstance(p, Param) else str(p) for p in self.parts)

    def __str__(self) -> str:
        return self.render()


class _Parts:
    """Built from message parts (:class:`Message`); ``str()`` is the library's text (also what a
    pickled copy, e.g. from a Ray task, keeps)."""

    def __init__(self, *parts: object):
        self.message = Message(*parts)
        super().__init__(str(self.message))

    def render(self, param: Callable[[Param], str] = str) -> str:
        """The message with each parameter as ``param`` shows it (:meth:`Message.render`)."""
        return self.message.render(param)


class EnsError(_Parts, Exception):
    """An input, setting or state ens refuses; the message names the file, row or option and the fix."""


class EnsWarning(_Parts, UserWarning):
    """A warning ens gives on purpose; like :class:`EnsError` its message may carry parameters (:class:`Param`)."""


class OptionError(EnsError, ValueError):
    """A library function was given a value it does not take (a fold number, a policy, a method name)."""


class RecipeError(EnsError, ValueError):
    """A recipe file is missing, unreadable, or has an unknown key or a bad value (raised by :mod:`ensemble.core.recipe`
    and :mod:`ensemble.core.entry`)."""


class BackboneError(EnsError, ValueError):
    """A backbone that cannot be built: not a timm model, or its pretrained weights in neither the local weights folder nor the hub
    (raised by :mod:`ensemble.members.models` and :mod:`ensemble.members.audioset`)."""
