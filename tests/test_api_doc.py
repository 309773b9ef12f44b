"""docs/api.md's example runs as written, on 48 real RAVDESS clips; ``import ensemble`` and the table-only modules (recipe, blend, runs) import no torch."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

import ensemble

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO.parent / "shared" / "weights"


def test_the_api_example_runs_and_writes_what_it_says(small_source, tmp_path, monkeypatch, capsys):
    text = (REPO / "docs" / "api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 1
    # the corpus and the recipe from this checkout; everything else as written, in a scratch working directory
    recipe = "recipes/ravdess_images.toml"
    code = blocks[0].replace('"../shared/data/ravdess"', repr(str(small_source))).replace(f'"{recipe}"', repr(str(REPO / recipe)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ENS_WEIGHTS_DIR", str(WEIGHTS))
    exec(compile(code, "docs/api.md", "exec"), {})
    out = capsys.readouterr().out
    assert "tf_mobilenetv3_small_100 fold 0 OOF accuracy" in out and "tf_mobilenetv3_small_100 fold 1 OOF accuracy" in out
    submission = pd.read_csv(tmp_path / "submissions" / "api_demo-mean.csv")
    test = pd.read_csv(tmp_path / "data" / "ravdess_api" / "test.csv")
    assert sorted(submission["id"]) == sorted(test["id"]) and len(test) == 16  # actors 5 and 6: 8 clips each
    assert "'accuracy'" in out and (tmp_path / "runs" / "api_demo" / "report.html").is_file()
    assert len(re.findall(r"^test_\d+\.\w+ \w+$", out, re.M)) == 3  # three predicted files, each with a class


def test_the_api_names_are_exported_and_imported_on_first_use():
    assert set(ensemble.__all__) >= {
        "load_recipe",
        "train_runs",
        "blend_runs",
        "write_blend",
        "load_ensemble",
        "predict_files",
        "write_report",
        "score",
        "EnsError",
    }
    for name in ensemble.__all__:
        assert getattr(ensemble, name) is not None, name
    from ensemble import predict, report, train  # the modules, not the API functions of similar names
    from ensemble.blending import blend  # the modules, not the API functions of similar names

    assert all(inspect.ismodule(m) for m in (blend, predict, report, train))
    light = "import sys, ensemble, ensemble.core.recipe, ensemble.blending.blend, ensemble.store.runs; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", light], check=True, cwd=REPO)
