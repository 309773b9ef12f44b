"""Latency of `ens predict` (the library call) for one 4 s clip with a recipe's trained ensemble.

Cold: :func:`ensemble.predict.load_ensemble` (every fold model of every member) plus the first
:func:`ensemble.predict.predict` call, in a fresh process after the imports (their time is reported
apart). Warm: the median of ``--repeats`` further calls with the ensemble loaded, split into
preprocessing (read, resample, trim, render) and the models. The clip is a real RAVDESS recording
of a hidden-test actor cut to its first 4.0 s (written to a temporary WAV at its own rate).

    python benchmarks/predict.py --recipe recipes/seed_pretrained_ensemble.toml [--repeats 20] [--device cpu]
    python benchmarks/predict.py --untrained   # every backbone of the recipe, fold models not trained

``--untrained`` builds the ensemble the recipe would have once fully trained (every backbone, one
model per fold, equal weights) from randomly initialised models instead of loading runs: latency
depends on the architectures, not on the weights, so it measures a 5-backbone x 5-fold ensemble
before one is trained.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from common import machine, save

CLIP = Path("../shared/data/ravdess/Actor_21/03-01-05-02-01-01-21.flac")
SECONDS = 4.0


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def untrained_ensemble(recipe, device: str):
    """The recipe's full ensemble (every backbone, ``n_splits`` fold models, equal weights) with random weights."""
    from ensemble import predict
    from ensemble.members import models, runtime
    from ensemble.store import competition, runs

    classes = competition.load(recipe.competition).classes
    untrained = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, pretrained=False))
    torch_device = runtime.resolve_device(device)
    members = runs.members(recipe)
    return predict.Ensemble(
        recipe=recipe,
        classes=classes,
        members=members,
        weights={m.name: 1 / len(members) for m in members},
        models={
            m.name: [runtime.to_device(models.build(untrained, m.entries[0], len(classes)), torch_device).eval() for _ in range(recipe.folds.n_splits)]
            for m in members
        },
        trained_with={m.name: untrained for m in members},
        weights_from="untrained models, equal weights (--untrained)",
        device=torch_device,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=Path("recipes/ravdess_images.toml"))
    parser.add_argument("--clip", type=Path, default=CLIP, help="Recording to cut the 4 s clip from (at least 4 s long).")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--untrained", action="store_true", help="Every backbone x fold of the recipe, randomly initialised.")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/predict.json"))
    args = parser.parse_args()

    started = time.perf_counter()
    from ensemble import predict
    from ensemble.core import recipe as recipe_mod
    from ensemble.inputs import audio

    import_s = time.perf_counter() - started
    recipe = recipe_mod.load(args.recipe)
    samples, rate = sf.read(args.clip, dtype="float32")
    if len(samples) < SECONDS * rate:
        raise SystemExit(f"{args.clip} is {len(samples) / rate:.2f} s long; give a recording of at least {SECONDS} s with --clip.")
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip_4s.wav"
        sf.write(clip, samples[: int(SECONDS * rate)], rate)

        started = time.perf_counter()
        ensemble = untrained_ensemble(recipe, args.device) if args.untrained else predict.load_ensemble(recipe, args.device)
        loaded = time.perf_counter()
        first = predict.predict(ensemble, [clip])[0]
        cold_s, load_s = time.perf_counter() - started, loaded - started

        calls, preprocess, models = [], [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            predict.predict(ensemble, [clip])
            t1 = time.perf_counter()
            y, _ = audio.load_trimmed(clip, recipe.features.sample_rate, recipe.features.trim_db)
            image = predict.model_inputs([y], recipe.features)
            t2 = time.perf_counter()
            ensemble.predict_images(image)
            t3 = time.perf_counter()
            calls.append(t1 - t0)
            preprocess.append(t2 - t1)
            models.append(t3 - t2)

    result = {
        "recipe": str(args.recipe),
        "members": {m.backbone: {"weight": round(m.weight, 4), "fold_models": len(m.models)} for m in ensemble.members},
        "weights_from": ensemble.weights_from,
        "clip": {
            "source": str(args.clip),
            "seconds": SECONDS,
            "sample_rate": rate,
            "trimmed_seconds": round(len(y) / recipe.features.sample_rate, 3),
            "windows": len(first.spans),
            "image": list(image.shape[1:]),
        },
        "cold_ms": _ms(cold_s),
        "cold_breakdown_ms": {"load_ensemble": _ms(load_s), "first_predict": _ms(cold_s - load_s), "imports_before": _ms(import_s)},
        "warm_ms": {"median": _ms(statistics.median(calls)), "min": _ms(min(calls)), "max": _ms(max(calls)), "repeats": args.repeats},
        "warm_breakdown_median_ms": {"preprocess": _ms(statistics.median(preprocess)), "models": _ms(statistics.median(models))},
        "machine": machine(str(ensemble.device)),
        "top_class": ensemble.classes[int(np.argmax(first.proba))],
    }
    save(result, args.out)
    print(
        f"{args.recipe}: {sum(len(m.models) for m in ensemble.members)} fold models of {len(ensemble.members)} backbone(s); "
        f"cold {result['cold_ms']} ms (loading {result['cold_breakdown_ms']['load_ensemble']} ms), warm median "
        f"{result['warm_ms']['median']} ms (preprocess {result['warm_breakdown_median_ms']['preprocess']} ms, "
        f"models {result['warm_breakdown_median_ms']['models']} ms) -> {args.out}"
    )


if __name__ == "__main__":
    main()
