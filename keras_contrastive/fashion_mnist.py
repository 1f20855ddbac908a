"""Fashion-MNIST from local idx files: the offline default of this package.

Debian's package `dataset-fashion-mnist` installs the real Fashion-MNIST
(60,000 training and 10,000 test images, 28x28 grayscale) as idx files.
`keras_contrastive.data.load("fashion_mnist")` reads them through this module
(a local source, see `keras_contrastive.data.LOCAL_SOURCES`) and falls back to
TensorFlow Datasets when they are missing. Where to look: `data_dir`, else the
directory in `$KC_FASHION_MNIST_DIR`, else Debian's path.
"""

import gzip
import os

import numpy as np

#: The environment variable naming a directory of the idx files.
FASHION_MNIST_DIR_ENV = "KC_FASHION_MNIST_DIR"
#: Where Debian's `dataset-fashion-mnist` package puts them.
DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
#: The splits this source has.
SPLITS = tuple(FILES)
#: Its classes (T-shirt/top, trouser, pullover, dress, coat, sandal, shirt, sneaker, bag, ankle boot).
NUM_CLASSES = 10


def directory(data_dir=None):
    """The directory searched for the idx files."""
    if data_dir is not None:
        return str(data_dir)
    return os.environ.get(FASHION_MNIST_DIR_ENV) or DEFAULT_FASHION_MNIST_DIR


def _find_idx_file(folder, stem):
    for candidate in (stem + ".gz", stem):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    return None


def read_idx(path, expected_rank):
    """Reads an idx file of unsigned bytes (gzipped or not) into a numpy array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        content = f.read()
    # Header: two zero bytes, a type code (0x08 = unsigned byte), the rank,
    # then one big-endian uint32 per dimension.
    if len(content) < 4 or content[:2] != b"\x00\x00" or content[2] != 0x08:
        raise ValueError(
            f"{path} is not an idx file of unsigned bytes (header "
            f"{content[:4].hex()!r}; expected '000008' followed by the rank)."
        )
    rank = content[3]
    if rank != expected_rank:
        raise ValueError(f"{path} holds a rank-{rank} array; expected rank {expected_rank}.")
    header_size = 4 + 4 * rank
    shape = tuple(int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank))
    data = np.frombuffer(content, dtype=np.uint8, offset=min(header_size, len(content)))
    if data.size != int(np.prod(shape)):
        raise ValueError(
            f"{path} is truncated or corrupt: the header announces shape "
            f"{shape} ({int(np.prod(shape))} bytes) but {data.size} bytes "
            "follow."
        )
    return data.reshape(shape)


def read_arrays(split, data_dir=None):
    """The whole split `(x [N, 28, 28, 1] uint8, y [N] uint8)`, or None if its files are missing.

    Args:
        split: str. "train" or "test".
        data_dir: str or None. See `directory`.
    """
    folder = directory(data_dir)
    image_stem, label_stem = FILES[split]
    image_path = _find_idx_file(folder, image_stem)
    label_path = _find_idx_file(folder, label_stem)
    if image_path is None or label_path is None:
        return None
    x = read_idx(image_path, expected_rank=3)
    y = read_idx(label_path, expected_rank=1)
    if len(x) != len(y):
        raise ValueError(
            f"{image_path} holds {len(x)} images but {label_path} holds "
            f"{len(y)} labels; the files do not belong together."
        )
    return x[:, :, :, np.newaxis], y


def missing_message(split, data_dir, tfds_dir, reason):
    """What was tried and how to get the data, when neither the files nor tfds have it."""
    base = split.split("[")[0].strip()
    return (
        "Fashion-MNIST was not found. Looked for the idx files "
        f"{' and '.join(FILES[base])} (.gz or not) in "
        f"{directory(data_dir)!r} (chosen from data_dir, else "
        f"${FASHION_MNIST_DIR_ENV}, else {DEFAULT_FASHION_MNIST_DIR}), "
        f"then for a prepared tfds dataset in {tfds_dir}, which could not "
        f"be downloaded ({type(reason).__name__}: {reason}). Install the "
        "data with `apt-get install dataset-fashion-mnist` (Debian), point "
        f"data_dir or ${FASHION_MNIST_DIR_ENV} at a directory holding the "
        "idx files, or allow tfds to download it (needs internet once)."
    )
