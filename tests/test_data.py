"""Tests for keras_contrastive.data."""

import gzip
import os
import re
import socket

import numpy as np
import pytest
import tensorflow as tf

from keras_contrastive import data
from keras_contrastive import fashion_mnist as kc_fashion_mnist

FASHION_DIR = kc_fashion_mnist.DEFAULT_FASHION_MNIST_DIR
HAS_FASHION = os.path.isfile(os.path.join(FASHION_DIR, "train-images-idx3-ubyte.gz"))


@pytest.fixture
def fashion_files():
    # Fails, not skips: CI and the README's test command install the package (issue 15).
    if not HAS_FASHION:
        pytest.fail(f"Fashion-MNIST idx files missing in {FASHION_DIR}: run `apt-get install dataset-fashion-mnist`")


needs_fashion = pytest.mark.usefixtures("fashion_files")


def _read_idx_gz(path, header_size):
    """Independent idx reader: skip the header, trust the known layout."""
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=header_size)


def _write_idx(path, array, compress=True):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    content = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(content)
    else:
        with open(path, "wb") as f:
            f.write(content)


@pytest.fixture
def no_network(monkeypatch):
    """Makes any Python-level network access fail at once (hermetic tests)."""

    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    # tfds retries a failed download 10 times with exponential backoff (about 3.5 minutes).
    from tensorflow_datasets.core.download import downloader

    monkeypatch.setattr(downloader, "MAX_RETRIES", 0)


# ---------------------------------------------------------------------------
# Fashion-MNIST from the Debian idx files.


@needs_fashion
def test_fashion_mnist_split_sizes_and_spec():
    train = data.load("fashion_mnist")
    test = data.load("fashion_mnist", "test")
    assert int(train.cardinality()) == 60000
    assert int(test.cardinality()) == 10000
    image_spec, label_spec = train.element_spec
    assert image_spec.shape == (28, 28, 1) and image_spec.dtype == tf.uint8
    assert label_spec.shape == () and label_spec.dtype == tf.int32


@needs_fashion
def test_fashion_mnist_matches_independent_decoding():
    images = _read_idx_gz(os.path.join(FASHION_DIR, "t10k-images-idx3-ubyte.gz"), 16).reshape(10000, 28, 28)
    labels = _read_idx_gz(os.path.join(FASHION_DIR, "t10k-labels-idx1-ubyte.gz"), 8)

    image, label = next(iter(data.load("fashion_mnist", "test")))
    np.testing.assert_array_equal(image.numpy()[..., 0], images[0])
    assert int(label) == labels[0]

    x, y = data.load_arrays("fashion_mnist", "test")
    assert x.shape == (10000, 28, 28, 1) and x.dtype == np.uint8
    assert y.dtype == np.int32
    np.testing.assert_array_equal(x[..., 0], images)
    np.testing.assert_array_equal(y, labels)
    assert set(np.unique(y)) == set(range(10))


@pytest.mark.slow
@needs_fashion
def test_fashion_mnist_train_first_image_and_labels():
    first = _read_idx_gz(os.path.join(FASHION_DIR, "train-images-idx3-ubyte.gz"), 16)[: 28 * 28].reshape(28, 28)
    x, y = data.load_arrays("fashion_mnist", "train[:512]")
    assert x.shape == (512, 28, 28, 1) and y.shape == (512,)
    np.testing.assert_array_equal(x[0, ..., 0], first)
    assert y.min() >= 0 and y.max() <= 9
    # The tf.data path and the numpy fast path agree.
    ds = data.load("fashion_mnist", "train[:512]")
    assert int(ds.cardinality()) == 512
    # image_size=28 is a no-op that forces the tf.data path.
    x_ds, y_ds = data.load_arrays("fashion_mnist", "train[:512]", image_size=28)
    np.testing.assert_array_equal(x_ds, x)
    np.testing.assert_array_equal(y_ds, y)


@needs_fashion
def test_fashion_mnist_split_slicing():
    x_all, y_all = data.load_arrays("fashion_mnist", "test")
    x, y = data.load_arrays("fashion_mnist", "test[:10%]")
    assert len(x) == 1000
    x[0, 0, 0, 0] = 1  # writable, although read from a buffer
    x, y = data.load_arrays("fashion_mnist", "test[-100:]")
    np.testing.assert_array_equal(x, x_all[-100:])
    np.testing.assert_array_equal(y, y_all[-100:])
    x, y = data.load_arrays("fashion_mnist", "test[10%:20%]")
    np.testing.assert_array_equal(y, y_all[1000:2000])
    x, y = data.load_arrays("fashion_mnist", "test", labels=False)
    assert y is None
    assert data.load("fashion_mnist", "test", labels=False).element_spec.shape == (
        28,
        28,
        1,
    )


@needs_fashion
def test_fashion_mnist_pad_to_32_rgb():
    x, _ = data.load_arrays("fashion_mnist", "train[:8]")
    padded, _ = data.load_arrays("fashion_mnist", "train[:8]", image_size=32, channels=3)
    assert padded.shape == (8, 32, 32, 3) and padded.dtype == np.uint8
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert np.all(padded[:, border] == 0)
    for c in range(3):
        np.testing.assert_array_equal(padded[:, 2:30, 2:30, c], x[..., 0])


@pytest.mark.parametrize("split", ["validation", "train[:abc]", "train[5:5]", "train[:70000]", "test[:200%]"])
@needs_fashion
def test_fashion_mnist_bad_split(split):
    with pytest.raises(ValueError, match=f"(?i)split {re.escape(repr(split))}"):
        data.load("fashion_mnist", split)


def test_fashion_mnist_from_env_dir(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    # Uncompressed files are accepted too.
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", images[:2], compress=False)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels[:2], compress=False)
    monkeypatch.setenv(kc_fashion_mnist.FASHION_MNIST_DIR_ENV, str(tmp_path))

    x, y = data.load_arrays("fashion_mnist")
    np.testing.assert_array_equal(x[..., 0], images)
    np.testing.assert_array_equal(y, labels)
    elements = list(data.load("fashion_mnist", "test").as_numpy_iterator())
    assert len(elements) == 2
    np.testing.assert_array_equal(elements[1][0][..., 0], images[1])
    assert elements[1][1] == 1


def test_fashion_mnist_corrupt_idx(tmp_path):
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((5, 28, 28)))
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros((4,)))
    with pytest.raises(ValueError, match="5 images but .* 4 labels"):
        data.load("fashion_mnist", data_dir=tmp_path)
    with gzip.open(tmp_path / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x0d\x01\x00\x00\x00\x05" + bytes(20))
    with pytest.raises(ValueError, match="not an idx file"):
        data.load("fashion_mnist", data_dir=tmp_path)


def test_fashion_mnist_missing_everywhere(tmp_path, no_network):
    # No idx files in tmp_path, and tfds has nothing prepared there and
    # cannot download: the error says how to install the data.
    with pytest.raises(FileNotFoundError) as info:
        data.load("fashion_mnist", data_dir=str(tmp_path))
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert str(tmp_path) in message


# ---------------------------------------------------------------------------
# Numpy arrays.


def test_arrays_round_trip():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    y = np.array([0, 1, 2, 0, 1, 2], np.int64)
    ds = data.load((x, y))
    assert ds.element_spec[0].shape == (5, 4, 1)
    images, labels = zip(*ds.as_numpy_iterator())
    np.testing.assert_array_equal(np.stack(images)[..., 0], x)
    np.testing.assert_array_equal(labels, y)
    assert np.stack(labels).dtype == np.int32

    x_rgb = rng.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    x_out, y_out = data.load_arrays(x_rgb)
    np.testing.assert_array_equal(x_out, x_rgb)
    assert y_out is None
    x_out, y_out = data.load_arrays((x, y), "train[2:4]", labels=False)
    np.testing.assert_array_equal(x_out[..., 0], x[2:4])
    assert y_out is None


def test_arrays_float_to_uint8():
    x = np.array([0.0, 0.5, 1.0, 0.1, 0.002], np.float32).reshape(1, 1, 5)
    out, _ = data.load_arrays(x)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out.ravel(), [0, 128, 255, 26, 1])


@pytest.mark.parametrize(
    "source, match",
    [
        (np.zeros((4, 4), np.uint8), r"shape \[N, H, W\].*\(4, 4\)"),
        (np.full((2, 3, 3), np.nan, np.float32), "NaN or infinite"),
        (np.full((2, 3, 3), np.inf, np.float64), "NaN or infinite"),
        (np.full((2, 3, 3), 2.0, np.float32), r"max 2.*divide by\s+255"),
        (np.full((2, 3, 3), -0.5, np.float32), "min -0.5"),
        (np.full((2, 3, 3), "a"), "uint8 or float.*dtype <U1"),
        (np.zeros((2, 3, 3), np.int64), "dtype int64"),
        (np.zeros((2, 3, 8, 8), np.uint8), "channels-first"),
        (np.zeros((0, 3, 3), np.uint8), "no images"),
        ((np.zeros((3, 4, 4), np.uint8), np.arange(2)), "3 images but 2 labels"),
        ((np.zeros((2, 4, 4), np.uint8), np.array([0.0, 1.0])), "integers"),
        ((np.zeros((2, 4, 4), np.uint8), np.zeros((2, 3), int)), r"shape \[N\]"),
        ((np.zeros((2, 4, 4), np.uint8), np.arange(2), 1), "length 3"),
        ([[1, 2]], "numpy array"),
    ],
)
def test_arrays_invalid(source, match):
    with pytest.raises(ValueError, match=match):
        data.load(source)


def test_bad_options():
    x = np.zeros((2, 4, 4), np.uint8)
    with pytest.raises(ValueError, match="image_size"):
        data.load(x, image_size=(0, 4))
    with pytest.raises(ValueError, match="channels"):
        data.load(x, channels=2)
    with pytest.raises(ValueError, match="4-channel"):
        data.load(np.zeros((2, 4, 4, 4), np.uint8), channels=1)
    with pytest.raises(ValueError, match="split"):
        data.load(x, "test")
    with pytest.raises(ValueError, match="Unknown keyword"):
        data.load_arrays(x, image_sizes=3)


def test_resize_larger_and_grayscale():
    x = np.zeros((2, 64, 48, 3), np.uint8)
    x[0] = (10, 20, 30)
    x[1] = 200
    out, _ = data.load_arrays(x, image_size=(32, 16), channels=1)
    assert out.shape == (2, 32, 16, 1) and out.dtype == np.uint8
    # Constant images stay constant; luma of (10, 20, 30) is 18.15 -> 18.
    assert np.all(out[0] == 18)
    assert np.all(out[1] == 200)
    # Mixed case (one side larger): resized, not padded.
    out, _ = data.load_arrays(x[:, :20], image_size=32)
    assert out.shape == (2, 32, 32, 3)
    assert np.all(out[1] == 200)


# ---------------------------------------------------------------------------
# Directories of images.


def _write_png(path, image):
    tf.io.write_file(str(path), tf.io.encode_png(image))


def test_directory_with_classes(tmp_path):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)
    layout = [
        ("class_b", "x.png"),
        ("class_a", "2.png"),
        ("class_a", "1.png"),
        ("class_b", "a.png"),
        ("class_c", "z.png"),
    ]
    for (folder, filename), image in zip(layout, images):
        (tmp_path / folder).mkdir(exist_ok=True)
        _write_png(tmp_path / folder / filename, image)

    ds = data.load(tmp_path)
    assert ds.element_spec[0].shape == (6, 7, 3)
    elements = list(ds.as_numpy_iterator())
    # Sorted folders -> labels 0..2, sorted files within each folder.
    expected = [
        (images[2], 0),
        (images[1], 0),
        (images[3], 1),
        (images[0], 1),
        (images[4], 2),
    ]
    assert len(elements) == len(expected)
    for (image, label), (want_image, want_label) in zip(elements, expected):
        assert image.dtype == np.uint8
        np.testing.assert_array_equal(image, want_image)
        assert label == want_label

    x, y = data.load_arrays(str(tmp_path), channels=1, image_size=8)
    assert x.shape == (5, 8, 8, 1)
    np.testing.assert_array_equal(y, [0, 0, 1, 1, 2])
    x, y = data.load_arrays(str(tmp_path), labels=False)
    assert y is None and x.shape == (5, 6, 7, 3)


def test_directory_flat_gray_and_rgba(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4, 1)
    _write_png(tmp_path / "a.png", gray)
    _write_png(tmp_path / "b.png", 255 - gray)
    ds = data.load(tmp_path)
    assert ds.element_spec.shape == (3, 4, 1)  # images only, no labels
    x, y = data.load_arrays(tmp_path)
    assert y is None
    np.testing.assert_array_equal(x, [gray, 255 - gray])

    rgba_dir = tmp_path / "rgba"
    rgba_dir.mkdir()
    rgba = np.full((2, 2, 4), 50, np.uint8)
    rgba[..., 3] = 7
    _write_png(rgba_dir / "r.png", rgba)
    x, _ = data.load_arrays(rgba_dir)
    np.testing.assert_array_equal(x, np.full((1, 2, 2, 3), 50, np.uint8))


def test_directory_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="No image files"):
        data.load(tmp_path)
    _write_png(tmp_path / "small.png", np.zeros((4, 4, 1), np.uint8))
    _write_png(tmp_path / "big.png", np.full((6, 6, 1), 9, np.uint8))
    with pytest.raises(ValueError, match="image_size"):
        data.load_arrays(tmp_path)
    x, _ = data.load_arrays(tmp_path, image_size=6)
    # big.png sorts first and keeps its size; small.png is zero-padded.
    np.testing.assert_array_equal(x[0], np.full((6, 6, 1), 9))
    assert x[1].sum() == 0 and x.shape == (2, 6, 6, 1)
    (tmp_path / "sub").mkdir()
    with pytest.raises(ValueError, match="both image files and sub-folders"):
        data.load(tmp_path)


def test_a_folder_on_another_tensorflow_file_system():
    """Folders are listed and read through tf.io.gfile, so gs:// buckets (TPU pods) work as local
    folders do; TensorFlow's in-memory ram:// file system stands in for one here."""
    root = "ram://kc_images"
    images = np.random.default_rng(1).integers(0, 256, (3, 5, 5, 3), dtype=np.uint8)
    for name, image in zip(["cat/1.png", "cat/sub/2.png", "dog/3.png"], images):
        tf.io.gfile.makedirs(root + "/" + name.rsplit("/", 1)[0])
        tf.io.write_file(f"{root}/{name}", tf.io.encode_png(image))
    tf.io.write_file(f"{root}/dog/notes.txt", "not an image")
    x, y = data.load_arrays(root)
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, [0, 0, 1])


def test_a_path_that_does_not_exist_is_named_not_sent_to_tfds(tmp_path):
    """`--dataset /nonexistent` used to print tfds' help on dataset-name syntax."""
    for name in ("/nonexistent", "./no_such_folder", str(tmp_path / "missing")):
        with pytest.raises(FileNotFoundError, match="No folder .* exists"):
            data.load(name)


def test_a_file_that_is_not_an_image_is_named(tmp_path):
    _write_png(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "b.jpg").write_bytes(b"this is not a jpeg, it is text with a .jpg name")
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"Not a JPEG, PNG, GIF or BMP image.*b\.jpg"):
        data.load_arrays(tmp_path)


def test_mixed_grayscale_and_rgb_files(tmp_path):
    """A folder of RGB JPEGs and grayscale PNGs: every image gets the first file's channels
    (decoded at that count), or the requested ones."""
    rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    gray = np.full((8, 8, 1), 77, np.uint8)
    _write_png(tmp_path / "a.png", rgb)
    _write_png(tmp_path / "b.png", gray)
    x, _ = data.load_arrays(tmp_path)
    assert x.shape == (2, 8, 8, 3)
    np.testing.assert_array_equal(x[0], rgb)
    np.testing.assert_array_equal(x[1], np.full((8, 8, 3), 77))
    x, _ = data.load_arrays(tmp_path, channels=1)
    assert x.shape == (2, 8, 8, 1) and np.all(x[1] == 77)


# ---------------------------------------------------------------------------
# TensorFlow Datasets.


def test_tfds_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=7):
        ds = data.load("mnist", "train", data_dir=str(tmp_path))
        elements = list(ds.as_numpy_iterator())
        # The local-files branch is skipped when they are missing.
        fashion = list(data.load("fashion_mnist", data_dir=str(tmp_path), labels=False))
        padded = next(iter(data.load("mnist", image_size=32, channels=3, labels=False)))
    image_spec, label_spec = ds.element_spec
    assert image_spec.shape == (28, 28, 1) and image_spec.dtype == tf.uint8
    assert label_spec.shape == () and label_spec.dtype == tf.int32
    assert len(elements) == 7
    assert all(0 <= label <= 9 for _, label in elements)
    assert all(image.dtype == np.uint8 for image, _ in elements)
    assert len(fashion) == 7 and fashion[0].shape == (28, 28, 1)
    assert padded.shape == (32, 32, 3)


def test_tfds_unknown_name():
    with pytest.raises(FileNotFoundError, match="neither an existing directory"):
        data.load("no_such_dataset_kc")


def test_tfds_not_prepared(tmp_path, no_network):
    with pytest.raises(FileNotFoundError, match=r"tfds build mnist") as info:
        data.load("mnist", data_dir=str(tmp_path))
    assert str(tmp_path) in str(info.value)
    # tfds got as far as downloading (failing on the network), not stopped by a missing
    # dependency of its download path (`importlib_resources`, issue 11).
    assert "network disabled in tests" in str(info.value)


def test_invalid_name_type():
    with pytest.raises(ValueError, match="type int"):
        data.load(3)


# ---------------------------------------------------------------------------
# contrastive_views.


def noisy_augmenter(images, seed):
    images = tf.cast(images, tf.float32) / 255.0
    return images + tf.random.stateless_uniform(tf.shape(images), seed) * 0.01


def seed_augmenter(images, seed):
    """Writes the second seed component (the view index), divided by 4 to stay in [0, 1], into every pixel."""
    return tf.zeros(tf.shape(images), tf.float32) + tf.cast(seed[1], tf.float32) / 4


@pytest.fixture
def small():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (10, 8, 8, 1), dtype=np.uint8)
    y = np.arange(10, dtype=np.int32)
    return x, y


def test_views_shape_alignment_and_difference(small):
    x, y = small
    ds = data.contrastive_views(data.load((x, y)), noisy_augmenter, batch_size=4)
    batches = list(ds.as_numpy_iterator())
    assert len(batches) == 2  # 10 examples, remainder dropped
    for views, labels in batches:
        assert views.shape == (4, 2, 8, 8, 1) and views.dtype == np.float32
        # Labels stay aligned with their images (label == original index).
        expected = x[labels].astype(np.float32) / 255.0
        for v in range(2):
            difference = views[:, v] - expected
            assert np.all(difference >= 0) and np.all(difference <= 0.01)
        assert not np.allclose(views[:, 0], views[:, 1], atol=1e-6)
    np.testing.assert_array_equal(batches[0][1], [0, 1, 2, 3])
    np.testing.assert_array_equal(batches[1][1], [4, 5, 6, 7])


def test_views_seed_contract(small):
    x, y = small
    ds = data.contrastive_views(data.load((x, y)), seed_augmenter, batch_size=3, num_views=3, seed=5)
    views = [v for v, _ in ds.as_numpy_iterator()]
    assert len(views) == 3
    for batch in views:
        for view_index in range(3):
            # Every view gets its own seed: [batch key, view index].
            assert np.all(batch[:, view_index] == view_index / 4)

    seen = []

    def recorder(images, seed):
        seen.append(seed)
        return tf.cast(images, tf.float32)

    data.contrastive_views(data.load(x), recorder, batch_size=2, seed=11)
    assert len(seen) == 2
    assert all(s.dtype == tf.int32 and s.shape == (2,) for s in seen)


def key_augmenter(images, seed):
    """Writes the batch key (first seed component, an int32 >= 0) / 2**31 into every pixel: in [0, 1], and
    two keys only collide if they lie within 2**7 of each other (float32 rounding)."""
    return tf.zeros(tf.shape(images), tf.float32) + tf.cast(seed[0], tf.float32) / 2**31


def test_views_differ_between_batches_and_epochs(small):
    x, y = small
    ds = data.contrastive_views(data.load((x, y)), key_augmenter, batch_size=2, seed=5)
    epoch1 = [v[0, 0, 0, 0, 0] for v, _ in ds.as_numpy_iterator()]
    epoch2 = [v[0, 0, 0, 0, 0] for v, _ in ds.as_numpy_iterator()]
    assert len(set(epoch1)) == len(epoch1) == 5  # a new key per batch
    assert not set(epoch1) & set(epoch2)  # a new draw per pass (epoch)
    again = data.contrastive_views(data.load((x, y)), key_augmenter, batch_size=2, seed=5)
    assert [v[0, 0, 0, 0, 0] for v, _ in again.as_numpy_iterator()] == epoch1  # same seed, same run


def test_views_deterministic(small):
    x, y = small
    x = np.repeat(x, 10, axis=0)
    y = np.repeat(y, 10)

    def build():
        return data.contrastive_views(
            data.load((x, y)),
            noisy_augmenter,
            batch_size=8,
            shuffle_buffer=100,
            seed=3,
            num_parallel_calls=4,
        )

    ds = build()
    first = list(ds.as_numpy_iterator())
    second = list(build().as_numpy_iterator())
    assert len(first) == len(second) == 12
    for (v1, l1), (v2, l2) in zip(first, second):
        np.testing.assert_array_equal(v1, v2)
        np.testing.assert_array_equal(l1, l2)
    # The shuffle did something.
    assert not np.array_equal(np.concatenate([l for _, l in first]), y[:96])

    def unshuffled():
        return data.contrastive_views(data.load((x, y)), noisy_augmenter, batch_size=8, num_parallel_calls=4)

    a = list(unshuffled().as_numpy_iterator())
    b = list(unshuffled().as_numpy_iterator())
    for (v1, _), (v2, _) in zip(a, b):
        np.testing.assert_array_equal(v1, v2)


def test_views_list_of_augmenters_and_images_only(small):
    x, _ = small

    def identity(images, seed):
        return tf.cast(images, tf.float32) / 255.0

    def inverted(images, seed):
        return 1.0 - tf.cast(images, tf.float32) / 255.0

    ds = data.contrastive_views(data.load(x), [identity, inverted], batch_size=5, prefetch=False)
    assert isinstance(ds.element_spec, tf.TensorSpec)  # no labels
    views = next(iter(ds)).numpy()
    np.testing.assert_allclose(views[:, 0], x[:5] / 255.0, atol=1e-6)
    np.testing.assert_allclose(views[:, 1], 1.0 - x[:5] / 255.0, atol=1e-6)


def test_views_of_several_sizes_come_as_one_static_group_per_size(small):
    """Multi-crop: 2 views at 8x8 and 3 at 4x4 give a tuple of two stacks; each view keeps its seed [key, v]."""
    x, y = small

    def shrunk(images, seed):
        return tf.image.resize(seed_augmenter(images, seed), (4, 4))

    augmenters = [seed_augmenter, seed_augmenter, shrunk, shrunk, shrunk]
    ds = data.contrastive_views(data.load((x, y)), augmenters, batch_size=4, num_views=5)
    (big, small_views), labels = ds.element_spec
    assert big.shape.as_list() == [4, 2, 8, 8, 1] and small_views.shape.as_list() == [4, 3, 4, 4, 1]
    (big, small_views), labels = next(iter(ds))
    for v in range(5):
        group, index = (big, v) if v < 2 else (small_views, v - 2)
        np.testing.assert_allclose(group[:, index].numpy(), v / 4)
    # Without labels the groups are wrapped, so `fit` reads them as x, not as (x, y).
    unlabelled = data.contrastive_views(data.load(x), augmenters, batch_size=4, num_views=5)
    assert isinstance(unlabelled.element_spec, tuple) and len(unlabelled.element_spec) == 1
    assert len(unlabelled.element_spec[0]) == 2


def test_views_repeat_and_remainder(small):
    x, y = small
    repeated = data.contrastive_views(data.load((x, y)), seed_augmenter, batch_size=4, repeat=True)
    batches = list(repeated.take(5).as_numpy_iterator())
    np.testing.assert_array_equal(batches[2][1], [8, 9, 0, 1])  # wraps around
    assert np.all(batches[4][0][:, 1] == 1 / 4)  # view 1
    kept = data.contrastive_views(data.load((x, y)), noisy_augmenter, batch_size=4, drop_remainder=False)
    assert [len(l) for _, l in kept.as_numpy_iterator()] == [4, 4, 2]
    # Fewer examples than batch_size is fine when repeating.
    small_repeat = data.contrastive_views(data.load((x, y)), noisy_augmenter, batch_size=16, repeat=True)
    assert next(iter(small_repeat))[0].shape == (16, 2, 8, 8, 1)


def test_views_start_batch_continues_the_stream_across_passes(small):
    """What a resumed run relies on: batch i is the same whether the stream starts at 0 or
    at `start_batch`, also across the ends of shuffled passes."""
    x, y = small

    def stream(start):
        views = data.contrastive_views(
            data.load((x, y)), noisy_augmenter, batch_size=4, shuffle_buffer=10, seed=5, repeat=True, start_batch=start
        )
        return list(views.take(12 - start).as_numpy_iterator())

    full = stream(0)
    for start in (2, 5, 7):  # within the first pass, at the boundary, in the second pass
        for got, want in zip(stream(start), full[start:]):
            np.testing.assert_array_equal(got[1], want[1])
            np.testing.assert_array_equal(got[0], want[0])
    # Passes are shuffled differently, and each holds every image once (2 passes = 5 batches).
    first, second = np.concatenate([b[1] for b in full[:5]]), np.concatenate([b[1] for b in full[5:10]])
    assert sorted(first) == sorted(second) == sorted(list(range(10)) * 2)
    assert not np.array_equal(first[:10], second[:10])


def test_views_bad_arguments(small):
    x, y = small
    ds = data.load((x, y))
    with pytest.raises(ValueError, match="batch_size"):
        data.contrastive_views(ds, noisy_augmenter, batch_size=0)
    with pytest.raises(ValueError, match="num_views"):
        data.contrastive_views(ds, noisy_augmenter, batch_size=2, num_views=0)
    with pytest.raises(ValueError, match="3 augmenters for num_views=2"):
        data.contrastive_views(ds, [noisy_augmenter] * 3, batch_size=2)
    with pytest.raises(ValueError, match="not callable"):
        data.contrastive_views(ds, "flip", batch_size=2)
    with pytest.raises(ValueError, match="10 examples.*batch_size=16"):
        data.contrastive_views(ds, noisy_augmenter, batch_size=16)
    with pytest.raises(ValueError, match="unbatched"):
        data.contrastive_views(ds.batch(2), noisy_augmenter, batch_size=2)
    with pytest.raises(ValueError, match="float images"):
        data.contrastive_views(ds, lambda images, seed: images, batch_size=2)

    def dynamic(images, seed):  # a size known only when it runs: views of several sizes need static ones
        return tf.image.resize(noisy_augmenter(images, seed), tf.fill([2], 7 + 0 * seed[0]))

    with pytest.raises(ValueError, match="static output sizes"):
        data.contrastive_views(ds, [noisy_augmenter, dynamic], batch_size=2)
    with pytest.raises(ValueError, match="tf.data.Dataset"):
        data.contrastive_views(x, noisy_augmenter, batch_size=2)


def test_class_balanced_sampling_evens_out_rare_classes():
    rng = np.random.default_rng(0)
    labels = np.array([0] * 700 + [1] * 200 + [2] * 100)
    images = rng.integers(0, 256, (1000, 4, 4, 1)).astype("uint8")
    ds = data.class_balanced(data.load((images, labels)), 3, seed=1)
    drawn = np.array([int(y) for _, y in ds.take(2000).as_numpy_iterator()])
    counts = np.bincount(drawn, minlength=3) / len(drawn)
    np.testing.assert_allclose(counts, [1 / 3] * 3, atol=0.04)
    # With the frequencies given, balanced from the first batches on.
    known = data.class_balanced(data.load((images, labels)), 3, seed=2, initial_dist=np.bincount(labels))
    first = np.array([int(y) for _, y in known.take(600).as_numpy_iterator()])
    np.testing.assert_allclose(np.bincount(first, minlength=3) / 600, [1 / 3] * 3, atol=0.06)
    with pytest.raises(ValueError, match="every class must occur"):
        data.class_balanced(data.load((images, labels)), 4, initial_dist=[1, 1, 1, 0])
    # Images stay paired with their labels.
    for x, y in ds.take(50).as_numpy_iterator():
        assert any(np.array_equal(x, images[i]) for i in np.flatnonzero(labels == y))
    with pytest.raises(ValueError, match="labels"):
        data.class_balanced(data.load(images), 3)


# ---------------------------------------------------------------------------
# Label subsets.


def test_balanced_fraction_takes_the_fraction_of_every_class():
    labels = np.array([0] * 100 + [1] * 300 + [2] * 600)
    idx = data.balanced_fraction(labels, 0.1, seed=0)
    assert np.bincount(labels[idx]).tolist() == [10, 30, 60]
    assert len(set(idx)) == len(idx)
    assert not np.array_equal(idx, data.balanced_fraction(labels, 0.1, seed=1))
    np.testing.assert_array_equal(idx, data.balanced_fraction(labels, 0.1, seed=0))
    with pytest.raises(ValueError, match="fraction"):
        data.balanced_fraction(labels, 0.0)


def test_subset_file_of_file_names_keeps_those_images(tmp_path):
    """SimCLR's label lists name ImageNet files, one per line ("n01440764_10026.JPEG")."""
    images = np.random.default_rng(3).integers(0, 256, (4, 5, 5, 3), dtype=np.uint8)
    for (folder, name), image in zip(
        [("n01", "n01_1.png"), ("n01", "n01_2.png"), ("n02", "n02_1.png"), ("n02", "n02_2.png")], images
    ):
        (tmp_path / "train" / folder).mkdir(parents=True, exist_ok=True)
        _write_png(tmp_path / "train" / folder / name, image)
    listing = tmp_path / "1percent.txt"
    listing.write_text("# a comment\nn01_2.png\n\nn02/n02_2.png\n")
    x, y = data.load_arrays(tmp_path / "train", subset=listing)
    np.testing.assert_array_equal(x, images[[1, 3]])
    np.testing.assert_array_equal(y, [0, 1])  # class indices of the whole folder
    with pytest.raises(ValueError, match="1 of the subset's 2 ids are not image files.*n03_9.png"):
        data.load(tmp_path / "train", subset=["n01_1.png", "n03_9.png"])
    with pytest.raises(FileNotFoundError, match="Subset file"):
        data.load(tmp_path / "train", subset=tmp_path / "missing.txt")


def test_subset_of_indices_for_arrays_and_fashion_mnist_layout(tmp_path):
    x = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1) * 20
    y = np.arange(10) % 3
    got_x, got_y = data.load_arrays((x, y), subset=["7", "2"])
    np.testing.assert_array_equal(got_x.ravel(), [40, 140])
    np.testing.assert_array_equal(got_y, [2, 1])
    with pytest.raises(ValueError, match="outside the split's 10 examples"):
        data.load((x, y), subset=[3, 10])
    with pytest.raises(ValueError, match="example indices"):
        data.load((x, y), subset=["n01_1.png"])


def test_subset_of_a_tfds_dataset_by_file_name():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=6):
        builder_ds = tfds.load("imagenet2012", split="train")
        names = [e["file_name"] for e in builder_ds.as_numpy_iterator()]
        wanted = [names[1].decode(), names[4].decode()]
        x, y = data.load_arrays("imagenet2012", "train", subset=wanted, image_size=8)
        all_x, all_y = data.load_arrays("imagenet2012", "train", image_size=8)
    assert x.shape == (2, 8, 8, 3)
    np.testing.assert_array_equal(x, all_x[[1, 4]])
    np.testing.assert_array_equal(y, all_y[[1, 4]])


def test_views_made_on_a_tf_data_service_hold_every_example_once():
    """A dispatcher and two workers on loopback, started here: the service's epoch holds the local
    pipeline's examples, each exactly once, with views made on the workers. (Each worker shuffles and
    batches its share of the epoch, so the batches themselves differ from the local ones.)"""
    service = tf.data.experimental.service
    dispatcher = service.DispatchServer(service.DispatcherConfig(port=0))
    address = dispatcher.target.split("://")[1]
    workers = [service.WorkerServer(service.WorkerConfig(dispatcher_address=address, port=0)) for _ in range(2)]
    x = np.arange(64, dtype=np.uint8).reshape(64, 1, 1, 1).repeat(4, 1).repeat(4, 2)
    y = np.arange(64)

    def batches(**kwargs):
        views = data.contrastive_views(
            data.load((x, y)), noisy_augmenter, 8, seed=1, shuffle_buffer=64, drop_remainder=False, **kwargs
        )
        return [(v.numpy(), labels.numpy()) for v, labels in views]

    local = batches()
    served = batches(data_service=dispatcher.target)
    assert sorted(np.concatenate([labels for _, labels in served]).tolist()) == list(range(64))
    assert sorted(np.concatenate([labels for _, labels in local]).tolist()) == list(range(64))
    for views, labels in served:  # views of the right images (noisy_augmenter adds at most 0.01)
        np.testing.assert_allclose(views[:, 0, 0, 0, 0], labels / 255, atol=0.011)
    assert sum(worker._num_tasks() for worker in workers) >= 1


def _class_folder(root, sizes_by_class, seed=5):
    """A folder of PNGs, one sub-folder per class; returns the images in load order (sorted folders, files)."""
    rng = np.random.default_rng(seed)
    images = []
    for c, sizes in enumerate(sizes_by_class):
        (root / f"c{c}").mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            _write_png(root / f"c{c}" / f"{i}.png", image)
            images.append(image)
    return images


def test_counts_classes_and_labels_come_without_decoding_an_image(tmp_path):
    """What a streaming recipe needs up front (issue 11): the number of examples and classes and every label,
    read from listings and metadata, never from decoded images (a corrupt file does not matter to them)."""
    _class_folder(tmp_path, [[(4, 5)] * 3, [(6, 4)] * 2, [(5, 5)] * 4])
    (tmp_path / "c1" / "broken.png").write_bytes(b"not an image at all")
    assert data.num_classes(tmp_path) == 3
    np.testing.assert_array_equal(data.load_labels(tmp_path), [0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    np.testing.assert_array_equal(data.load_labels(tmp_path, subset=[9, 0, 4]), [0, 1, 2])
    np.testing.assert_array_equal(data.load_labels(tmp_path, "train[2:5]"), [0, 1, 1])
    assert data.num_examples(data.load(tmp_path, image_size=4)) == 10
    with pytest.raises(tf.errors.InvalidArgumentError, match="broken.png"):
        list(data.load(tmp_path, image_size=4))  # decoding does reach the corrupt file
    # Cardinality unknown after a filter: counted.
    filtered = data.load((np.zeros((7, 2, 2), np.uint8), np.arange(7))).filter(lambda x, y: y % 2 == 0)
    assert int(filtered.cardinality()) < 0 and data.num_examples(filtered) == 4
    with pytest.raises(ValueError, match="infinite"):
        data.num_examples(filtered.repeat())
    flat = tmp_path / "flat"
    flat.mkdir()
    _write_png(flat / "a.png", np.zeros((3, 3, 3), np.uint8))
    assert data.num_classes(flat) is None and data.load_labels(flat) is None
    assert data.num_classes((np.zeros((3, 2, 2), np.uint8), np.array([0, 4, 1]))) == 5
    assert data.num_classes("fashion_mnist") == 10


def test_labels_and_classes_of_a_tfds_dataset_match_its_examples():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=9):
        labels = data.load_labels("imagenet2012", "validation")
        expected = [int(e["label"]) for e in tfds.load("imagenet2012", split="validation").as_numpy_iterator()]
        assert data.num_classes("imagenet2012") == 1000
        subset = data.load_labels("imagenet2012", "train", subset=[2, 7])
        train = [int(e["label"]) for e in tfds.load("imagenet2012", split="train").as_numpy_iterator()]
        # Indices select by position even though the dataset has file names.
        names = [e["file_name"].decode() for e in tfds.load("imagenet2012", split="train").as_numpy_iterator()]
        by_name = data.load_labels("imagenet2012", "train", subset=[names[7], names[2]])
    np.testing.assert_array_equal(labels, expected)
    np.testing.assert_array_equal(subset, [train[2], train[7]])
    np.testing.assert_array_equal(by_name, [train[2], train[7]])


def test_a_folder_takes_index_subsets_and_sliced_splits(tmp_path):
    images = _class_folder(tmp_path, [[(3, 3)] * 3, [(3, 3)] * 3])
    x, y = data.load_arrays(tmp_path, subset=[4, 1])
    np.testing.assert_array_equal(x, np.stack([images[1], images[4]]))
    np.testing.assert_array_equal(y, [0, 1])
    x, y = data.load_arrays(tmp_path, "train[-2:]")
    np.testing.assert_array_equal(x, np.stack(images[-2:]))
    with pytest.raises(ValueError, match="outside the split's 6 examples"):
        data.load(tmp_path, subset=[6])
    with pytest.raises(ValueError, match="single split, 'train'"):
        data.load(tmp_path, "test")


def test_crop_fraction_is_the_evaluation_center_crop_at_full_resolution(tmp_path):
    """Evaluation of full-resolution data: the central fraction of the shorter side, resized (not the whole
    image squeezed or padded), per image at its own size."""
    images = _class_folder(tmp_path, [[(40, 64), (64, 30)]])
    got = [x for x, _ in data.load(tmp_path, image_size=16, crop_fraction=0.5).as_numpy_iterator()]
    for image, crop in zip(images, got):
        side = min(image.shape[:2]) // 2
        top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
        centre = tf.image.resize(image[top : top + side, left : left + side].astype("float32"), (16, 16), "bicubic")
        want = np.clip(np.round(centre.numpy()), 0, 255)
        np.testing.assert_allclose(crop, want, atol=1)
        assert crop.shape == (16, 16, 3)
    squeezed = [x for x, _ in data.load(tmp_path, image_size=16).as_numpy_iterator()]
    assert not np.allclose(squeezed[0], got[0], atol=8)
    with pytest.raises(ValueError, match="needs `image_size`"):
        data.load(tmp_path, crop_fraction=0.5)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        data.load(tmp_path, image_size=8, crop_fraction=1.5)


def _contexts(n, replicas=None):
    return [tf.distribute.InputContext(n, i, replicas or n) for i in range(n)]


def test_each_input_pipeline_loads_a_disjoint_shard_and_together_the_whole_split(tmp_path):
    """Issue 11: under `distribute_datasets_from_function` each worker reads its own shard. Folders (by file),
    arrays and Fashion-MNIST: disjoint shards whose union is the split; a folder's worker never opens the
    other's files."""
    images = _class_folder(tmp_path / "f", [[(3, 3)] * 4, [(3, 3)] * 3])
    whole = [(x.tobytes(), int(y)) for x, y in data.load(tmp_path / "f").as_numpy_iterator()]
    shards = [
        [(x.tobytes(), int(y)) for x, y in data.load(tmp_path / "f", input_context=c).as_numpy_iterator()]
        for c in _contexts(2)
    ]
    assert [len(s) for s in shards] == [4, 3]
    assert sorted(shards[0] + shards[1]) == sorted(whole) and not set(shards[0]) & set(shards[1])
    # Pipeline 1 of 2 never reads file 0: corrupt it and pipeline 1 still loads.
    (tmp_path / "f" / "c0" / "0.png").write_bytes(b"broken")
    assert len(list(data.load(tmp_path / "f", input_context=_contexts(2)[1]))) == 3
    assert len(images) == 7

    x = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
    parts = [[int(v[0, 0, 0]) for v, _ in data.load((x, np.arange(10)), input_context=c)] for c in _contexts(3)]
    assert sorted(sum(parts, [])) == list(range(10)) and parts[0] == [0, 3, 6, 9]
    labels = [
        np.concatenate([y for _, y in data.load("fashion_mnist", "test", input_context=c).batch(5000)])
        for c in _contexts(2)
    ]
    np.testing.assert_array_equal(labels[0], data.load_labels("fashion_mnist", "test")[0::2])
    np.testing.assert_array_equal(labels[1], data.load_labels("fashion_mnist", "test")[1::2])


def test_a_tfds_dataset_is_sharded_by_tfds_per_input_pipeline(monkeypatch):
    """tfds shards by file itself (`ReadConfig(input_context=...)`): the context reaches `tfds.load`."""
    import tensorflow_datasets as tfds

    seen = []
    load = tfds.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("read_config"))
        return load(*args, **kwargs)

    monkeypatch.setattr(tfds, "load", spy)
    context = _contexts(2)[1]
    with tfds.testing.mock_data(num_examples=4):
        data.load("imagenet2012", "validation", input_context=context, decode=False)
        data.load("imagenet2012", "validation")
    assert seen[0].input_context is context and seen[1] is None


def test_views_of_each_input_pipeline_batch_per_replica_with_keys_of_their_own():
    """With an `InputContext` the batch is one replica's share of the global batch, and two pipelines draw
    different views of the same images; over one pass the pipelines' shards hold every example once."""
    x = np.arange(16, dtype=np.uint8).reshape(16, 1, 1, 1) * 10
    y = np.arange(16, dtype=np.int32)
    one_pipeline, two = _contexts(1, replicas=2)[0], _contexts(2, replicas=4)
    batches = list(data.contrastive_views(data.load((x, y)), key_augmenter, 8, input_context=one_pipeline))
    assert [b[0].shape[0] for b in batches] == [4, 4, 4, 4]  # global 8 over 2 replicas
    seen = []
    for context in two:
        views = data.contrastive_views(
            data.load((x, y), input_context=context), key_augmenter, 8, input_context=context
        )
        out = list(views)
        assert [b[0].shape[0] for b in out] == [2, 2, 2, 2]  # global 8 over 4 replicas
        seen.append((np.concatenate([b[1] for b in out]), out[0][0].numpy()))
    assert sorted(np.concatenate([s[0] for s in seen]).tolist()) == list(range(16))
    same_images = data.contrastive_views(data.load((x, y)), key_augmenter, 8, input_context=two[1])
    assert not np.array_equal(
        next(iter(same_images))[0].numpy(),
        next(iter(data.contrastive_views(data.load((x, y)), key_augmenter, 8, input_context=two[0])))[0].numpy(),
    )
    with pytest.raises(ValueError, match="does not split evenly over 4 replicas"):
        data.contrastive_views(data.load((x, y)), key_augmenter, 6, input_context=two[0])


def test_views_with_index_carry_each_examples_position_through_shuffle_crops_groups_and_shards(small):
    """`with_index=True` (a memory bank's input): x becomes {"views", "index"}, the index numbered before the
    shuffle, so it names the example (here label == position); with sharded input, position p of pipeline i of n
    is p * n + i, its position in the split."""
    x, y = small
    ds = data.contrastive_views(data.load((x, y)), noisy_augmenter, 4, shuffle_buffer=10, with_index=True)
    seen = []
    for inputs, labels in ds.as_numpy_iterator():
        assert set(inputs) == {"views", "index"} and inputs["index"].dtype == np.int32
        np.testing.assert_array_equal(inputs["index"], labels)
        expected = x[labels].astype(np.float32) / 255.0  # the views are still the indexed examples'
        assert np.all(np.abs(inputs["views"][:, 0] - expected) <= 0.01)
        seen.extend(inputs["index"].tolist())
    assert sorted(seen) != seen and len(set(seen)) == 8  # shuffled; 2 of 10 left in the dropped remainder

    # Per-image crops and multi-crop groups, without labels: the dict holds the tuple of groups.
    def crop(image, seed):
        return tf.image.stateless_random_crop(image, (6, 6, 1), seed)

    def shrunk(images, seed):
        return tf.image.resize(seed_augmenter(images, seed), (3, 3))

    cropped = data.contrastive_views(
        data.load(x), [seed_augmenter, seed_augmenter, shrunk], 5, num_views=3, crop=crop, with_index=True
    )
    first = next(iter(cropped))
    assert [list(g.shape) for g in first["views"]] == [[5, 2, 6, 6, 1], [5, 1, 3, 3, 1]]
    np.testing.assert_array_equal(first["index"], np.arange(5))

    x16, y16 = np.zeros((16, 1, 1, 1), np.uint8), np.arange(16, dtype=np.int32)
    for context in _contexts(2, replicas=2):
        shard = data.load((x16, y16), input_context=context)
        for inputs, labels in data.contrastive_views(shard, key_augmenter, 4, input_context=context, with_index=True):
            np.testing.assert_array_equal(inputs["index"], labels)
    with pytest.raises(ValueError, match="`with_index` must be True or False"):
        data.contrastive_views(data.load((x, y)), noisy_augmenter, 4, with_index=1)
