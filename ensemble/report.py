"""An HTML report of a recipe's runs and blend: one self-contained file, figures embedded as PNG.

``runs/<recipe>/report.html`` (by default) has one section per heading of :data:`SECTIONS`:

- **Leaderboard**: ``blend/leaderboard.csv`` when ``ens blend`` has run (its columns as they are),
  else the pooled OOF scores (:func:`ensemble.core.metrics.scores`) of every finished backbone; the
  best row is highlighted (see :func:`best_row`: the cross-validated ``cv_<metric>`` column when
  the leaderboard has one, else the recipe's ``[train].metric``).
- **Confusion matrix**: of the blend's OOF probabilities (``blend/oof.csv``), else of the best
  backbone's pooled OOF; colour = fraction of the true class (row-normalised), text = counts.
- **Per-class accuracy**: recall of each class for every finished backbone and the blend.
- **Training curves**: per backbone, one line per fold from ``log.csv`` (unfinished folds too).
- **Blend weights**: ``blend/weights.json``.
- **Top functionals**: for each finished ``[[functionals]]`` member with a linear or tree model,
  the functionals it leans on most (:func:`ensemble.members.tabular.importance`, mean over its folds).
- **Feature images**: every channel of a few training clips per class, the images the backbones
  see (:func:`ensemble.inputs.features.load_waveform` and :func:`ensemble.inputs.features.model_inputs`; the cache
  is neither read nor written), drawn by :func:`ensemble.inputs.plots.clips_figure`.
- **Unfinished backbones**: the recipe's backbones without every fold finished, with the reason.

A backbone's pooled OOF is the union of its folds' ``oof.csv``: every training clip predicted by
the fold model that did not train on it. Figures use matplotlib's object-oriented API
(:class:`matplotlib.figure.Figure` on the Agg canvas): no display and no pyplot state needed.
The HTML has inline CSS and no script; it opens offline in any browser.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from .core import atomic, metrics
from .core.entry import Entry
from .core.errors import EnsError
from .core.recipe import Recipe
from .core.tasks import Task
from .inputs import features, plots
from .members import kinds
from .members.kind import Section
from .store import competition as comp_mod
from .store import runs as run_store
from .store.split import Split, load_split

SECTIONS = (
    "Leaderboard",
    "Confusion matrix",
    "Per-class accuracy",
    "Training curves",
    "Blend weights",
    "Feature images",
    "Unfinished backbones",
)
"""The report's own section headings, in order; the member kinds' sections (:meth:`ensemble.members.kind.Kind.report`,
e.g. the functionals kind's "Top functionals") follow "Blend weights"."""

DPI = 100  # a 13-inch-wide figure becomes 1300 px, about the page's width


class ReportError(EnsError, ValueError):
    """There is nothing to report (no runs), or a run's predictions disagree with the competition."""


@dataclass
class BackboneRuns:
    """What exists of one backbone's runs.

    Attributes:
        name: the timm model name.
        logs: fold -> its ``log.csv`` (one row per finished epoch), for every fold that has one.
        oof: pooled OOF probabilities ``(n_train, classes)`` in ``train.csv`` order when every fold
            is finished, else None.
        reason: why ``oof`` is None (the unfinished folds, or a run that disagrees with the competition).
        finished_folds: folds with a ``metrics.json``.
        n_splits: the recipe's number of folds.
    """

    name: str
    n_splits: int
    logs: dict[int, pd.DataFrame] = field(default_factory=dict)
    oof: np.ndarray | None = None
    reason: str | None = None
    finished_folds: list[int] = field(default_factory=list)


def backbone_runs(recipe: Recipe, split: Split) -> list[BackboneRuns]:
    """The runs of each of ``recipe.backbones`` and ``[[functionals]]`` members (see :class:`BackboneRuns`); never raises for an
    unfinished or inconsistent backbone, whose ``reason`` says what is wrong instead: its pooled
    OOF is read by the same strict reader as the blend's (:func:`ensemble.store.runs.read_member`), so
    the report shows a run the blend refuses with the blend's reason."""
    out = []
    n_splits = recipe.folds.n_splits
    for name in recipe.entries():  # functionals members have no log.csv
        runs = BackboneRuns(name, n_splits)
        member = run_store.Member(name, run_store.root(recipe), (name,), n_splits)
        for fold, run in enumerate(member.runs(name)):
            if (run / run_store.LOG).exists():
                runs.logs[fold] = pd.read_csv(run / run_store.LOG)
            if run_store.is_finished(run):
                runs.finished_folds.append(fold)
        unfinished = [f for f in range(n_splits) if f not in runs.finished_folds]
        folder = run_store.root(recipe) / name
        if not folder.exists():
            runs.reason = f"not trained: {folder} does not exist"
        elif unfinished:
            runs.reason = f"fold(s) {', '.join(map(str, unfinished))} of {n_splits} not finished (no metrics.json in {member.runs(name)[unfinished[0]]})"
        else:
            try:
                runs.oof = run_store.read_member(member, split)[0]
            except run_store.RunError as err:
                runs.reason = str(err)
        out.append(runs)
    return out


def _better(column: str) -> str:
    """``min`` for losses, else ``max``."""
    return "min" if "loss" in column else "max"


def best_row(board: pd.DataFrame, metric: str) -> tuple[int | None, str | None]:
    """Position of the best row of ``board`` and the column it is judged by: the first of
    ``cv_<metric>`` (a blend cross-validated over folds: its honest score), ``metric`` and
    ``accuracy`` that the board has; highest wins (lowest for a column named ``*loss*``).
    ``(None, None)`` when the board has none of them with a value."""
    for column in (f"cv_{metric}", metric, "accuracy"):
        if column in board.columns and pd.api.types.is_numeric_dtype(board[column]) and board[column].notna().any():
            values = board[column].to_numpy(dtype=np.float64)
            return int(np.nanargmin(values) if _better(column) == "min" else np.nanargmax(values)), column
    return None, None


def _png(fig: Figure, alt: str) -> str:
    """An ``<img>`` tag holding ``fig`` (laid out by its constrained layout) as a base64 PNG at ``DPI`` dots per inch."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _table(board: pd.DataFrame, best: int | None) -> str:
    """``board`` as an HTML table: floats with 4 decimals, missing values blank, row ``best`` highlighted."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in board.columns)
    body = []
    for pos, row in enumerate(board.itertuples(index=False)):
        cells = []
        for value in row:
            if isinstance(value, (float, np.floating)):
                text, cls = ("" if np.isnan(value) else f"{value:.4f}"), ' class="num"'
            elif isinstance(value, (int, np.integer)):
                text, cls = str(value), ' class="num"'
            else:
                text, cls = html.escape(str(value)), ""
            cells.append(f"<td{cls}>{text}</td>")
        attr = ' class="best"' if pos == best else ""
        body.append(f"<tr{attr}>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def confusion_figure(y: np.ndarray, proba: np.ndarray, classes: list[str], title: str) -> Figure:
    """Heat map of the confusion matrix of ``proba`` ``(n, classes)`` against labels ``y`` ``(n,)``:
    rows = true class, colour = row-normalised fraction, text = counts."""
    cm = np.array(metrics.report(y, proba, classes)["confusion_matrix"], dtype=np.float64)
    support = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, support, out=np.zeros_like(cm), where=support > 0)
    side = max(3.0, 0.6 * len(classes))  # inches of the square matrix
    fig = Figure(figsize=(side + 2.6, side + 1.7), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=9, color="white" if frac[i, j] > 0.55 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=40, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of the true class")
    return fig


def per_class_figure(y: np.ndarray, probas: dict[str, np.ndarray], classes: list[str], task: Task) -> Figure:
    """Grouped bars: recall of each class (x) for each model of ``probas`` (name -> ``(n, classes)``);
    for a multilabel task (``y`` multi-hot ``(n, classes)``, no single predicted class) each class's average precision."""
    ml = not task.has_confusion_matrix
    fig = Figure(figsize=(13, 4.2), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(probas)
    x = np.arange(len(classes))
    colors = [f"C{k}" for k in range(10)]
    for k, (name, proba) in enumerate(probas.items()):
        report = task.report(y, proba, classes)
        values = report["per_class_ap"] if ml else report["per_class_accuracy"]
        headline = f"lwlrap {report['lwlrap']:.3f}" if ml else f"UAR {report['uar']:.3f}"
        ax.bar(
            x - 0.4 + width * (k + 0.5),
            [np.nan if v is None else v for v in values.values()],
            width,
            label=f"{name} ({headline})",
            color="0.2" if name.startswith("blend") else colors[k % 10],
        )
    if not ml:
        ax.axhline(1 / len(classes), color="0.5", linestyle=":", linewidth=1, label="chance")
    ax.set_xticks(x, classes)
    ax.set_ylim(0, 1)
    ax.set_ylabel("average precision" if ml else "recall (per-class accuracy)")
    ax.grid(axis="y", alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=9, frameon=False)
    return fig


def curves_figure(runs: BackboneRuns, metric: str) -> Figure:
    """Training curves of one backbone: train (solid) and validation (dashed) loss, validation
    ``metric`` and accuracy per epoch, one colour per fold; the kept (selected) epoch of each fold
    is circled."""
    panels = [("loss (nats)", ["train_loss", "valid_log_loss"]), (f"valid {metric}", [f"valid_{metric}"])]
    if metric != "accuracy":
        panels.append(("valid accuracy", ["valid_accuracy"]))
    fig = Figure(figsize=(13, 3.3), layout="constrained")
    axes = fig.subplots(1, len(panels))
    last_epoch = max([int(log["epoch"].max()) for log in runs.logs.values() if len(log)], default=1)
    handles = []
    for fold, log in sorted(runs.logs.items()):
        color = f"C{fold % 10}"
        handles.append(Line2D([], [], color=color, marker=".", label=f"fold {fold}"))
        kept = log[log["selected"].astype(bool)].tail(1) if "selected" in log.columns else log.iloc[0:0]
        for ax, (_, columns) in zip(axes, panels):
            for column in columns:
                if column not in log.columns:
                    continue
                valid = column.startswith("valid")
                ax.plot(log["epoch"], log[column], color=color, linestyle="--" if valid and len(columns) > 1 else "-", marker=".")
                if valid and len(kept):
                    ax.plot(kept["epoch"], kept[column], "o", markersize=9, markerfacecolor="none", color=color)
    handles += [
        Line2D([], [], color="0.3", label="train loss"),
        Line2D([], [], color="0.3", linestyle="--", label="valid loss"),
        Line2D([], [], color="0.3", marker="o", markerfacecolor="none", linestyle="none", label="kept epoch"),
    ]
    for ax, (title, _) in zip(axes, panels):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_xlim(0.5, last_epoch + 0.5)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)
    status = "all folds finished" if runs.oof is not None else f"unfinished: {len(runs.finished_folds)} of {runs.n_splits} folds finished"
    fig.suptitle(f"{runs.name} ({status})", fontsize=11, fontweight="bold")
    return fig


def weights_figure(weights: dict[str, float], method: str) -> Figure:
    """Horizontal bars of the blend weights (backbone -> weight in [0, 1])."""
    names = list(weights)
    fig = Figure(figsize=(7, 0.45 * len(names) + 1.2), layout="constrained")
    ax = fig.add_subplot()
    bars = ax.barh(names, [weights[n] for n in names], color="C0")
    ax.bar_label(bars, fmt="%.2f", padding=3)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("weight")
    ax.set_title(f"blend: {method}")
    return fig


def example_clips(competition: comp_mod.Competition, per_class: int) -> dict[str, list[int]]:
    """Class name -> the first ``per_class`` rows of ``train.csv`` carrying that label (for a
    multilabel task: among their space-separated labels); classes without clips are left out."""
    indicators = competition.task.indicators(competition.y, len(competition.classes))  # (n, classes) one-hot or multi-hot
    out = {}
    for k, name in enumerate(competition.classes):
        rows = np.flatnonzero(indicators[:, k])[:per_class]
        if len(rows):
            out[name] = [int(r) for r in rows]
    return out


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px 32px; color: #222; max-width: 1320px; }
h1 { margin-bottom: 4px; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 4px; margin-top: 36px; }
.meta { color: #555; font-size: 14px; } .note { color: #555; font-style: italic; }
nav a { margin-right: 14px; font-size: 14px; }
table { border-collapse: collapse; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: left; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.best td { background: #fff3b0; font-weight: 600; }
img { max-width: 100%; height: auto; display: block; margin: 8px 0; }
ul.skipped li { margin: 4px 0; }
.side { display: flex; flex-wrap: wrap; gap: 28px; } .side h3 { font-size: 15px; margin: 8px 0; }
"""


def _kind_section(section: Section) -> str:
    """HTML of a member kind's section: its notes, then its tables side by side."""
    tables = "".join(f"<div><h3>{html.escape(caption)}</h3>{_table(frame, None)}</div>" for caption, frame in section.tables)
    return "".join(_note(n) for n in section.notes) + (f'<div class="side">{tables}</div>' if tables else "")


def _section(title: str, body: str) -> str:
    anchor = title.lower().replace(" ", "-")
    return f'<section id="{anchor}"><h2>{html.escape(title)}</h2>\n{body}\n</section>'


def build(recipe: Recipe, out: str | Path | None = None, clips_per_class: int = 2) -> Path:
    """Write the HTML report of ``recipe``'s runs and blend (see the module docstring), atomically.

    Args:
        recipe: the recipe whose ``runs/<recipe>/`` folder is reported.
        out: the HTML file; default ``runs/<recipe>/report.html``.
        clips_per_class: training clips per class shown in "Feature images" (rendered from audio).

    Returns:
        the path written.

    Raises:
        ReportError: no backbone of the recipe has a run (not even one epoch in a ``log.csv``) and
            there is no blend, or the blend's ``oof.csv`` disagrees with the competition.
        CompetitionError: the recipe's competition folder is missing or inconsistent.
        AudioError: an example clip cannot be loaded.
    """
    root, blend_dir = run_store.root(recipe), run_store.blend_dir(recipe)
    entries = recipe.entries()
    has_runs = any(
        (run_store.run_dir(recipe, b, f) / name).exists() for b in entries for f in range(recipe.folds.n_splits) for name in (run_store.LOG, run_store.METRICS)
    )
    if not has_runs and not (blend_dir / run_store.LEADERBOARD).exists():
        raise ReportError(
            f"no runs of recipe {recipe.name!r} under {root} (no backbone of {recipe.backbones} has a log.csv); train first with `ens train` and this recipe."
        )
    split = load_split(recipe)
    competition = split.competition
    classes, y = competition.classes, split.y
    train_ids = competition.train[competition.config.id_col].astype(str).to_numpy()
    metric = recipe.train.metric
    score = competition.task.scores
    runs = backbone_runs(recipe, split)
    finished = {r.name: r.oof for r in runs if r.oof is not None}

    # the blend, if any
    weights = json.loads((blend_dir / run_store.WEIGHTS).read_text()) if (blend_dir / run_store.WEIGHTS).exists() else None
    blend_name = f"blend: {weights['method']}" if weights else "blend"
    blend_oof = None
    if (blend_dir / run_store.OOF).exists():
        try:
            rows, proba = run_store.read_oof(blend_dir / run_store.OOF, split, None, "re-run `ens blend`")
        except run_store.RunError as err:
            raise ReportError(str(err)) from err
        blend_oof = np.empty((len(train_ids), len(classes)))
        blend_oof[rows] = proba

    sections = {}
    # 1. leaderboard
    if (blend_dir / run_store.LEADERBOARD).exists():
        board = pd.read_csv(blend_dir / run_store.LEADERBOARD)
        source = f"From {blend_dir / run_store.LEADERBOARD} (written by ens blend): OOF scores over all {len(y)} training clips."
        if weights:
            source += f" The last ens blend submitted {blend_name}, whose OOF probabilities blend/oof.csv holds."
        late = [name for name in finished if Entry.parse(name).member not in set(board["model"].astype(str))]  # name@S: member name
        if late:
            source += f" Finished since the last ens blend and not in it: {', '.join(late)}; re-run ens blend to include them."
    else:
        board = pd.DataFrame([{"model": name, **score(y, oof)} for name, oof in finished.items()])
        source = f"Pooled OOF scores of each finished backbone over all {len(y)} training clips (no blend yet: run ens blend)."
    best, by = best_row(board, metric) if len(board) else (None, None)
    body = _note(source) + (_table(board, best) if len(board) else _note("No backbone has every fold finished yet."))
    if by:
        body += _note(f"Highlighted: the best row by {by} ({'lower' if _better(by) == 'min' else 'higher'} is better).")
    sections["Leaderboard"] = body

    # 2. confusion matrix: the blend, else the best finished backbone
    if blend_oof is not None:
        cm_name, cm_proba = blend_name, blend_oof
    elif finished:
        cm_name = max(finished, key=lambda n: score(y, finished[n])[metric])
        cm_proba = finished[cm_name]
    else:
        cm_name, cm_proba = None, None
    if not competition.task.has_confusion_matrix:
        sections["Confusion matrix"] = _note("A multilabel task has no confusion matrix: see each class's average precision below.")
    else:
        sections["Confusion matrix"] = (
            _png(confusion_figure(y, cm_proba, classes, f"{cm_name}: OOF confusion matrix ({len(y)} clips)"), f"confusion matrix of {cm_name}")
            if cm_proba is not None
            else _note("No finished backbone and no blend: nothing to show yet.")
        )

    # 3. per-class accuracy
    probas = dict(finished)
    if blend_oof is not None:
        probas[blend_name] = blend_oof
    sections["Per-class accuracy"] = (
        _png(per_class_figure(y, probas, classes, competition.task), "per-class recall")
        if probas
        else _note("No finished backbone and no blend: nothing to show yet.")
    )

    # 4. training curves
    curves = [_png(curves_figure(r, metric), f"training curves of {r.name}") for r in runs if r.logs]
    sections["Training curves"] = "\n".join(curves) if curves else _note("No backbone has a log.csv yet.")

    # 5. blend weights
    if weights is None:
        sections["Blend weights"] = _note(f"No {blend_dir / run_store.WEIGHTS} yet: run ens blend.")
    elif weights.get("weights"):
        sections["Blend weights"] = _png(weights_figure(weights["weights"], weights["method"]), "blend weights")
    else:
        members = ", ".join(weights.get("members", []))
        sections["Blend weights"] = _note(f"{blend_name} (members: {members}) is not a weighted mean of the members: it has no weights to show.")

    # 6. each member kind's own sections (the functionals kind's top functionals)
    for kind in kinds.KINDS:
        for section in kind.report(recipe, [e for e in entries if kinds.of(recipe, e) is kind]):
            sections[section.title] = _kind_section(section)

    # 7. feature images
    fc = recipe.features
    paths = competition.audio_paths(competition.train)
    figures = []
    for label, rows in example_clips(competition, clips_per_class).items():
        images = features.model_inputs([features.load_waveform(paths[r], fc) for r in rows], fc)
        clips = [(str(train_ids[r]), image) for r, image in zip(rows, images)]
        figures.append(_png(plots.clips_figure(label, clips, fc), f"feature images of {label}"))
    sections["Feature images"] = _note(
        f"Channels {', '.join(fc.channels)} of the first {clips_per_class} training clip(s) of each class, "
        f"{fc.duration:g} s at {fc.sample_rate} Hz, hop {fc.hop_length} samples "
        f"({1000 * fc.hop_length / fc.sample_rate:g} ms); brightness = the pixel value the backbones see "
        "(log-Mel and log-STFT: 0 to 1 is the top_db range under the clip peak)."
    ) + "\n".join(figures)

    # 8. unfinished backbones
    skipped = [r for r in runs if r.reason]
    sections["Unfinished backbones"] = (
        '<ul class="skipped">' + "".join(f"<li><b>{html.escape(r.name)}</b>: {html.escape(r.reason)}</li>" for r in skipped) + "</ul>"
        if skipped
        else _note("None: every backbone of the recipe has all folds finished.")
    )

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta = (
        f"Competition {competition.root}: {len(y)} training clips, {len(competition.test)} test clips, "
        f"{len(classes)} classes; {recipe.folds.n_splits} folds; backbones {', '.join(recipe.backbones)}. Generated {stamp}."
    )
    titles = [*SECTIONS[:5], *(t for t in sections if t not in SECTIONS), *SECTIONS[5:]]
    nav = "".join(f'<a href="#{t.lower().replace(" ", "-")}">{html.escape(t)}</a>' for t in titles)
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>ens report: {html.escape(recipe.name)}</title>'
        f"<style>{_CSS}</style></head><body>\n<h1>ens report: {html.escape(recipe.name)}</h1>\n"
        f'<p class="meta">{html.escape(meta)}</p>\n<nav>{nav}</nav>\n' + "\n".join(_section(t, sections[t]) for t in titles) + "\n</body></html>\n"
    )
    path = Path(out) if out is not None else root / run_store.REPORT
    atomic.write_text(path, page)
    return path
