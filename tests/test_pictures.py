"""Pictures: the stated size, not blank, the right content where it is known, PNG files and TensorBoard images."""

import os

import numpy as np
import pytest
import tensorflow as tf

import keras_contrastive as kc
from keras_contrastive import pictures


def _tiles(rng, n, size=8):
    return rng.integers(0, 256, (n, size, size, 1), dtype=np.uint8)


def test_the_retrieval_grid_shows_each_querys_neighbours_in_order_framed_by_class():
    rng = np.random.default_rng(0)
    bank, queries = _tiles(rng, 10), _tiles(rng, 2)
    indices = np.array([[3, 7, 0], [9, 1, 2]])
    grid = pictures.retrieval_grid(queries, bank, indices, np.array([1, 0]), np.arange(10) % 2)
    step = 8 + 6  # tile, a 2-pixel class frame and a 1-pixel black rule on each side
    assert grid.shape == (2 * step, 4 * step, 3)
    for q in range(2):
        np.testing.assert_allclose(grid[q * step + 3 : q * step + 11, 3:11, 0], queries[q, ..., 0] / 255.0)
        for j, i in enumerate(indices[q]):
            left = (j + 1) * step
            np.testing.assert_allclose(
                grid[q * step + 3 : q * step + 11, left + 3 : left + 11, 0], bank[i, ..., 0] / 255
            )
            frame = grid[q * step + 1, left + 5]
            same_class = i % 2 == [1, 0][q]
            np.testing.assert_allclose(frame, [0.1, 0.75, 0.1] if same_class else [0.9, 0.1, 0.1])
    with pytest.raises(ValueError, match="queries, k"):
        pictures.retrieval_grid(queries, bank, indices[:1])


def test_the_embedding_map_puts_a_dot_of_each_class_colour_where_its_point_is():
    points = np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    image = pictures.embedding_map(points, [0, 1, 2], size=64, dot=3)
    assert image.shape == (64, 64, 3) and image.var() > 0
    np.testing.assert_allclose(image[57, 5], pictures.PALETTE[0])  # (0, 0): bottom left
    np.testing.assert_allclose(image[4, 58], pictures.PALETTE[1])  # (1, 1): top right
    np.testing.assert_allclose(image[4, 5], pictures.PALETTE[2])  # (0, 1): top left
    assert pictures.layout_2d(np.random.default_rng(0).normal(size=(30, 5)), "pca").shape == (30, 2)
    assert pictures.layout_2d(np.random.default_rng(0).normal(size=(30, 5)), "tsne").shape == (30, 2)
    with pytest.raises(ValueError, match="method"):
        pictures.layout_2d(np.zeros((3, 2)), "mds")


def test_the_similarity_matrix_shows_the_positive_pairs():
    rng = np.random.default_rng(0)
    z1 = rng.normal(size=(6, 16))
    image = pictures.similarity_matrix(z1, z1 + 0.05 * rng.normal(size=(6, 16)), cell=2)
    assert image.shape == (24, 24, 3)
    # An image's two views (row i, column 6 + i) are the reddest cells off the diagonal.
    reds = image[::2, ::2, 0] - image[::2, ::2, 2]
    for i in range(6):
        assert reds[i, 6 + i] == pytest.approx(reds[i][np.arange(12) != i].max())


def test_first_layer_kernels_tile_every_output_channel():
    encoder = kc.encoders.ResNet18((16, 16, 3), width_multiplier=0.125)
    image = pictures.first_layer_kernels(encoder, scale=2)
    conv = encoder.get_layer("stem_conv") if "stem_conv" in [l.name for l in encoder.layers] else None
    kh, kw, _, out = conv.kernel.shape if conv is not None else (3, 3, 3, 8)
    cols = int(np.ceil(np.sqrt(out)))
    assert image.shape == (int(np.ceil(out / cols)) * (kh * 2 + 2), cols * (kw * 2 + 2), 3) and image.var() > 0
    import keras

    dense = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="no Conv2D"):
        pictures.first_layer_kernels(dense)


def test_pictures_are_written_as_png_files_and_tensorboard_images(tmp_path):
    image = pictures.embedding_map(np.random.default_rng(0).normal(size=(20, 2)), np.arange(20) % 3, size=40)
    path = pictures.save_png(str(tmp_path / "sub" / "map.png"), image)
    decoded = tf.io.decode_png(tf.io.read_file(path)).numpy()
    assert decoded.shape == (40, 40, 3) and decoded.var() > 0
    pictures.write_to_tensorboard(str(tmp_path / "logs"), {"embedding_map": image})
    (event,) = os.listdir(tmp_path / "logs")
    tags = {v.tag for e in tf.compat.v1.train.summary_iterator(str(tmp_path / "logs" / event)) for v in e.summary.value}
    assert tags == {"embedding_map"}
