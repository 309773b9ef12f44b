"""Clip durations of a competition before and after silence trimming: the figures behind
``[features].duration`` (README, "Clip length").

    python benchmarks/durations.py                           # data/ravdess, the default recipe's settings
    python benchmarks/durations.py --recipe recipes/X.toml

Reads every training and test clip with the recipe's sample rate and ``trim_db``
(:func:`ensemble.inputs.audio.load_trimmed`, exactly what the cache renders from), prints the
distribution and the share of clips that fit whole in ``duration``, and saves
``benchmarks/results/durations.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

from ensemble.core import atomic  # noqa: E402
from ensemble.core import recipe as recipe_mod
from ensemble.inputs import audio  # noqa: E402
from ensemble.store import competition  # noqa: E402


def summary(seconds: np.ndarray) -> dict:
    """min, median, 95th percentile and max of ``seconds``, rounded to 10 ms."""
    return {
        k: round(float(v), 2) for k, v in (("min", seconds.min()), ("median", np.median(seconds)), ("p95", np.percentile(seconds, 95)), ("max", seconds.max()))
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/ravdess_images.toml")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/durations.json"))
    args = parser.parse_args()
    r = recipe_mod.load(args.recipe)
    comp = competition.load(r.competition)
    paths = comp.audio_paths(comp.train) + comp.audio_paths(comp.test)
    f = r.features
    raw = np.array([sf.info(str(p)).duration for p in paths])
    trimmed = np.array([len(audio.load_trimmed(p, f.sample_rate, f.trim_db)[0]) / f.sample_rate for p in paths])
    whole = float(np.mean(trimmed <= f.duration))
    padding = float(np.mean(np.clip(f.duration - trimmed, 0, None)) / f.duration)
    result = {
        "recipe": args.recipe,
        "clips": len(paths),
        "trim_db": f.trim_db,
        "duration": f.duration,
        "raw_seconds": summary(raw),
        "trimmed_seconds": summary(trimmed),
        "share_kept_whole": round(whole, 4),
        "mean_padding_share": round(padding, 4),
        "machine": machine(),
    }
    print(
        f"{len(paths)} clips: raw {result['raw_seconds']}, trimmed at {f.trim_db} dB {result['trimmed_seconds']}; "
        f"{whole:.1%} fit whole in {f.duration} s, padding {padding:.1%} of the image on average"
    )
    atomic.write_json(args.out, result)


if __name__ == "__main__":
    main()
