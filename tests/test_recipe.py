import pytest

from ensemble.core import recipe

from .conftest import ROOT


def test_shipped_default_recipe_is_the_whisper_member_on_speaker_normalised_inputs_blended_by_auto():
    r = recipe.load(ROOT / "recipes" / "ravdess.toml")
    assert (
        r.name == "ravdess"
        and r.backbones == []
        and [(m.name, m.set, m.layers, m.model, m.c) for m in r.functionals] == [("whisper_lr", "whisper_base", "all", "logreg", 0.01)]
    )
    assert (r.speakers.norm, r.speakers.test, r.blend.method, r.features.sample_rate, r.features.trim_db) == ("speaker", "auto", "auto", 16000, 40.0)
    gpu = recipe.load(ROOT / "recipes" / "ravdess_gpu.toml")
    assert gpu.blend.method == "auto" and "whisper_base:pad30" in {m.set for m in gpu.functionals} and "efficientat_mn04" in gpu.backbones


def test_shipped_mixed_recipe_mixes_backbones_functionals_and_speaker_normalisation():
    r = recipe.load(ROOT / "recipes" / "ravdess_mixed.toml")
    assert r.name == "ravdess_mixed" and r.backbones == ["tf_mobilenetv3_small_100", "regnetx_002", "efficientat_mn04"]
    assert [m.name for m in r.functionals] == ["compare_lr", "egemaps_svm", "basic_lr"]
    assert (r.speakers.norm, r.speakers.test, r.blend.method) == ("speaker", "auto", "geometric")
    mn04, regnetx = r.for_backbone("efficientat_mn04"), r.for_backbone("regnetx_002")
    assert (mn04.train.epochs, mn04.train.layer_decay, mn04.augment.freq_mask) == (8, 0.75, 12)
    assert (regnetx.train.epochs, regnetx.train.layer_decay, regnetx.augment.copies) == (15, 0.0, 4)
    assert mn04.features.frontend == "efficientat" and regnetx.features.channels == ["mel", "chroma", "stft"]


def test_shipped_image_recipe_names_the_five_offline_backbones():
    r = recipe.load(ROOT / "recipes" / "ravdess_images.toml")
    assert r.name == "ravdess_images"
    assert sorted(r.backbones) == sorted(["tf_efficientnet_lite0", "mobilenetv2_100", "mobilenetv1_100", "regnetx_002", "tf_mobilenetv3_small_100"])
    assert r.features.channels == ["mel", "chroma", "stft"] and r.folds.n_splits == 5
    assert r.competition.group_col == "group"


def test_feature_key_changes_with_any_setting():
    base = recipe.FeatureConfig()
    assert recipe.FeatureConfig().key() == base.key()
    assert recipe.FeatureConfig(hop_length=256).key() != base.key()
    assert recipe.FeatureConfig(channels=["chroma", "mel", "stft"]).key() != base.key()


@pytest.mark.parametrize(
    "data, message",
    [
        ({"train": {"epoch": 3}}, r"unknown key\(s\) \['epoch'\] in \[train\]"),
        ({"features": {"channels": ["mel", "cqt"]}}, r"\[features\].channels = \['mel', 'cqt'\]: each must be one of"),
        ({"train": {"lr": "fast"}}, r"\[train\].lr = 'fast' should be of type float"),
        ({"blend": {"method": "vote"}}, r"\[blend\].method = 'vote'"),
        ({"train": {"precision": "fp8"}}, r"\[train\].precision = 'fp8': must be bf16, fp16 or fp32"),
        ({"train": {"cpu_precision": "fp16"}}, r"\[train\].cpu_precision = 'fp16': must be bf16 or fp32 \(fp16 is CUDA only\)"),
        ({"colour": "red"}, r"unknown key\(s\) \['colour'\] in the top level"),
        ({"augment": {"mixup_alpha": 0.2}, "train": {"batch_size": 15}}, r"\[train\].batch_size = 15 must be even"),
        (
            {"competition": {"classes": ["a", "b", "c"]}, "train": {"class_weights": "given", "class_weight_values": [1.0, 2.0]}},
            r"\[train\].class_weight_values has 2 values for the 3 \[competition\].classes",
        ),
    ],
)
def test_bad_recipes_are_refused_naming_the_key(data, message):
    with pytest.raises(recipe.RecipeError, match=message):
        recipe.from_dict(data)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(recipe.RecipeError, match="does not exist"):
        recipe.load(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nepochs = 1")
    with pytest.raises(recipe.RecipeError, match="bad.toml: not valid TOML"):
        recipe.load(bad)
    good = tmp_path / "mine.toml"
    good.write_text("[train]\nepochs = 2\nlr = 1\n")
    loaded = recipe.load(good)
    assert loaded.name == "mine" and loaded.train.lr == 1.0 and isinstance(loaded.train.lr, float)


def test_seeds_of_a_members_entries():
    r = recipe.from_dict({"backbones": ["regnetx_002", "regnetx_002@43", "mobilenetv2_100"], "train": {"seed": 7}})
    assert r.seeds(["regnetx_002", "regnetx_002@43"]) == [7, 43]
    assert r.seeds(r.members()["regnetx_002"]) == [r.train.seed, 43] and r.seeds([]) == []
    with pytest.raises(recipe.RecipeError, match="regnetx_002@x"):
        r.seeds(["regnetx_002@x"])
