"""npgrad.data.datasets: where datasets are found, verified downloads, validation, families."""

import hashlib

import numpy as np
import pytest

from npgrad.data import (
    FASHION_MNIST,
    MNIST,
    Dataset,
    datasets,
    digits,
    download_file,
    fetch,
    load_dataset,
    write_idx,
)
from npgrad.errors import DatasetContentError, DatasetError, DownloadError
from tests.data.helpers import (
    FASHION_DIR,
    run_python,
    spec_10k,
    with_official_test_set,
    write_dataset,
)

needs_fashion = pytest.mark.skipif(
    not FASHION_DIR.is_dir(), reason="Debian's dataset-fashion-mnist not installed"
)


def no_partials(directory):
    return not directory.exists() or not [p for p in directory.iterdir() if ".part" in p.name]


# ----------------------------------------------------------------- downloads (local server only)


def test_download_tries_mirrors_in_order_and_verifies(mirror, shared_data, tmp_path, monkeypatch):
    base, requests = mirror
    monkeypatch.setitem(datasets.DATASETS, "mnist10k", spec_10k(shared_data))
    logs = []
    mirrors = [f"{base}/missing/mnist-10k", f"{base}/corrupt/mnist-10k", f"{base}/good/mnist-10k"]
    cache = tmp_path / "cache"
    fetch("mnist10k", mirrors=mirrors, cache=cache, log=logs.append, progress=False)
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{s}.gz" for s in datasets.FILES)
    assert any("404" in m or "Not Found" in m for m in logs)
    assert any("corrupt download" in m for m in logs)
    assert no_partials(cache)
    # Cached: the next load needs no network at all.
    n_requests = len(requests)
    monkeypatch.setenv("NPGRAD_DATA", str(tmp_path))
    cache.rename(tmp_path / "mnist10k")
    ds = load_dataset("mnist10k", mirrors=["http://127.0.0.1:9/"])
    assert len(requests) == n_requests
    assert len(ds.train_labels) == 10000 and ds.source.startswith("npgrad cache")


def test_real_mnist_file_downloads_with_official_checksum(mirror, tmp_path):
    base, _ = mirror
    spec = MNIST.files[3]  # t10k-labels, byte-identical to the official file
    path = download_file(spec, tmp_path, [f"{base}/good/mnist"], progress=False, log=lambda m: None)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == spec.sha256


def test_failures_leave_nothing_partial_and_are_named_in_one_line(mirror, tmp_path):
    base, _ = mirror
    logs = []
    mirrors = [f"{base}/missing/mnist", f"{base}/truncate/mnist", f"{base}/corrupt/mnist"]
    with pytest.raises(DownloadError) as info:
        download_file(MNIST.files[3], tmp_path, mirrors, log=logs.append)
    assert logs == [] and not list(tmp_path.iterdir())  # told once, in the error
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("could not download t10k-labels-idx1-ubyte.gz: ")
    assert [m for m, _ in info.value.failures] == mirrors
    assert "corrupt download" in message and message.count("failed (") == 3


def test_mirrors_failing_alike_are_named_once(mirror, tmp_path):
    base, _ = mirror
    mirrors = [f"{base}/missing/mnist", f"{base}/missing/again"]
    with pytest.raises(DownloadError) as info:
        download_file(MNIST.files[3], tmp_path, mirrors, log=print)
    host = base.split("//")[1]
    assert str(info.value).count(" failed (") == 1 and f"{host}, {host} failed (" in str(info.value)


def test_a_mirror_that_works_after_others_failed_names_them_in_one_line(mirror, tmp_path):
    base, _ = mirror
    logs = []
    mirrors = [f"{base}/missing/mnist", f"{base}/good/mnist"]
    download_file(MNIST.files[3], tmp_path, mirrors, progress=False, log=logs.append)
    assert len(logs) == 1 and f"from {base}/good/mnist; " in logs[0] and "failed (" in logs[0]


def test_a_fetch_that_gets_nothing_leaves_no_cache_folder(mirror, tmp_path):
    base, _ = mirror
    target = tmp_path / "cache" / "mnist"
    with pytest.raises(DownloadError):
        fetch("mnist", mirrors=[f"{base}/missing/mnist"], cache=target, log=lambda m: None)
    assert not target.exists() and (tmp_path / "cache").exists()
    target.mkdir()  # a folder the user already had stays, empty or not
    with pytest.raises(DownloadError):
        fetch("mnist", mirrors=[f"{base}/missing/mnist"], cache=target, log=lambda m: None)
    assert target.is_dir()


def test_interrupted_download_leaves_nothing(mirror, tmp_path, monkeypatch):
    base, _ = mirror

    def interrupted(mirror, spec, out, timeout, progress):
        out.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(datasets, "_copy_hashing", interrupted)
    with pytest.raises(KeyboardInterrupt):
        download_file(MNIST.files[3], tmp_path, [f"{base}/good/mnist"], log=lambda m: None)
    assert not list(tmp_path.iterdir())


def test_local_directory_as_mirror(shared_data, tmp_path):
    path = download_file(MNIST.files[2], tmp_path, [str(shared_data / "mnist")], log=print)
    assert path.stat().st_size == MNIST.files[2].size


def test_offline_message_is_one_line_saying_what_to_do():
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist")
    msg = str(info.value)
    assert "\n" not in msg and len(msg) <= 240  # the CLI prints up to 240 characters as one line
    assert msg.startswith("mnist is not on this machine and every mirror failed (")
    assert "--dataset digits, which works offline" in msg and "npgrad data list" in msg


@pytest.mark.parametrize(
    "name, match",
    [
        ("cifar", "unknown dataset 'cifar'"),
        ("/no/such/dir", "no such directory"),
        ("{file}", "is a file; give the directory holding the four IDX files"),
        ("{empty}", "missing train-images-idx3-ubyte.gz"),
    ],
)
def test_unknown_dataset_missing_directory_and_file(tmp_path, name, match):
    (tmp_path / "file.gz").write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    name = name.format(file=tmp_path / "file.gz", empty=tmp_path / "empty")
    with pytest.raises(DatasetError, match=match):
        load_dataset(name)


def test_fetch_refuses_what_it_cannot_download():
    with pytest.raises(DatasetError, match="'cifar' cannot be downloaded: known are mnist"):
        fetch("cifar")
    with pytest.raises(DatasetError, match="embedded in npgrad: nothing to download"):
        fetch("digits")


def test_fetch_into_a_path_that_cannot_be_a_directory(tmp_path):
    (tmp_path / "file").write_text("x")
    target = tmp_path / "file" / "cache"
    with pytest.raises(DatasetError) as info:
        fetch("mnist", cache=target, mirrors=["http://127.0.0.1:9/"])
    msg = str(info.value)
    assert f"cannot write to {target} (Not a directory)" in msg and "\n" not in msg
    assert "--cache DIR" in msg and "$NPGRAD_DATA" in msg


def test_read_only_cache_is_refused_before_any_download(unprivileged, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o555)
    code = (
        "import sys\nfrom npgrad.data import fetch\nfrom npgrad.errors import DatasetError\n"
        "try:\n    fetch('mnist', cache=sys.argv[1], log=print)\n"
        "except DatasetError as exc:\n    print('REFUSED', exc)\n"
    )
    rc, out, err = run_python(unprivileged, code, cache)
    assert rc == 0, err
    assert out.startswith(f"REFUSED cannot write to {cache}"), out
    assert "Permission denied" in out and "--cache DIR" in out and "$NPGRAD_DATA" in out
    assert "127.0.0.1" not in out  # refused before trying any mirror


def test_unreadable_dataset_directory(unprivileged, tmp_path, shared_data):
    locked = write_dataset(tmp_path / "locked")
    locked.chmod(0o000)
    inner = tmp_path / "locked" / "inner"
    code = (
        "import sys\nfrom npgrad.data import load_dataset\nfrom npgrad.errors import DatasetError\n"
        "for name in sys.argv[1:]:\n    try:\n        load_dataset(name)\n"
        "    except DatasetError as exc:\n        print(exc)\n"
    )
    try:
        rc, out, err = run_python(unprivileged, code, locked, inner)
    finally:
        locked.chmod(0o755)
    assert rc == 0 and "Traceback" not in err, err
    lines = out.splitlines()
    assert len(lines) == 2, out
    assert all("permission denied" in line for line in lines)
    assert str(locked) in lines[0] and str(locked) in lines[1]


# ----------------------------------------------------------------- local copies


def test_mnist_10k_split_as_a_directory(shared_data):
    ds = load_dataset(str(shared_data / "mnist-10k"))
    assert ds.train_images.shape == (10000, 28, 28) and len(ds.test_labels) == 10000
    assert np.bincount(ds.train_labels).tolist() == [1001, 1127, 991, 1032, 980, 863, 1014, 1070,
                                                     944, 978]  # fmt: skip
    assert ds.name == "mnist-10k" and ds.family == "mnist" and ds.classes == MNIST.classes
    assert ds.train_labels.dtype == np.int64 and ds.files[1].endswith("train-labels-idx1-ubyte.gz")


def test_cache_copy_is_verified(shared_data, tmp_path, monkeypatch):
    # A cache holding the 10k split under the name "mnist" is *not* the official MNIST.
    monkeypatch.setenv("NPGRAD_DATA", str(tmp_path))
    (tmp_path / "mnist").mkdir()
    for f in (shared_data / "mnist-10k").iterdir():
        (tmp_path / "mnist" / f.name).write_bytes(f.read_bytes())
    ds, attempts = datasets.locate("mnist")
    assert ds is None
    assert any("differs from the official" in a.result for a in attempts)


def test_keras_npz_is_read_without_pickle(tmp_path, monkeypatch):
    keras = tmp_path / ".keras" / "datasets"
    keras.mkdir(parents=True)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / ".keras"))
    rng = np.random.default_rng(0)
    np.savez(keras / "mnist.npz", x_train=rng.integers(0, 255, (5, 28, 28), dtype=np.uint8),
             y_train=np.arange(5), x_test=np.zeros((2, 28, 28), np.uint8), y_test=np.arange(2))  # fmt: skip
    monkeypatch.setitem(datasets.DATASETS, "mnist", datasets.DatasetSpec(
        "mnist", MNIST.files, (), keras_npz="mnist.npz", keras_npz_sha256=None))  # fmt: skip
    ds, _ = datasets.locate("mnist")
    assert ds is not None and ds.source.startswith("keras") and len(ds.train_labels) == 5
    assert ds.family is None  # not the official test set
    obj = np.array([{"a": 1}], dtype=object)
    np.savez(keras / "mnist.npz", x_train=obj, y_train=obj, x_test=obj, y_test=obj)
    ds, attempts = datasets.locate("mnist")
    assert ds is None and any("not a readable Keras dataset" in a.result for a in attempts)
    np.savez(keras / "mnist.npz", x_train=np.zeros((3, 4, 4)), y_train=np.array([0.0, 1.5, 2.0]),
             x_test=np.zeros((1, 4, 4)), y_test=np.array([0.0]))  # fmt: skip
    ds, attempts = datasets.locate("mnist")
    assert ds is None and any("labels must be integers, got float64" in a.result for a in attempts)


def test_torchvision_raw_directory(shared_data, tmp_path, monkeypatch):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (shared_data / "mnist").iterdir():  # no train images: incomplete
        (raw / f.name).write_bytes(f.read_bytes())
    monkeypatch.setenv("TORCHVISION_DATA", str(tmp_path))
    ds, attempts = datasets.locate("mnist")
    assert ds is None and any("does not hold all four" in a.result for a in attempts)


@needs_fashion
def test_debian_fashion_mnist_verified_by_content():
    ds = load_dataset("fashion-mnist", download=False)
    assert ds.source.startswith("system package")
    assert ds.train_images.shape == (60000, 28, 28) and len(ds.test_labels) == 10000
    assert np.bincount(ds.train_labels).tolist() == [6000] * 10
    assert ds.classes[9] == "Ankle boot" and ds.family == "fashion-mnist"


def test_embedded_digits():
    ds = digits()
    assert ds.train_images.shape == (1437, 8, 8) and ds.test_images.shape == (360, 8, 8)
    assert ds.pixel_max == 16 and ds.train_images.max() == 16
    assert set(np.unique(ds.test_labels)) == set(range(10))
    assert load_dataset("digits").name == "digits" and ds.family == "digits"


# ----------------------------------------------------------------- families: by content


@needs_fashion
def test_fashion_mnist_given_as_a_directory_is_fashion_mnist():
    ds = load_dataset(str(FASHION_DIR))
    assert ds.family == "fashion-mnist" and ds.name == "fashion-mnist"
    assert ds.classes == FASHION_MNIST.classes and ds.source == str(FASHION_DIR)


def test_family_follows_the_test_set_not_the_name(shared_data, tmp_path):
    official = with_official_test_set(tmp_path / "whatever", shared_data / "mnist")
    ds = load_dataset(str(official))
    assert ds.family == "mnist" and ds.name == "whatever" and ds.num_classes == 10
    # the official test labels with other test images: not MNIST
    other = tmp_path / "other"
    other.mkdir()
    write_idx(other / "train-images-idx3-ubyte.gz", np.zeros((10, 28, 28), np.uint8))
    write_idx(other / "train-labels-idx1-ubyte.gz", np.arange(10, dtype=np.uint8))
    write_idx(other / "t10k-images-idx3-ubyte.gz", np.zeros((10000, 28, 28), np.uint8))
    (other / "t10k-labels-idx1-ubyte.gz").symlink_to(
        shared_data / "mnist" / "t10k-labels-idx1-ubyte.gz"
    )
    ds = load_dataset(str(other))
    assert ds.family is None and ds.classes == tuple(str(i) for i in range(10))
    assert load_dataset(str(write_dataset(tmp_path / "mine"))).family is None


# ----------------------------------------------------------------- well-formed but wrong


def labels(*values, dtype=np.uint8):
    return np.array(values, dtype=dtype)


def images(n, h=3, w=3):
    return np.zeros((n, h, w), np.uint8)


@pytest.mark.parametrize(
    "arrays, file, match",
    [
        ({"train_labels": labels(0, 1, 2, 0, 255, 2)}, "train-labels",
         "label 255 at index 4 would make 256 classes, but only 4 of them occur"),
        ({"train_labels": labels(0, 1, 2, 0, 2_000_000_000, 2, dtype=np.int32)}, "train-labels",
         "label 2000000000 at index 4 would make more than 1000 classes"),
        ({"train_labels": labels(0, 1, -1, 0, 1, 2, dtype=np.int8)}, "train-labels",
         r"label -1 at index 2 is negative; class labels count from 0"),
        ({"train_labels": labels(0, 1, 2, 0, 1, 2, dtype=np.float32)}, "train-labels",
         "labels must be integers, got float32"),
        ({"test_labels": labels(2, 1, 7, 3)}, "t10k-labels",
         r"label 7 at index 2 is outside the 3 classes \(0..2\)"),
        ({"train": images(0), "train_labels": labels()}, "train-labels",
         r"the training split is empty \(0 examples\)"),
        ({"test": images(0), "test_labels": labels()}, "t10k-labels",
         r"the test split is empty \(0 examples\)"),
        ({"test": images(4, 4, 3)}, "train-images",
         "holds 3x3 images but .*t10k-images.* holds 4x3 images: train and test must have one"),
        ({"train": images(5)}, "train-images", "holds 5 images but .* holds 6 labels"),
        ({"train": images(6, 0, 3), "test": images(4, 0, 3)}, "train-images",
         "images of 0x3 pixels are empty"),
        ({"train": np.full((6, 3, 3), 0.5, np.float32), "test": np.full((4, 3, 3), 1.0, np.float32)},
         "train-images", r"float pixels all within 0..1 \(both splits\), but IDX pixels are read"),
    ],
)  # fmt: skip
def test_well_formed_but_wrong_data_is_refused(tmp_path, arrays, file, match):
    directory = write_dataset(tmp_path / "d", **arrays)
    with pytest.raises(DatasetContentError, match=match) as info:
        load_dataset(str(directory))
    assert str(directory / file) in str(info.value)


def test_a_corrupt_label_in_a_recognised_dataset(shared_data, tmp_path):
    # The 10k split's test set is MNIST's: ten classes, so a label byte of 255 cannot be a class.
    bad = (np.arange(20) % 10).astype(np.uint8)
    bad[13] = 255
    directory = with_official_test_set(tmp_path / "d", shared_data / "mnist", bad)
    with pytest.raises(DatasetContentError) as info:
        load_dataset(str(directory))
    assert str(info.value) == (
        f"{directory / 'train-labels-idx1-ubyte.gz'}: label 255 at index 13 is outside "
        "the 10 classes (0..9)"
    )


def test_num_classes_can_be_stated(tmp_path):
    directory = write_dataset(tmp_path / "d", train_labels=labels(0, 1, 2, 0, 255, 2))
    ds = load_dataset(str(directory), num_classes=256)
    assert ds.num_classes == 256 and ds.family is None
    with pytest.raises(DatasetContentError, match="label 255 at index 4 is outside the 100"):
        load_dataset(str(directory), num_classes=100)


def test_class_count_is_the_highest_training_label_plus_one(tmp_path):
    ds = load_dataset(str(write_dataset(tmp_path / "d", train_labels=labels(0, 1, 4, 0, 1, 4),
                                        test_labels=labels(0, 0, 0, 0))))  # fmt: skip
    assert ds.classes == ("0", "1", "2", "3", "4")
    ds = load_dataset(str(write_dataset(tmp_path / "e", train_labels=labels(0, 0, 0, 0, 0, 0),
                                        test_labels=labels(0, 0, 0, 0))))  # fmt: skip
    assert ds.num_classes == 2  # a classifier needs two


@pytest.mark.parametrize(
    "change, match",
    [
        ({"train_images": np.full((2, 2, 2), np.nan, np.float32)}, "training images: pixel nan"),
        ({"test_images": np.full((1, 2, 2), 17, np.uint8)}, "test images: pixel value 17 .* 0..16"),
        ({"train_images": np.zeros((2, 4))}, r"must be 3-D .* got shape \(2, 4\)"),
        ({"train_labels": np.zeros((2, 1), np.int64)}, "labels must be 1-D"),
        ({"test_labels": np.array([0], np.uint64) + 10}, "test labels: label 10 at index 0"),
        ({"train_images": np.full((2, 2, 2), "a")}, "pixels must be numbers"),
    ],
)
def test_datasets_built_in_python_are_validated_too(change, match):
    fields = dict(name="mine", train_images=np.zeros((2, 2, 2), np.uint8),
                  train_labels=np.array([0, 1]), test_images=np.zeros((1, 2, 2), np.uint8),
                  test_labels=np.array([1]), source="test", pixel_max=16.0)  # fmt: skip
    with pytest.raises(DatasetContentError, match=match):
        Dataset(**{**fields, **change})
    assert Dataset(**fields).num_classes == 10


def test_check_labels_for_callers_with_their_own_class_count():
    datasets.check_labels(np.array([0, 9]), 10, "evaluation set")
    with pytest.raises(DatasetContentError, match="evaluation set: label 10 at index 1"):
        datasets.check_labels(np.array([0, 10]), 10, "evaluation set")


def test_unreadable_file_inside_a_dataset(tmp_path):
    directory = write_dataset(tmp_path / "d")
    (directory / "t10k-labels-idx1-ubyte.gz").unlink()
    (directory / "t10k-labels-idx1-ubyte.gz").mkdir()  # a directory where a file should be
    with pytest.raises(DatasetError, match="missing t10k-labels"):
        load_dataset(str(directory))


def test_a_dark_float_split_on_the_0_255_scale_is_data_not_a_mistake(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.uniform(0, 200, (6, 3, 3)).astype(np.float32)
    test = rng.uniform(0, 0.9, (4, 3, 3)).astype(np.float32)  # dark, but 0..255
    ds = load_dataset(str(write_dataset(tmp_path / "d", train=train, test=test)))
    assert ds.test_images.max() < 1
