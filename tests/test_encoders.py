"""Speech-encoder sets (ensemble.members.encoders): tiny randomly initialised Whisper, wav2vec2, HuBERT and WavLM
configs written here (no such weights exist offline, except Whisper base), their pooled hidden states
checked against transformers run independently, the layer choice, the recipe checks, and a member
trained, blended and predicted through the real CLI."""

from __future__ import annotations

import dataclasses

import librosa
import numpy as np
import pandas as pd
import pytest
import torch
import transformers

from ensemble import predict
from ensemble.core import encoder_sets, recipe
from ensemble.inputs import audio
from ensemble.members import encoders, functionals, tabular
from ensemble.store import runs
from ensemble.store import split as split_mod

from .conftest import cli_ok, one_backbone_recipe, ravdess_clip, save_tiny_whisper

WEIGHTS = ravdess_clip(1, 1).parents[3] / "weights"
CLIPS = [ravdess_clip(1, 1), ravdess_clip(2, 5), ravdess_clip(3, 8)]
WAV2VEC_STEM = {"conv_dim": (8, 8, 8, 8, 8, 8, 8), "num_conv_pos_embeddings": 8, "num_conv_pos_embedding_groups": 2}
SMALL = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 24}


def _waves(rate: int = 16000) -> list[np.ndarray]:
    return [audio.load_trimmed(p, rate, 40.0)[0] for p in CLIPS]


def _pooled(hidden: list[torch.Tensor]) -> np.ndarray:
    """mean then std (population) over frames of each state ``(frames, d)``, state after state."""
    return torch.cat([torch.cat([h.mean(0), h.std(0, unbiased=False)]) for h in hidden]).numpy()


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory):
    """A randomly initialised Whisper (2 encoder layers, width 16) saved as transformers saves it."""
    return save_tiny_whisper(tmp_path_factory.mktemp("whisper_tiny"))


@pytest.fixture(scope="module", params=["wav2vec2", "hubert", "wavlm"])
def tiny_waveform_encoder(request, tmp_path_factory):
    """A randomly initialised wav2vec2-family encoder (2 layers, width 16) and its feature extractor."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp(request.param)
    classes = {
        "wav2vec2": (transformers.Wav2Vec2Config, transformers.Wav2Vec2Model),
        "hubert": (transformers.HubertConfig, transformers.HubertModel),
        "wavlm": (transformers.WavLMConfig, transformers.WavLMModel),
    }
    config_class, model_class = classes[request.param]
    model_class(config_class(**SMALL, **WAV2VEC_STEM)).save_pretrained(folder)
    transformers.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(folder)
    return folder


def test_a_waveform_encoder_gives_its_hidden_states_mean_and_std_as_transformers_computes_them(tiny_waveform_encoder):
    waves = _waves()
    x = functionals.extract(waves, 16000, str(tiny_waveform_encoder))
    assert x.shape == (3, 3 * 2 * 16) == (3, functionals._set(str(tiny_waveform_encoder)).size)
    model = transformers.AutoModel.from_pretrained(tiny_waveform_encoder).eval()
    extractor = transformers.AutoFeatureExtractor.from_pretrained(tiny_waveform_encoder)
    for k, y in enumerate(waves):
        with torch.no_grad():
            hidden = model(**extractor(y, sampling_rate=16000, return_tensors="pt"), output_hidden_states=True).hidden_states
        np.testing.assert_allclose(x[k], _pooled([h[0] for h in hidden]), rtol=1e-4, atol=1e-5)
    with pytest.raises(encoder_sets.EncoderError, match="pad30 window is Whisper's"):
        functionals.extract(waves[:1], 16000, f"{tiny_waveform_encoder}:pad30")


def test_whisper_pad30_pools_the_clips_tokens_of_the_30_s_input(tiny_whisper):
    waves = _waves()
    x = functionals.extract(waves, 16000, f"{tiny_whisper}:pad30")
    encoder = transformers.WhisperForAudioClassification.from_pretrained(tiny_whisper).encoder.eval()
    extractor = transformers.WhisperFeatureExtractor.from_pretrained(tiny_whisper)
    for k, y in enumerate(waves):
        features = extractor(y, sampling_rate=16000, return_tensors="pt").input_features
        assert features.shape[-1] == 3000
        with torch.no_grad():
            hidden = encoder(features, output_hidden_states=True).hidden_states
        tokens = int(np.ceil(len(y) / 320))  # 20 ms per token
        np.testing.assert_allclose(x[k], _pooled([h[0, :tokens] for h in hidden]), rtol=1e-4, atol=1e-5)


def test_whisper_clip_window_equals_an_encoder_built_for_the_clips_own_length(tiny_whisper):
    """The cut position table: the same as a Whisper whose config has max_source_positions = the clip's tokens."""
    waves = _waves()
    x = functionals.extract(waves, 16000, str(tiny_whisper))
    full = transformers.WhisperForAudioClassification.from_pretrained(tiny_whisper).encoder
    extractor = transformers.WhisperFeatureExtractor.from_pretrained(tiny_whisper)
    for k, y in enumerate(waves):
        tokens = int(np.ceil(len(y) / 320))
        config = transformers.WhisperConfig.from_pretrained(tiny_whisper, max_source_positions=tokens)
        short = transformers.models.whisper.modeling_whisper.WhisperEncoder(config).eval()
        state = {k2: v for k2, v in full.state_dict().items()}
        state["embed_positions.weight"] = state["embed_positions.weight"][:tokens]
        short.load_state_dict(state)
        padded = np.pad(y, (0, tokens * 320 - len(y)))
        features = extractor(padded, sampling_rate=16000, padding="max_length", max_length=len(padded), return_tensors="pt").input_features
        with torch.no_grad():
            hidden = short(features, output_hidden_states=True).hidden_states
        np.testing.assert_allclose(x[k], _pooled([h[0] for h in hidden]), rtol=1e-4, atol=1e-5)
    again = functionals.extract(waves[:1], 16000, str(tiny_whisper))  # the full position table is put back after each clip
    np.testing.assert_array_equal(again[0], x[0])
    assert encoders.load(str(tiny_whisper))[0].embed_positions.weight.shape[0] == 1500


def test_a_clip_longer_than_30_s_is_cut_into_pieces_whose_tokens_are_pooled_together(tiny_whisper):
    y = np.concatenate(_waves()[:1] * 40)[: 16000 * 40]  # 40 s: a 30 s piece and a 10 s piece
    assert len(y) == 16000 * 40
    (x,) = functionals.extract([y], 16000, str(tiny_whisper))
    model, extractor = encoders.load(str(tiny_whisper))
    with torch.inference_mode():
        first = encoders._whisper_states(model, extractor, y[: 16000 * 30], 16000, "clip")
        second = encoders._whisper_states(model, extractor, y[16000 * 30 :], 16000, "clip")
    assert first[0].shape[0] == 1500 and second[0].shape[0] == 500
    np.testing.assert_allclose(x, _pooled([torch.cat([a, b]) for a, b in zip(first, second)]), rtol=1e-4, atol=1e-5)


def test_the_real_whisper_base_loads_strictly_and_is_cached_per_clip(tmp_path):
    _, info = transformers.WhisperForAudioClassification.from_pretrained(WEIGHTS / "whisper_base", num_labels=2, output_loading_info=True)
    assert not info["unexpected_keys"] and all(k.startswith(("projector", "classifier")) for k in info["missing_keys"])
    cache = functionals.FunctionalsCache(tmp_path / "cache", weights_dir=WEIGHTS)
    x = cache.get(CLIPS[:2], 16000, 40.0, "whisper_base", progress=False)
    assert x.shape == (2, 7 * 2 * 512) and np.isfinite(x).all()
    assert len(functionals.names("whisper_base", WEIGHTS)) == x.shape[1]
    np.testing.assert_array_equal(cache.get(CLIPS[:2], 16000, 40.0, "whisper_base", progress=False), x)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"{functionals.identity('whisper_base', WEIGHTS)}-16000hz-trim40.npz"]
    y32 = audio.load_trimmed(CLIPS[0], 32000, 40.0)[0]  # a clip at another rate is resampled to the encoder's 16 kHz with soxr
    at_32k = functionals.extract([y32], 32000, "whisper_base", weights_dir=WEIGHTS)
    at_16k = functionals.extract([librosa.resample(y32, orig_sr=32000, target_sr=16000)], 16000, "whisper_base", weights_dir=WEIGHTS)
    np.testing.assert_allclose(at_32k, at_16k, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("layers", "states", "expected"),
    [("all", 3, [0, 1, 2]), ("2", 7, [2]), ("2-4", 7, [2, 3, 4]), ("0, 3-4,3", 7, [0, 3, 4]), ("6", 7, [6])],
)
def test_layer_choices(layers, states, expected):
    assert encoder_sets.layer_indices(layers, states) == expected


@pytest.mark.parametrize(("layers", "message"), [("7", "hidden state 7 of an encoder with 7"), ("last", "not a layer choice"), ("3-", "not a layer choice")])
def test_bad_layer_choices_are_refused_naming_the_range(layers, message):
    with pytest.raises(encoder_sets.EncoderError, match=message):
        encoder_sets.layer_indices(layers, 7)


def test_columns_pick_the_chosen_states_mean_and_std(tiny_whisper):
    names = np.asarray(encoders.names(str(tiny_whisper)))
    picked = names[encoders.columns(str(tiny_whisper), "1")]
    assert len(picked) == 32 and all(n.split("_l")[-1].startswith("1_") for n in picked)
    assert encoders.layer_of(list(picked[:1])) == [1]


def test_recipe_checks_name_the_set_the_layers_and_the_fix(tiny_whisper):
    ok = recipe.from_dict({"functionals": [{"name": "w", "set": str(tiny_whisper), "layers": "1-2"}]})
    assert ok.functionals[0].layers == "1-2"
    assert recipe.from_dict({"functionals": [{"name": "w", "set": "microsoft/wavlm-base-plus"}]})  # a hub id: loaded when used
    with pytest.raises(recipe.RecipeError, match="set='whispr_base' is not a functionals set and names no transformers encoder"):
        recipe.from_dict({"functionals": [{"name": "w", "set": "whispr_base"}], "paths": {"weights_dir": str(WEIGHTS)}})
    with pytest.raises(recipe.RecipeError, match="leave it out for the sets"):
        recipe.from_dict({"functionals": [{"name": "w", "set": "ens_basic", "layers": "2"}]})
    with pytest.raises(encoder_sets.EncoderError, match="window 'pad' is not one of"):
        encoder_sets.split_window("whisper_base:pad")


@pytest.fixture(scope="module")
def encoder_member(small_source, tiny_recipe_text, tiny_whisper, tmp_path_factory):
    """The tiny recipe with a speaker-normalised tiny-Whisper member (layer 1) beside test_resnet, through ens train and ens blend --method auto."""
    root = tmp_path_factory.mktemp("encoder_member")
    extra = f'\n[[functionals]]\nname = "whisper_lr"\nset = "{tiny_whisper}"\nlayers = "1"\nmodel = "logreg"\nc = 0.1\n'
    path, comp = one_backbone_recipe(root, small_source, tiny_recipe_text, extra, speaker_norm=True)
    train_output = cli_ok(["train", "--recipe", str(path)])
    blend_output = cli_ok(["blend", "--recipe", str(path), "--method", "auto"])
    return {"recipe": path, "comp": comp, "root": root, "set": tiny_whisper, "train": train_output, "blend": blend_output}


def test_an_encoder_member_trains_on_its_chosen_layer_and_its_tables_match_its_pipelines(encoder_member):
    assert "functionals " in encoder_member["train"] and "whisper_lr fold 1:" in encoder_member["train"]
    r = recipe.load(encoder_member["recipe"])
    split = split_mod.load_split(r)
    spec = r.functionals_member("whisper_lr")
    table = tabular.load_table(r, split, spec, progress=False)
    assert table.x_train.shape == (len(split.y), 2 * 16)  # layer 1 only: mean and std of width 16
    member = next(m for m in runs.members(r) if m.name == "whisper_lr")
    oof, _ = runs.read_member(member, split)
    fold_of = split.folds["fold"].to_numpy()
    for fold, run in enumerate(member.runs("whisper_lr")):
        np.testing.assert_allclose(oof[fold_of == fold], tabular.load_pipeline(run).predict_proba(table.x_train[fold_of == fold]), atol=1e-9)


def test_ens_predict_gives_an_encoder_member_the_test_tables_probabilities(encoder_member):
    """With the test speakers' other clips given (--same-speaker over one speaker's test clips), ens predict normalises
    as training did, so the member's prediction of a test clip is its test table's row."""
    r = recipe.load(encoder_member["recipe"])
    split = split_mod.load_split(r)
    ensemble = predict.load_ensemble(r)
    alone = dataclasses.replace(ensemble, members=[m for m in ensemble.members if m.name == "whisper_lr"], weights={"whisper_lr": 1.0})
    comp = split.competition
    speakers = pd.read_csv(encoder_member["comp"] / "test_speakers.csv", dtype=str)
    one = speakers[speakers["speaker"] == speakers["speaker"].iloc[0]]["id"]
    rows = comp.test[comp.test["id"].isin(one)]
    files = [encoder_member["comp"] / p for p in rows["path"]]
    predicted = np.stack([p.proba for p in predict.predict(alone, files, same_speaker=True)])
    member = next(m for m in runs.members(r) if m.name == "whisper_lr")
    _, test = runs.read_member(member, split)
    np.testing.assert_allclose(predicted, test[rows.index.to_numpy()], atol=1e-6)


def test_blend_auto_takes_the_method_with_the_best_cross_validated_metric(encoder_member):
    board = pd.read_csv(encoder_member["root"] / "runs" / "tiny" / "blend" / "leaderboard.csv")
    r = recipe.load(encoder_member["recipe"])
    methods = board[board["model"].str.startswith("blend: ")]
    best = methods.loc[methods[f"cv_{r.train.metric}"].idxmax(), "model"].removeprefix("blend: ")
    weights = pd.read_json(encoder_member["root"] / "runs" / "tiny" / "blend" / "weights.json", typ="series")
    assert weights["requested"] == "auto" and weights["method"] == best
    assert f"auto: {best} has the best cross-validated {r.train.metric}" in encoder_member["blend"]
    assert (encoder_member["root"] / "subs" / "tiny-auto.csv").is_file()


def test_ens_report_shows_which_hidden_states_carry_an_encoder_members_weight(encoder_member):
    r = recipe.load(encoder_member["recipe"])
    shares = tabular.importance(
        [tabular.load_pipeline(runs.run_dir(r, "whisper_lr", k)) for k in range(2)],
        list(np.asarray(encoders.names(str(encoder_member["set"])))[tabular.columns(r.functionals_member("whisper_lr"))]),
    )
    assert set(encoders.layer_of(list(shares.index))) == {1} and shares.sum() == pytest.approx(1.0)
    cli_ok(["report", "--recipe", str(encoder_member["recipe"])])
    page = (encoder_member["root"] / "runs" / "tiny" / "report.html").read_text()
    assert "<h3>whisper_lr (" in page and "hidden state" in page
