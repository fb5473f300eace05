"""Tests of the image-tagging data set: the generator and the reader of its HDF5 contract."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from dstrain.data.hdf5 import DataError
from dstrain.tasks.tagging import data as tagging
from dstrain.tasks.tagging.data import (SCENE_GROUPS, SCENES, TAG_NAMES, TaggingData, generate_tagging,
                                        open_tagging)

SIZES = dict(num_train=50, num_val=20, num_test=40)
K = len(TAG_NAMES)


@pytest.fixture(scope="module")
def tagging_file(tmp_path_factory):
    """A tiny generated data set, shared by the tests that only read it."""
    return generate_tagging(tmp_path_factory.mktemp("tagging") / "nested" / "tags.h5", seed=0,
                            progress=False, **SIZES)


@pytest.fixture(scope="module")
def latent_labels():
    """Labels of many latent draws (no rendering, so cheap): the co-occurrence statistics."""
    rng = np.random.default_rng(1)
    return tagging._sample_latent(20000, rng, tagging.DEFAULT_DIFFICULTY).labels()


def read_arrays(path):
    with h5py.File(path, "r") as file:
        return {f"{split}/{name}": file[split][name][()] for split in ("train", "val", "test")
                for name in ("x", "y")}


def column(y, name):
    return y[:, TAG_NAMES.index(name)].astype(bool)


# ------------------------------------------------------------------------------------ generator

def test_tag_names_are_38_distinct():
    assert len(TAG_NAMES) == 38
    assert len(set(TAG_NAMES)) == 38
    assert set(SCENES) <= set(TAG_NAMES)


def test_layout_dtypes_and_attributes(tagging_file):
    with h5py.File(tagging_file, "r") as file:
        assert file.attrs["task"] == "tagging"
        assert int(file.attrs["num_labels"]) == K
        assert [str(n) for n in file.attrs["tag_names"]] == list(TAG_NAMES)
        assert h5py.check_string_dtype(file.attrs["tag_names"].dtype) is not None
        assert int(file.attrs["seed"]) == 0
        generator = file.attrs["generator"]
        assert isinstance(generator, str) and "\n" not in generator and "38 tags" in generator
        for split, count in (("train", 50), ("val", 20), ("test", 40)):
            x, y = file[split]["x"], file[split]["y"]
            assert x.shape == (count, 3, 32, 32) and x.dtype == np.uint8
            assert y.shape == (count, K) and y.dtype == np.uint8
            assert x.compression == "gzip" and x.chunks[1:] == (3, 32, 32)
            assert set(np.unique(y[()])) <= {0, 1}
            assert 20 < float(x[()].mean()) < 235 and x[()].std() > 10  # neither blank nor saturated


def test_same_seed_gives_identical_files(tagging_file, tmp_path):
    again = generate_tagging(tmp_path / "again.h5", seed=0, progress=False, **SIZES)
    assert tagging_file.read_bytes() == again.read_bytes()


def test_different_seed_differs(tagging_file, tmp_path):
    other = read_arrays(generate_tagging(tmp_path / "other.h5", seed=1, progress=False, **SIZES))
    first = read_arrays(tagging_file)
    assert not np.array_equal(first["train/x"], other["train/x"])
    assert not np.array_equal(first["test/y"], other["test/y"])


def test_splits_have_independent_streams(tagging_file, tmp_path):
    """Changing the training size leaves the other splits untouched."""
    smaller = read_arrays(generate_tagging(tmp_path / "small.h5", seed=0, num_train=7, num_val=20,
                                           num_test=40, progress=False))
    first = read_arrays(tagging_file)
    for key in ("val/x", "val/y", "test/x", "test/y"):
        np.testing.assert_array_equal(smaller[key], first[key])
    assert smaller["train/x"].shape[0] == 7


def test_write_is_atomic_and_replaces(tmp_path):
    path = tmp_path / "tags.h5"
    path.write_text("an old file")
    generate_tagging(path, num_train=3, num_val=2, num_test=2, progress=False)
    with h5py.File(path, "r") as file:
        assert file["train/x"].shape[0] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tags.h5"]  # no temporary file left


def test_other_image_size(tmp_path):
    path = generate_tagging(tmp_path / "t.h5", num_train=4, num_val=2, num_test=2, image_size=24,
                            progress=False)
    with open_tagging(path, "train") as data:
        assert data.x_shape == (3, 24, 24)


@pytest.mark.parametrize("kwargs", [dict(num_train=0), dict(num_test=-1), dict(image_size=8)])
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        generate_tagging(tmp_path / "t.h5", progress=False, **{**SIZES, **kwargs})
    assert not (tmp_path / "t.h5").exists()


def test_exactly_one_scene_and_unions(tagging_file, latent_labels):
    for y in (read_arrays(tagging_file)["train/y"], latent_labels):
        scenes = np.stack([column(y, s) for s in SCENES], axis=1)
        np.testing.assert_array_equal(scenes.sum(axis=1), 1)
        for name, members in SCENE_GROUPS.items():
            np.testing.assert_array_equal(column(y, name), np.any([column(y, m) for m in members], axis=0))
        np.testing.assert_array_equal(column(y, "water"), column(y, "sea") | column(y, "lake"))
        assert not (column(y, "portrait") & ~column(y, "people")).any()


def test_tags_co_occur(latent_labels):
    y = latent_labels
    correlation = np.corrcoef(y.T.astype(float))

    def corr(a, b):
        return correlation[TAG_NAMES.index(a), TAG_NAMES.index(b)]

    # strong positive pairs
    for a, b in (("sand", "beach"), ("snow", "cold"), ("building", "city"), ("lake", "lakeside"),
                 ("food", "indoor"), ("sea", "water")):
        assert corr(a, b) > 0.5, (a, b, corr(a, b))
    # negative pairs: never or rarely together
    for a, b in (("sun", "night"), ("indoor", "nature"), ("snow", "grass"), ("sea", "lake")):
        assert corr(a, b) < -0.1, (a, b, corr(a, b))
    assert not (column(y, "sun") & column(y, "night")).any()
    assert not (column(y, "sand") & ~column(y, "sea")).any()
    # many pairs are strongly dependent, as Flickr tags are
    off_diagonal = np.abs(correlation[~np.eye(K, dtype=bool)])
    assert (off_diagonal > 0.3).sum() >= 40


def test_tag_count_distribution(latent_labels):
    counts = latent_labels.sum(axis=1)
    assert counts.min() >= 2  # a scene and at least one tag derived from it
    assert counts.max() <= 20
    assert 5 <= counts.mean() <= 12
    assert counts.std() > 1
    frequency = latent_labels.mean(axis=0)
    assert frequency.min() > 0.03 and frequency.max() < 0.6  # no tag always on or practically never


def test_night_pictures_are_darker():
    rng = np.random.default_rng(2)
    latent = tagging._sample_latent(400, rng, tagging.DEFAULT_DIFFICULTY)
    images = tagging.TagRenderer(32).render(latent, rng)
    night = latent.labels()[:, TAG_NAMES.index("night")].astype(bool)
    brightness = images.reshape(len(images), -1).mean(axis=1)
    assert night.any() and brightness[night].mean() < 0.6 * brightness[~night].mean()


def test_rendering_is_fast():
    """22k pictures must render well under a minute: 1024 here should take a fraction of a second."""
    import time

    rng = np.random.default_rng(3)
    start = time.perf_counter()
    latent = tagging._sample_latent(1024, rng, tagging.DEFAULT_DIFFICULTY)
    tagging.TagRenderer(32).render(latent, rng)
    assert time.perf_counter() - start < 2.0


# ---------------------------------------------------------------------------------------- reader

def test_round_trip(tagging_file):
    raw = read_arrays(tagging_file)
    with open_tagging(tagging_file, "train") as data:
        assert isinstance(data, TaggingData)
        assert (data.num_samples, data.num_labels, data.x_shape) == (50, K, (3, 32, 32))
        assert len(data) == 50 and data.split == "train" and data.path == tagging_file
        assert data.tag_names == list(TAG_NAMES)
        x, y = data.read(range(50))
    assert x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(x, raw["train/x"].astype(np.float32) / 255)
    np.testing.assert_array_equal(y, raw["train/y"])
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_read_rows_any_order_with_repeats(tagging_file):
    raw = read_arrays(tagging_file)
    rows = [39, 0, 5, 5, 17, 0, 38]
    with open_tagging(tagging_file, "test") as data:
        x, y = data.read(rows)
        x2, y2 = data.read(np.array(rows, dtype=np.int32))
        empty_x, empty_y = data.read([])
        with pytest.raises(IndexError, match="row 40"):
            data.read([3, 40])
        with pytest.raises(IndexError):
            data.read([-1])
        with pytest.raises(TypeError):
            data.read(np.array([1.0, 2.0]))
    np.testing.assert_array_equal(x, raw["test/x"][rows] / np.float32(255))
    np.testing.assert_array_equal(y, raw["test/y"][rows])
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, y)
    assert empty_x.shape == (0, 3, 32, 32) and empty_y.shape == (0, K)


def test_close_and_context_manager(tagging_file):
    data = open_tagging(tagging_file, "val")
    data.close()
    data.close()  # idempotent
    with open_tagging(tagging_file, "val") as data:
        assert "TaggingData(" in repr(data)
    assert data._file is None


def write_contract(path, x, y, split="train", **attrs):
    attrs = {"task": "tagging", "num_labels": y.shape[1] if y is not None and y.ndim == 2 else 3, **attrs}
    with h5py.File(path, "w") as file:
        for key, value in attrs.items():
            if value is not None:
                file.attrs[key] = value
        group = file.create_group(split)
        if x is not None:
            group.create_dataset("x", data=x, chunks=True)
        if y is not None:
            group.create_dataset("y", data=y, chunks=True)
    return path


def test_feature_file_is_accepted(tmp_path, rng):
    x = rng.random((30, 294), dtype=np.float32)
    y = (rng.random((30, 6)) < 0.3).astype(np.int8)
    path = write_contract(tmp_path / "features.h5", x, y)
    with open_tagging(path, "train") as data:
        assert (data.num_samples, data.num_labels, data.x_shape) == (30, 6, (294,))
        assert data.tag_names == [f"tag{k}" for k in range(6)]
        xs, ys = data.read([29, 1, 1])
    np.testing.assert_array_equal(xs, x[[29, 1, 1]])  # float32 features are not rescaled
    np.testing.assert_array_equal(ys, y[[29, 1, 1]])


def test_bool_labels_and_byte_tag_names_are_accepted(tmp_path):
    y = np.zeros((4, 2), dtype=bool)
    y[1, 0] = True
    path = write_contract(tmp_path / "b.h5", np.zeros((4, 1, 5, 5), np.uint8), y,
                          tag_names=np.array([b"cat", b"dog"]))
    with open_tagging(path, "train") as data:
        assert data.tag_names == ["cat", "dog"] and data.x_shape == (1, 5, 5)
        assert data.read([1])[1].tolist() == [[1, 0]]


GOOD_X = np.zeros((10, 3, 4, 4), np.uint8)
GOOD_Y = np.zeros((10, 3), np.uint8)


def bad_label_y():
    y = GOOD_Y.copy()
    y[7, 2] = 2
    return y


# (name, how to break the file, the key the message must name, another part of the message)
BAD_FILES = [
    ("task missing", dict(task=None), "'task'", "missing"),
    ("task wrong", dict(task="words"), "'task'", "tagging"),
    ("num_labels missing", dict(num_labels=None), "'num_labels'", "positive integer"),
    ("num_labels zero", dict(num_labels=0), "'num_labels'", "positive integer"),
    ("num_labels float", dict(num_labels=2.5), "'num_labels'", "positive integer"),
    ("num_labels text", dict(num_labels="3"), "'num_labels'", "positive integer"),
    ("tag_names length", dict(tag_names=np.array(["a", "b"], dtype=h5py.string_dtype())), "'tag_names'",
     "3 strings"),
    ("x missing", dict(x=None), "'/train/x'", "missing"),
    ("y missing", dict(y=None), "'/train/y'", "missing"),
    ("x rank 3", dict(x=np.zeros((10, 4, 4), np.uint8)), "'/train/x'", "2-D"),
    ("x rank 5", dict(x=np.zeros((10, 1, 3, 4, 4), np.uint8)), "'/train/x'", "4-D"),
    ("x float64", dict(x=np.zeros((10, 48))), "'/train/x'", "uint8 or float32"),
    ("x int16", dict(x=np.zeros((10, 48), np.int16)), "'/train/x'", "uint8 or float32"),
    ("y 1-D", dict(y=np.zeros(10, np.uint8)), "'/train/y'", "2-D"),
    ("y 3-D", dict(y=np.zeros((10, 3, 1), np.uint8)), "'/train/y'", "2-D"),
    ("y wrong K", dict(y=np.zeros((10, 4), np.uint8), num_labels=3), "'/train/y'", "num_labels = 3"),
    ("y text", dict(y=np.full((10, 3), "a", dtype=h5py.string_dtype())), "'/train/y'", "0 and 1"),
    ("N differs", dict(y=np.zeros((9, 3), np.uint8)), "'/train/x'", "same N"),
    ("label 2", dict(y=bad_label_y()), "'/train/y'", "row 7"),
    ("label -1", dict(y=-np.ones((10, 3), np.int8)), "'/train/y'", "-1"),
    ("label 0.5", dict(y=np.full((10, 3), 0.5, np.float32)), "'/train/y'", "0.5"),
]


@pytest.mark.parametrize("name, change, key, expected", BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_bad_files_raise_one_line_data_error(tmp_path, name, change, key, expected):
    change = dict(change)
    x = change.pop("x", GOOD_X)
    y = change.pop("y", GOOD_Y)
    path = write_contract(tmp_path / "bad.h5", x, y, **change)
    with pytest.raises(DataError) as error:
        open_tagging(path, "train")
    message = str(error.value)
    assert str(path) in message and key in message and expected in message, message
    assert "\n" not in message


def test_label_value_and_row_are_named(tmp_path):
    path = write_contract(tmp_path / "bad.h5", GOOD_X, bad_label_y())
    with pytest.raises(DataError, match=r"label 2 in row 7"):
        open_tagging(path, "train")


def test_labels_are_checked_in_blocks(tmp_path, monkeypatch):
    """Validation reads y in bounded blocks and still finds a bad label in a later block."""
    monkeypatch.setattr(tagging, "LABEL_CHECK_ROWS", 3)
    y = GOOD_Y.copy()
    y[8, 1] = 5
    path = write_contract(tmp_path / "bad.h5", GOOD_X, y)
    with pytest.raises(DataError, match=r"label 5 in row 8 \(tag 1\)"):
        open_tagging(path, "train")


def test_missing_split_lists_groups(tmp_path):
    path = write_contract(tmp_path / "t.h5", GOOD_X, GOOD_Y, split="train")
    with pytest.raises(DataError) as error:
        open_tagging(path, "test")
    message = str(error.value)
    assert str(path) in message and "'/test'" in message and "groups present: train" in message


def test_missing_file(tmp_path):
    path = tmp_path / "nothing.h5"
    with pytest.raises(DataError, match="no such data file") as error:
        open_tagging(path, "train")
    assert str(path) in str(error.value) and "tagging" in str(error.value)


def test_not_hdf5(tmp_path):
    path = tmp_path / "text.h5"
    path.write_text("not an HDF5 file\n")
    with pytest.raises(DataError, match="not a readable HDF5 file") as error:
        open_tagging(path, "train")
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)
