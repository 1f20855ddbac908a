import keras
import numpy as np
import pytest

import keras_contrastive as kc
from keras_contrastive import encoders


@pytest.mark.parametrize("stem,size,pool_input", [("cifar", 32, 4), ("imagenet", 64, 2)])
def test_resnet18_shapes_and_stems(stem, size, pool_input):
    enc = encoders.ResNet18((size, size, 3), stem=stem, width_multiplier=0.25)
    assert enc.output_shape == (None, 128)
    assert enc.get_layer("pool").input.shape[1] == pool_input
    assert ("stem_pool" in [l.name for l in enc.layers]) == (stem == "imagenet")
    assert enc.get_layer("stem_conv").kernel.shape[0] == (3 if stem == "cifar" else 7)


def test_resnet18_parameter_count_matches_reference():
    # torchvision's resnet18 without its fc layer has 11,176,512 parameters.
    enc = encoders.ResNet18((32, 32, 3), stem="imagenet")
    assert sum(np.prod(w.shape) for w in enc.trainable_weights) == 11176512


def test_resnet50_output_and_width():
    enc = encoders.ResNet50((32, 32, 3), stem="cifar", width_multiplier=0.125)
    assert enc.output_shape == (None, 256)
    full = encoders.ResNet50((64, 64, 3))
    trainable = sum(np.prod(w.shape) for w in full.trainable_weights)
    assert trainable == 23508032  # torchvision resnet50 minus fc


def test_synchronized_bn_flag_and_zero_init():
    enc = encoders.ResNet18((16, 16, 1), width_multiplier=0.125, synchronized_bn=True)
    bns = [l for l in enc.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert bns and all(l.synchronized for l in bns)
    assert np.all(enc.get_layer("stage1_block1_bn2").gamma.numpy() == 0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="stem"):
        encoders.ResNet18((32, 32, 3), stem="tiny")
    with pytest.raises(ValueError, match="input_shape"):
        encoders.ResNet18((32, 32))
    with pytest.raises(ValueError, match="width_multiplier"):
        encoders.ResNet18((32, 32, 3), width_multiplier=0)
    not_vector = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3)])
    with pytest.raises(ValueError, match="vectors"):
        encoders.feature_dim(not_vector)


def test_save_load_round_trip(tmp_path, rng):
    enc = encoders.ResNet18((16, 16, 3), width_multiplier=0.125)
    path = str(tmp_path / "enc.keras")
    enc.save(path)
    clone = keras.saving.load_model(path, safe_mode=True)
    x = rng.random((2, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(clone(x).numpy(), enc(x).numpy(), atol=1e-6)


def test_resnet_synchronizes_batch_norm_by_default_only_under_several_replicas():
    from conftest import cpu_strategy

    def bn_kinds(encoder):
        return {type(layer).__name__ for layer in encoder.layers if isinstance(layer, keras.layers.BatchNormalization)}

    assert bn_kinds(kc.encoders.ResNet18((16, 16, 1), width_multiplier=0.125)) == {"BatchNormalization"}
    with cpu_strategy(2).scope():
        encoder = kc.encoders.ResNet18((16, 16, 1), width_multiplier=0.125)
        head = kc.heads.simclr_projection_head(2, 64)
    assert bn_kinds(encoder) == {"SyncBatchNormalization"} and head.synchronized_bn is True
    with cpu_strategy(2).scope():
        assert bn_kinds(kc.encoders.ResNet18((16, 16, 1), width_multiplier=0.125, synchronized_bn=False)) == {
            "BatchNormalization"
        }


# ViT: values against independent definitions (issue 15).


def _count(weights):
    return int(sum(np.prod(w.shape) for w in weights))


@pytest.mark.parametrize(
    "build,total",
    [
        # timm's vit_small_patch16_224 / vit_base_patch16_224 (22,050,664 / 86,567,656 parameters) without
        # their 1000-class head and their learned position embedding of 197 tokens (ours is fixed sin-cos).
        (encoders.ViTSmall, 22_050_664 - (384 * 1000 + 1000) - 197 * 384),
        (encoders.ViTBase, 86_567_656 - (768 * 1000 + 1000) - 197 * 768),
    ],
)
def test_vit_small_and_base_parameter_counts_match_the_published_models(build, total):
    enc = build()
    assert enc.output_shape == (None, enc.get_layer("norm").output.shape[-1])
    assert _count(enc.weights) == total
    # MoCo v3 freezes the patch projection: everything else trains.
    patch = enc.get_layer("patch_projection")
    assert not patch.trainable and _count(patch.weights) == 16 * 16 * 3 * patch.filters + patch.filters
    assert _count(enc.trainable_weights) == total - _count(patch.weights)


def test_sincos_position_embedding_against_its_definition():
    """Per token at (row r, column c) and k < dim/4: [sin(c w_k), cos(c w_k), sin(r w_k), cos(r w_k)],
    w_k = 10000^(-k / (dim/4)); a 2x3 grid so that a swap of rows and columns fails."""
    grid_h, grid_w, dim = 2, 3, 8
    got = encoders.sincos_position_embedding_2d(grid_h, grid_w, dim)
    assert got.shape == (6, 8) and got.dtype == np.float32
    quarter = dim // 4
    for token in range(grid_h * grid_w):
        r, c = divmod(token, grid_w)  # patches are flattened row by row
        for k in range(quarter):
            w = 10000.0 ** (-k / quarter)
            want = [np.sin(c * w), np.cos(c * w), np.sin(r * w), np.cos(r * w)]
            np.testing.assert_allclose(got[token, k::quarter], want, atol=1e-6)
    with pytest.raises(ValueError, match="divisible by 4"):
        encoders.sincos_position_embedding_2d(2, 2, 6)


def test_class_token_comes_first_without_position_and_patches_get_theirs(rng):
    layer = encoders.ClassTokenAndPosition((2, 3))
    patches = rng.normal(size=(2, 6, 8)).astype("float32")
    out = keras.ops.convert_to_numpy(layer(patches))
    token = keras.ops.convert_to_numpy(layer.class_token)[0, 0]
    assert out.shape == (2, 7, 8) and 0 < np.abs(token).max() < 1e-5  # MoCo v3's N(0, 1e-6) init
    np.testing.assert_allclose(out[:, 0], np.broadcast_to(token, (2, 8)), atol=0)
    np.testing.assert_allclose(out[:, 1:], patches + encoders.sincos_position_embedding_2d(2, 3, 8), atol=1e-6)
    features = keras.ops.convert_to_numpy(encoders.ClassFeatures()(out))
    np.testing.assert_array_equal(features, out[:, 0])
