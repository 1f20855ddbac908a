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
