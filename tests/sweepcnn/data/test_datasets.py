import json

import numpy as np
import pytest
import torch

from tests.helpers import write_class_folders
from sweepcnn.config import parse_args
from sweepcnn.data.datasets import channel_stats, load_data
from sweepcnn.options import DATA_OPTIONS
from sweepcnn.train.engine import class_weights
from sweepcnn.errors import UserError

DEFAULTS, _ = parse_args([], DATA_OPTIONS)


def _load(data, size=32, channels=3, **overrides):
    return load_data({**DEFAULTS, "data": str(data), **overrides}, size, channels, progress=False)


def _names(images):
    return set(images.names)


def test_inaturalist_layout_splits_train_and_uses_val_as_test(tmp_path):
    write_class_folders(tmp_path / "train", per_class=20)
    write_class_folders(tmp_path / "val", per_class=4)
    data = _load(tmp_path)
    assert data.classes == ["cat", "dog", "owl"]
    assert len(data.train) == 48 and len(data.val) == 12 and len(data.test) == 12
    assert all(n.startswith("val/") for n in data.test.names)
    assert all(n.startswith("train/") for n in data.train.names + data.val.names)
    assert not _names(data.train) & _names(data.val)
    # stratified: 4 validation images of each class
    assert np.bincount(data.val.labels).tolist() == [4, 4, 4]
    assert data.train.pixels.shape[1:] == (3, 32, 32) and data.train.pixels.dtype == np.uint8


def test_train_val_test_layout_is_used_as_given(tmp_path):
    for split, n in (("train", 6), ("val", 3), ("test", 2)):
        write_class_folders(tmp_path / split, per_class=n)
    data = _load(tmp_path)
    assert (len(data.train), len(data.val), len(data.test)) == (18, 9, 6)
    assert all(n.startswith("test/") for n in data.test.names)


def test_class_folders_only_split_80_10_10_stratified_and_reproducible(tmp_path):
    write_class_folders(tmp_path, per_class=20)
    a, b = _load(tmp_path, split_seed=3), _load(tmp_path, split_seed=3)
    assert (len(a.train), len(a.val), len(a.test)) == (48, 6, 6)
    assert np.bincount(a.test.labels).tolist() == [2, 2, 2]
    assert a.train.names == b.train.names and a.test.names == b.test.names
    parts = [_names(a.train), _names(a.val), _names(a.test)]
    assert sum(map(len, parts)) == len(set.union(*parts)) == 60  # no image in two splits, none lost
    c = _load(tmp_path, split_seed=4)
    assert c.test.names != a.test.names


@pytest.mark.parametrize("per_class", [3, 5, 8])
def test_small_classes_still_get_every_class_in_every_split(tmp_path, per_class):
    write_class_folders(tmp_path, per_class=per_class)
    data = _load(tmp_path)
    for part in (data.train, data.val, data.test):
        assert np.bincount(part.labels, minlength=3).min() >= 1
    assert len(data.train) + len(data.val) + len(data.test) == 3 * per_class


def test_pixels_match_labels(tmp_path):
    write_class_folders(tmp_path, classes=("a_red", "b_green", "c_blue"), per_class=10)
    data = _load(tmp_path)
    for images in (data.train, data.val, data.test):
        for i in range(len(images)):
            image, label = images[i]
            assert int(image.float().mean(dim=(1, 2)).argmax()) == label  # the tint's channel is the class


def test_hidden_and_non_image_files_are_ignored(tmp_path):
    write_class_folders(tmp_path, per_class=10)
    (tmp_path / "cat" / ".hidden.jpg").write_bytes(b"junk")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / "dog" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "dog" / ".ipynb_checkpoints" / "x.jpg").write_bytes(b"junk")
    data = _load(tmp_path)
    assert data.classes == ["cat", "dog", "owl"] and data.skipped == []
    assert len(data.train) + len(data.val) + len(data.test) == 30


def test_bad_files_are_skipped_and_reported_or_fatal_with_strict(tmp_path, capsys):
    write_class_folders(tmp_path, per_class=10)
    (tmp_path / "cat" / "empty.jpg").write_bytes(b"")
    (tmp_path / "dog" / "page.jpg").write_text("<html>not a photo</html>")
    data = _load(tmp_path)
    assert sorted(f for f, _ in data.skipped) == ["cat/empty.jpg", "dog/page.jpg"]
    assert len(data.train) + len(data.val) + len(data.test) == 30
    err = capsys.readouterr().err
    assert "skipped 2 unreadable" in err and "cat/empty.jpg" in err and "dog/page.jpg" in err
    record = data.split_record(0)
    assert {s["file"] for s in record["skipped"]} == {"cat/empty.jpg", "dog/page.jpg"}
    with pytest.raises(UserError, match="--strict: 2 unreadable"):
        _load(tmp_path, strict=True)


@pytest.mark.parametrize("make, fragment", [
    (lambda root: None, "is not a folder"),
    (lambda root: write_class_folders(root, classes=("only",), per_class=3), "at least two are needed"),
    (lambda root: (write_class_folders(root), (root / "empty").mkdir()), "has no image files"),
    (lambda root: (write_class_folders(root / "train"), write_class_folders(root / "val", classes=("cat", "dog"))),
     "class 'owl' is missing from"),
    (lambda root: write_class_folders(root / "train"), "has train/ but no val/"),
    (lambda root: write_class_folders(root, per_class=2), "a stratified split needs at least 3"),
])
def test_bad_layouts_give_one_line_errors(tmp_path, make, fragment):
    root = tmp_path / "data"
    if make(root) is None and not root.exists() and fragment != "is not a folder":
        pytest.fail("fixture did not create data")
    with pytest.raises(UserError) as err:
        _load(root)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_class_whose_images_are_all_unreadable_is_an_error(tmp_path):
    write_class_folders(tmp_path, per_class=5)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.jpg").write_bytes(b"x")
    with pytest.raises(UserError, match="class 'bad' .* has no readable images"):
        _load(tmp_path)


def test_max_images_per_class(tmp_path):
    write_class_folders(tmp_path, per_class=20)
    data = _load(tmp_path, max_images_per_class=10)
    assert len(data.train) + len(data.val) + len(data.test) == 30


def test_digits_builtin_is_real_and_split():
    data = load_data({**DEFAULTS, "data": "digits"}, 32, 1, progress=False)
    assert data.classes == [str(i) for i in range(10)]
    assert len(data.train) + len(data.val) + len(data.test) == 1797
    assert abs(len(data.test) - 180) <= 1 and data.train.pixels.shape[1:] == (1, 32, 32)
    assert not _names(data.train) & _names(data.test)
    three = load_data({**DEFAULTS, "data": "digits"}, 32, 3, progress=False)
    image, _ = three.train[0]
    assert image.shape == (3, 32, 32) and torch.equal(image[0], image[2])


def test_channel_stats_and_class_weights(tmp_path):
    write_class_folders(tmp_path, classes=("red", "green"), per_class=10)
    data = _load(tmp_path)
    mean, std = channel_stats(data.train)
    pixels = torch.from_numpy(np.asarray(data.train.pixels[data.train.rows])).double() / 255
    assert mean == pytest.approx(pixels.mean(dim=(0, 2, 3)).tolist(), abs=1e-6)
    assert std == pytest.approx(pixels.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-5)
    weights = class_weights(np.array([0, 0, 0, 1]), 2)
    assert weights.tolist() == pytest.approx([4 / 6, 2.0])


def test_split_record_is_json(tmp_path):
    write_class_folders(tmp_path, per_class=10)
    record = _load(tmp_path).split_record(0)
    json.dumps(record)
    assert set(record) >= {"train", "val", "test", "classes", "skipped", "split_seed"}


def test_broken_symlink_is_skipped_and_reported(tmp_path):
    write_class_folders(tmp_path, per_class=10)
    (tmp_path / "owl" / "link.jpg").symlink_to(tmp_path / "nowhere.jpg")
    data = _load(tmp_path)
    assert data.skipped == [("owl/link.jpg", "cannot read file: No such file or directory")]


def test_digits_honours_max_images_per_class_and_notes_the_fixed_split(capsys):
    data = load_data({**DEFAULTS, "data": "digits", "max_images_per_class": 10}, 16, 1, progress=False)
    assert (len(data.train), len(data.val), len(data.test)) == (80, 10, 10)
    assert np.bincount(np.concatenate([data.train.labels, data.val.labels, data.test.labels])).tolist() == [10] * 10
    assert capsys.readouterr().err == ""
    load_data({**DEFAULTS, "data": "digits", "val_fraction": 0.3}, 16, 1, progress=False)
    assert "note: --val_fraction=0.3 is ignored" in capsys.readouterr().err


def test_a_split_folder_that_lacks_a_class_names_the_class_and_the_folder(tmp_path):
    write_class_folders(tmp_path / "train", classes=("cat", "dog"), per_class=5)
    write_class_folders(tmp_path / "val", classes=("cat",), per_class=2)
    with pytest.raises(UserError, match=f"class 'dog' is missing from {tmp_path / 'val'}:"):
        _load(tmp_path)  # before: "val has 1 class folder(s)"
