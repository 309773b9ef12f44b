"""ens report on a tiny trained and blended competition (48 real RAVDESS clips, 2 folds, 1 epoch)."""

import base64
import html
import re
import shutil
import struct

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from ensemble import report
from ensemble.cli import app
from ensemble.core import metrics
from ensemble.core import recipe as recipe_mod
from ensemble.store import split as split_mod

from .conftest import cli_ok as _ok
from .conftest import copy_tiny_runs

runner = CliRunner()
PNG = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def trained(tiny_trained, tmp_path_factory):
    """ens report on a copy of the session's trained and blended tiny runs (report.html is written beside them)."""
    root = tmp_path_factory.mktemp("report")
    recipe = copy_tiny_runs(tiny_trained, root)
    output = _ok(["report", "--recipe", str(recipe)])
    page = root / "runs" / "tiny" / "report.html"
    return {"comp": tiny_trained["comp"], "recipe": recipe, "runs": root / "runs" / "tiny", "output": output, "html": page.read_text()}


def _pngs(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in PNG.findall(page)]


def test_report_has_every_section_and_the_leaderboard(trained):
    page = trained["html"]
    assert f"wrote {trained['runs'] / 'report.html'}" in trained["output"]
    for title in report.SECTIONS:
        assert f"<h2>{title}</h2>" in page
    board = pd.read_csv(trained["runs"] / "blend" / "leaderboard.csv")
    assert {"test_efficientnet", "test_resnet", "blend: caruana"} <= set(board["model"])
    for model in board["model"]:
        assert f"<td>{html.escape(model)}</td>" in page
    assert page.count('<tr class="best">') == 1
    assert "None: every backbone of the recipe has all folds finished." in page
    assert "<script" not in page and "<link" not in page and "http" not in page  # self-contained, offline


def _leaderboard_rows(page: str) -> tuple[list[list[str]], int, str]:
    """The leaderboard section's table as cell texts per row, the position of the highlighted row,
    and the column its note says it was judged by."""
    section = page.split("<h2>Leaderboard</h2>", 1)[1].split("<h2>", 1)[0]
    body = section.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    rows = re.findall(r"<tr( class=\"best\")?>(.*?)</tr>", body)
    [best] = [pos for pos, (attr, _) in enumerate(rows) if attr]
    [by] = re.findall(r"Highlighted: the best row by (\S+) \((?:higher|lower) is better\)", section)
    return [[html.unescape(cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", cells)] for _, cells in rows], best, by


def _best_position(board: pd.DataFrame, column: str) -> int:
    values = board[column].to_numpy(dtype=float)
    return int(np.flatnonzero(values == np.nanmax(values))[0])  # the first of equal bests


def test_the_highlighted_row_is_the_leaderboards_best_by_its_cross_validated_metric(trained):
    """With a blend's leaderboard the best row is judged by cv_<[train].metric> (cv_uar here), a
    blend's honest score, not by its in-sample uar (which stacking, fitted on these OOF, wins)."""
    board = pd.read_csv(trained["runs"] / "blend" / "leaderboard.csv")
    rows, best, by = _leaderboard_rows(trained["html"])
    assert [row[0] for row in rows] == board["model"].tolist()
    assert by == "cv_uar" and recipe_mod.load(trained["recipe"]).train.metric == "uar"
    assert best == _best_position(board, "cv_uar")
    assert rows[best][list(board.columns).index("cv_uar")] == f"{board['cv_uar'].max():.4f}"
    # the premise that makes the column matter: judged by uar, another row would be the best
    assert _best_position(board, "uar") != best
    assert report.best_row(board, "uar") == (best, "cv_uar")


def test_best_row_judges_by_the_first_column_it_has_and_lowest_loss_wins():
    board = pd.DataFrame({"model": ["a", "b", "c"], "accuracy": [0.9, 0.5, 0.7], "uar": [0.2, 0.6, np.nan], "cv_uar": [np.nan, np.nan, np.nan]})
    assert report.best_row(board, "uar") == (1, "uar")  # cv_uar has no value: the next column
    assert report.best_row(board, "macro_f1") == (0, "accuracy")
    assert report.best_row(board.assign(cv_uar=[0.1, 0.3, 0.3]), "uar") == (1, "cv_uar")  # the first of equal bests
    assert report.best_row(board.assign(log_loss=[2.0, 1.5, 1.7]), "log_loss") == (1, "log_loss")
    assert report.best_row(board[["model"]], "uar") == (None, None)


def test_every_embedded_image_is_a_real_png(trained):
    images = _pngs(trained["html"])
    # confusion matrix, per-class bars, 2 backbones' curves, blend weights, 8 classes' feature images
    assert len(images) == 1 + 1 + 2 + 1 + 8
    for data in images:
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
        width, height = struct.unpack(">II", data[16:24])
        assert width >= 300 and height >= 150 and len(data) > 5000


def test_without_a_blend_the_leaderboard_pools_the_folds_and_unfinished_backbones_are_listed(trained, tmp_path):
    partial = tmp_path / "partial.toml"
    partial.write_text(f'extends = "{trained["recipe"]}"\nname = "partial"\nbackbones = ["test_efficientnet", "test_resnet", "test_convnext"]\n')
    runs = trained["runs"].parent / "partial"
    for backbone in ("test_efficientnet", "test_resnet"):
        shutil.copytree(trained["runs"] / backbone, runs / backbone)
    (runs / "test_resnet" / "fold1" / "metrics.json").unlink()
    r = recipe_mod.load(partial)
    path = report.build(r, tmp_path / "out" / "partial.html", clips_per_class=1)
    page = path.read_text()
    assert "test_resnet</b>: fold(s) 1 of 2 not finished" in page
    assert f"test_convnext</b>: not trained: {runs / 'test_convnext'} does not exist" in page
    assert "no blend yet" in page and "weights.json yet: run ens blend" in page
    assert "<td>test_efficientnet</td>" in page and "<td>test_resnet</td>" not in page
    rows, best, by = _leaderboard_rows(page)
    assert ([row[0] for row in rows], best, by) == (["test_efficientnet"], 0, "uar")  # no cv_ column without a blend
    assert len(_pngs(page)) == 1 + 1 + 2 + 8  # no blend weights; the unfinished backbone's curves still drawn

    # the pooled OOF of a finished backbone scores as blend's leaderboard says
    train = pd.read_csv(trained["comp"] / "train.csv", dtype=str)
    classes = r.competition.classes
    y = train["label"].map(classes.index).to_numpy()
    pooled = {b.name: b for b in report.backbone_runs(r, split_mod.load_split(r))}
    assert pooled["test_resnet"].oof is None and pooled["test_convnext"].logs == {}
    board = pd.read_csv(trained["runs"] / "blend" / "leaderboard.csv").set_index("model")
    for key, value in metrics.scores(y, pooled["test_efficientnet"].oof).items():
        assert board.loc["test_efficientnet", key] == pytest.approx(value)


def test_a_recipe_without_runs_is_a_clear_error(trained, tmp_path):
    empty = tmp_path / "empty.toml"
    empty.write_text(f'extends = "{trained["recipe"]}"\nname = "empty"\n')
    result = runner.invoke(app, ["report", "--recipe", str(empty)])
    assert result.exit_code == 2
    assert f"no runs of recipe 'empty' under {trained['runs'].parent / 'empty'}" in result.output and "ens train" in result.output
    assert not (trained["runs"].parent / "empty" / "report.html").exists()


def test_a_run_the_blend_refuses_is_shown_with_the_blends_reason(trained, tmp_path):
    """The report reads runs with the blend's strict reader: a damaged run is listed with the reason, not drawn."""
    damaged = tmp_path / "damaged.toml"
    damaged.write_text(f'extends = "{trained["recipe"]}"\nname = "damaged"\n')
    runs = trained["runs"].parent / "damaged"
    shutil.copytree(trained["runs"] / "test_resnet", runs / "test_resnet")
    oof = runs / "test_resnet" / "fold0" / "oof.csv"
    frame = pd.read_csv(oof, dtype=str)
    frame.iloc[0, 2] = "high"
    frame.to_csv(oof, index=False)
    r = recipe_mod.load(damaged)
    r.backbones = ["test_resnet"]
    pooled = report.backbone_runs(r, split_mod.load_split(r))
    assert pooled[0].oof is None and f"{oof}: line 2, class {frame.columns[2]!r} holds 'high', not a probability in [0, 1]" in pooled[0].reason
