"""Input pipelines for contrastive pre-training and evaluation.

`load` turns a dataset name, a folder of images or in-memory numpy arrays into
one kind of `tf.data.Dataset`: unbatched `(image, label)` pairs with `uint8`
images of shape `[H, W, C]` and `int32` scalar labels (or images alone when
there are no labels). `load_arrays` gives the same data as whole numpy arrays,
for evaluation code that needs complete splits in memory.

`contrastive_views` batches such a dataset and draws `num_views` augmented
views of every image, with stateless per-batch, per-view seeds. Augmentation
therefore happens on the host inside `tf.data` (as TPU input pipelines do), so
a distributed run feeds every replica exactly the views a single-device run
would compute, and two iterations of the same pipeline give identical views.

Example:

```python
ds = keras_contrastive.data.load("fashion_mnist", image_size=32, channels=3)
views = keras_contrastive.data.contrastive_views(
    ds, augmenter, batch_size=256, shuffle_buffer=10_000
)
for views, labels in views.take(1):
    print(views.shape)  # (256, 2, 32, 32, 3)
```
"""

import math
import os
import re

import numpy as np
import tensorflow as tf

from keras_contrastive import crops
from keras_contrastive import fashion_mnist
from keras_contrastive import layer_augmenter

_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
# The first bytes of a JPEG, PNG, GIF and BMP file.
_IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM")
# "name" or "name[lo:hi]", each bound empty, an int or a percentage.
_SPLIT_PATTERN = re.compile(r"^\s*(\w+)\s*(?:\[\s*([^\]:]*?)\s*:\s*([^\]:]*?)\s*\])?\s*$")
_BOUND_PATTERN = re.compile(r"^(-?\d+)(%?)$")
# Chunk size used when a dataset is materialised as numpy arrays: large
# enough that per-batch overhead is negligible, small enough to stay cheap.
_ARRAY_BATCH = 1024


def load(
    name,
    split="train",
    *,
    labels=True,
    image_size=None,
    channels=None,
    data_dir=None,
    shuffle_files=False,
    subset=None,
    decode=True,
    crop_fraction=None,
    input_context=None,
):
    """Loads an image dataset as an unbatched `tf.data.Dataset`.

    The source is chosen from `name`:

    - `"fashion_mnist"`: the idx files of Debian's `dataset-fashion-mnist`
      package, read from `data_dir`, else from the directory in the
      `KC_FASHION_MNIST_DIR` environment variable, else from
      `/usr/share/datasets/fashion-mnist`. When these files are missing,
      TensorFlow Datasets is tried instead. Images are `[28, 28, 1]`.
    - A `pathlib.Path` or a string naming an existing directory (local, or on
      any TensorFlow file system such as `gs://`): a folder of
      image files (PNG, JPEG, BMP, GIF). Sub-folders are classes, labelled
      `0..K-1` in sorted folder-name order; a flat folder has no labels.
      Images keep their file size (all files must share it unless
      `image_size` is given); an alpha channel is dropped.
    - Any other string: a TensorFlow Datasets name, loaded with
      `tfds.load(name, split=split, data_dir=data_dir, ...)`; its `"image"`
      and (if present) `"label"` features are used.
    - A numpy array `x` or a tuple `(x, y)`: `x` is `uint8` of shape
      `[N, H, W]` or `[N, H, W, C]`, or floating point with values in
      `[0, 1]` (converted to `uint8` as `round(x * 255)`); `y` holds `N`
      integer labels.

    Args:
        name: str, `pathlib.Path`, `np.ndarray` or tuple `(x, y)`. The
            source, as described above.
        split: str. Which split to read: `"train"` or `"test"` for
            Fashion-MNIST, any TensorFlow Datasets split for tfds names.
            A contiguous part may be selected with `"train[a:b]"`, where
            `a` and `b` are example indices or percentages (e.g.
            `"train[:512]"`, `"test[:10%]"`, `"train[-5000:]"`). Arrays
            and folders have only `"train"` (optionally sliced; a folder's
            files in sorted order). Defaults to `"train"`.
        labels: bool. Whether to yield `(image, label)` pairs. When `False`,
            or when the source has no labels, only images are yielded.
            Defaults to `True`.
        image_size: int or tuple `(height, width)`, or `None`. Output image
            size. Smaller images are zero-padded, centred (e.g.
            Fashion-MNIST 28 -> 32, the protocol the benchmarks use); other
            images are resized bilinearly (with antialiasing) and rounded
            back to `uint8`. `None` keeps the source size. Defaults to
            `None`.
        channels: int or `None`. `3` repeats a grayscale image to RGB, `1`
            converts RGB to grayscale (ITU-R 601 luma), `None` keeps the
            source channels. Defaults to `None`.
        data_dir: str or `None`. Directory holding the Fashion-MNIST idx
            files, or TensorFlow Datasets' data directory. Defaults to
            `None` (see above, and tfds' own default).
        shuffle_files: bool. Shuffle the file order (tfds datasets and image
            folders); has no effect on arrays and the single-file
            Fashion-MNIST idx source. Defaults to `False`.
        subset: path of a text file of example ids (one per line; blank
            lines and `#` comments ignored), a list of ids, or None. Keeps
            only those examples, as SimCLR's 1% / 10% ImageNet label lists
            do: ids are file names (`n01440764_10026.JPEG`) for folders (the
            file's name or its path under the folder) and for tfds datasets
            with a `file_name` feature (ImageNet's); integer ids are example
            indices within the split for every source (for folders, into
            the sorted file list), so the indices `balanced_fraction` draws
            work everywhere. Every id must be found (checked for folders and
            indices). Defaults to None (all examples).
        decode: bool. False yields each image still encoded (a scalar
            `tf.string`: the file's bytes for folders, tfds' stored bytes),
            for `contrastive_views(..., crop=kc.crops.RandomResizedCrop(...))`
            to crop at full resolution, decoding only the crop of JPEGs.
            Folders and tfds datasets only; `image_size` and `channels`
            must then be None (the crop sets both). Defaults to True.
        crop_fraction: float in (0, 1] or None. With `image_size`, the
            evaluation transform for full-resolution images: the central
            `crop_fraction` of the shorter side, resized to `image_size`
            (`kc.crops.center_crop`; ImageNet's resize 256 + crop 224 is
            0.875), instead of padding or stretching the whole image.
            Defaults to None.
        input_context: `tf.distribute.InputContext` or None. This input
            pipeline's share only (`distribute_datasets_from_function`
            passes one per worker): folders, arrays and Fashion-MNIST keep
            every `num_input_pipelines`-th example from `input_pipeline_id`
            on, so each worker reads and decodes only its own files; tfds
            datasets are sharded by tfds itself, by file
            (`tfds.ReadConfig(input_context=...)`). The shards are disjoint
            and together the whole split. Defaults to None (everything).

    Returns:
        An unbatched `tf.data.Dataset` yielding `(image, label)`, with
        `image` a `uint8` tensor of shape `[H, W, C]` and `label` an `int32`
        scalar, or yielding `image` alone.

    Raises:
        ValueError: if the arguments or the arrays are invalid.
        FileNotFoundError: if the named data is not available locally and
            cannot be downloaded.
    """
    image_size = _standardize_image_size(image_size)
    channels = _standardize_channels(channels)
    if not isinstance(split, str):
        raise ValueError(
            f"`split` must be a string such as 'train', 'test' or 'train[:512]'. Received: split={split!r}"
        )

    ids = None if subset is None else _read_subset(subset)
    if crop_fraction is not None:
        if image_size is None:
            raise ValueError("`crop_fraction` needs `image_size` (the size the central crop is resized to).")
        if not 0 < crop_fraction <= 1:
            raise ValueError(f"`crop_fraction` must be in (0, 1]; got {crop_fraction}.")
    if not decode:
        if isinstance(name, (np.ndarray, tuple)) or name in LOCAL_SOURCES:
            raise ValueError(
                f"decode=False needs encoded files (a folder or a tfds dataset); {_describe(name)} is decoded."
            )
        if image_size is not None or channels is not None:
            raise ValueError(
                "decode=False keeps images encoded, so image_size and channels cannot apply: leave them None "
                "and give the size and channels to the crop (kc.crops.RandomResizedCrop)."
            )

    if isinstance(name, (np.ndarray, tuple)):
        x, y = _standardize_arrays(name)
        start, stop = _array_split_bounds(split, len(x))
        x = x[start:stop]
        y = None if y is None else y[start:stop]
        if ids is not None:
            index = _subset_indices(ids, len(x))
            x, y = x[index], None if y is None else y[index]
        x, y = _shard(x, input_context), _shard(y, input_context)
        dataset = _dataset_from_arrays(x, y if labels else None)
    elif isinstance(name, os.PathLike) or (isinstance(name, str) and tf.io.gfile.isdir(name)):
        dataset = _load_directory(
            os.fspath(name),
            split,
            labels=labels,
            shuffle_files=shuffle_files,
            same_size=image_size is None,
            subset=ids,
            decode=decode,
            input_context=input_context,
        )
    elif isinstance(name, str) and name.startswith(("/", ".", "~")):
        # A path, and not an existing folder: tfds would answer with its help
        # on dataset-name syntax, which says nothing about the folder.
        raise FileNotFoundError(
            f"No folder {name!r} exists (tried as an image folder: {os.path.abspath(os.path.expanduser(name))}); "
            "a path is not a tfds dataset name. Pass an existing folder of images, 'fashion_mnist', or a name "
            "from `tfds.list_builders()`."
        )
    elif isinstance(name, str) and name in LOCAL_SOURCES:
        dataset = _load_local(
            name,
            split,
            labels=labels,
            data_dir=data_dir,
            shuffle_files=shuffle_files,
            subset=ids,
            input_context=input_context,
        )
    elif isinstance(name, str):
        dataset = _load_tfds(
            name,
            split,
            labels=labels,
            data_dir=data_dir,
            shuffle_files=shuffle_files,
            subset=ids,
            decode=decode,
            input_context=input_context,
        )
    else:
        raise ValueError(
            "`name` must be a dataset name (str), a directory of images "
            "(str or pathlib.Path), a numpy array of images or a tuple "
            f"(images, labels). Received: name of type {type(name).__name__}"
        )
    return _postprocess_dataset(dataset, image_size, channels, crop_fraction)


def load_arrays(name, split="train", **kwargs):
    """Loads a whole dataset split into numpy arrays.

    Meant for evaluation code (linear probes, k-NN) that needs complete
    splits in memory. Takes the same arguments as `load`.

    Args:
        name: str, `pathlib.Path`, `np.ndarray` or tuple `(x, y)`. The
            source; see `load`.
        split: str. The split to read; see `load`. Defaults to `"train"`.
        **kwargs: The keyword arguments of `load` (`labels`, `image_size`,
            `channels`, `data_dir`, `shuffle_files`).

    Returns:
        A tuple `(x, y)`: `x` a `uint8` array of shape `[N, H, W, C]`, `y`
        an `int32` array of shape `[N]`, or `None` when there are no labels
        (or `labels=False`).

    Raises:
        ValueError: if the arguments are invalid or the images do not all
            have the same size (pass `image_size`).
        FileNotFoundError: if the data is not available; see `load`.
    """
    unknown = set(kwargs) - {
        "labels",
        "image_size",
        "channels",
        "data_dir",
        "shuffle_files",
        "subset",
        "crop_fraction",
    }
    if unknown:
        raise ValueError(
            f"Unknown keyword arguments for `load_arrays`: {sorted(unknown)}. "
            "Expected only the keyword arguments of `load`: labels, "
            "image_size, channels, data_dir, shuffle_files, subset, crop_fraction."
        )
    # Fast path: the raw idx arrays need no trip through tf.data.
    if (
        isinstance(name, str)
        and name in LOCAL_SOURCES
        and not os.path.isdir(name)
        and kwargs.get("image_size") is None
        and kwargs.get("channels") is None
        and kwargs.get("subset") is None
        and isinstance(split, str)
    ):
        arrays = _read_local(name, split, kwargs.get("data_dir"))
        if arrays is not None:
            x, y = arrays
            return x, (y if kwargs.get("labels", True) else None)

    dataset = load(name, split, **kwargs)
    has_labels = isinstance(dataset.element_spec, tuple)
    batches = dataset.batch(_ARRAY_BATCH).prefetch(tf.data.AUTOTUNE)
    xs, ys = [], []
    try:
        for batch in batches.as_numpy_iterator():
            if has_labels:
                xs.append(batch[0])
                ys.append(batch[1])
            else:
                xs.append(batch)
    except tf.errors.InvalidArgumentError as error:
        if "shapes" not in str(error) and "differ in size" not in str(error):
            raise
        raise ValueError(
            f"The images of {_describe(name)} (split {split!r}) do not all have the "
            "same size, so they cannot be stacked into one array. Pass "
            "`image_size=...` to bring them to one size."
        ) from error
    if not xs:
        raise ValueError(f"Split {split!r} of {_describe(name)} contains no examples.")
    x = np.concatenate(xs, axis=0)
    y = np.concatenate(ys, axis=0) if has_labels else None
    return x, y


def num_examples(dataset):
    """How many elements a finite `tf.data.Dataset` yields: its cardinality when TensorFlow knows it (files,
    arrays, tfds splits), else counted by one pass (after a `filter`, e.g. a tfds `subset`)."""
    cardinality = int(dataset.cardinality())
    if cardinality == tf.data.INFINITE_CARDINALITY:
        raise ValueError("The dataset is infinite (repeated); count it before `repeat()`.")
    if cardinality >= 0:
        return cardinality

    def add_one(count, element):
        return count + 1

    return int(dataset.reduce(tf.constant(0, tf.int64), add_one))


def num_classes(name, data_dir=None):
    """The number of classes of a source (see `load`), from its metadata rather than from its labels.

    Folders: their class sub-folders; tfds datasets: the `label` feature's
    `num_classes`; local sources (Fashion-MNIST): theirs; arrays: the largest
    label + 1. None when the source has no labels.
    """
    if isinstance(name, (np.ndarray, tuple)):
        _, y = _standardize_arrays(name)
        return None if y is None or not len(y) else int(y.max()) + 1
    if isinstance(name, os.PathLike) or (isinstance(name, str) and tf.io.gfile.isdir(name)):
        _, file_labels = _list_directory(os.fspath(name), "train")
        return None if file_labels is None else max(file_labels) + 1
    if name in LOCAL_SOURCES:
        return LOCAL_SOURCES[name].NUM_CLASSES
    import tensorflow_datasets as tfds

    try:
        features = tfds.builder(name, data_dir=data_dir).info.features
    except Exception as error:  # tfds raises many kinds for unknown or unprepared names
        raise FileNotFoundError(f"No tfds dataset {name!r} to read the number of classes from ({error}).") from error
    label = features["label"] if "label" in features else None
    return None if label is None else int(label.num_classes)


def load_labels(name, split="train", *, data_dir=None, subset=None):
    """The labels of a split in `load`'s order, as int32 numpy `[N]` (None when it has none), without
    decoding an image: folders list their files, tfds reads its records with the images left encoded.

    For what needs every label up front (class frequencies, `balanced_fraction`).
    """
    if isinstance(name, os.PathLike) or (isinstance(name, str) and tf.io.gfile.isdir(name)):
        ids = None if subset is None else _read_subset(subset)
        _, file_labels = _list_directory(os.fspath(name), split, ids)
        return None if file_labels is None else np.asarray(file_labels, np.int32)
    if isinstance(name, (np.ndarray, tuple)) or name in LOCAL_SOURCES:
        dataset = load(name, split, data_dir=data_dir, subset=subset)
    else:
        dataset = load(name, split, data_dir=data_dir, subset=subset, decode=False)
    if not isinstance(dataset.element_spec, tuple):
        return None
    labels = dataset.map(lambda image, label: label, num_parallel_calls=tf.data.AUTOTUNE)
    batches = list(labels.batch(_ARRAY_BATCH * 64).as_numpy_iterator())
    return np.concatenate(batches).astype(np.int32) if batches else np.zeros([0], np.int32)


def class_balanced(dataset, num_classes, *, shuffle_buffer=10_000, seed=0, initial_dist=None):
    """An endless stream in which every class is equally likely.

    For SupCon on imbalanced data: with classes drawn uniformly, rare classes
    appear often enough that their anchors have positives in a batch. One
    shuffled, repeated stream of `dataset` goes through
    `tf.data.Dataset.rejection_resample`, which keeps each example with a
    probability that evens out the classes. A filtered copy per class would
    hold one shuffle buffer per class (1,000 of them for ImageNet) and read
    the data once per class.

    Args:
        dataset: `tf.data.Dataset` of `(image, label)`, unbatched.
        num_classes: int. Labels must be in `[0, num_classes)`; every class
            must occur.
        shuffle_buffer: int. Shuffle buffer of the stream. Defaults to 10000.
        seed: int. Defaults to 0.
        initial_dist: list of `num_classes` floats or None. The classes'
            frequencies in `dataset`, if known (`np.bincount(labels) / n`);
            None estimates them from the stream as it goes, so the first
            few hundred examples are less balanced. Defaults to None.

    Returns:
        An infinite `tf.data.Dataset` of `(image, label)`; batch it (or pass
        it to `contrastive_views`, which needs no `repeat=True` then).
    """
    spec = dataset.element_spec
    if not (isinstance(spec, tuple) and len(spec) == 2):
        raise ValueError(
            f"class_balanced needs labels: `dataset` must yield (image, label) pairs; got elements {spec}."
        )
    num_classes = _check_int("num_classes", num_classes, minimum=2)
    if initial_dist is not None:
        initial_dist = np.asarray(initial_dist, np.float32)
        if initial_dist.shape != (num_classes,) or initial_dist.min() <= 0:
            raise ValueError(
                f"`initial_dist` must hold {num_classes} frequencies > 0 (every class must occur); got {initial_dist}."
            )
        initial_dist = initial_dist / initial_dist.sum()
    stream = dataset.shuffle(shuffle_buffer, seed=seed).repeat()
    balanced = stream.rejection_resample(
        lambda image, label: tf.cast(label, tf.int32),
        target_dist=[1.0 / num_classes] * num_classes,
        initial_dist=initial_dist,
        seed=seed,
    )
    return balanced.map(lambda label, element: element)


def contrastive_views(
    dataset,
    augmenter,
    batch_size,
    *,
    num_views=2,
    shuffle_buffer=None,
    seed=0,
    drop_remainder=True,
    repeat=False,
    num_parallel_calls=tf.data.AUTOTUNE,
    prefetch=True,
    start_batch=0,
    crop=None,
    data_service=None,
    input_context=None,
    with_index=False,
):
    """Batches a dataset and draws several augmented views of each image.

    Steps: optional `shuffle(shuffle_buffer, seed=seed)`, optional
    `repeat()`, `batch(batch_size)`, then every batch of `uint8` images is
    passed once per view to the augmenter as
    `augmenter(images, seed=view_seed)`, where `view_seed` is an `int32`
    stateless seed `[batch_key, view_index]` and `batch_key` comes from
    `tf.data.Dataset.random(seed, rerandomize_each_iteration=True)` zipped
    with the batches. The views are stacked on axis 1.

    So the views are reproducible (the same seed gives the same sequence of
    epochs, even with a parallel `map`), every batch and view draws its own
    randomness, each new pass over the dataset (each epoch of `fit`) draws
    new views, and all replicas of a distributed run see exactly the views
    a single device would see.

    Args:
        dataset: `tf.data.Dataset`. Unbatched, yielding `(image, label)` or
            `image`, with `image` a `uint8` tensor `[H, W, C]` (as made by
            `load`).
        augmenter: callable or list/tuple of callables. Called as
            `augmenter(images, seed=view_seed)` on a `uint8` batch
            `[batch, H, W, C]`; must return float images
            `[batch, h, w, C']` in [0, 1] (checked). A Keras or keras-cv
            preprocessing layer (or a Sequential/Pipeline of them), which
            takes no `seed`, is wrapped in
            `keras_contrastive.augment.LayerAugmenter`. One callable is used for every view (with
            different seeds); a list must hold exactly `num_views`
            callables, one per view (e.g. asymmetric BYOL augmentations).
        batch_size: int. Number of images per batch, at least 1.
        num_views: int. Number of views of each image (1 gives one augmented
            view for supervised training). Defaults
            to `2`.
        shuffle_buffer: int or `None`. Shuffle buffer size; `None` does not
            shuffle. Defaults to `None`.
        seed: int. Seed of the shuffle and of the augmentations. Defaults to
            `0`.
        drop_remainder: bool. Drop the last, smaller batch, so every batch
            has a static size (needed on TPU and for losses whose shape
            depends on the batch size). Defaults to `True`.
        repeat: bool. Repeat the dataset indefinitely. Defaults to `False`.
        num_parallel_calls: int. Parallelism of the augmentation `map`.
            Defaults to `tf.data.AUTOTUNE`.
        prefetch: bool. Whether to prefetch batches. Defaults to `True`.
        start_batch: int. Index of the first batch to yield: the batches
            before it are drawn (shuffle order and keys) but not augmented,
            so a run resumed after `start_batch` optimizer steps continues
            the exact sequence an uninterrupted run sees (see
            `keras_contrastive.callbacks.BackupAndRestore.resume_step`).
            With `repeat=True` and a shuffle, TensorFlow draws each pass's
            order from a seed state that all iterators of the returned
            dataset share, so let only `fit` iterate it (take sample batches
            from a second `contrastive_views` call): another iterator that
            reads past the end of a pass changes the later passes. A seed
            per pass would avoid that, but `shuffle` fails on a tensor seed
            when the global seed is 0 (TensorFlow 2.21). Defaults to `0`.
        crop: callable `(image, seed) -> uint8 [h, w, C]` or None. Geometry
            drawn on each image before batching, once per view, at the
            image's own size: `kc.crops.RandomResizedCrop(size)` (SimCLR's
            random resized crop; images may differ in size, or arrive
            encoded from `load(..., decode=False)`, JPEGs then decoding only
            the crop). Each element draws a key of its own
            (`tf.data.Dataset.random(seed + 2**32)`), view v using the
            seed `[key, v]`; `augmenter` then gets the batch of view v's
            crops, so give it no crop of its own (e.g. `crop_area=(1, 1),
            crop_aspect_ratio=(1, 1)` for `SimCLRAugmenter`: the whole
            image, unchanged). Defaults to None (the augmenter does it all).
        data_service: str or None. Address of a `tf.data` service
            dispatcher (`grpc://host:port`, started with
            `tf.data.experimental.service.DispatchServer` and its
            `WorkerServer`s on other hosts): the reading, cropping and
            augmentation then run on the service's workers, which split each
            epoch among them (`processing_mode="distributed_epoch"`), for
            trainer hosts that are input-bound. Every example still comes
            once per epoch, but each worker shuffles and batches its own
            share, so the batches (and their seeds) are not the local
            pipeline's and do not repeat from run to run. Defaults to None
            (on this host).
        input_context: `tf.distribute.InputContext` or None. For
            `strategy.distribute_datasets_from_function`: `dataset` is this
            pipeline's shard (`load(..., input_context=...)`), `batch_size`
            stays the global batch and each batch holds one replica's share
            (`input_context.get_per_replica_batch_size`), and the batch and
            crop keys come from a stream of this pipeline's own, so no two
            workers draw the same views. The global batch is then made of
            every worker's own examples, not the one a single pipeline would
            make. Defaults to None.
        with_index: bool. Also yield each example's index, its position in
            `dataset` (int32, numbered before the shuffle), for negatives
            kept per example (`kc.negatives.MemoryBank`). With
            `input_context`, position p of pipeline i of n is numbered
            `p * n + i`: the position in the whole split when `load` shards
            it element by element (local files, arrays, folders). Defaults
            to False.

    Returns:
        A `tf.data.Dataset` yielding `(views, labels)`, or `views` when
        `dataset` yields images only; with `with_index`, `views` is replaced
        by the dict `{"views": views, "index": index}` (`index` int32
        `[batch]`), which the trainers take as x. `views` is `float32` of shape
        `[batch, num_views, h, w, C']`, `labels` is `[batch]`. When the
        augmenters give views of several sizes (multi-crop, e.g.
        `kc.augment.multi_crop_augmenters`), `views` is a tuple of such
        tensors, one per run of consecutive views of one size, each of
        static shape (`(views,)` without labels, so `fit` reads it as x);
        the trainers take either.

    Raises:
        ValueError: if an argument is invalid, or if `drop_remainder=True`
            and the dataset is known to hold fewer than `batch_size`
            examples (the result would be empty).
    """
    if not isinstance(dataset, tf.data.Dataset):
        raise ValueError(
            "`dataset` must be a tf.data.Dataset (e.g. from "
            f"`keras_contrastive.data.load`). Received: {type(dataset).__name__}"
        )
    batch_size = _check_int("batch_size", batch_size, minimum=1)
    num_views = _check_int("num_views", num_views, minimum=1)
    seed = _check_int("seed", seed, minimum=-(2**31))
    if seed >= 2**31:
        raise ValueError(f"`seed` must fit in int32 (the stateless seed dtype). Received: seed={seed}")
    if shuffle_buffer is not None:
        shuffle_buffer = _check_int("shuffle_buffer", shuffle_buffer, minimum=1)
    start_batch = _check_int("start_batch", start_batch, minimum=0)
    # Seeds of this input pipeline's key streams: its own when there are several (2**33 apart).
    pipeline_seed = seed
    if input_context is not None:
        if batch_size % input_context.num_replicas_in_sync:
            raise ValueError(
                f"The global batch_size={batch_size} does not split evenly over "
                f"{input_context.num_replicas_in_sync} replicas; use a multiple of it."
            )
        batch_size = input_context.get_per_replica_batch_size(batch_size)
        pipeline_seed = seed + input_context.input_pipeline_id * 2**33
    if isinstance(augmenter, (list, tuple)):
        augmenters = list(augmenter)
        if len(augmenters) != num_views:
            raise ValueError(
                f"Received {len(augmenters)} augmenters for num_views="
                f"{num_views}. Pass one callable for all views, or a list of "
                f"exactly {num_views} callables (one per view)."
            )
    else:
        augmenters = [augmenter] * num_views
    # Keras / keras-cv preprocessing layers (no `seed` argument) run through
    # `LayerAugmenter`, which seeds them and converts their value range.
    augmenters = layer_augmenter.as_augmenter(augmenters)
    for index, function in enumerate(augmenters):
        if not callable(function):
            raise ValueError(
                "`augmenter` must be a callable `(images, seed) -> views` or a "
                f"list of such callables. Element {index} is "
                f"{type(function).__name__}, which is not callable."
            )

    spec = dataset.element_spec
    has_labels = isinstance(spec, tuple) and len(spec) == 2
    image_spec = spec[0] if has_labels else spec
    if not isinstance(image_spec, tf.TensorSpec):
        raise ValueError(
            "`dataset` must yield `(image, label)` pairs or images alone "
            f"(as made by `load`). Received elements: {spec}"
        )
    encoded = image_spec.dtype == tf.string and image_spec.shape.rank == 0
    if encoded and crop is None:
        raise ValueError(
            "`dataset` yields encoded images (load(..., decode=False)); pass "
            "crop=kc.crops.RandomResizedCrop(size) to decode and crop each one."
        )
    if crop is not None and not callable(crop):
        raise ValueError(f"`crop` must be a callable (image, seed) -> image; got {type(crop).__name__}.")
    if not encoded and image_spec.shape.rank != 3:
        raise ValueError(
            "`dataset` must be unbatched, yielding images of shape "
            f"[H, W, C]. Received image shape {image_spec.shape}. If the "
            "dataset is batched, call `.unbatch()` on it first."
        )

    cardinality = int(dataset.cardinality())
    if drop_remainder and cardinality >= 0 and cardinality < batch_size and (not repeat or cardinality == 0):
        raise ValueError(
            f"The dataset holds {cardinality} examples, fewer than "
            f"batch_size={batch_size}, so with drop_remainder=True it would "
            "give no batches. Use a smaller batch_size, more data, "
            "repeat=True or drop_remainder=False."
        )

    if not isinstance(with_index, bool):
        raise ValueError(f"`with_index` must be True or False; got {with_index!r}.")
    if with_index:
        # Numbered before the shuffle, so each example keeps its own index; the index then travels with it.
        stride, offset = 1, 0
        if input_context is not None:
            stride, offset = input_context.num_input_pipelines, input_context.input_pipeline_id
        dataset = dataset.enumerate().map(
            lambda position, element: (element, tf.cast(position * stride + offset, tf.int32))
        )

    def unpack(element):
        """`(image, label or None, index or None)` of one element (or batch) of the pipeline."""
        index = None
        if with_index:
            element, index = element
        return (element[0], element[1], index) if has_labels else (element, None, index)

    def pack(views, label, index):
        x = {"views": views, "index": index} if with_index else views
        if has_labels:
            return x, label
        # A bare tuple of groups would read as (x, y) to `fit`: wrap it.
        return (x,) if isinstance(x, tuple) else x

    if shuffle_buffer is not None:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed)
    if repeat:
        dataset = dataset.repeat()
    if crop is not None:
        # Per image, before batching: images of any size (or encoded) become
        # `num_views` crops of one size. Keys of their own, re-drawn each pass.
        element_keys = tf.data.Dataset.random(seed=pipeline_seed + 2**32, rerandomize_each_iteration=True).map(
            lambda r: tf.cast(r % (2**31 - 1), tf.int32)
        )

        def crop_views(key, element):
            image, label, index = unpack(element)
            views = tf.stack([crop(image, tf.stack([key, tf.constant(v, tf.int32)])) for v in range(num_views)])
            cropped = (views, label) if has_labels else views
            return (cropped, index) if with_index else cropped

        dataset = tf.data.Dataset.zip((element_keys, dataset)).map(
            crop_views, num_parallel_calls=num_parallel_calls, deterministic=True
        )
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)

    def make_views(batch_key, element):
        images, label, index = unpack(element)
        views = []
        for view_index, function in enumerate(augmenters):
            # The key is part of the element, so seeds never depend on the
            # order in which parallel map calls run.
            view_seed = tf.stack([batch_key, tf.constant(view_index, tf.int32)])
            # With `crop`, the batch holds every view's crop: [batch, views, h, w, C].
            view = function(images[:, view_index] if crop is not None else images, seed=view_seed)
            view = tf.convert_to_tensor(view)
            if not view.dtype.is_floating:
                raise ValueError(
                    f"The augmenter for view {view_index} returned dtype "
                    f"{view.dtype.name}; expected float images (e.g. in "
                    "[0, 1]). Convert inside the augmenter, e.g. "
                    "`tf.cast(images, 'float32') / 255`."
                )
            view = tf.cast(view, tf.float32)
            message = (
                f"The augmenter for view {view_index} returned values outside [0, 1]; views must be float "
                "in [0, 1] (the exported encoder divides raw pixels by 255). For Keras or keras-cv layers "
                "working in [0, 255], wrap them in keras_contrastive.augment.LayerAugmenter(layers, "
                "value_range=(0, 255))."
            )
            tf.debugging.assert_greater_equal(tf.reduce_min(view), -layer_augmenter.RANGE_TOLERANCE, message=message)
            tf.debugging.assert_less_equal(tf.reduce_max(view), 1.0 + layer_augmenter.RANGE_TOLERANCE, message=message)
            views.append(view)
        # Views of one size are stacked on axis 1; views of several sizes (multi-crop: 2 global and k small
        # crops) become a tuple of such stacks, one per run of consecutive views of one size.
        groups = []
        for view in views:
            if groups and groups[-1][0].shape[1:] == view.shape[1:] and view.shape[1:].is_fully_defined():
                groups[-1].append(view)
            else:
                groups.append([view])
        if len(groups) > 1 and not all(g[0].shape[1:].is_fully_defined() for g in groups):
            raise ValueError(
                "Views of several sizes (multi-crop) need augmenters with static output sizes; got shapes "
                f"{[list(v.shape) for v in views]}."
            )
        views = tf.stack(views, axis=1) if len(groups) == 1 else tuple(tf.stack(g, axis=1) for g in groups)
        return pack(views, label, index)

    # One random key per batch, re-drawn on every pass over the data (each
    # epoch), yet the same sequence for the same seed.
    keys = tf.data.Dataset.random(seed=pipeline_seed, rerandomize_each_iteration=True).map(
        lambda r: tf.cast(r % (2**31 - 1), tf.int32)
    )
    dataset = tf.data.Dataset.zip((keys, dataset))
    if start_batch:
        # Before the map: skipped batches are shuffled and batched, never augmented.
        dataset = dataset.skip(start_batch)
    dataset = dataset.map(make_views, num_parallel_calls=num_parallel_calls, deterministic=True)
    if data_service is not None:
        # TensorFlow's own distributed input engine, not a home-made one.
        dataset = dataset.apply(
            tf.data.experimental.service.distribute(processing_mode="distributed_epoch", service=data_service)
        )
    if prefetch:
        dataset = dataset.prefetch(tf.data.AUTOTUNE)
    return dataset


# --------------------------------------------------------------------------
# Argument checks.


def _describe(name):
    """Short description of a source, for error messages."""
    if isinstance(name, (np.ndarray, tuple)):
        return "the given arrays"
    return repr(str(name))


def _check_int(argument, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"`{argument}` must be an integer >= {minimum}. Received: {argument}={value!r}")
    if value < minimum:
        raise ValueError(f"`{argument}` must be >= {minimum}. Received: {argument}={value}")
    return int(value)


def _standardize_image_size(image_size):
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    valid = (
        isinstance(image_size, (tuple, list))
        and len(image_size) == 2
        and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in image_size)
    )
    if not valid:
        raise ValueError(
            "`image_size` must be a positive int or a tuple (height, width) "
            f"of positive ints, or None. Received: image_size={image_size!r}"
        )
    return int(image_size[0]), int(image_size[1])


def _standardize_channels(channels):
    if channels is None:
        return None
    if isinstance(channels, bool) or channels not in (1, 3):
        raise ValueError(
            "`channels` must be 1 (grayscale), 3 (RGB) or None (keep the "
            f"source channels). Received: channels={channels!r}"
        )
    return int(channels)


# --------------------------------------------------------------------------
# Splits such as "train[:512]" or "test[10%:20%]".


def _parse_split(split, allowed):
    """Returns `(base, bounds)`, `bounds` being `None` or `(lo, hi)` strings."""
    match = _SPLIT_PATTERN.match(split)
    if match is None or match.group(1) not in allowed:
        raise ValueError(
            f"Unsupported split {split!r}. Expected one of {list(allowed)}, "
            "optionally followed by a slice such as '[:512]', '[100:200]' or "
            "'[:10%]'."
        )
    base, lo, hi = match.groups()
    if lo is None:
        return base, None
    return base, (lo, hi)


def _split_bounds(split, bounds, num_examples):
    """Turns slice bounds into `(start, stop)` example indices."""
    if bounds is None:
        return 0, num_examples
    resolved = []
    for text, default in zip(bounds, (0, num_examples)):
        if text == "":
            resolved.append(default)
            continue
        match = _BOUND_PATTERN.match(text)
        if match is None:
            raise ValueError(
                f"Cannot parse the slice bound {text!r} in split {split!r}. "
                "Expected an integer (e.g. 'train[:512]') or a percentage "
                "(e.g. 'train[:10%]')."
            )
        value, percent = int(match.group(1)), bool(match.group(2))
        if percent:
            if abs(value) > 100:
                raise ValueError(f"Percentage {text!r} in split {split!r} is outside [-100%, 100%].")
            # Round to the closest example, as TensorFlow Datasets does.
            magnitude = math.floor(abs(value) * num_examples / 100 + 0.5)
            value = -magnitude if value < 0 else magnitude
        elif abs(value) > num_examples:
            raise ValueError(
                f"Index {value} in split {split!r} is out of range: the split has {num_examples} examples."
            )
        resolved.append(value + num_examples if value < 0 else value)
    start, stop = resolved
    if start >= stop:
        raise ValueError(f"Split {split!r} selects no examples (start {start} >= stop {stop}, out of {num_examples}).")
    return start, stop


def _array_split_bounds(split, num_examples):
    _, bounds = _parse_split(split, ("train",))
    return _split_bounds(split, bounds, num_examples)


# --------------------------------------------------------------------------
# In-memory arrays.


def _standardize_arrays(data):
    """Validates `x` or `(x, y)`; returns uint8 `[N, H, W, C]` and int32 `y`."""
    if isinstance(data, tuple):
        if len(data) != 2:
            raise ValueError(f"A tuple source must be (images, labels). Received a tuple of length {len(data)}.")
        x, y = data
    else:
        x, y = data, None
    try:
        x = np.asarray(x)
    except Exception as error:
        raise ValueError(f"Could not convert the images to a numpy array: {error}") from error

    if x.ndim not in (3, 4):
        raise ValueError(
            "Images must have shape [N, H, W] or [N, H, W, C]. Received an "
            f"array of shape {x.shape} (rank {x.ndim}). For a single image, "
            "add a batch axis with `x[None]`."
        )
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.shape[0] == 0:
        raise ValueError(f"Received no images: the array has shape {x.shape}.")
    if x.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"Images must be channels-last with 1, 3 or 4 channels. Received "
            f"shape {x.shape}, i.e. {x.shape[-1]} channels. If the array is "
            "channels-first [N, C, H, W], transpose it with "
            "`x.transpose(0, 2, 3, 1)`."
        )

    if x.dtype == np.uint8:
        pass
    elif np.issubdtype(x.dtype, np.floating):
        if not np.all(np.isfinite(x)):
            raise ValueError(
                "Images contain NaN or infinite values "
                f"({int(np.sum(~np.isfinite(x)))} of {x.size}). Expected finite "
                "values in [0, 1]."
            )
        low, high = float(x.min()), float(x.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(
                "Float images must have values in [0, 1]. Found min "
                f"{low:g} and max {high:g}. If they are in [0, 255], divide by "
                "255 (or cast to uint8) first."
            )
        x = np.round(x.astype(np.float64) * 255.0).astype(np.uint8)
    else:
        raise ValueError(
            f"Images must be uint8 or float in [0, 1]. Received dtype "
            f"{x.dtype}. Convert them, e.g. `x.astype('uint8')` for integer "
            "values in [0, 255] or `x.astype('float32') / 255`."
        )

    if y is None:
        return x, None
    try:
        y = np.asarray(y)
    except Exception as error:
        raise ValueError(f"Could not convert the labels to a numpy array: {error}") from error
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(
            f"Labels must have shape [N]. Received shape {y.shape}. For one-hot labels, pass `y.argmax(-1)`."
        )
    if len(y) != len(x):
        raise ValueError(f"Got {len(x)} images but {len(y)} labels. Pass exactly one label per image.")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"Labels must be integers. Received dtype {y.dtype}. Convert "
            "them with `y.astype('int32')` (class indices) or map class "
            "names to indices first."
        )
    info = np.iinfo(np.int32)
    if y.min() < info.min or y.max() > info.max:
        raise ValueError(f"Labels must fit in int32. Found min {y.min()} and max {y.max()}.")
    return x, y.astype(np.int32)


def _dataset_from_arrays(x, y):
    if y is None:
        return tf.data.Dataset.from_tensor_slices(x)
    return tf.data.Dataset.from_tensor_slices((x, y))


# --------------------------------------------------------------------------
# Local sources: datasets read from files on this machine before tfds is asked.

#: name -> module with `SPLITS`, `NUM_CLASSES`, `read_arrays(split, data_dir)` (full split
#: `(x, y)` or None when its files are missing) and `missing_message(split,
#: data_dir, tfds_dir, reason)`. Fashion-MNIST's Debian files live in
#: `keras_contrastive.fashion_mnist`, not here.
LOCAL_SOURCES = {"fashion_mnist": fashion_mnist}


def _read_local(name, split, data_dir):
    """Sliced `(x, y)` of a local source's split, or None if its files are missing."""
    source = LOCAL_SOURCES[name]
    base, bounds = _parse_split(split, source.SPLITS)
    arrays = source.read_arrays(base, data_dir)
    if arrays is None:
        return None
    x, y = arrays
    start, stop = _split_bounds(split, bounds, len(x))
    # Copy: arrays read with np.frombuffer are read-only, callers may write in place.
    return np.array(x[start:stop], copy=True), y[start:stop].astype(np.int32)


def _load_local(name, split, labels, data_dir, shuffle_files, subset=None, input_context=None):
    """A local source's files if present, else the tfds dataset of the same name."""
    source = LOCAL_SOURCES[name]
    _parse_split(split, source.SPLITS)
    arrays = _read_local(name, split, data_dir)
    if arrays is not None:
        x, y = arrays
        if subset is not None:
            index = _subset_indices(subset, len(x))
            x, y = x[index], y[index]
        return _dataset_from_arrays(_shard(x, input_context), _shard(y, input_context) if labels else None)
    try:
        return _load_tfds(
            name,
            split,
            labels=labels,
            data_dir=data_dir,
            shuffle_files=shuffle_files,
            subset=subset,
            input_context=input_context,
        )
    except FileNotFoundError as error:
        tfds_dir = data_dir if data_dir is not None else "tfds' default data_dir"
        raise FileNotFoundError(source.missing_message(split, data_dir, tfds_dir, error.__cause__ or error)) from error


# --------------------------------------------------------------------------
# TensorFlow Datasets.


def _load_tfds(name, split, labels, data_dir, shuffle_files, subset=None, decode=True, input_context=None):
    # Imported here: tensorflow_datasets is slow to import and not needed
    # for local files and arrays.
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import registered

    try:
        decoders = None if decode else {"image": tfds.decode.SkipDecoding()}
        # Sharded by tfds, by file: each input pipeline reads only its own files.
        read_config = None if input_context is None else tfds.ReadConfig(input_context=input_context)
        dataset = tfds.load(
            name,
            split=split,
            data_dir=data_dir,
            shuffle_files=shuffle_files,
            decoders=decoders,
            read_config=read_config,
        )
    except registered.DatasetNotFoundError as error:
        raise FileNotFoundError(
            f"{name!r} is neither an existing directory nor a tfds dataset "
            "name. Pass a directory of images, a numpy array, or a name from "
            "`tfds.list_builders()`."
        ) from error
    except (ValueError, TypeError):
        # Bad arguments (e.g. an unknown split) are the caller's to fix, and
        # tfds' own message already says how.
        raise
    except Exception as error:
        # Everything else comes from preparing the data: not prepared and no
        # network, missing download dependencies, failed downloads.
        where = data_dir if data_dir is not None else "tfds' default data_dir"
        raise FileNotFoundError(
            f"The tfds dataset {name!r} is not prepared in {where} and could "
            f"not be downloaded ({type(error).__name__}: {error}). Run once "
            "with internet access, or prepare it with "
            f"`tfds build {name}` on a machine that has it, or pass "
            "`data_dir` pointing at a directory where it is prepared."
        ) from error

    spec = dataset.element_spec
    if not isinstance(spec, dict) or "image" not in spec:
        raise ValueError(
            f"The tfds dataset {name!r} has no 'image' feature; its elements "
            f"are {spec}. Only image datasets are supported."
        )
    if not decode and spec["image"].dtype == tf.string and spec["image"].shape.rank == 0:
        pass  # encoded, as asked
    elif spec["image"].dtype != tf.uint8 or spec["image"].shape.rank != 3:
        raise ValueError(
            f"The 'image' feature of {name!r} is {spec['image']}; expected uint8 images of shape [H, W, C]."
        )
    if subset is not None:
        dataset = _filter_tfds(dataset, spec, subset, name)
    use_label = labels and "label" in spec
    if use_label and (not spec["label"].dtype.is_integer or spec["label"].shape.rank != 0):
        raise ValueError(
            f"The 'label' feature of {name!r} is {spec['label']}; expected an "
            "integer class index. Pass labels=False to load images only."
        )
    if use_label:
        return dataset.map(
            lambda e: (e["image"], tf.cast(e["label"], tf.int32)),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return dataset.map(lambda e: e["image"], num_parallel_calls=tf.data.AUTOTUNE)


# --------------------------------------------------------------------------
# Folders of image files.


def _shard(items, input_context):
    """Every `num_input_pipelines`-th item from `input_pipeline_id` on (all items without a context)."""
    if items is None or input_context is None:
        return items
    return items[input_context.input_pipeline_id :: input_context.num_input_pipelines]


def _is_image_name(name):
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in _IMAGE_EXTENSIONS


def _image_files_under(directory):
    """Image files anywhere under `directory`, sorted; through `tf.io.gfile`, so `gs://` and other
    TensorFlow file systems work as local folders do."""
    return sorted(
        tf.io.gfile.join(folder, name)
        for folder, _, names in tf.io.gfile.walk(directory)
        for name in names
        if _is_image_name(name)
    )


def _list_directory(root, split, subset=None):
    """`(files, file_labels)` of a folder: sorted image paths and their class ids (None for a flat folder)."""
    if not tf.io.gfile.isdir(root):
        raise FileNotFoundError(
            f"Image directory {root!r} does not exist. Pass an existing "
            "directory of images (one sub-folder per class, or a flat folder)."
        )
    try:
        _, bounds = _parse_split(split, ("train",))
    except ValueError:
        raise ValueError(
            f"A folder of images has a single split, 'train' (optionally sliced: 'train[:512]'). Received: {split!r}"
        ) from None
    entries = sorted(name.rstrip("/") for name in tf.io.gfile.listdir(root))
    class_dirs = [n for n in entries if not n.startswith(".") and tf.io.gfile.isdir(tf.io.gfile.join(root, n))]
    top_files = [tf.io.gfile.join(root, n) for n in entries if n not in class_dirs and _is_image_name(n)]
    if class_dirs and top_files:
        raise ValueError(
            f"{root!r} holds both image files and sub-folders "
            f"({', '.join(class_dirs[:5])}), so it is unclear "
            "whether the sub-folders are classes. Put every image in a class "
            "sub-folder, or use a flat folder without sub-folders."
        )
    if class_dirs:
        files, file_labels = [], []
        for label, class_dir in enumerate(class_dirs):
            class_files = _image_files_under(tf.io.gfile.join(root, class_dir))
            files.extend(class_files)
            file_labels.extend([label] * len(class_files))
    else:
        files, file_labels = top_files, None
    if not files:
        raise FileNotFoundError(f"No image files ({', '.join(_IMAGE_EXTENSIONS)}) found in {root!r}.")
    start, stop = _split_bounds(split, bounds, len(files))
    files = files[start:stop]
    file_labels = None if file_labels is None else file_labels[start:stop]
    if subset is not None:
        files, file_labels = _subset_files(root, files, file_labels, subset)
    return files, file_labels


def _load_directory(root, split, labels, shuffle_files, same_size, subset=None, decode=True, input_context=None):
    files, file_labels = _list_directory(root, split, subset)
    files, file_labels = _shard(files, input_context), _shard(file_labels, input_context)
    if not files:
        raise ValueError(f"Input pipeline {input_context.input_pipeline_id} gets none of the {root!r} files.")

    # The first file fixes the channel count (so elements have a static
    # shape) and the reference size other files are checked against.
    first = tf.io.decode_image(tf.io.read_file(files[0]), expand_animations=False)
    height, width, source_channels = first.shape
    # Alpha is not image content for contrastive learning: drop it.
    num_channels = {1: 1, 2: 1, 3: 3, 4: 3}[source_channels]

    def read_image(path):
        contents = tf.io.read_file(path)
        # Name the file that is not an image (TensorFlow's decode error does
        # not): its first bytes must be a JPEG, PNG, GIF or BMP signature.
        known = tf.reduce_any(
            [tf.equal(tf.strings.substr(contents, 0, len(magic)), magic) for magic in _IMAGE_SIGNATURES]
        )
        check = tf.debugging.Assert(known, ["Not a JPEG, PNG, GIF or BMP image (remove it from the folder):", path])
        # The decode waits for the check: otherwise it may fail first, with an error that names no file.
        with tf.control_dependencies([check]):
            contents = tf.identity(contents)
        if not decode:
            return contents
        image = tf.io.decode_image(contents, channels=num_channels, expand_animations=False)
        if not same_size:
            # `image_size` will bring every image to one size later.
            image.set_shape([None, None, num_channels])
            return image
        same = tf.reduce_all(tf.equal(tf.shape(image)[:2], [height, width]))
        tf.debugging.Assert(
            same,
            [
                f"Images in {root} differ in size (the first, {files[0]}, is "
                f"{height}x{width}). Pass image_size=... to load() to resize "
                "them all. Offending file and its shape:",
                path,
                tf.shape(image),
            ],
        )
        image.set_shape([height, width, num_channels])
        return image

    if file_labels is not None and labels:
        dataset = tf.data.Dataset.from_tensor_slices((files, np.asarray(file_labels, np.int32)))
        if shuffle_files:
            dataset = dataset.shuffle(len(files))
        return dataset.map(
            lambda path, label: (read_image(path), label),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    dataset = tf.data.Dataset.from_tensor_slices(files)
    if shuffle_files:
        dataset = dataset.shuffle(len(files))
    return dataset.map(read_image, num_parallel_calls=tf.data.AUTOTUNE)


# --------------------------------------------------------------------------
# Label subsets (SimCLR's 1% / 10% lists) and class-balanced fractions.


def _read_subset(subset):
    """Example ids from a text file (one per line) or a list."""
    if isinstance(subset, (str, os.PathLike)):
        path = os.fspath(subset)
        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(f"Subset file {path!r} does not exist (one example id per line).")
        with tf.io.gfile.GFile(path) as f:
            ids = [line.strip() for line in f]
        source = repr(path)
    else:
        ids = [str(i).strip() for i in subset]
        source = "the given list"
    ids = [i for i in ids if i and not i.startswith("#")]
    if not ids:
        raise ValueError(f"The subset in {source} holds no example ids.")
    return ids


def _subset_indices(ids, num_examples):
    """Integer ids as indices into a split of `num_examples` examples."""
    try:
        index = np.asarray([int(i) for i in ids], np.int64)
    except ValueError:
        raise ValueError(
            "This source has no file names, so the subset's ids must be example indices within the split; "
            f"got {ids[:3]}."
        ) from None
    bad = index[(index < 0) | (index >= num_examples)]
    if len(bad):
        raise ValueError(f"Subset indices {bad[:5].tolist()} are outside the split's {num_examples} examples.")
    return np.unique(index)


def _are_indices(ids):
    """Whether every id is an integer (an example index, never an image file's name)."""
    return all(re.fullmatch(r"-?\d+", i) for i in ids)


def _subset_files(root, files, file_labels, ids):
    """The files named by `ids` (a file name, or the path under `root`), or indexed by them (integers, into the
    sorted file list: what `balanced_fraction` draws)."""
    if _are_indices(ids):
        index = _subset_indices(ids, len(files))
        return [files[i] for i in index], None if file_labels is None else [file_labels[i] for i in index]
    wanted = set(ids)
    prefix = root.rstrip("/") + "/"
    keep = [i for i, path in enumerate(files) if os.path.basename(path) in wanted or path[len(prefix) :] in wanted]
    found = {os.path.basename(files[i]) for i in keep} | {files[i][len(prefix) :] for i in keep}
    missing = [i for i in ids if i not in found]
    if missing:
        raise ValueError(
            f"{len(missing)} of the subset's {len(ids)} ids are not image files in {root!r}, e.g. {missing[:3]}."
        )
    return [files[i] for i in keep], None if file_labels is None else [file_labels[i] for i in keep]


def _filter_tfds(dataset, spec, ids, name):
    """Keeps the tfds examples named by `ids`: by `file_name` if the dataset has it, else by index."""
    if "file_name" in spec and not _are_indices(ids):
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(ids), tf.ones([len(ids)], tf.int32)), default_value=0
        )
        return dataset.filter(lambda e: table.lookup(e["file_name"]) > 0)
    index = tf.constant(_subset_indices(ids, np.iinfo(np.int64).max))
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(index, tf.ones_like(index, tf.int32)), default_value=0
    )

    def listed(index, element):
        return table.lookup(index) > 0

    def drop_index(index, element):
        return element

    return dataset.enumerate().filter(listed).map(drop_index)


def balanced_fraction(labels, fraction, seed=0):
    """Indices of a class-balanced subset: `fraction` of each class, drawn with a seed.

    The fallback when no published subset exists (SimCLR's 1% and 10% lists
    are ImageNet's only). Each class keeps `round(fraction * count)`
    examples, at least one.

    Args:
        labels: int array `[N]`.
        fraction: float in (0, 1].
        seed: int. Defaults to 0.

    Returns:
        Sorted int64 indices into `labels`.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"`fraction` must be in (0, 1]; got {fraction}.")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        take = max(1, int(round(fraction * len(members))))
        chosen.append(rng.permutation(members)[:take])
    return np.sort(np.concatenate(chosen)).astype(np.int64)


# --------------------------------------------------------------------------
# Post-processing shared by all sources.


def _resize_or_pad(images, size):
    """Pads images that fit inside `size` (centred), resizes the others."""
    target_height, target_width = size

    def pad():
        return tf.image.resize_with_crop_or_pad(images, target_height, target_width)

    def resize():
        # Antialiasing avoids aliasing when shrinking; for enlarging it is
        # the same as plain bilinear interpolation.
        resized = tf.image.resize(images, size, method="bilinear", antialias=True)
        return crops.to_uint8(resized)

    height, width = images.shape[-3], images.shape[-2]
    if height is not None and width is not None:
        if (height, width) == (target_height, target_width):
            return images
        if height <= target_height and width <= target_width:
            return pad()
        return resize()
    shape = tf.shape(images)
    fits = tf.logical_and(shape[-3] <= target_height, shape[-2] <= target_width)
    result = tf.cond(fits, pad, resize)
    result.set_shape(images.shape[:-3].concatenate([target_height, target_width, images.shape[-1]]))
    return result


def _check_channel_conversion(source, channels):
    if channels is None or source == channels or {source, channels} == {1, 3}:
        return
    if source is None:
        raise ValueError(
            f"Cannot convert images with an unknown number of channels to channels={channels}. Pass channels=None."
        )
    raise ValueError(
        f"Cannot convert {source}-channel images to channels={channels}: "
        "only 1 <-> 3 conversions are supported. Pass channels=None to keep "
        f"the {source} channels."
    )


def _convert_channels(images, channels):
    source = images.shape[-1]
    if source == 1 and channels == 3:
        return tf.image.grayscale_to_rgb(images)
    if source == 3 and channels == 1:
        # ITU-R 601 luma, computed in float and rounded (not truncated).
        weights = tf.constant([0.299, 0.587, 0.114], tf.float32)
        gray = tf.reduce_sum(tf.cast(images, tf.float32) * weights, axis=-1, keepdims=True)
        return crops.to_uint8(gray)
    return images


def _postprocess_dataset(dataset, image_size, channels, crop_fraction=None):
    if image_size is None and channels is None:
        return dataset
    spec = dataset.element_spec
    has_labels = isinstance(spec, tuple)
    image_spec = spec[0] if has_labels else spec
    # Checked here so that the error is not buried in a tf.data trace.
    _check_channel_conversion(image_spec.shape[-1], channels)

    def process(image):
        if crop_fraction is not None:
            image = crops.center_crop(image, image_size, crop_fraction)
            image.set_shape([*image_size, image_spec.shape[-1]])
        elif image_size is not None:
            image = _resize_or_pad(image, image_size)
        if channels is not None:
            image = _convert_channels(image, channels)
        return image

    if has_labels:
        return dataset.map(
            lambda image, label: (process(image), label),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return dataset.map(process, num_parallel_calls=tf.data.AUTOTUNE)
