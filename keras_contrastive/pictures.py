"""Pictures of what an encoder learned: retrieval grids, embedding maps, similarity matrices, first-layer kernels.

Every function returns a float32 RGB image `[H, W, 3]` in [0, 1], drawn with
numpy alone (no plotting library), which `save_png` writes as a PNG and
`write_to_tensorboard` as a TensorBoard image. Only the 2-D embedding map uses
another library for its layout: UMAP where `umap-learn` is installed, else
scikit-learn's t-SNE (or PCA for large sets).
"""

import os

import numpy as np
import tensorflow as tf

#: Distinct colours for up to 10 classes (then they repeat), as RGB in [0, 1].
PALETTE = np.array(
    [
        [0.12, 0.47, 0.71],
        [1.00, 0.50, 0.05],
        [0.17, 0.63, 0.17],
        [0.84, 0.15, 0.16],
        [0.58, 0.40, 0.74],
        [0.55, 0.34, 0.29],
        [0.89, 0.47, 0.76],
        [0.50, 0.50, 0.50],
        [0.74, 0.74, 0.13],
        [0.09, 0.75, 0.81],
    ],
    "float32",
)
_GREEN, _RED = np.array([0.1, 0.75, 0.1], "float32"), np.array([0.9, 0.1, 0.1], "float32")


def _as_rgb(images):
    """uint8 or [0, 1] float images `[N, H, W, C]` as float32 RGB in [0, 1]."""
    images = np.asarray(images)
    images = images.astype("float32") / 255.0 if images.dtype == np.uint8 else images.astype("float32")
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    return np.clip(images, 0.0, 1.0)


def _framed(image, colour, width=2):
    """`image` `[H, W, 3]` inside a border of `colour`."""
    framed = np.pad(image, [(width, width), (width, width), (0, 0)])
    framed[:width], framed[-width:], framed[:, :width], framed[:, -width:] = colour, colour, colour, colour
    return framed


def retrieval_grid(query_images, bank_images, indices, query_labels=None, bank_labels=None):
    """Queries and their nearest neighbours: one row per query, the query first, then its neighbours in order.

    Args:
        query_images: `[Q, H, W, C]` uint8 or float in [0, 1].
        bank_images: `[N, H, W, C]`, the same size.
        indices: int `[Q, k]` rows of the bank, nearest first
            (`kc.evaluation.nearest_neighbours`).
        query_labels, bank_labels: int `[Q]` and `[N]`, or None. With labels,
            each neighbour is framed green when of the query's class and red
            when not; the query is framed white.

    Returns:
        float32 `[Q * (H + 6), (k + 1) * (W + 6), 3]` in [0, 1].
    """
    queries, bank, indices = _as_rgb(query_images), _as_rgb(bank_images), np.asarray(indices)
    if indices.ndim != 2 or len(indices) != len(queries):
        raise ValueError(f"`indices` must be [queries, k] for {len(queries)} queries; got shape {indices.shape}.")
    rows = []
    for q, row in enumerate(indices):
        tiles = [_framed(_framed(queries[q], 1.0), 0.0, 1)]
        for i in row:
            colour = 0.0
            if query_labels is not None and bank_labels is not None:
                colour = _GREEN if bank_labels[i] == query_labels[q] else _RED
            tiles.append(_framed(_framed(bank[i], colour), 0.0, 1))
        rows.append(np.concatenate(tiles, axis=1))
    return np.concatenate(rows, axis=0)


def layout_2d(features, method="auto", seed=0):
    """2-D coordinates `[N, 2]` of features `[N, dim]`: UMAP if installed ("auto"), else t-SNE up to 5,000 points,
    else PCA. `method` may also name one: "umap", "tsne" or "pca"."""
    features = np.asarray(features, "float32")
    if method == "auto":
        try:
            import umap  # noqa: F401

            method = "umap"
        except ImportError:
            method = "tsne" if len(features) <= 5000 else "pca"
    if method == "umap":
        import umap

        return umap.UMAP(random_state=seed).fit_transform(features)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = min(30.0, max(2.0, (len(features) - 1) / 3))
        return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)
    if method == "pca":
        centred = features - features.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        return centred @ vt[:2].T
    raise ValueError(f"`method` must be 'auto', 'umap', 'tsne' or 'pca'; got {method!r}.")


def embedding_map(points, labels=None, size=512, dot=3):
    """A scatter plot of 2-D points (`layout_2d`), each a square dot coloured by its label (`PALETTE`).

    Args:
        points: float `[N, 2]`.
        labels: int `[N]` or None (all one colour).
        size: int. Side of the image in pixels. Defaults to 512.
        dot: int. Side of each dot. Defaults to 3.

    Returns:
        float32 `[size, size, 3]` in [0, 1] on a white background.
    """
    points = np.asarray(points, "float64")
    image = np.ones((size, size, 3), "float32")
    if not len(points):
        return image
    low, high = points.min(axis=0), points.max(axis=0)
    scaled = (points - low) / np.maximum(high - low, 1e-12)
    pixels = np.round(scaled * (size - dot - 8) + 4).astype(int)
    colours = PALETTE[np.zeros(len(points), int) if labels is None else np.asarray(labels) % len(PALETTE)]
    for (x, y), colour in zip(pixels, colours):
        image[size - 1 - y - dot : size - 1 - y, x : x + dot] = colour
    return image


def similarity_matrix(z1, z2, cell=4):
    """Cosine similarities of a batch's two views, `[2N, 2N]` in view-major order, as a heat map.

    When training works, the two off-diagonal blocks' diagonals (an image's two
    views) stand out. The colours span the batch's own range of similarities
    between different embeddings (lowest blue, middle white, highest red), so
    the pattern shows early in training too; the diagonal (an embedding with
    itself) is drawn at the top of the range.

    Args:
        z1, z2: float `[N, dim]`, embeddings of the first and second views.
        cell: int. Pixels per entry. Defaults to 4.

    Returns:
        float32 `[2N * cell, 2N * cell, 3]` in [0, 1].
    """
    z = np.concatenate([np.asarray(z1, "float32"), np.asarray(z2, "float32")])
    z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    s = z @ z.T
    others = s[~np.eye(len(s), dtype=bool)]
    low, high = (others.min(), others.max()) if others.size else (-1.0, 1.0)
    s = np.clip(2.0 * (s - low) / max(high - low, 1e-12) - 1.0, -1.0, 1.0)[..., None]
    blue, white, red = np.array([0.2, 0.3, 0.9]), np.ones(3), np.array([0.85, 0.1, 0.1])
    image = np.where(s >= 0, white + s * (red - white), white - s * (blue - white)).astype("float32")
    return np.repeat(np.repeat(image, cell, axis=0), cell, axis=1)


def first_layer_kernels(encoder, scale=8):
    """The first convolution's kernels as a grid of RGB tiles, each scaled to its own [0, 1] range.

    Args:
        encoder: keras.Model holding at least one `Conv2D` (a ResNet's stem; a
            ViT's patch projection, frozen and random under MoCo v3).
        scale: int. Pixels per kernel tap. Defaults to 8.

    Returns:
        float32 `[rows * (kh * scale + 2), cols * (kw * scale + 2), 3]` in [0, 1].
    """
    import keras

    conv = next((layer for layer in encoder._flatten_layers() if isinstance(layer, keras.layers.Conv2D)), None)
    if conv is None:
        raise ValueError(f"{encoder.name!r} has no Conv2D layer, so no first-layer kernels to show.")
    kernel = np.asarray(conv.kernel.numpy(), "float32")  # [kh, kw, in, out]
    if kernel.shape[2] == 1:
        kernel = np.repeat(kernel, 3, axis=2)
    kernel = kernel[:, :, :3]
    tiles = []
    for k in range(kernel.shape[-1]):
        tile = kernel[..., k]
        tile = (tile - tile.min()) / max(tile.max() - tile.min(), 1e-12)
        tile = np.repeat(np.repeat(tile, scale, axis=0), scale, axis=1)
        tiles.append(np.pad(tile, [(1, 1), (1, 1), (0, 0)], constant_values=1.0))
    cols = int(np.ceil(np.sqrt(len(tiles))))
    blank = np.ones_like(tiles[0])
    tiles += [blank] * (cols * int(np.ceil(len(tiles) / cols)) - len(tiles))
    rows = [np.concatenate(tiles[r : r + cols], axis=1) for r in range(0, len(tiles), cols)]
    return np.concatenate(rows, axis=0)


def save_png(path, image):
    """Writes a float `[H, W, 3]` image in [0, 1] as a PNG (any TensorFlow file system); returns `path`."""
    directory = os.path.dirname(path)
    if directory:
        tf.io.gfile.makedirs(directory)
    tf.io.write_file(path, tf.io.encode_png(tf.cast(tf.round(np.clip(image, 0.0, 1.0) * 255.0), tf.uint8)))
    return path


def write_to_tensorboard(log_dir, pictures, step=0):
    """Writes `{name: image}` pictures as TensorBoard images under `log_dir`, one tag per name."""
    writer = tf.summary.create_file_writer(log_dir)
    with writer.as_default():
        for name, image in pictures.items():
            tf.summary.image(name, np.asarray(image, "float32")[None], step=step)
    writer.flush()
