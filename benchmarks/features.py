"""Feature rendering speed: the batched torch renderer against the librosa reference, side by side.

On the same real RAVDESS clips (loaded once, fixed to ``[features].duration``), round-robin over
``--repeats`` rounds so every renderer sees the same machine load, reports clips/s of:

- ``librosa_reference``: :func:`ensemble.inputs.reference.render`, one clip at a time (same images);
- ``librosa_defaults``: what a notebook does per clip: ``melspectrogram``, ``chroma_stft`` (tuning
  estimated) and ``amplitude_to_db(|stft|)`` with librosa's default settings, each its own STFT;
- ``torch_cpu_b<N>``: :func:`ensemble.inputs.features.render_batch` on CPU in batches of N clips;
- ``torch_cpu_b8_dense_mel``: ``torch_cpu_b8`` with the mel filterbank multiplied in one band
  spanning every filter (the dense product) instead of 16 filters at a time: the ablation of
  :func:`ensemble.inputs.features._bands`;
- ``torch_stft_only_b8``: only the renderer's STFT (power spectrum) in batches of 8, the floor
  the renderer cannot go below on this device;
- ``torch_cuda_all``: on CUDA (when present), every clip in batches of 256, waveforms already on
  the device, synchronised: the time for all ``--clips`` clips is reported too.

Then the whole cache build (:meth:`ensemble.inputs.features.FeatureCache.get`: read + trim, render, write
the memory-mapped array) of the same clips into a temporary folder, in a fresh process, loading
in that process and with one spawned worker per core: wall time (process start excluded, pool
start included) and peak RAM of the building process and of its largest worker.

    python benchmarks/features.py [--clips 1440] [--repeats 5] [--out benchmarks/results/features.json]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import librosa
import numpy as np
import torch
from common import machine, median, peak_rss_mib, save

from ensemble.core.recipe import FeatureConfig
from ensemble.inputs import audio, features
from ensemble.inputs.reference import render as reference_render

RAVDESS = Path("../shared/data/ravdess")


def librosa_defaults(y: np.ndarray, rate: int) -> list[np.ndarray]:
    """Log-Mel, chroma and log-STFT the way a notebook computes them: librosa defaults, one STFT each."""
    mel = librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=rate), ref=np.max)
    chroma = librosa.feature.chroma_stft(y=y, sr=rate)
    stft = librosa.amplitude_to_db(np.abs(librosa.stft(y)), ref=np.max)
    return [mel, chroma, stft]


def build_cache(paths: list[Path], root: str, config: FeatureConfig, device: str, workers: int) -> dict:
    """Build a fresh cache of ``paths`` under ``root`` (run in a fresh process, so its peak RAM is the build's alone)."""
    started = time.perf_counter()
    features.FeatureCache(root, config).get(paths, progress=False, device=device, workers=workers)
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 2), "clips_per_s": round(len(paths) / seconds, 1), "peak_rss_mib": peak_rss_mib()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=1440)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--source", type=Path, default=RAVDESS)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/features.json"))
    args = parser.parse_args()

    config = FeatureConfig()
    paths = sorted(args.source.glob("Actor_*/*.flac"))[: args.clips]
    if not paths:
        raise SystemExit(f"no Actor_*/*.flac under {args.source}: give the RAVDESS folder with --source.")
    audio.load(paths[0], config.sample_rate, config.duration, config.trim_db)  # warm-up: librosa's first call compiles
    started = time.perf_counter()
    waves = np.stack([audio.load(p, config.sample_rate, config.duration, config.trim_db) for p in paths])
    load_s = time.perf_counter() - started

    stft = features.Renderer(config).stft
    tensor = torch.from_numpy(waves)

    def run_dense():
        banded = features.Renderer.MEL_ROWS_PER_BAND
        features.Renderer.MEL_ROWS_PER_BAND = config.n_mels  # one band: every filter, every non-zero bin
        try:
            features.render_batch(waves, config, "cpu", 8)
        finally:
            features.Renderer.MEL_ROWS_PER_BAND = banded

    def stft_only():
        with torch.inference_mode():
            for start in range(0, len(tensor), 8):
                spectrum = stft(tensor[start : start + 8])
                spectrum.real.square() + spectrum.imag.square()

    def run_torch(batch: int):
        return lambda: features.render_batch(waves, config, "cpu", batch)

    arms = {
        "librosa_reference": lambda: [reference_render(y, config) for y in waves],
        "librosa_defaults": lambda: [librosa_defaults(y, config.sample_rate) for y in waves],
        **{f"torch_cpu_b{b}": run_torch(b) for b in (1, 8, 32, 256)},
        "torch_cpu_b8_dense_mel": run_dense,
        "torch_stft_only_b8": stft_only,
    }
    cuda = torch.cuda.is_available()
    if cuda:
        on_device = torch.from_numpy(waves).cuda()
        renderer = features.Renderer(config).cuda()

        def run_cuda():
            with torch.inference_mode():
                for start in range(0, len(on_device), 256):
                    renderer(on_device[start : start + 256])
            torch.cuda.synchronize()

        arms["torch_cuda_all"] = run_cuda
    for run in arms.values():  # warm-up: allocations, FFT plans, filterbanks
        run()
    seconds = {name: [] for name in arms}
    for repeat in range(args.repeats):
        for name, run in arms.items():
            t0 = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - t0)
        print(f"round {repeat + 1}: " + "  ".join(f"{n} {len(paths) / s[-1]:.0f}" for n, s in seconds.items()) + " clips/s", flush=True)
    clips_per_s = {name: median([len(paths) / s for s in values]) for name, values in seconds.items()}
    reference = clips_per_s["librosa_reference"]

    context = multiprocessing.get_context("spawn")
    builds = {}
    for workers in (1, os.cpu_count()):
        with tempfile.TemporaryDirectory() as tmp, ProcessPoolExecutor(1, mp_context=context) as child:
            builds[f"workers_{workers}"] = child.submit(build_cache, paths, tmp, config, "cuda" if cuda else "cpu", workers).result()

    result = {
        "clips": len(paths),
        "clip_seconds": config.duration,
        "image": [len(config.channels), config.height, features.frames(config)],
        "repeats": args.repeats,
        "clips_per_s_median": clips_per_s,
        "ratio_to_librosa_reference": {name: round(v / reference, 2) for name, v in clips_per_s.items()},
        "ratio_to_librosa_defaults": {name: round(v / clips_per_s["librosa_defaults"], 2) for name, v in clips_per_s.items()},
        "torch_cuda_all_clips_s": median(seconds["torch_cuda_all"], 4) if cuda else None,
        "audio_load_clips_per_s_one_process": round(len(paths) / load_s, 1),
        "cache_build": builds,
        "machine": machine("cuda" if cuda else "cpu"),
    }
    save(result, args.out)


if __name__ == "__main__":
    main()
