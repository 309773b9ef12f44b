"""The compiled dependencies ens relies on, checked once when ``ens`` starts.

torch, torchvision and torchaudio are built against each other: a torchaudio of another build
than the installed torch fails when its C++ library loads, e.g. torchaudio 2.11.1 beside torch
2.11.0 (``OSError: ... libtorchaudio.so: undefined symbol:
torch_exception_get_what_without_backtrace``, seen on PyPI's wheels on 2026-11-29). The README's
commands install the exact trio of ``requirements.lock``; :func:`check_torchaudio` turns a broken
pair into one line that names both versions and that fix.
"""

from __future__ import annotations

from importlib import metadata

from .errors import EnsError

LOCK_FIX = 'reinstall the locked versions: .venv/bin/pip install -c requirements.lock -e ".[test]" (README, "Two commands")'


class DependencyError(EnsError, RuntimeError):
    """An installed dependency does not work with the others (a torch / torchaudio build mismatch)."""


def installed(name: str) -> str:
    """The installed version of distribution ``name``, or ``"not installed"``; read from the
    package metadata, so it works when the package itself fails to import."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def check_torchaudio() -> None:
    """Import torchaudio and run each compiled or torch-backed op ens uses once, on a few samples
    (about a millisecond): ``Spectrogram`` (the renderer's STFT), ``melscale_fbanks`` (its mel
    filterbank), ``create_dct`` (MFCC) and ``FrequencyMasking`` / ``TimeMasking`` (SpecAugment).

    Raises:
        DependencyError: torchaudio does not import or an op fails; one line naming the installed
            torch and torchaudio versions, the error, and the fix (:data:`LOCK_FIX`).
    """
    try:
        import torch
        import torchaudio.functional as F
        import torchaudio.transforms as T

        spectrum = T.Spectrogram(n_fft=64, hop_length=16)(torch.linspace(-1.0, 1.0, 256))
        mel = F.melscale_fbanks(33, 0.0, 8000.0, 8, 16000)
        dct = F.create_dct(4, 8, "ortho")
        masked = T.TimeMasking(2, iid_masks=True)(T.FrequencyMasking(2, iid_masks=True)(torch.ones(2, 1, 8, 17)))
        shapes = (tuple(spectrum.shape), tuple(mel.shape), tuple(dct.shape), tuple(masked.shape))
        if shapes != ((33, 17), (33, 8), (8, 4), (2, 1, 8, 17)):
            raise RuntimeError(f"unexpected output shapes {shapes}")
    except (OSError, ImportError, RuntimeError, AttributeError) as err:
        cause = f" ({err.__cause__})" if err.__cause__ is not None else ""  # torch's OSError wraps the loader's, which names the symbol
        problem = " ".join(f"{err}{cause}".split())
        raise DependencyError(
            f"torchaudio {installed('torchaudio')} does not work with torch {installed('torch')} ({type(err).__name__}: {problem}); {LOCK_FIX}."
        ) from err
