import pandas as pd
import pytest

from ensemble.store.corpora import ravdess

from .conftest import RAVDESS


def test_parse_name_decodes_every_field():
    fields = ravdess.parse_name("Actor_12/03-01-05-02-01-02-12.wav")
    assert fields == {
        "modality": 3,
        "vocal_channel": "speech",
        "emotion": "angry",
        "intensity": "strong",
        "statement": 1,
        "repetition": 2,
        "actor": 12,
        "gender": "female",
    }
    assert ravdess.parse_name("03-02-01-01-02-01-07.flac")["gender"] == "male"
    assert ravdess.parse_name("03-02-01-01-02-01-07.flac")["vocal_channel"] == "song"


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("03-01-05-02-01-02.wav", "seven 2-digit fields"),
        ("03-01-09-01-01-01-01.wav", "emotion code 09"),
        ("03-01-05-03-01-01-01.wav", "intensity code 03"),
        ("03-01-05-01-01-01-25.wav", "actor code 25"),
        ("a3-01-05-01-01-01-01.wav", "seven 2-digit fields"),
    ],
)
def test_parse_name_rejects_bad_names_naming_the_file(name, fragment):
    with pytest.raises(ravdess.RavdessError, match=fragment) as err:
        ravdess.parse_name(name)
    assert name.split(".")[0] in str(err.value)


def test_every_shared_clip_parses_and_counts_match_the_corpus():
    clips = ravdess.find_clips(RAVDESS)
    table = pd.DataFrame([ravdess.parse_name(p) for p in clips])
    assert len(table) == 1440
    counts = table["emotion"].value_counts()
    assert counts["neutral"] == 96 and (counts.drop("neutral") == 192).all()
    assert table["actor"].nunique() == 24


def test_build_holds_out_whole_actors_with_opaque_test_ids(small_source, tmp_path):
    tables = ravdess.build(small_source, tmp_path / "comp", test_actors=(5, 6), seed=0)
    train, test, sample, solution = (tables[k] for k in ("train.csv", "test.csv", "sample_submission.csv", "solution.csv"))
    assert len(train) == 32 and len(test) == 16
    assert set(train["actor"]) == {1, 2, 3, 4}
    assert set(solution["group"]) == {"actor_05", "actor_06"}
    assert not set(train["group"]) & set(solution["group"])
    assert list(sample["id"]) == list(test["id"]) == list(solution["id"])
    assert all(i.startswith("test_") for i in test["id"]) and all("test/test_" in p for p in test["path"])
    assert (train["label"] == train["emotion"]).all()
    for rel in list(train["path"]) + list(test["path"]):
        assert (tmp_path / "comp" / rel).is_file()
    written = pd.read_csv(tmp_path / "comp" / "train.csv", dtype=str)
    assert list(written.columns[:4]) == ["id", "path", "label", "group"]


def test_build_refuses_unknown_test_actor(small_source, tmp_path):
    with pytest.raises(ravdess.RavdessError, match=r"test actor\(s\) \[9\]"):
        ravdess.build(small_source, tmp_path / "comp", test_actors=(9,))


def test_download_offline_says_so(tmp_path):
    with pytest.raises(ravdess.RavdessError, match="could not download RAVDESS.*source=DIR"):
        ravdess.download(tmp_path, url="http://127.0.0.1:9/ravdess.zip", timeout=2)


def test_gender_emotion_scheme_has_ten_classes_and_drops_other_emotions(small_source, tmp_path):
    tables = ravdess.build(small_source, tmp_path / "ge", test_actors=(5, 6), labels="gender_emotion")
    train, solution = tables["train.csv"], tables["solution.csv"]
    assert set(train["emotion"]) == set(ravdess.GENDER_EMOTIONS)
    assert set(train["label"]) == {f"{g}_{e}" for g in ("female", "male") for e in ravdess.GENDER_EMOTIONS}
    assert (train["label"] == train["gender"] + "_" + train["emotion"]).all()
    assert len(train) == 20 and len(solution) == 10
    with pytest.raises(ravdess.RavdessError, match="unknown label scheme 'colour'"):
        ravdess.label_of({"emotion": "sad", "gender": "male"}, "colour")


def test_song_clips_pool_with_speech(small_source, tmp_path):
    song = tmp_path / "song" / "Actor_01"
    song.mkdir(parents=True)
    speech = sorted((small_source / "Actor_01").iterdir())[:2]
    for clip in speech:  # real audio under song names (vocal channel 02)
        (song / clip.name.replace("03-01-", "03-02-", 1)).symlink_to(clip.resolve())
    tables = ravdess.build(small_source, tmp_path / "pooled", test_actors=(5, 6), song_source=tmp_path / "song")
    train = tables["train.csv"]
    assert len(train) == 34 and (train["vocal_channel"] == "song").sum() == 2
