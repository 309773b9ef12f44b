"""Member kinds as one protocol (ensemble.members.kind, ensemble.members.kinds): a new kind is one class plus one
registration, and ens train / blend / predict / report / export then handle its entries with no
other change. Shown with a class-prior member, registered here, beside a functionals member, on
real RAVDESS clips through the real CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ensemble import predict
from ensemble.core import atomic, entry
from ensemble.core import recipe as recipe_mod
from ensemble.members import kinds, tabular
from ensemble.members.kind import Kind, Outcome, Section, Stage
from ensemble.store import runs

from .conftest import BASIC_LR, cli_ok, one_backbone_recipe

PRIOR = "prior.json"


class PriorMember:
    """A loaded prior member: the same class shares for every clip."""

    models: list
    population = None
    duration = None

    def __init__(self, made_with, priors: list[np.ndarray]):
        self.made_with, self.models = made_with, priors  # one per fold

    def predict(self, clips, speaker_clips, shared, batch_size):
        return np.tile(np.mean(self.models, axis=0), (len(clips), 1))


class PriorKind(Kind):
    """Predicts each class's share of the training folds: the baseline every member must beat."""

    name = "prior"

    def owns(self, recipe, parsed):
        return parsed.model == "prior"

    def train(self, session, entries):
        split = session.split()
        classes = split.competition.classes
        comp = split.competition
        ids = comp.train[comp.config.id_col].to_numpy()
        for name in entries:
            for k in session.folds:
                out = runs.run_dir(session.recipe, name, k)
                config = runs.run_config(session.recipe, classes, split.folds_hash, name, k)
                if not session.force and (done := runs.finished_metrics(out, config)) is not None:
                    yield Outcome(name, k, done, True)
                    continue
                atomic.write_json(out / runs.CONFIG, config)
                fold_of = split.folds["fold"].to_numpy()
                prior = np.bincount(split.y[fold_of != k], minlength=len(classes)) / np.sum(fold_of != k)
                valid = np.flatnonzero(fold_of == k)
                oof = np.tile(prior, (len(valid), 1))
                atomic.write_csv(out / runs.OOF, runs.proba_frame(ids[valid], oof, classes, fold=k))
                test_ids = comp.test[comp.config.id_col].to_numpy()
                atomic.write_csv(out / runs.TEST, runs.proba_frame(test_ids, np.tile(prior, (len(test_ids), 1)), classes))
                atomic.write_json(out / PRIOR, prior.tolist())
                report = {**comp.task.report(split.y[valid], oof, classes), "backbone": name, "fold": k}
                atomic.write_json(out / runs.METRICS, report)
                yield Outcome(name, k, report, False)

    def stages(self, recipe, competition, todo):
        return [Stage(f"count classes for {e}", 0.0, "no audio read") for e in todo]

    def trained(self, run):
        return (run / PRIOR).is_file()

    def load(self, recipe, member, made_with, trained, classes, device, exported):
        return PriorMember(made_with, [np.array(json.loads((run / PRIOR).read_text())) for *_, run in trained])

    def report(self, recipe, entries):
        finished = [e for e in entries if runs.is_finished(runs.run_dir(recipe, e, 0))]
        prior = [json.loads((runs.run_dir(recipe, e, 0) / PRIOR).read_text()) for e in finished]
        return [Section("Class prior", ["Each class's share of fold 0's training clips."], [(e, pd.DataFrame({"share": p})) for e, p in zip(finished, prior)])]


@pytest.fixture(scope="module")
def with_prior(small_source, tiny_recipe_text, tmp_path_factory):
    """The tiny recipe with a prior member (``backbones = ["prior"]``) and a functionals member,
    trained, blended, predicted and reported through the CLI with the prior kind registered."""
    patch = pytest.MonkeyPatch()
    kind = PriorKind()
    patch.setattr(kinds, "KINDS", [*kinds.KINDS])
    kinds.register(kind)
    try:
        root = tmp_path_factory.mktemp("kinds")
        recipe, comp = one_backbone_recipe(root, small_source, tiny_recipe_text, BASIC_LR)
        recipe.write_text(recipe.read_text().replace('backbones = ["test_resnet"]', 'backbones = ["prior"]'))
        out = {"recipe": recipe, "comp": comp, "root": root, "kind": kind}
        out["train"] = cli_ok(["train", "--recipe", str(recipe)])
        out["blend"] = cli_ok(["blend", "--recipe", str(recipe), "--method", "mean"])
        test = pd.read_csv(comp / "test.csv", dtype=str)
        out["clips"] = [comp / p for p in test["path"][:3]]
        out["predicted"] = root / "predicted.csv"
        cli_ok(["predict", *map(str, out["clips"]), "--recipe", str(recipe), "--out", str(out["predicted"])])
        out["report"] = root / "report.html"
        cli_ok(["report", "--recipe", str(recipe), "--out", str(out["report"])])
        r = recipe_mod.load(recipe)
        out["ensemble"] = predict.load_ensemble(r)
        out["r"] = r
        yield out
    finally:
        patch.undo()


def test_a_registered_kind_owns_its_entries_and_the_others_keep_theirs(with_prior):
    r = with_prior["r"]
    assert kinds.of(r, "prior") is with_prior["kind"] and kinds.of(r, "basic_lr").name == "functionals"
    assert kinds.of(r, "test_resnet@3").name == "image"  # the image kind owns what no later kind claims
    with pytest.raises(recipe_mod.RecipeError, match="'regnetx_002@x'"):
        kinds.of(r, "regnetx_002@x")


def test_ens_train_plans_and_trains_the_new_kind_beside_a_functionals_member(with_prior):
    text, r = with_prior["train"], with_prior["r"]
    assert "count classes for prior" in text and "functionals ens_basic" in text  # both kinds' stages in the plan
    for k in range(2):
        run = runs.run_dir(r, "prior", k)
        oof = pd.read_csv(run / runs.OOF)
        proba = oof[r.competition.classes].to_numpy()
        assert np.allclose(proba, proba[0]) and np.isclose(proba[0].sum(), 1.0)  # one row: the training folds' class shares
        assert (run / runs.METRICS).is_file() and (runs.run_dir(r, "basic_lr", k) / tabular.MODEL).is_file()


def test_ens_blend_and_ens_predict_take_the_new_kind_as_a_member(with_prior):
    board = pd.read_csv(with_prior["root"] / "runs" / "tiny" / "blend" / "leaderboard.csv")
    assert {"prior", "basic_lr"} <= set(board["model"].astype(str))
    ensemble = with_prior["ensemble"]
    prior_member, lr_member = ensemble.loaded["prior"], ensemble.loaded["basic_lr"]
    assert isinstance(prior_member, PriorMember) and isinstance(lr_member, tabular.TabularMember)
    predicted = pd.read_csv(with_prior["predicted"])
    classes = with_prior["r"].competition.classes
    rate, trim = ensemble.sample_rate, ensemble.trim_db
    from ensemble.inputs import audio

    clips = [audio.load_trimmed(p, rate, trim)[0] for p in with_prior["clips"]]
    expected = ensemble.weights["prior"] * prior_member.predict(clips, None, {}, 1) + ensemble.weights["basic_lr"] * lr_member.predict(clips, None, {}, 1)
    np.testing.assert_allclose(predicted[classes].to_numpy(), expected, atol=1e-6)
    assert ensemble.weights["prior"] == pytest.approx(0.5)  # mean blend: equal weights


def test_ens_report_shows_the_new_kinds_section_in_place(with_prior):
    page = with_prior["report"].read_text()
    assert '<section id="class-prior"><h2>Class prior</h2>' in page and "fold 0&#x27;s training clips" in page
    order = [page.index(f"<h2>{t}</h2>") for t in ("Blend weights", "Top functionals", "Class prior", "Feature images")]  # kinds in registration order
    assert order == sorted(order)


def test_no_module_but_the_entry_module_parses_entry_names():
    """``@`` and ``+pl`` are read in :mod:`ensemble.core.entry` alone (issue: one Entry type)."""
    import pathlib
    import re

    package = pathlib.Path(entry.__file__).parent
    splitting = re.compile(r"""(partition|rpartition|split|rsplit|index|find)\(\s*["'](@|\+pl)["']|["'](@|\+pl)["']\s*in\b""")
    found = [
        f"{p.relative_to(package)}:{n}"
        for p in sorted(package.rglob("*.py"))
        if p.name != "entry.py"
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if splitting.search(line)
    ]
    assert found == []
