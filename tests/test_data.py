"""Tests of the data layer: the word generator and the HDF5 contract reader (docs/design.md §5)."""
from __future__ import annotations

import re
import string

import h5py
import numpy as np
import pytest

from dstrain.data import DataError
from dstrain.tasks.words import WordsData, generate_words, open_words
from dstrain.tasks.words.data import WORD_LIST, available_fonts, font_directory, _has_all_letters

SIZES = dict(num_train=30, num_val=10, num_test=10)


@pytest.fixture(scope="module")
def words_file(tmp_path_factory):
    """A tiny generated data set, shared by the tests that only read it."""
    return generate_words(tmp_path_factory.mktemp("words") / "nested" / "words.h5", seed=0,
                          progress=False, **SIZES)


def read_arrays(path):
    with h5py.File(path, "r") as file:
        return {f"{split}/{name}": file[split][name][()] for split in ("train", "val", "test")
                for name in ("x", "y")}


# ------------------------------------------------------------------------------------ generator

def test_word_list_is_large_and_clean():
    assert len(WORD_LIST) >= 200
    assert len(set(WORD_LIST)) == len(WORD_LIST)
    assert all(len(word) == 5 and set(word) <= set(string.ascii_lowercase) for word in WORD_LIST)


def test_fonts_render_real_letters():
    names = [path.stem for path in available_fonts()]
    assert {"DejaVuSans", "DejaVuSerif-Bold", "DejaVuSansMono-Oblique", "cmr10", "STIXGeneral"} <= set(names)
    # cmsy10 / cmex10 map 'a'..'z' to math symbols; the last-resort font has only boxes
    assert not _has_all_letters(font_directory() / "cmsy10.ttf")
    assert "cmsy10" not in names and "cmex10" not in names


def test_same_seed_gives_identical_files(words_file, tmp_path):
    again = generate_words(tmp_path / "again.h5", seed=0, progress=False, **SIZES)
    assert words_file.read_bytes() == again.read_bytes()


def test_different_seed_differs(words_file, tmp_path):
    other = read_arrays(generate_words(tmp_path / "other.h5", seed=1, progress=False, **SIZES))
    first = read_arrays(words_file)
    assert not np.array_equal(first["train/x"], other["train/x"])
    assert not np.array_equal(first["test/y"], other["test/y"])


def test_splits_have_independent_streams(words_file, tmp_path):
    """Changing the training size leaves the test split untouched."""
    smaller = read_arrays(generate_words(tmp_path / "small.h5", seed=0, num_train=12, num_val=10,
                                         num_test=10, progress=False))
    first = read_arrays(words_file)
    assert np.array_equal(first["test/x"], smaller["test/x"])
    assert not np.array_equal(first["val/x"], first["test/x"])


def test_layout_attributes_and_dtypes(words_file):
    with h5py.File(words_file, "r") as file:
        assert file.attrs["task"] == "words"
        assert file.attrs["num_classes"] == 26
        assert file.attrs["seed"] == 0
        assert "rotation_deg" in file.attrs["generator"]
        vocabulary = list(file.attrs["vocabulary"])
        assert len(vocabulary) == len(set(vocabulary)) == 50
        assert set(vocabulary) <= set(WORD_LIST)
        for split, count in zip(("train", "val", "test"), SIZES.values()):
            x, y = file[split]["x"], file[split]["y"]
            assert x.shape == (count, 5, 28, 28) and x.dtype == np.uint8
            assert y.shape == (count, 5) and y.dtype == np.int64
            assert x.compression == "gzip" and x.compression_opts == 4
            assert x.chunks[0] == min(256, count)
            words = {"".join(string.ascii_lowercase[c] for c in row) for row in y[()]}
            assert words <= set(vocabulary)
        assert file["train"]["x"][()].std() > 10  # real images, not blank


def test_atomic_write_leaves_only_the_file(words_file):
    assert [p.name for p in words_file.parent.iterdir()] == ["words.h5"]


def test_rejects_empty_splits(tmp_path):
    with pytest.raises(ValueError, match="num_val"):
        generate_words(tmp_path / "w.h5", num_train=2, num_val=0, num_test=2, progress=False)
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------------------- reader

def test_reader_metadata(words_file):
    with open_words(words_file, "train") as data:
        assert isinstance(data, WordsData)
        assert (data.split, data.num_samples, data.max_length) == ("train", 30, 5)
        assert data.image_shape == (28, 28) and data.num_classes == 26
        assert data.lengths.dtype == np.int64 and np.all(data.lengths == 5)
        assert data.path == words_file


def test_read_unsorted_rows_matches_full_read(words_file):
    raw = read_arrays(words_file)
    rows = [7, 2, 29, 2, 0]
    with open_words(words_file, "train") as data:
        full_x, full_y = data.read(range(data.num_samples))
        x, y = data.read(iter(rows))
        assert np.array_equal(x, full_x[rows]) and np.array_equal(y, full_y[rows])
        assert np.array_equal(data.lengths, (full_y >= 0).sum(axis=1))
        x_np, _ = data.read(np.array(rows, dtype=np.int32))
        assert np.array_equal(x_np, x)
    assert full_x.dtype == np.float32 and y.dtype == np.int64 and data.lengths.dtype == np.int64
    assert np.allclose(full_x, raw["train/x"] / 255.0) and full_x.min() >= 0 and full_x.max() <= 1
    assert np.array_equal(full_y, raw["train/y"])


def test_read_touches_only_chunks_of_requested_rows(tmp_path):
    """Under MPI a rank reads only its shard: no slice may leave the chunks of the rows asked for."""
    y = np.arange(40 * 3).reshape(40, 3) % 7
    x = np.arange(40 * 3 * 2 * 2, dtype=np.float32).reshape(40, 3, 2, 2)
    path = tmp_path / "chunked.h5"
    with h5py.File(path, "w") as file:
        file.attrs.update(task="words", num_classes=7)
        file.create_dataset("train/x", data=x, chunks=(4, 3, 2, 2))
        file.create_dataset("train/y", data=y, chunks=(4, 3))
    with open_words(path, "train") as data:
        requested = []
        dataset = data._x

        class Spy:
            chunks, dtype, shape = dataset.chunks, dataset.dtype, dataset.shape

            def __getitem__(self, index):
                requested.append((index.start, index.stop))
                return dataset[index]

        data._x = Spy()
        rows = [33, 2, 17, 3, 33]
        xs, ys = data.read(rows)
    assert requested == [(2, 4), (17, 18), (33, 34)]
    assert np.array_equal(xs, x[rows]) and np.array_equal(ys, y[rows])


def test_read_edge_cases(words_file):
    with open_words(words_file, "val") as data:
        x, y = data.read([])
        assert x.shape == (0, 5, 28, 28) and y.shape == (0, 5)
        with pytest.raises(IndexError, match="/val/x"):
            data.read([0, 10])
        with pytest.raises(IndexError):
            data.read([-1])
    assert data._file is None  # closed by the context manager


VARIABLE_LABELS = np.array([[3, 1, 4, 1], [5, 9, -1, -1], [2, -1, -1, -1], [6, 5, 3, 5], [8, 9, 7, -1]])


def write_words_file(path, x=None, y=None, attrs=None, split="train"):
    """A hand-made contract file: 16x8 images, 10 classes, words of length 1..4 by default.
    ``x=False`` / ``y=False`` leave that dataset out."""
    if y is None:
        y = VARIABLE_LABELS
    if x is None:
        x = np.zeros(VARIABLE_LABELS.shape + (16, 8), np.uint8)
    with h5py.File(path, "w") as file:
        file.attrs.update({"task": "words", "num_classes": 10} if attrs is None else attrs)
        group = file.create_group(split)
        if x is not False:
            group["x"] = x
        if y is not False:
            group["y"] = y
    return path


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_hand_made_variable_length_file(tmp_path, dtype):
    y = VARIABLE_LABELS.astype(np.int32)  # any integer type is fine
    x = np.zeros(y.shape + (16, 8), dtype)
    x[y >= 0] = np.arange(1, (y >= 0).sum() + 1)[:, None, None]
    path = write_words_file(tmp_path / "small.h5", x=x, y=y)
    with open_words(path, "train") as data:
        assert (data.num_samples, data.max_length, data.image_shape, data.num_classes) == (5, 4, (16, 8), 10)
        assert data.lengths.tolist() == [4, 2, 1, 4, 3]
        xs, ys = data.read([4, 2])
        lengths = data.lengths[[4, 2]]
    expected = x[[4, 2]].astype(np.float32) / (255 if dtype == np.uint8 else 1)
    assert xs.dtype == np.float32 and np.array_equal(xs, expected)
    assert ys.dtype == np.int64 and ys.tolist() == [[8, 9, 7, -1], [2, -1, -1, -1]]
    assert lengths.tolist() == [3, 1]


# -------------------------------------------------------------------------------- contract errors

def expect_error(path, split, *fragments):
    """open_words must raise DataError naming the file and each fragment (plain text)."""
    pattern = "".join(f"(?=.*{re.escape(text)})" for text in (path.name,) + fragments)
    with pytest.raises(DataError, match=pattern):
        open_words(path, split)


def test_missing_file_suggests_generating_it(tmp_path):
    expect_error(tmp_path / "absent.h5", "train", "dstrain data words --out")
    assert issubclass(DataError, ValueError)


def test_not_hdf5_and_truncated_files(tmp_path, words_file):
    text = tmp_path / "notes.h5"
    text.write_text("not an HDF5 file\n")
    expect_error(text, "train", "HDF5")
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(words_file.read_bytes()[: words_file.stat().st_size // 2])
    with pytest.raises(DataError, match=re.escape(truncated.name)):
        with open_words(truncated, "test") as data:
            data.read(range(data.num_samples))


def test_corrupt_image_chunk_fails_on_read(tmp_path, words_file):
    with h5py.File(words_file, "r") as file:
        offset = file["train"]["x"].id.get_chunk_info(0).byte_offset
    damaged = bytearray(words_file.read_bytes())
    damaged[offset + 100:offset + 400] = bytes(300)  # zero part of the gzip stream
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(damaged)
    with open_words(corrupt, "train") as data:  # metadata and labels are intact
        with pytest.raises(DataError, match=f"{re.escape(corrupt.name)}.*'/train/x'.*corrupt"):
            data.read([0])


@pytest.mark.parametrize("attrs, fragment", [
    ({"num_classes": 10}, "'task'"),
    ({"task": "tagging", "num_classes": 10}, "'task'"),
    ({"task": "words"}, "'num_classes'"),
    ({"task": "words", "num_classes": 0}, "'num_classes'"),
    ({"task": "words", "num_classes": 2.5}, "'num_classes'"),
    ({"task": "words", "num_classes": "ten"}, "'num_classes'"),
])
def test_bad_root_attributes(tmp_path, attrs, fragment):
    expect_error(write_words_file(tmp_path / "attrs.h5", attrs=attrs), "train", fragment)


def test_missing_split_and_datasets(tmp_path):
    expect_error(write_words_file(tmp_path / "split.h5"), "val", "'/val'")
    expect_error(write_words_file(tmp_path / "nox.h5", x=False), "train", "'/train/x'", "missing")
    expect_error(write_words_file(tmp_path / "noy.h5", y=False), "train", "'/train/y'", "missing")


@pytest.mark.parametrize("x_shape, y_shape, fragment", [
    ((5, 4, 16), (5, 4), "'/train/x'"),           # x not 4-D
    ((5, 4, 16, 8), (5, 4, 1), "'/train/y'"),     # y not 2-D
    ((6, 4, 16, 8), (5, 4), "'/train/x'"),        # N disagrees
    ((5, 3, 16, 8), (5, 4), "'/train/x'"),        # L disagrees
])
def test_bad_shapes(tmp_path, x_shape, y_shape, fragment):
    path = write_words_file(tmp_path / "shape.h5", x=np.zeros(x_shape, np.uint8),
                            y=np.zeros(y_shape, np.int64))
    expect_error(path, "train", fragment, "expected")


def test_bad_dtypes(tmp_path):
    y = np.ones((2, 3), np.int64)
    expect_error(write_words_file(tmp_path / "x64.h5", x=np.zeros((2, 3, 4, 4)), y=y),
                 "train", "'/train/x'", "uint8 or float32")
    expect_error(write_words_file(tmp_path / "yfloat.h5", x=np.zeros((2, 3, 4, 4), np.uint8),
                                  y=y.astype(np.float32)), "train", "'/train/y'", "integer")


@pytest.mark.parametrize("labels, bad_row, fragment", [
    ([[1, 2, 10], [1, -1, -1]], 0, "outside [-1, 10)"),
    ([[1, 2, 3], [1, -2, -1]], 1, "outside [-1, 10)"),
    ([[1, 2, 3], [1, -1, 2]], 1, "after the -1 padding"),
    ([[1, 2, 3], [-1, -1, -1]], 1, "length 0"),
])
def test_bad_labels(tmp_path, labels, bad_row, fragment):
    y = np.array(labels, np.int64)
    path = write_words_file(tmp_path / "labels.h5", x=np.zeros(y.shape + (4, 4), np.uint8), y=y)
    expect_error(path, "train", "'/train/y'", fragment, f"row {bad_row}")
