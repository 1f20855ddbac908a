"""See what a trained encoder learned: its figures and pictures, from an export or a `.keras` file.

```
python -m keras_contrastive.inspect PATH [--dataset NAME] --output_dir DIR
```

`PATH` is an export (`kc.export.export_encoder`'s version directory, or its
model directory: the highest version), such as the shipped
`saved_models/simclr_fashion_mnist_pretrained`, or a `.keras` file (an encoder
or a trainer). The command prints an export's serving signatures and metadata
(`kc.savedmodel.describe`), the weighted kNN accuracy and the retrieval figures
(recall@1/5/10, mAP@100) of the test split in the training split, and writes
the pictures (`pictures`) as PNG files in `DIR` and as TensorBoard images under
`DIR/logs/pictures`, and the test embeddings for TensorBoard's embedding
projector under `DIR/logs/projector` (`kc.pictures.write_projector`):
`tensorboard --logdir DIR/logs`. Long steps show a progress bar on a terminal
and stay quiet otherwise.

The recipes draw the same pictures after training (`pictures`,
`save_pictures`).
"""

import argparse
import json
import os
import sys

import keras
import numpy as np
import tensorflow as tf

from keras_contrastive import augment
from keras_contrastive import data
from keras_contrastive import downstream
from keras_contrastive import evaluation
from keras_contrastive import layers
from keras_contrastive import pictures as kc_pictures
from keras_contrastive import savedmodel

#: The pictures `pictures` draws (those that apply to the encoder), as PNG file stems and TensorBoard tags.
PICTURES = (
    "augmented_views",
    "retrieval",
    "embedding_map",
    "similarity_matrix",
    "first_layer_kernels",
    "feature_maps",
    "attention_maps",
)
#: TensorBoard directories under the output directory: images, and the embedding projector.
PICTURES_LOGS, PROJECTOR_LOGS = os.path.join("logs", "pictures"), os.path.join("logs", "projector")


def is_vit(encoder):
    """Whether `encoder` is this package's ViT (a class token and attention blocks)."""
    return any(layer.name == "class_token_and_position" for layer in encoder._flatten_layers())


def is_convolutional(encoder):
    """Whether `encoder` is this package's ResNet (a `stem_conv` layer)."""
    return any(layer.name == "stem_conv" for layer in encoder._flatten_layers())


def augmented_views(augmenter, images, seed=0):
    """Two augmented views of each image: float32 numpy `[N, 2, h, w, C]` in [0, 1].

    Args:
        augmenter: callable `augmenter(uint8 images, seed=[2] int32)`, or a
            pair of them (one per view, as MoCo v3 has).
        images: uint8 `[N, H, W, C]`.
        seed: int. Defaults to 0.
    """
    augmenters = list(augmenter) if isinstance(augmenter, (list, tuple)) else [augmenter, augmenter]
    images = tf.convert_to_tensor(np.asarray(images, "uint8"))
    return np.stack(
        [np.asarray(augmenters[v](images, seed=tf.constant([seed, v], tf.int32))) for v in range(2)], axis=1
    )


def pictures(
    encoder,
    bank,
    test,
    indices,
    test_features,
    views=None,
    embed_views=None,
    queries=8,
    neighbours=8,
    mapped=1000,
    seed=0,
):
    """The pictures of what an encoder learned, `{name: float32 [H, W, 3] image in [0, 1]}` (`PICTURES`).

    - `augmented_views`: each image's two views, a row per image (with `views`);
    - `retrieval`: `queries` test images and their `neighbours` nearest in the
      bank, neighbours of another class framed red;
    - `embedding_map`: the first `mapped` test embeddings in 2-D by label;
    - `similarity_matrix`: the cosine similarities of the views' embeddings
      (with `views`);
    - `first_layer_kernels` and `feature_maps`: a ResNet's stem kernels and
      its first stage's most active channels;
    - `attention_maps`: a ViT's class-token attention over the patches in its
      last block.

    Args:
        encoder: keras.Model on float images in [0, 1] `[N, H, W, C]`, or None
            (an export without its `.keras` file: the pictures that need the
            layers are left out).
        bank: `(images, labels)`: uint8 `[N, H, W, C]` and int `[N]`.
        test: `(images, labels)` of the test split, the same way.
        indices: int `[M, >= neighbours]` bank rows nearest to each test image
            (`kc.evaluation.knn_and_retrieval`).
        test_features: float `[M, dim]`.
        views: float `[B, 2, H, W, C]` in [0, 1] or None (`augmented_views`).
        embed_views: callable from one view batch `[B, H, W, C]` to embeddings
            `[B, d]` for the similarity matrix; defaults to the encoder's
            features (a trainer passes its projections).
        queries, neighbours, mapped: ints. Defaults to 8, 8 and 1000.
        seed: int. The 2-D layout's seed. Defaults to 0.
    """
    (bank_images, bank_labels), (test_images, test_labels) = bank, test
    drawn = {}
    if views is not None:
        drawn["augmented_views"] = _view_pairs(views[:queries])
    drawn["retrieval"] = kc_pictures.retrieval_grid(
        test_images[:queries],
        bank_images,
        np.asarray(indices)[:queries, :neighbours],
        test_labels[:queries],
        bank_labels,
    )
    layout = kc_pictures.layout_2d(np.asarray(test_features)[:mapped], seed=seed)
    drawn["embedding_map"] = kc_pictures.embedding_map(layout, np.asarray(test_labels)[:mapped])
    if views is not None and (embed_views is not None or encoder is not None):
        embed = embed_views or (lambda x: encoder(x, training=False))
        batch = views[:32]
        z = [np.asarray(embed(tf.convert_to_tensor(batch[:, v], tf.float32))) for v in range(2)]
        drawn["similarity_matrix"] = kc_pictures.similarity_matrix(*z)
    if encoder is not None:
        few = np.asarray(test_images[:queries], "float32") / 255.0
        if is_vit(encoder):
            drawn["attention_maps"] = kc_pictures.attention_maps(few, kc_pictures.vit_attention(encoder, few))
        elif is_convolutional(encoder):
            drawn["first_layer_kernels"] = kc_pictures.first_layer_kernels(encoder)
            drawn["feature_maps"] = kc_pictures.feature_maps(encoder, few)
    return drawn


def _view_pairs(views):
    from keras_contrastive import callbacks  # callbacks imports Keras' TensorBoard; only needed here

    return callbacks.view_pairs_grid(views, max_images=len(views))


def save_pictures(drawn, output_dir, log_dir=None):
    """Writes `pictures`' images as `output_dir/<name>.png` and, with `log_dir`, as TensorBoard images tagged
    `<name>`. Returns `{name: png path}`."""
    if log_dir:
        kc_pictures.write_to_tensorboard(log_dir, drawn)
    return {name: kc_pictures.save_png(os.path.join(output_dir, f"{name}.png"), image) for name, image in drawn.items()}


def load(path):
    """The encoder at `path` and what is known about it.

    Returns:
        `(encoder, features_model, metadata, version_path)`: the Keras encoder
        on float images in [0, 1] computing in float32 (None for an export
        without its `.keras` file), a model from uint8 images to features
        (the encoder, or the SavedModel's `serving_default`), the export's
        metadata (`{}` for a `.keras` file) and the export's version
        directory (None for a `.keras` file).
    """
    path = os.fspath(path)
    if path.endswith(".keras"):
        if not os.path.isfile(path):
            raise ValueError(f"{path!r} does not exist.")
        keras_file, metadata, version_path = path, {}, None
    else:
        version_path = savedmodel.resolve_version(path)
        metadata = savedmodel.load_metadata(version_path)
        keras_file = os.path.join(version_path, savedmodel.METADATA_DIR, savedmodel.KERAS_FILE)
        keras_file = keras_file if os.path.isfile(keras_file) else None
    if keras_file is None:
        encoder = None
        features_model = downstream.load_encoder(version_path, trainable=False, prefer_keras_file=False)
    else:
        loaded = keras.saving.load_model(keras_file, compile=False)
        encoder = getattr(loaded, "encoder", loaded)
        layers.set_compute_dtype(encoder, "float32")
        features_model = encoder
        if not metadata and hasattr(loaded, "augmenter"):
            metadata = {"augmenter": loaded.augmenter}
    return encoder, features_model, metadata, version_path


def _augmenter_for(metadata, image_shape, seed):
    """The training run's augmenter where the file records it (a trainer's own, or an export's recipe flags),
    else the SimCLR preset for the image size."""
    if metadata.get("augmenter") is not None:
        return metadata["augmenter"]
    size, channels = image_shape[0], image_shape[2]
    args = metadata.get("args") or {}
    preset = args.get("augment") or ("imagenet" if size >= 64 else "grayscale_small" if channels == 1 else "cifar")
    overrides = {}
    if args.get("crop_min") is not None:
        overrides["crop_area"] = (args["crop_min"], 1.0)
    if args.get("jitter_strength") is not None:
        overrides["color_jitter_strength"] = args["jitter_strength"]
    return augment.simclr_preset(preset, image_shape[:2], channels=channels, seed=seed, **overrides)


def _arrays(dataset, size, verbose, what):
    """The first `size` `(image, label)` pairs of `dataset` as numpy arrays, with a progress bar."""
    if size is not None:
        dataset = dataset.take(size)
    if not isinstance(dataset.element_spec, tuple):
        raise ValueError(f"The {what} split has no labels; kNN, retrieval and the pictures need them.")
    progbar = keras.utils.Progbar(size, unit_name="image", verbose=verbose) if verbose else None
    images, labels = [], []
    for x, y in dataset.batch(1024).as_numpy_iterator():
        images.append(x)
        labels.append(y)
        if progbar is not None:
            progbar.update(sum(len(b) for b in labels))
    if not images:
        raise ValueError(f"The {what} split is empty.")
    return np.concatenate(images), np.concatenate(labels).reshape(-1)


def inspect_encoder(
    path,
    output_dir,
    dataset=None,
    bank_split="train",
    test_split="test",
    test_dataset=None,
    bank_size=None,
    test_size=None,
    k=200,
    temperature=0.1,
    queries=8,
    neighbours=8,
    mapped=1000,
    seed=0,
    verbose=None,
    out=None,
):
    """Everything the command does (see the module docstring); returns the dict it also writes as
    `output_dir/inspect.json`: the figures, the picture and projector paths.

    Args:
        path: an export or a `.keras` file.
        output_dir: str.
        dataset: a `kc.data.load` name (a tfds name, a folder, "fashion_mnist");
            defaults to the one an export was trained on.
        bank_split, test_split: the kNN bank's and the queries' splits.
        test_dataset: where the test split comes from; defaults to `dataset`.
        bank_size, test_size: int or None (all). The first images of each.
        k, temperature: the weighted kNN's. Defaults to 200 and 0.1.
        queries, neighbours, mapped: see `pictures`.
        seed: int. Defaults to 0.
        verbose: int or None. None: progress bars on a terminal only.
        out: a text stream. Defaults to `sys.stdout`.
    """
    out = out or sys.stdout
    verbose = int(out.isatty()) if verbose is None else verbose
    encoder, features_model, metadata, version_path = load(path)
    if version_path is not None:
        savedmodel.describe(version_path, out)
    dataset = dataset or (metadata.get("args") or {}).get("dataset")
    if dataset is None:
        raise ValueError("Name the images to inspect the encoder on with --dataset (e.g. fashion_mnist).")
    image_shape = tuple(features_model.input_shape[1:])
    full = dataset not in data.LOCAL_SOURCES
    options = dict(image_size=image_shape[:2], channels=image_shape[2], crop_fraction=0.875 if full else None)
    print(f"Reading {dataset} {bank_split} (bank) and {test_dataset or dataset} {test_split} (queries)...", file=out)
    bank = _arrays(data.load(dataset, bank_split, **options), bank_size, verbose, "bank")
    test = _arrays(data.load(test_dataset or dataset, test_split, **options), test_size, verbose, "test")
    print(f"Extracting features of {len(bank[0])} + {len(test[0])} images...", file=out)
    bank_features = evaluation.extract_features(features_model, bank[0], verbose=verbose)
    test_features = evaluation.extract_features(features_model, test[0], verbose=verbose)
    results, indices = evaluation.knn_and_retrieval(
        bank_features, bank[1], test_features, test[1], k=k, temperature=temperature
    )
    print(f"kNN accuracy (k={k}, cosine, temperature {temperature}): {results['knn_accuracy']:.4f}", file=out)
    retrieval = "  ".join(f"{name} {value:.4f}" for name, value in results.items() if name != "knn_accuracy")
    print(f"Retrieval of the test split in the bank (cosine): {retrieval}", file=out)

    print("Drawing the pictures...", file=out)
    views = augmented_views(_augmenter_for(metadata, image_shape, seed), test[0][:32], seed=seed)
    embed_views = None
    if encoder is None:  # the SavedModel takes uint8 images
        embed_views = lambda x: features_model(tf.cast(tf.round(x * 255.0), tf.uint8))  # noqa: E731
    drawn = pictures(encoder, bank, test, indices, test_features, views, embed_views, queries, neighbours, mapped, seed)
    paths = save_pictures(drawn, output_dir, os.path.join(output_dir, PICTURES_LOGS))
    shown = min(mapped, len(test[0]))
    projector = kc_pictures.write_projector(
        os.path.join(output_dir, PROJECTOR_LOGS), test_features[:shown], test[1][:shown], test[0][:shown]
    )
    report = {"path": os.fspath(path), "dataset": dataset, **results, "pictures": paths, "projector": projector}
    with open(os.path.join(output_dir, "inspect.json"), "w") as f:
        json.dump(report, f, indent=2, default=str)
    print(f"Pictures: {', '.join(paths.values())}", file=out)
    print(
        f"Embedding projector and TensorBoard images: tensorboard --logdir {os.path.join(output_dir, 'logs')}",
        file=out,
    )
    return report


def main(argv=None):
    """Command line entry point; returns the exit code (2 on a usage or input error, message on stderr)."""
    parser = argparse.ArgumentParser(
        prog="python -m keras_contrastive.inspect",
        description="Figures and pictures of a trained encoder (an export or a .keras file).",
    )
    parser.add_argument("path", help="An export (version or model directory) or a .keras file.")
    parser.add_argument("--dataset", help="kc.data.load name; defaults to the export's training dataset.")
    parser.add_argument("--output_dir", required=True, help="Where the pictures and logs go.")
    parser.add_argument("--test_dataset", help="The queries' dataset if not --dataset (e.g. a folder).")
    parser.add_argument("--bank_split", default="train")
    parser.add_argument("--test_split", default="test")
    parser.add_argument("--bank_size", type=int, default=None, help="First N bank images (default: all).")
    parser.add_argument("--test_size", type=int, default=None, help="First N test images (default: all).")
    parser.add_argument("--k", type=int, default=200, help="kNN neighbours.")
    parser.add_argument("--queries", type=int, default=8, help="Rows of the retrieval and picture grids.")
    parser.add_argument("--neighbours", type=int, default=8, help="Neighbours per retrieval row.")
    parser.add_argument("--mapped", type=int, default=1000, help="Test images in the embedding map and projector.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("bank_size", "test_size", "k", "queries", "neighbours", "mapped"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1; got {value}.")
    try:
        inspect_encoder(
            args.path,
            args.output_dir,
            dataset=args.dataset,
            bank_split=args.bank_split,
            test_split=args.test_split,
            test_dataset=args.test_dataset,
            bank_size=args.bank_size,
            test_size=args.test_size,
            k=args.k,
            queries=args.queries,
            neighbours=args.neighbours,
            mapped=args.mapped,
            seed=args.seed,
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
