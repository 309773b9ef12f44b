"""`ens predict` with torch eager vs ONNX Runtime vs OpenVINO, side by side in one run: throughput on
a folder of clips (by default the competition's hidden-test clips, 240 for RAVDESS) for the whole
ensemble and for its image members alone (a CNN ensemble), single-clip latency, medians of several
repeats taken round-robin (so load from other jobs spreads over every runtime alike); the image
members' models alone on the rendered images; the largest probability difference from torch; and
the two export choices: one member's folds as one averaged ONNX graph vs one graph per fold, and
OpenVINO's throughput vs latency mode on each member's graph.

    python benchmarks/runtimes.py --recipe recipes/ravdess.toml [--runs-dir DIR] [--competition DIR] \
        [--repeats 3] [--latency-repeats 10] [--threads 2]

The recipe's trained ensemble (its blend weights) is exported with ``ens export`` into a temporary
folder (the run store is only read) and loaded once per runtime (:func:`ensemble.predict.load_ensemble`).
Writes ``benchmarks/results/runtimes.json`` and ``runtimes.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import machine, median, save

from ensemble import export, predict
from ensemble.core import atomic, tasks
from ensemble.core import recipe as recipe_mod
from ensemble.deploy import engines
from ensemble.inputs import audio
from ensemble.members import loop
from ensemble.members.image import ImageMember
from ensemble.store import competition


def _seconds(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def _image_members(ensemble: predict.Ensemble) -> predict.Ensemble:
    """``ensemble`` without its functionals members, the image members' weights scaled to sum to 1."""
    members = [m for m in ensemble.members if isinstance(ensemble.loaded[m.name], ImageMember)]
    total = sum(ensemble.weights[m.name] for m in members)
    return dataclasses.replace(ensemble, members=members, weights={m.name: ensemble.weights[m.name] / total for m in members})


def _member_graph(ensemble: predict.Ensemble, images: np.ndarray, folder: Path, threads: int, repeats: int) -> dict:
    """Seconds for the first image member's folds on ``images`` as one averaged ONNX graph (what
    ``ens export`` writes) vs one ONNX Runtime session per fold (medians)."""
    member = next(m for m in ensemble.members if isinstance(ensemble.loaded[m.name], ImageMember))
    task = tasks.get(ensemble.recipe.competition.task)
    path = folder / "member.onnx"
    engines.SAVERS["onnx"](engines.MemberGraph(ensemble.models[member.name], task.activation).eval(), torch.from_numpy(images[:2]), path)
    whole = engines.RUNNERS["onnx"](path, threads)
    for k, model in enumerate(ensemble.models[member.name]):
        engines.SAVERS["onnx"](model, torch.from_numpy(images[:2]), path.parent / f"fold{k}.onnx")
    folds = [engines.ExportedModel(engines.RUNNERS["onnx"](path.parent / f"fold{k}.onnx", threads), path) for k in range(len(ensemble.models[member.name]))]
    cpu = torch.device("cpu")
    one, per_fold = [], []
    for _ in range(repeats):
        one.append(_seconds(lambda: [whole(images[i : i + 64]) for i in range(0, len(images), 64)]))
        per_fold.append(_seconds(lambda: [loop.predict(m, images, cpu, task.activation, 64) for m in folds]))
    return {"member": member.name, "folds": len(folds), "one_graph_s": median(one, 3), "graph_per_fold_s": median(per_fold, 3)}


def _openvino_modes(folder: Path, images: dict[str, np.ndarray], threads: int, repeats: int) -> dict:
    """Seconds for each member's OpenVINO graph on its images in latency mode (one request per
    64-image batch, every thread on it) vs throughput mode (``export``'s runner: parallel streams fed
    16-image requests), medians."""
    import openvino as ov

    out = {}
    for name, x in images.items():
        xml = folder / f"{name}{engines.SUFFIX['openvino']}"
        request = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}).create_infer_request()
        streams = engines.RUNNERS["openvino"](xml, threads)
        batches = [x[i : i + 64] for i in range(0, len(x), 64)]
        latency, throughput = [], []
        for _ in range(repeats):
            latency.append(_seconds(lambda r=request, b=batches: [r.infer({0: batch}) for batch in b]))
            throughput.append(_seconds(lambda run=streams, b=batches: [run(batch) for batch in b]))
        out[name] = {"latency_mode_s": median(latency, 3), "throughput_mode_s": median(throughput, 3)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=Path("recipes/ravdess.toml"))
    parser.add_argument("--runs-dir", help="Override [paths].runs_dir (the trained runs are read from there).")
    parser.add_argument("--competition", help="Override [competition].dir.")
    parser.add_argument("--clips", type=Path, help="Folder of clips for the throughput (default: the competition's test clips).")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency-repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="[runtime].threads for every runtime (0: each runtime's default).")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/runtimes.json"))
    args = parser.parse_args()

    overrides = {"runtime": {"threads": args.threads}, "paths": {"runs_dir": args.runs_dir} if args.runs_dir else {}}
    if args.competition:
        overrides["competition"] = {"dir": args.competition}
    recipe = recipe_mod.load(args.recipe, {k: v for k, v in overrides.items() if v})
    c = competition.load(recipe.competition)
    files = predict.audio_files([args.clips]) if args.clips else c.audio_paths(c.test)
    result: dict = {"recipe": str(args.recipe), "clips": len(files), "threads": args.threads, "machine": machine("cpu")}
    with tempfile.TemporaryDirectory() as tmp:
        folders = {fmt: Path(tmp) / fmt for fmt in engines.FORMATS}
        result["export_s"] = {fmt: round(_seconds(lambda f=fmt: export.export(recipe, f, folders[f])), 1) for fmt in engines.FORMATS}
        ensembles, load_s = {}, {}
        for engine in engines.RUNTIMES:
            started = time.perf_counter()
            ensembles[engine] = predict.load_ensemble(recipe, "cpu", engine, folders.get(engine))
            load_s[engine] = round(time.perf_counter() - started, 2)
        torch_ens = ensembles["torch"]
        kind = {m.name: "functionals" if m.name in torch_ens.functionals else "image" for m in torch_ens.members}
        result["ensemble"] = {
            m.name: {"weight": round(torch_ens.weights[m.name], 4), "fold_models": len(m.entries) * m.n_splits, "kind": kind[m.name]} for m in torch_ens.members
        }
        result["load_s"] = load_s
        images_only = {engine: _image_members(ens) for engine, ens in ensembles.items()}

        probas = {engine: np.stack([p.proba for p in predict.predict(ens, files)]) for engine, ens in ensembles.items()}  # also the warm-up
        result["max_abs_diff_vs_torch"] = {e: float(np.abs(probas[e] - probas["torch"]).max()) for e in engines.FORMATS}
        throughput = {e: [] for e in ensembles}
        image_throughput = {e: [] for e in ensembles}
        latency = {e: [] for e in ensembles}
        for _ in range(args.repeats):
            for engine, ens in ensembles.items():
                throughput[engine].append(_seconds(lambda ens=ens: predict.predict(ens, files)))
                image_throughput[engine].append(_seconds(lambda engine=engine: predict.predict(images_only[engine], files)))
        for _ in range(args.latency_repeats):
            for engine, ens in ensembles.items():
                latency[engine].append(_seconds(lambda ens=ens: predict.predict(ens, files[:1])))

        images = {}  # member -> its rendered test images
        for name, made_with in torch_ens.trained_with.items():
            if name not in torch_ens.functionals:
                y = [audio.load_trimmed(f, made_with.features.sample_rate, made_with.features.trim_db)[0] for f in files]
                images[name] = np.asarray(predict.model_inputs(y, made_with.features), dtype=np.float32)
        models_only = {e: [] for e in ensembles}
        task = tasks.get(recipe.competition.task)
        for _ in range(args.repeats):
            for engine, ens in ensembles.items():
                activation = task.activation if engine == "torch" else (lambda p: p)  # an exported member graph gives probabilities
                models_only[engine].append(
                    _seconds(lambda ens=ens, a=activation: [loop.predict(model, images[name], ens.device, a) for name in images for model in ens.models[name]])
                )
        result["member_graph"] = _member_graph(torch_ens, next(iter(images.values())), Path(tmp) / "member", args.threads, args.repeats)
        result["openvino_modes"] = _openvino_modes(folders["openvino"], images, args.threads, args.repeats)

    def summary(times: dict[str, list[float]], scale: float = 1.0, digits: int = 2) -> dict:
        """Each runtime's median (times ``scale``) and torch's median over it (the speed-up)."""
        return {e: {"median": median([t * scale for t in v], digits), "vs_torch": round(np.median(times["torch"]) / np.median(v), 2)} for e, v in times.items()}

    for key, times in (("predict_folder_s", throughput), ("image_members_folder_s", image_throughput)):
        result[key] = summary(times)
        for e, v in times.items():
            result[key][e]["clips_per_s"] = round(len(files) / float(np.median(v)), 1)
    result["single_clip_ms"] = summary(latency, 1000, 1)
    result["models_only_s"] = summary(models_only)
    folder, models = float(np.median(throughput["torch"])), float(np.median(models_only["torch"]))
    result["bound_vs_torch"] = round(folder / max(folder - models, 1e-9), 2)  # Amdahl: models taking no time at all
    result["repeats"] = {"throughput": args.repeats, "latency": args.latency_repeats}
    save(result, args.out)
    rows = [
        "| runtime | folder: s (clips/s) | x torch | image members only: s (clips/s) | x torch | one clip: ms | x torch | models only: s | x torch |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for e in ensembles:
        f, i, s, m = (result[k][e] for k in ("predict_folder_s", "image_members_folder_s", "single_clip_ms", "models_only_s"))
        rows.append(
            f"| {e} | {f['median']} ({f['clips_per_s']}) | {f['vs_torch']} | {i['median']} ({i['clips_per_s']}) | {i['vs_torch']} "
            f"| {s['median']} | {s['vs_torch']} | {m['median']} | {m['vs_torch']} |"
        )
    rows.append(
        f"\nThe models are {models:.2f} s of torch's {folder:.2f} s for the folder: a runtime whose models took no time at all would give "
        f"{result['bound_vs_torch']}x. Largest probability difference from torch: "
        + ", ".join(f"{e} {d:.1e}" for e, d in result["max_abs_diff_vs_torch"].items())
        + "."
    )
    g = result["member_graph"]
    rows.append(f"\n{g['member']}'s {g['folds']} folds on {len(files)} images in ONNX Runtime: one averaged graph {g['one_graph_s']} s, ")
    rows[-1] += f"one graph per fold {g['graph_per_fold_s']} s."
    modes = "; ".join(f"{n} {v['throughput_mode_s']} s vs {v['latency_mode_s']} s" for n, v in result["openvino_modes"].items())
    rows.append(f"\nOpenVINO throughput mode vs latency mode, each member's graph on its {len(files)} images: {modes}.")
    atomic.write_text(args.out.with_suffix(".md"), "\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
