"""Tests of the segmentation data set: its generator and the reader of its HDF5 contract."""
from __future__ import annotations

import re

import h5py
import numpy as np
import pytest

from dstrain.data.hdf5 import DataError
from dstrain.tasks.segmentation.data import (SegmentationData, class_appearance, generate_segmentation,
                                             open_segmentation)

SIZES = dict(num_train=24, num_val=8, num_test=8, height=20, width=24, num_classes=5)


@pytest.fixture(scope="module")
def seg_file(tmp_path_factory):
    """A tiny generated data set, shared by the tests that only read it."""
    return generate_segmentation(tmp_path_factory.mktemp("seg") / "nested" / "seg.h5", seed=0,
                                 progress=False, **SIZES)


def read_arrays(path):
    with h5py.File(path, "r") as file:
        return {f"{split}/{name}": file[split][name][()] for split in ("train", "val", "test")
                for name in ("x", "y")}


# ------------------------------------------------------------------------------------ generator

def test_layout_attributes_and_dtypes(seg_file):
    with h5py.File(seg_file, "r") as file:
        assert file.attrs["task"] == "segmentation"
        assert file.attrs["num_classes"] == 5 and file.attrs["seed"] == 0
        names = [n.decode() if isinstance(n, bytes) else n for n in file.attrs["class_names"]]
        assert names == list(class_appearance(5)[2]) and names[0] == "background"
        assert len(set(names)) == 5
        assert file.attrs["class_names"].dtype == h5py.string_dtype() or \
            h5py.check_string_dtype(file.attrs["class_names"].dtype) is not None
        assert isinstance(file.attrs["generator"], str) and "\n" not in file.attrs["generator"]
        for split, count in (("train", 24), ("val", 8), ("test", 8)):
            x, y = file[split]["x"], file[split]["y"]
            assert x.shape == (count, 3, 20, 24) and x.dtype == np.uint8
            assert y.shape == (count, 20, 24) and y.dtype in (np.int16, np.int64)
            assert x.compression == "gzip" and x.chunks is not None and y.chunks is not None


def test_same_seed_gives_identical_files(seg_file, tmp_path):
    again = generate_segmentation(tmp_path / "again.h5", seed=0, progress=False, **SIZES)
    assert seg_file.read_bytes() == again.read_bytes()


def test_different_seed_differs(seg_file, tmp_path):
    other = read_arrays(generate_segmentation(tmp_path / "other.h5", seed=1, progress=False, **SIZES))
    first = read_arrays(seg_file)
    assert not np.array_equal(first["train/x"], other["train/x"])
    assert not np.array_equal(first["test/y"], other["test/y"])


def test_splits_have_independent_streams(seg_file, tmp_path):
    """Changing the training size leaves the val and test splits untouched."""
    sizes = dict(SIZES, num_train=5)
    smaller = read_arrays(generate_segmentation(tmp_path / "small.h5", seed=0, progress=False, **sizes))
    first = read_arrays(seg_file)
    for key in ("val/x", "val/y", "test/x", "test/y"):
        assert np.array_equal(first[key], smaller[key]), key
    assert not np.array_equal(first["train/x"][:5], first["val/x"][:5])


def test_labels_cover_all_classes_and_ignore_only_boundaries(seg_file):
    y = read_arrays(seg_file)["train/y"]
    assert set(np.unique(y).tolist()) == {-1, 0, 1, 2, 3, 4}
    ignored = y == -1
    assert 0.005 < ignored.mean() < 0.2
    # an ignored pixel straddles a boundary: some 4-neighbour is ignored too or has another label,
    # so it is never alone in the interior of one object
    padded = np.pad(y, ((0, 0), (1, 1), (1, 1)), mode="edge")
    neighbours = np.stack([padded[:, :-2, 1:-1], padded[:, 2:, 1:-1], padded[:, 1:-1, :-2],
                           padded[:, 1:-1, 2:]])
    labelled_neighbours = np.where(neighbours >= 0, neighbours, -2)
    interior = (labelled_neighbours == labelled_neighbours[0]).all(0) & (labelled_neighbours[0] >= 0)
    assert not (ignored & interior).any()


def test_objects_differ_in_colour_from_their_surroundings(seg_file):
    """Boundaries coincide with colour edges: mean colours of object and background differ."""
    arrays = read_arrays(seg_file)
    x, y = arrays["train/x"].astype(np.float64), arrays["train/y"]
    differences = []
    for image, labels in zip(x, y):
        if (labels > 0).any() and (labels == 0).any():
            inside = image[:, labels > 0].mean(axis=1)
            outside = image[:, labels == 0].mean(axis=1)
            differences.append(np.abs(inside - outside).max())
    assert np.median(differences) > 20  # of 255


@pytest.mark.parametrize("height, width, num_classes", [(4, 4, 2), (5, 7, 3), (6, 4, 12)])
def test_tiny_sizes_and_class_counts(tmp_path, height, width, num_classes):
    path = generate_segmentation(tmp_path / "tiny.h5", num_train=40, num_val=2, num_test=1, height=height,
                                 width=width, num_classes=num_classes, seed=3, progress=False)
    with open_segmentation(path, "train") as data:
        assert data.image_shape == (3, height, width) and data.num_classes == num_classes
        assert len(data.class_names) == num_classes == len(set(data.class_names))
        x, y = data.read(range(data.num_samples))
    assert x.shape == (40, 3, height, width) and y.shape == (40, height, width)
    assert y.min() >= -1 and y.max() < num_classes and (y == 0).any() and (y > 0).any()


def test_class_appearance_pairs_share_hue_and_differ_in_texture():
    hues, textures, names = class_appearance(9)
    assert np.isnan(hues[0]) and names[0] == "background"
    for first in (1, 3, 5, 7):
        distance = abs(hues[first] - hues[first + 1]) % 1.0  # hue is circular
        assert 0 < min(distance, 1 - distance) < 0.15 and textures[first] != textures[first + 1]
    assert len(set(class_appearance(40)[2])) == 40


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(num_train=0), "num_train"),
    (dict(height=3), "height"),
    (dict(width=2), "width"),
    (dict(num_classes=1), "num_classes"),
])
def test_rejects_bad_arguments(tmp_path, kwargs, fragment):
    arguments = dict(SIZES, **kwargs)
    with pytest.raises(ValueError, match=fragment):
        generate_segmentation(tmp_path / "bad.h5", progress=False, **arguments)
    assert not list(tmp_path.iterdir())


def test_atomic_write_leaves_only_the_file(seg_file):
    assert [p.name for p in seg_file.parent.iterdir()] == [seg_file.name]


# --------------------------------------------------------------------------------------- reader

def test_reader_metadata(seg_file):
    with open_segmentation(seg_file, "val") as data:
        assert isinstance(data, SegmentationData)
        assert (data.path, data.split, data.num_samples, len(data)) == (seg_file, "val", 8, 8)
        assert data.num_classes == 5 and data.image_shape == (3, 20, 24)
        assert data.class_names == class_appearance(5)[2]
        assert "SegmentationData" in repr(data)
    assert data._file is None


def test_round_trip_rows_in_any_order_with_repeats(seg_file):
    arrays = read_arrays(seg_file)
    rows = [5, 0, 5, 23, 1, 12, 0]
    with open_segmentation(seg_file, "train") as data:
        x, y = data.read(rows)
        x_array, y_array = data.read(np.array(rows, np.int32))
        empty_x, empty_y = data.read([])
        with pytest.raises(IndexError, match="row 24"):
            data.read([0, 24])
        with pytest.raises(TypeError):
            data.read(np.array([0.5]))
    assert x.dtype == np.float32 and y.dtype == np.int64
    assert x.shape == (7, 3, 20, 24) and y.shape == (7, 20, 24)
    assert np.array_equal(x, arrays["train/x"][rows].astype(np.float32) / 255)
    assert np.array_equal(y, arrays["train/y"][rows])
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert np.array_equal(x, x_array) and np.array_equal(y, y_array)
    assert empty_x.shape == (0, 3, 20, 24) and empty_y.shape == (0, 20, 24) and empty_y.dtype == np.int64


def test_float_images_and_other_integer_labels(tmp_path):
    x = np.random.default_rng(0).random((3, 1, 4, 6)).astype(np.float32)
    y = np.array([np.full((4, 6), k) for k in (0, 1, -1)], np.int32)
    path = write_seg_file(tmp_path / "float.h5", x=x, y=y, attrs={"task": "segmentation", "num_classes": 2})
    with open_segmentation(path, "train") as data:
        assert data.image_shape == (1, 4, 6)
        assert data.class_names == ("background", "class1")  # no class_names attribute
        xs, ys = data.read([2, 0])
    assert np.array_equal(xs, x[[2, 0]]) and ys.tolist() == y[[2, 0]].tolist()


# -------------------------------------------------------------------------------- contract errors

GOOD_ATTRS = {"task": "segmentation", "num_classes": 4}


def write_seg_file(path, x=None, y=None, attrs=None, split="train"):
    """A hand-made contract file: 3 images of 3x5x6, 4 classes by default.
    ``x=False`` / ``y=False`` leave that dataset out."""
    if x is None:
        x = np.zeros((3, 3, 5, 6), np.uint8)
    if y is None:
        y = np.zeros((3, 5, 6), np.int16)
    with h5py.File(path, "w") as file:
        file.attrs.update(GOOD_ATTRS if attrs is None else attrs)
        group = file.create_group(split)
        if x is not False:
            group["x"] = x
        if y is not False:
            group["y"] = y
    return path


def expect_error(path, split, *fragments):
    """open_segmentation must raise a one-line DataError naming the file and each fragment."""
    pattern = "".join(f"(?=.*{re.escape(text)})" for text in (path.name,) + fragments)
    with pytest.raises(DataError, match=pattern) as info:
        open_segmentation(path, split)
    assert "\n" not in str(info.value)


def test_missing_file_and_not_hdf5(tmp_path):
    expect_error(tmp_path / "absent.h5", "train", "no such data file")
    assert issubclass(DataError, ValueError)
    text = tmp_path / "notes.h5"
    text.write_text("not an HDF5 file\n")
    expect_error(text, "train", "HDF5")


def test_truncated_file(tmp_path, seg_file):
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(seg_file.read_bytes()[: seg_file.stat().st_size // 2])
    with pytest.raises(DataError, match=re.escape(truncated.name)):
        with open_segmentation(truncated, "test") as data:
            data.read(range(data.num_samples))


@pytest.mark.parametrize("attrs, fragment", [
    ({"num_classes": 4}, "'task'"),
    ({"task": "words", "num_classes": 4}, "'task'"),
    ({"task": "segmentation"}, "'num_classes'"),
    ({"task": "segmentation", "num_classes": 0}, "'num_classes'"),
    ({"task": "segmentation", "num_classes": 1}, "'num_classes'"),
    ({"task": "segmentation", "num_classes": 2.5}, "'num_classes'"),
    ({"task": "segmentation", "num_classes": "four"}, "'num_classes'"),
    ({"task": "segmentation", "num_classes": 4, "class_names": ["a", "b"]}, "'class_names'"),
])
def test_bad_root_attributes(tmp_path, attrs, fragment):
    expect_error(write_seg_file(tmp_path / "attrs.h5", attrs=attrs), "train", fragment, "expected")


def test_missing_split_and_datasets(tmp_path):
    expect_error(write_seg_file(tmp_path / "split.h5"), "val", "'/val'", "groups present: train")
    expect_error(write_seg_file(tmp_path / "nox.h5", x=False), "train", "'/train/x'", "missing")
    expect_error(write_seg_file(tmp_path / "noy.h5", y=False), "train", "'/train/y'", "missing")


@pytest.mark.parametrize("x_shape, y_shape, fragment", [
    ((3, 5, 6), (3, 5, 6), "'/train/x'"),           # x not 4-D
    ((3, 3, 5, 6), (3, 5), "'/train/y'"),           # y not 3-D
    ((3, 3, 5, 6), (3, 3, 5, 6), "'/train/y'"),     # y 4-D
    ((3, 3, 5, 6), (2, 5, 6), "'/train/y'"),        # N disagrees
    ((3, 3, 5, 6), (3, 6, 5), "'/train/y'"),        # H, W swapped
])
def test_bad_shapes(tmp_path, x_shape, y_shape, fragment):
    path = write_seg_file(tmp_path / "shape.h5", x=np.zeros(x_shape, np.uint8), y=np.zeros(y_shape, np.int16))
    expect_error(path, "train", fragment, "expected")


def test_bad_dtypes(tmp_path):
    y = np.zeros((2, 4, 4), np.int64)
    expect_error(write_seg_file(tmp_path / "x64.h5", x=np.zeros((2, 3, 4, 4)), y=y),
                 "train", "'/train/x'", "uint8 or float32")
    expect_error(write_seg_file(tmp_path / "yfloat.h5", x=np.zeros((2, 3, 4, 4), np.uint8),
                                y=y.astype(np.float32)), "train", "'/train/y'", "integer")


@pytest.mark.parametrize("row, value", [(0, 4), (2, -2), (1, 100)])
def test_bad_labels(tmp_path, row, value):
    y = np.zeros((3, 5, 6), np.int16)
    y[:, 0, 0] = -1
    y[row, 3, 2] = value
    expect_error(write_seg_file(tmp_path / "labels.h5", y=y), "train", "'/train/y'", f"label {value}",
                 f"row {row}", "outside [-1, 4)")


def test_bad_label_found_in_a_later_block(tmp_path, monkeypatch):
    import dstrain.tasks.segmentation.data as module

    monkeypatch.setattr(module, "LABEL_CHECK_PIXELS", 2 * 5 * 6)  # two rows per block
    y = np.ones((7, 5, 6), np.uint8)
    y[5, 4, 5] = 9
    expect_error(write_seg_file(tmp_path / "late.h5", x=np.zeros((7, 3, 5, 6), np.uint8), y=y),
                 "train", "label 9", "row 5")
