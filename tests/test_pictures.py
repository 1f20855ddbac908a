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


def _assert_png(tmp_path, name, image, shape):
    """`image` written with `save_png` decodes as a PNG of `shape` that is not blank."""
    decoded = tf.io.decode_png(tf.io.read_file(pictures.save_png(str(tmp_path / f"{name}.png"), image))).numpy()
    assert decoded.shape == shape and decoded.var() > 0


def test_feature_maps_show_the_first_stages_most_active_channels_of_each_image(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    # ImageNet stem: stage 1 is 8x8 on 32x32 images, so the tiles are upsampled 4 times. Without the zero-initialized
    # residual BN each block changes its input, so the first stage's last block differs from its first.
    encoder = kc.encoders.ResNet18((32, 32, 3), stem="imagenet", width_multiplier=0.25, zero_init_residual=False)
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    image = pictures.feature_maps(encoder, images, channels=4)
    _assert_png(tmp_path, "feature_maps", image, (3 * 34, 5 * 34, 3))

    stage1 = keras.Model(encoder.input, encoder.get_layer("stage1_block2_out").output)
    activations = np.asarray(stage1(images.astype("float32") / 255.0, training=False))
    top = np.argsort(-activations.mean(axis=(0, 1, 2)))[:4]
    assert sorted(top) != list(range(4))  # the first channels in order would not pass
    for n in range(3):
        np.testing.assert_allclose(image[n * 34 + 1 : n * 34 + 33, 1:33], images[n] / 255.0, atol=1e-6)
        for j, c in enumerate(top):
            a = activations[n, :, :, c]
            expected = pictures._heat((a - a.min()) / (a.max() - a.min()))
            expected = np.repeat(np.repeat(expected, 4, axis=0), 4, axis=1)
            left = (j + 1) * 34 + 1
            np.testing.assert_allclose(image[n * 34 + 1 : n * 34 + 33, left : left + 32], expected, atol=1e-4)

    stem = pictures.feature_maps(encoder, images[:1], layer_name="stem_relu", channels=2)
    assert stem.shape == (34, 3 * 34, 3)
    with pytest.raises(ValueError, match="no layer named 'stage9'"):
        pictures.feature_maps(encoder, images, layer_name="stage9")
    vit = kc.encoders.ViT((16, 16, 3), patch_size=4, dim=16, depth=1, num_heads=2)
    with pytest.raises(ValueError, match="stem_relu.*vit_attention"):
        pictures.feature_maps(vit, images[:, :16, :16])


def test_feature_maps_find_the_encoder_nested_in_a_loaded_keras_file(tmp_path):
    encoder = kc.encoders.ResNet18((16, 16, 3), width_multiplier=0.125, zero_init_residual=False)
    images = np.random.default_rng(1).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    encoder.save(str(tmp_path / "encoder.keras"))
    loaded = kc.downstream.load_encoder(str(tmp_path / "encoder.keras"), trainable=False)
    assert "stage1_block2_out" not in [layer.name for layer in loaded.layers]  # it is inside a nested model
    np.testing.assert_allclose(
        pictures.feature_maps(loaded, images, channels=3), pictures.feature_maps(encoder, images, channels=3), atol=1e-5
    )


def _tiny_vit():
    import keras

    keras.utils.set_random_seed(0)
    return kc.encoders.ViT((16, 16, 3), patch_size=4, dim=16, depth=2, num_heads=2)


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_vit_attention_is_the_class_tokens_softmax_in_the_last_block_averaged_over_heads(tmp_path):
    import keras

    vit = _tiny_vit()
    attention = vit.get_layer("block2_attention")
    # Sharper queries in the last block, so that its map is far from uniform (and from the first block's).
    attention.query_dense.kernel.assign(6.0 * attention.query_dense.kernel)
    images = np.random.default_rng(0).random((3, 16, 16, 3)).astype("float32")
    maps = pictures.vit_attention(vit, images)
    assert maps.shape == (3, 4, 4) and maps.dtype == np.float32
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), 1.0, rtol=1e-5)

    # The reference from the weights: the last block's input (block 1's output), its LayerNorm, the class token's
    # query against every token's key, softmax(q.k / sqrt(head_dim)), the class token's own weight dropped, the
    # heads averaged, renormalized.
    x = np.asarray(keras.Model(vit.input, vit.get_layer("block1_add2").output)(images), "float64")
    norm = vit.get_layer("block2_norm1")
    x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
    x = x * np.asarray(norm.gamma) + np.asarray(norm.beta)
    weights = {name: np.asarray(getattr(attention, f"{name}_dense").kernel, "float64") for name in ("query", "key")}
    biases = {name: np.asarray(getattr(attention, f"{name}_dense").bias, "float64") for name in ("query", "key")}
    q = np.einsum("nd,dhk->nhk", x[:, 0], weights["query"]) + biases["query"]
    k = np.einsum("ntd,dhk->nthk", x, weights["key"]) + biases["key"]
    scores = _softmax(np.einsum("nhk,nthk->nht", q, k) / np.sqrt(8))
    expected = scores[:, :, 1:].mean(axis=1)
    expected /= expected.sum(axis=1, keepdims=True)
    assert expected.max() > 3 * expected.min()  # not a near-uniform map
    np.testing.assert_allclose(maps.reshape(3, 16), expected, rtol=1e-4, atol=1e-6)

    # uint8 images, and the encoder nested in a loaded .keras file (saved after vit_attention: it left no trace).
    vit.save(str(tmp_path / "vit.keras"))
    loaded = kc.downstream.load_encoder(str(tmp_path / "vit.keras"), trainable=False)
    as_uint8 = np.round(images * 255).astype(np.uint8)
    np.testing.assert_allclose(
        pictures.vit_attention(loaded, as_uint8), pictures.vit_attention(vit, as_uint8 / 255.0), atol=1e-6
    )
    resnet = kc.encoders.ResNet18((16, 16, 3), width_multiplier=0.125)
    with pytest.raises(ValueError, match="no 'block\\{i\\}_attention'"):
        pictures.vit_attention(resnet, images)


def test_the_attention_map_peaks_at_the_patch_whose_key_meets_the_class_tokens_query(tmp_path):
    vit = _tiny_vit()
    dim, heads, head_dim = 16, 2, 8
    u = np.tile([1.0, -1.0], dim // 2)  # zero mean and unit variance: a LayerNorm keeps it as it is
    # The patch projection maps a patch's brightness onto 50 u: a white patch's token is ~50 u (block 1 and the
    # position embedding add O(1)), a black one's is not; after the last block's LayerNorm the white patch is ~u.
    projection = vit.get_layer("patch_projection")
    projection.kernel.assign(np.broadcast_to(50.0 * u / (4 * 4 * 3), projection.kernel.shape))
    projection.bias.assign(np.zeros(dim))
    # The last block: every query is e_0 in each head (kernel 0, bias e_0), a token's key is 10 (u / |u|).LN(x) e_0,
    # so the class token's logit for a token is 10 / sqrt(8) times LN(x)'s component along u: ~14 for the white
    # patch, |LN(x)| cos(angle to u) for the others.
    attention = vit.get_layer("block2_attention")
    query_bias = np.zeros((heads, head_dim))
    query_bias[:, 0] = 1.0
    attention.query_dense.kernel.assign(np.zeros((dim, heads, head_dim)))
    attention.query_dense.bias.assign(query_bias)
    key_kernel = np.zeros((dim, heads, head_dim))
    key_kernel[:, :, 0] = 10.0 * u[:, None] / np.linalg.norm(u)
    attention.key_dense.kernel.assign(key_kernel)
    attention.key_dense.bias.assign(np.zeros((heads, head_dim)))

    targets = [(1, 2), (3, 0)]
    images = np.zeros((2, 16, 16, 3), "float32")
    for n, (r, c) in enumerate(targets):
        images[n, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] = 1.0
    maps = pictures.vit_attention(vit, images)
    picture = pictures.attention_maps(images, maps)
    _assert_png(tmp_path, "attention_maps", picture, (2 * 18, 3 * 18, 3))
    for n, (r, c) in enumerate(targets):
        assert np.unravel_index(maps[n].argmax(), (4, 4)) == (r, c) and maps[n, r, c] > 0.5
        heat = picture[n * 18 + 1 : n * 18 + 17, 19:35]  # the second tile: the map, upsampled 4 times
        np.testing.assert_allclose(
            heat[4 * r : 4 * r + 4, 4 * c : 4 * c + 4], np.broadcast_to(pictures._VIRIDIS[-1], (4, 4, 3))
        )
    with pytest.raises(ValueError, match="same N"):
        pictures.attention_maps(images, maps[:1])


def test_the_projector_files_name_the_checkpoints_tensor_the_labels_and_the_image_tiles(tmp_path):
    from google.protobuf import text_format
    from tensorboard.plugins import projector

    rng = np.random.default_rng(0)
    features = rng.normal(size=(7, 5)).astype("float32")
    labels = np.array([3, 1, 4, 1, 5, 9, 2])
    images = rng.integers(0, 256, (7, 6, 5, 3), dtype=np.uint8)  # tiles 6 high, 5 wide
    log_dir = str(tmp_path / "projector")
    paths = pictures.write_projector(log_dir, features, labels, images)
    assert {"checkpoint", "metadata.tsv", "sprite.png", "projector_config.pbtxt"} <= set(os.listdir(log_dir))
    assert paths["metadata"] == os.path.join(log_dir, "metadata.tsv")
    assert paths["config"] == os.path.join(log_dir, "projector_config.pbtxt")

    with open(paths["config"]) as f:
        config = text_format.Parse(f.read(), projector.ProjectorConfig())
    (embedding,) = config.embeddings
    # The projector reads the directory's latest checkpoint, as tf.train.list_variables(log_dir) does.
    assert dict(tf.train.list_variables(log_dir))[embedding.tensor_name] == [7, 5]
    np.testing.assert_array_equal(tf.train.load_checkpoint(log_dir).get_tensor(embedding.tensor_name), features)
    assert embedding.tensor_name == "embeddings/.ATTRIBUTES/VARIABLE_VALUE"
    assert (embedding.metadata_path, embedding.sprite.image_path) == ("metadata.tsv", "sprite.png")
    assert list(embedding.sprite.single_image_dim) == [5, 6]  # [width, height]
    with open(paths["metadata"]) as f:
        assert f.read().splitlines() == [str(label) for label in labels]  # one column: no header

    sprite = tf.io.decode_png(tf.io.read_file(paths["sprite"])).numpy()
    assert sprite.shape == (3 * 6, 3 * 5, 3) and sprite.var() > 0  # ceil(sqrt(7)) = 3 tiles a side
    np.testing.assert_array_equal(sprite[:6, :5], images[0])
    np.testing.assert_array_equal(sprite[:6, 5:10], images[1])  # row by row
    np.testing.assert_array_equal(sprite[6:12, :5], images[3])
    np.testing.assert_array_equal(sprite[12:, 5:], 255)  # no image: white

    named = pictures.write_projector(
        str(tmp_path / "named"), features, labels, tag="features", class_names=[f"class {i}" for i in range(10)]
    )
    assert "sprite" not in named
    with open(named["metadata"]) as f:
        assert f.read().splitlines() == ["index\tlabel"] + [f"{label}\tclass {label}" for label in labels]
    assert "features/.ATTRIBUTES/VARIABLE_VALUE" in dict(tf.train.list_variables(str(tmp_path / "named")))

    # 10 strips 3000 pixels wide: 4 a side make 12000 pixels, over 8192; 2 a side (4 images) fit.
    with pytest.raises(ValueError, match="at most 4 images"):
        pictures.write_projector(str(tmp_path / "big"), np.zeros((10, 2)), images=np.zeros((10, 1, 3000, 1), np.uint8))
    assert not os.path.exists(tmp_path / "big")
    with pytest.raises(ValueError, match="class_names"):
        pictures.write_projector(str(tmp_path / "bad"), features, labels, class_names=["a", "b"])
