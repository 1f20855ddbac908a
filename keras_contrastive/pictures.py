"""Pictures of what an encoder learned: retrieval grids, embedding maps, similarity matrices, first-layer kernels,
a ResNet's feature maps, a ViT's attention maps, and TensorBoard's embedding projector.

Every picture function returns a float32 RGB image `[H, W, 3]` in [0, 1], drawn
with numpy alone (no plotting library), which `save_png` writes as a PNG and
`write_to_tensorboard` as a TensorBoard image. Only the 2-D embedding map uses
another library for its layout: UMAP where `umap-learn` is installed, else
scikit-learn's t-SNE (or PCA for large sets). `vit_attention` returns the
attention itself (`[N, grid_h, grid_w]`), which `attention_maps` draws;
`write_projector` writes the files of TensorBoard's embedding projector.
"""

import os
import re

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
#: Five stops of matplotlib's viridis (0, 0.25, 0.5, 0.75, 1), for heat maps: dark blue (low) to yellow (high),
#: ordered in lightness, so a map reads the same in grey.
_VIRIDIS = np.array(
    [[0.267, 0.005, 0.329], [0.229, 0.322, 0.546], [0.128, 0.567, 0.551], [0.369, 0.789, 0.383], [0.993, 0.906, 0.144]],
    "float32",
)


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


def _heat(values):
    """Values `[...]` in [0, 1] as viridis colours `[..., 3]`, float32."""
    values = np.clip(np.asarray(values, "float32"), 0.0, 1.0)
    stops = np.linspace(0.0, 1.0, len(_VIRIDIS))
    return np.stack([np.interp(values, stops, _VIRIDIS[:, c]) for c in range(3)], axis=-1).astype("float32")


def _scaled(tile):
    """`tile` scaled to its own [0, 1] range (all zeros when constant)."""
    tile = np.asarray(tile, "float32")
    return (tile - tile.min()) / max(float(tile.max() - tile.min()), 1e-12)


def _resized_nearest(tile, height, width):
    """`tile` `[h, w, ...]` resized to `[height, width, ...]`, nearest neighbour (integer factors: each cell a block)."""
    rows = np.arange(height) * tile.shape[0] // height
    cols = np.arange(width) * tile.shape[1] // width
    return tile[rows][:, cols]


def _row(tiles):
    """Tiles `[H, W, 3]` side by side, each inside a 1-pixel white rule."""
    return np.concatenate([np.pad(t, [(1, 1), (1, 1), (0, 0)], constant_values=1.0) for t in tiles], axis=1)


def _unit_images(images):
    """uint8 images (divided by 255) or float images, as float32 `[N, H, W, C]` the way an encoder takes them."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"`images` must be [N, height, width, channels]; got shape {images.shape}.")
    return images.astype("float32") / 255.0 if images.dtype == np.uint8 else images.astype("float32")


def _models(model):
    """`model` and every Keras model nested in it, outermost first (breadth first)."""
    import keras

    found, queue = [], [model]
    while queue:
        current = queue.pop(0)
        found.append(current)
        queue += [layer for layer in getattr(current, "layers", []) if isinstance(layer, keras.Model)]
    return found


def _layers_named(model, pattern):
    """`(owner, layer)` for every layer whose whole name matches `pattern`, in `model` or a model nested in it;
    `owner` is the model whose graph holds the layer (so `keras.Model(owner.inputs, layer.output)` is defined)."""
    return [(owner, layer) for owner in _models(model) for layer in owner.layers if re.fullmatch(pattern, layer.name)]


def _run_to(owner, layer, images, batch_size=64):
    """`layer`'s output (float32 numpy) for float `images` in [0, 1], through a functional sub-model of `owner`."""
    import keras

    inputs = getattr(owner, "inputs", None) or []
    if len(inputs) != 1:
        raise ValueError(
            f"{layer.name!r} is in {owner.name!r}, which has {len(inputs)} symbolic inputs; expected a functional "
            "model with one input, the images (a subclassed model has no graph to cut at the layer)."
        )
    sub_model = keras.Model(owner.inputs[0], layer.output, name=f"{owner.name}_to_{layer.name}")
    if owner.inputs[0].dtype == "uint8":  # a model that rescales uint8 images itself
        images = np.round(np.clip(images, 0.0, 1.0) * 255.0).astype("uint8")
    outputs = [
        keras.ops.convert_to_numpy(keras.ops.cast(sub_model(images[i : i + batch_size], training=False), "float32"))
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(outputs)


def feature_maps(encoder, images, layer_name=None, channels=8):
    """A ResNet's activations at one layer: per image, the image and the channels most active over the images.

    One row per image: the image, then the `channels` channels of the layer
    with the largest mean activation (over the images and positions), most
    active first, the same channels in every row. Each tile is one image's
    channel scaled to its own range (viridis: dark blue low, yellow high) and
    resized (nearest) to the image size.

    Args:
        encoder: keras.Model. A `kc.encoders.ResNet18`/`ResNet50`, or a model
            holding one as a nested model (`kc.downstream.load_encoder` of a
            `.keras` file). The layer is looked up by name in the encoder and
            in the models nested in it, and run on float images in [0, 1].
        images: `[N, H, W, C]` uint8 or float in [0, 1], as the encoder takes
            them.
        layer_name: str or None. A layer with a `[batch, h, w, channels]`
            output. None (the default) takes the output of the first stage
            (the last `stage1_block*_out`), else `stem_relu`.
        channels: int. Channels to show (at most the layer's). Defaults to 8.

    Returns:
        float32 `[N * (H + 2), (1 + channels) * (W + 2), 3]` in [0, 1].

    Raises:
        ValueError: the encoder has no such layer (a ViT, or a SavedModel
            wrapped in a `TFSMLayer`, whose layers Keras cannot see), or the
            layer's output is not 4-D.
    """
    if not isinstance(channels, int | np.integer) or channels < 1:
        raise ValueError(f"`channels` must be a positive int; got {channels!r}.")
    x = _unit_images(images)
    if layer_name is not None:
        found = _layers_named(encoder, re.escape(layer_name))
        if not found:
            raise ValueError(
                f"{encoder.name!r} has no layer named {layer_name!r}, in itself or in a model nested in it. Pass the "
                "name of a layer with a [batch, h, w, channels] output, e.g. 'stem_relu' or 'stage1_block2_out'."
            )
        owner, layer = found[0]
    else:
        found = _layers_named(encoder, r"stage1_block\d+_out")
        if found:
            owner = found[0][0]
            layer = max((l for o, l in found if o is owner), key=lambda l: int(l.name[len("stage1_block") : -4]))
        else:
            found = _layers_named(encoder, "stem_relu")
            if not found:
                raise ValueError(
                    f"{encoder.name!r} has no 'stage1_block*_out' or 'stem_relu' layer (in itself or a nested model), "
                    "so no ResNet feature maps to show. For a ViT, draw `attention_maps(images, vit_attention(encoder, "
                    "images))`; for another convolutional encoder pass `layer_name`; a SavedModel loaded as a "
                    "TFSMLayer hides its layers: load the `.keras` file instead (kc.downstream.load_encoder of the "
                    "export's .keras file)."
                )
            owner, layer = found[0]
    activations = _run_to(owner, layer, x)
    if activations.ndim != 4:
        raise ValueError(
            f"Layer {layer.name!r} outputs shape {activations.shape}; feature maps need [batch, h, w, channels]."
        )
    means = activations.mean(axis=(0, 1, 2))
    top = np.argsort(-means, kind="stable")[:channels]
    shown = _as_rgb(images)
    height, width = shown.shape[1:3]
    rows = []
    for n in range(len(shown)):
        tiles = [shown[n]] + [_resized_nearest(_heat(_scaled(activations[n, :, :, c])), height, width) for c in top]
        rows.append(_row(tiles))
    return np.concatenate(rows, axis=0)


def vit_attention(encoder, images, batch_size=64):
    """The class token's attention over the patches in a ViT's last block, averaged over heads.

    Runs a functional sub-model of the encoder to the last block's
    `block{i}_norm1` output, then calls that block's `block{i}_attention`
    layer (keras.layers.MultiHeadAttention) with
    `return_attention_scores=True`: softmax(q k^T / sqrt(head_dim)) over all
    tokens, in the layer's own dtype, returned in float32. The class token's
    row is averaged over heads, its weight on itself dropped and the rest
    renormalized to sum to 1 over the patches.

    Args:
        encoder: keras.Model. A `kc.encoders.ViT` (layers `block{i}_norm1`,
            `block{i}_attention`, `patch_projection`, class token first), or a
            model holding one as a nested model (`kc.downstream.load_encoder`
            of a `.keras` file).
        images: `[N, H, W, C]` float in [0, 1] as the encoder takes them, or
            uint8 (divided by 255).
        batch_size: int. Images per call. Defaults to 64.

    Returns:
        float32 numpy `[N, grid_h, grid_w]`, each map summing to 1; patch
        `(r, c)` is the patch at rows `r * patch_size ...` and columns
        `c * patch_size ...` of the image.

    Raises:
        ValueError: the encoder has no `block{i}_attention` MultiHeadAttention
            layer with its `block{i}_norm1` (not a ViT, or a SavedModel in a
            `TFSMLayer`), or its tokens are not 1 + grid_h * grid_w.
    """
    import keras

    found = [
        (owner, layer)
        for owner, layer in _layers_named(encoder, r"block\d+_attention")
        if isinstance(layer, keras.layers.MultiHeadAttention)
    ]
    if not found:
        raise ValueError(
            f"{encoder.name!r} has no 'block{{i}}_attention' MultiHeadAttention layer (in itself or a nested model), "
            "so no attention to show: vit_attention reads a kc.encoders.ViT. A SavedModel loaded as a TFSMLayer hides "
            "its layers: load the `.keras` file instead."
        )
    owner = found[0][0]
    attention = max((l for o, l in found if o is owner), key=lambda l: int(l.name[len("block") : -len("_attention")]))
    block = attention.name[: -len("_attention")]
    norm = [l for l in owner.layers if l.name == f"{block}_norm1"]
    projection = [l for l in owner.layers if l.name == "patch_projection"]
    if not norm or not projection:
        raise ValueError(
            f"{owner.name!r} has {attention.name!r} but no {block + '_norm1'!r} or 'patch_projection' layer; "
            "vit_attention reads the pre-norm blocks of kc.encoders.ViT."
        )
    grid_h, grid_w = projection[0].output.shape[1:3]
    tokens = _run_to(owner, norm[0], _unit_images(images), batch_size)
    if tokens.ndim != 3 or tokens.shape[1] != 1 + grid_h * grid_w:
        raise ValueError(
            f"{norm[0].name!r} outputs shape {tokens.shape}; expected [N, 1 + {grid_h} * {grid_w}, dim] "
            "(the class token first, then the patches row by row)."
        )
    maps = []
    for i in range(0, len(tokens), batch_size):
        y = keras.ops.cast(tokens[i : i + batch_size], attention.compute_dtype)
        _, scores = attention(y, y, return_attention_scores=True, training=False)  # [n, heads, tokens, tokens]
        scores = keras.ops.convert_to_numpy(keras.ops.cast(scores, "float32"))
        maps.append(scores[:, :, 0, 1:].mean(axis=1))  # the class token's row, its own weight dropped
    maps = np.concatenate(maps)
    maps /= np.maximum(maps.sum(axis=1, keepdims=True), 1e-12)
    return maps.reshape(-1, grid_h, grid_w).astype("float32")


def attention_maps(images, attention):
    """Attention maps over images: one row per image, the image, the map, and the image overlaid by the map.

    Args:
        images: `[N, H, W, C]` uint8 or float in [0, 1].
        attention: float `[N, grid_h, grid_w]` (`vit_attention`). Each map is
            scaled to its own range (viridis: dark blue low, yellow high) and
            upsampled (nearest) to the image size; the overlay is the mean of
            the image and the map.

    Returns:
        float32 `[N * (H + 2), 3 * (W + 2), 3]` in [0, 1].
    """
    shown, attention = _as_rgb(images), np.asarray(attention, "float32")
    if shown.ndim != 4 or attention.ndim != 3 or len(attention) != len(shown):
        raise ValueError(
            f"`images` must be [N, H, W, C] and `attention` [N, grid_h, grid_w] for the same N; got shapes "
            f"{shown.shape} and {attention.shape}."
        )
    height, width = shown.shape[1:3]
    rows = []
    for image, weights in zip(shown, attention):
        heat = _resized_nearest(_heat(_scaled(weights)), height, width)
        rows.append(_row([image, heat, 0.5 * image + 0.5 * heat]))
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


#: The embedding projector's limit on the sprite image, in pixels per side (TensorBoard's projector documentation).
SPRITE_MAX_SIDE = 8192


def write_projector(log_dir, features, labels=None, images=None, tag="embeddings", class_names=None):
    """Writes features for TensorBoard's embedding projector (`tensorboard --logdir` a parent of `log_dir`).

    The files, in `log_dir` (a directory of its own: the projector reads the
    latest checkpoint of the directory that holds its config):

    - `embedding.ckpt-1.*` and `checkpoint`: a `tf.train.Checkpoint` holding
      the features as the tf.Variable `tag`, so the projector lists the
      tensor `{tag}/.ATTRIBUTES/VARIABLE_VALUE` (with the default tag,
      `embeddings/.ATTRIBUTES/VARIABLE_VALUE`);
    - `metadata.tsv` (with `labels`): one line per embedding, in order:
      the label, without a header; with `class_names`, two columns and the
      header `index\\tlabel`: the class index and its name;
    - `sprite.png` (with `images`): the images tiled row by row in a square
      grid of `ceil(sqrt(N))` tiles a side, each tile the image size `H x W`
      (white where the grid has no image);
    - `projector_config.pbtxt`: the `ProjectorConfig`
      (`tensorboard.plugins.projector.visualize_embeddings`) naming the
      tensor, `metadata.tsv`, `sprite.png` and the tile size `[W, H]`.

    Args:
        log_dir: str. Directory (any TensorFlow file system); created.
        features: float `[N, dim]`.
        labels: int `[N]` or None.
        images: `[N, H, W, C]` uint8 or float in [0, 1], C = 1 or 3, or None.
        tag: str. The checkpoint's name for the features, a Python identifier.
            Defaults to "embeddings".
        class_names: sequence of str or None. Names of the labels
            `0 .. len(class_names) - 1`.

    Returns:
        dict: the written paths, under "checkpoint" (the checkpoint's prefix),
        "config" and, when written, "metadata" and "sprite".

    Raises:
        ValueError: mismatched lengths, labels outside `class_names`, or a
            sprite over the projector's 8192 x 8192 pixels (the message says
            how many images of this size fit).
    """
    from tensorboard.plugins import projector

    features = np.asarray(features, "float32")
    if features.ndim != 2 or not len(features):
        raise ValueError(f"`features` must be [N, dim] with N > 0; got shape {features.shape}.")
    if not isinstance(tag, str) or not tag.isidentifier() or tag.startswith("_") or hasattr(tf.train.Checkpoint, tag):
        raise ValueError(
            f"`tag` names the checkpoint's variable: a Python identifier, not starting with '_' and not a "
            f"tf.train.Checkpoint attribute (save, restore, ...); got {tag!r}."
        )
    n = len(features)
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (n,):
            raise ValueError(f"`labels` must be [N] for N = {n} features; got shape {labels.shape}.")
        if class_names is not None:
            class_names = [str(name) for name in class_names]
            if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= len(class_names):
                raise ValueError(
                    f"With {len(class_names)} `class_names` the labels must be ints in [0, {len(class_names)}); got "
                    f"{labels.dtype} labels in [{labels.min()}, {labels.max()}]."
                )
            if any("\t" in name or "\n" in name for name in class_names):
                raise ValueError(f"`class_names` may not hold tabs or newlines (metadata.tsv); got {class_names}.")
    if images is not None:
        if np.ndim(images) != 4 or len(images) != n or np.shape(images)[-1] not in (1, 3):
            raise ValueError(f"`images` must be [N, H, W, 1 or 3] for N = {n} features; got shape {np.shape(images)}.")
        height, width = np.shape(images)[1:3]
        side = int(np.ceil(np.sqrt(n)))
        if side * max(height, width) > SPRITE_MAX_SIDE:
            fit = (SPRITE_MAX_SIDE // max(height, width)) ** 2
            raise ValueError(
                f"A sprite of {n} images of {height}x{width} pixels would be {side * height}x{side * width} pixels, "
                f"over the embedding projector's limit of {SPRITE_MAX_SIDE}x{SPRITE_MAX_SIDE}: at most {fit} images "
                f"of this size fit. Pass the first {fit} images, features and labels, or smaller images."
            )

    tf.io.gfile.makedirs(log_dir)
    paths = {}
    # The projector's documented way (tensorboard.plugins.projector): a checkpoint of a tf.Variable, found
    # through the directory's `checkpoint` file.
    variable = tf.Variable(features, trainable=False, name=tag)
    paths["checkpoint"] = tf.train.Checkpoint(**{tag: variable}).save(os.path.join(log_dir, "embedding.ckpt"))
    config = projector.ProjectorConfig()
    embedding = config.embeddings.add()
    embedding.tensor_name = f"{tag}/.ATTRIBUTES/VARIABLE_VALUE"
    if labels is not None:
        if class_names is None:
            lines = [str(label) for label in labels.tolist()]
        else:
            lines = ["index\tlabel"] + [f"{label}\t{class_names[label]}" for label in labels.tolist()]
        paths["metadata"] = os.path.join(log_dir, "metadata.tsv")
        with tf.io.gfile.GFile(paths["metadata"], "w") as f:
            f.write("\n".join(lines) + "\n")
        embedding.metadata_path = "metadata.tsv"  # relative to the config's directory, as the projector resolves it
    if images is not None:
        tiles = _as_rgb(images)
        sprite = np.ones((side * side, height, width, 3), "float32")
        sprite[:n] = tiles
        sprite = sprite.reshape(side, side, height, width, 3).transpose(0, 2, 1, 3, 4).reshape(side * height, -1, 3)
        paths["sprite"] = save_png(os.path.join(log_dir, "sprite.png"), sprite)
        embedding.sprite.image_path = "sprite.png"
        embedding.sprite.single_image_dim.extend([width, height])
    projector.visualize_embeddings(log_dir, config)
    paths["config"] = os.path.join(log_dir, "projector_config.pbtxt")
    return paths
