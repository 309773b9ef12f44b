"""What every benchmark reports beside its figures: the machine, peak memory, medians, the JSON file."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
from pathlib import Path

import torch

from ensemble.core import atomic


def machine(device: str = "cpu") -> dict:
    """The machine a figure was measured on: CPU, cores, torch threads, GPU name, load at the start."""
    cuda = torch.device(device).type == "cuda"
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def peak_rss_mib() -> dict:
    """Peak resident memory in MiB: this process's high-water mark (``VmHWM`` of ``/proc/self/status``,
    which starts afresh at ``exec``, unlike ``ru_maxrss``), and the largest ``ru_maxrss`` of its
    finished children, an upper bound: Linux carries a parent's peak into the children it forks."""
    status = Path("/proc/self/status").read_text()
    hwm = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"process": round(hwm / 1024, 1), "children_upper_bound": round(children / 1024, 1)}


def reset_peak() -> None:
    """Start this process's ``VmHWM`` afresh from its current RSS (``/proc/self/clear_refs`` = 5,
    Linux >= 4.0), so the next :func:`peak_rss_mib` measures the phase that follows."""
    Path("/proc/self/clear_refs").write_text("5")


def median(values: list[float], digits: int = 1) -> float:
    """Median, rounded."""
    return round(statistics.median(values), digits)


def save(result: dict, out, echo: bool = True) -> None:
    """Write ``result`` atomically as JSON to ``out``; ``echo``: print it too."""
    atomic.write_json(out, result)
    if echo:
        print(json.dumps(result, indent=2))
        print(f"-> {out}")


def markdown_table(frame, digits: int = 4) -> str:
    """``frame`` (a pandas DataFrame) as a Markdown table, floats with ``digits`` decimals, NaN as an empty cell."""
    cells = [
        ["" if isinstance(v, float) and v != v else f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in row] for row in frame.itertuples(index=False)
    ]
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + " --- |" * len(frame.columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])
