import keras
import numpy as np
import pytest
from conftest import tiny_encoder

import keras_contrastive as kc


@pytest.fixture
def exported(tmp_path):
    encoder = tiny_encoder(channels=1, size=16, synchronized_bn=False)
    bn = [l for l in encoder.layers if isinstance(l, keras.layers.BatchNormalization)][0]
    bn.moving_mean.assign(np.linspace(-0.2, 0.2, 8))
    keras_path = str(tmp_path / "encoder.keras")
    encoder.save(keras_path)
    version = kc.export.export_encoder(encoder, str(tmp_path / "export"))
    images = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 1)).astype("uint8")
    return encoder, keras_path, version, str(tmp_path / "export"), images


@pytest.mark.parametrize("source", ["keras", "version", "model_dir", "savedmodel_only"])
def test_load_encoder_matches_the_trained_encoder(exported, source):
    encoder, keras_path, version, model_dir, images = exported
    path = {"keras": keras_path, "version": version, "model_dir": model_dir, "savedmodel_only": version}[source]
    loaded = kc.downstream.load_encoder(path, trainable=False, prefer_keras_file=source != "savedmodel_only")
    assert any(isinstance(l, kc.downstream.SavedModelEncoder) for l in loaded.layers) == (source == "savedmodel_only")
    want = encoder(images / 255.0, training=False).numpy()
    np.testing.assert_allclose(loaded(images, training=False).numpy(), want, atol=1e-5)
    # Float inputs holding 0-255 values work too.
    np.testing.assert_allclose(loaded(images.astype("float32")).numpy(), want, atol=1e-5)


@pytest.mark.parametrize("source", ["keras", "version"])
def test_fine_tuning_updates_the_loaded_encoder(exported, source):
    encoder, keras_path, version, _, images = exported
    loaded = kc.downstream.load_encoder(keras_path if source == "keras" else version, trainable=True)
    assert loaded.trainable_weights
    model = keras.Sequential([loaded, keras.layers.Dense(3)])
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = [w.numpy().copy() for w in loaded.trainable_weights]
    model.fit(images, np.array([0, 1, 2, 0, 1, 2]), epochs=2, verbose=0)
    assert any(np.abs(a - w.numpy()).max() > 0 for a, w in zip(before, loaded.trainable_weights))


def test_frozen_encoder_has_no_trainable_weights(exported):
    _, keras_path, version, _, _ = exported
    assert not kc.downstream.load_encoder(keras_path, trainable=False).trainable_weights
    assert not kc.downstream.load_encoder(version, trainable=False).trainable_weights
    assert not kc.downstream.load_encoder(version, trainable=False, prefer_keras_file=False).trainable_weights


def test_trainable_savedmodel_without_keras_file_is_a_clear_error(exported):
    _, _, version, _, _ = exported
    with pytest.raises(ValueError, match="re-export"):
        kc.downstream.load_encoder(version, trainable=True, prefer_keras_file=False)


def test_a_mixed_bfloat16_checkpoint_loads_to_float32_in_a_float32_process(tmp_path):
    # A checkpoint of a `--precision mixed_bfloat16` run keeps its bfloat16 policies; evaluated as saved, the
    # features would be rounded to bfloat16 and differ from the float32 export of the same weights.
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        encoder = kc.encoders.ResNet18((16, 16, 3), stem="cifar", width_multiplier=0.125)
        encoder.save(str(tmp_path / "mixed.keras"))
        kept = kc.downstream.load_encoder(str(tmp_path / "mixed.keras"), trainable=False)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert kept.get_layer(encoder.name).compute_dtype == "bfloat16"  # a mixed process keeps the file's policies
    reference = kc.encoders.ResNet18((16, 16, 3), stem="cifar", width_multiplier=0.125)
    reference.set_weights(encoder.get_weights())
    images = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3)).astype("uint8")
    want = reference(images / 255.0, training=False).numpy()
    loaded = kc.downstream.load_encoder(str(tmp_path / "mixed.keras"), trainable=False)
    assert {l.compute_dtype for l in loaded.get_layer(encoder.name)._flatten_layers()} == {"float32"}
    np.testing.assert_allclose(loaded(images).numpy(), want, rtol=0, atol=1e-5)
    rounded = keras.ops.convert_to_numpy(keras.ops.cast(kept(images), "float32"))
    assert np.abs(rounded - want).max() > 1e-3  # bfloat16 rounding: what the conversion removes


def test_bad_path(tmp_path):
    with pytest.raises(ValueError, match="SavedModel"):
        kc.downstream.load_encoder(str(tmp_path))


@pytest.mark.slow
def test_fine_tuning_an_export_beats_its_frozen_features_on_a_small_labeled_subset(tmp_path):
    """600 labeled Fashion-MNIST images, the same head, steps and optimizer: training through the
    export's encoder must end better on held-out images than a linear head on its frozen features."""
    x, y = kc.data.load_arrays("fashion_mnist", "train[:600]", image_size=32, channels=1)
    x_test, y_test = kc.data.load_arrays("fashion_mnist", "test[:1000]", image_size=32, channels=1)
    keras.utils.set_random_seed(0)
    encoder = kc.encoders.ResNet18((32, 32, 1), width_multiplier=0.125)
    for _ in range(30):  # BN statistics of the data, so that the frozen features are usable
        encoder(x[:300] / 255.0, training=True)
    version = kc.export.export_encoder(encoder, str(tmp_path / "export"))

    def accuracy(trainable):
        keras.utils.set_random_seed(1)
        loaded = kc.downstream.load_encoder(version, trainable=trainable, prefer_keras_file=trainable)
        model = keras.Sequential([loaded, keras.layers.Dense(10)])
        model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        before = [w.copy() for w in loaded.get_weights()]
        model.fit(x, y, batch_size=50, epochs=8, verbose=0)
        changed = any(np.abs(a - b).max() > 0 for a, b in zip(before, loaded.get_weights()))
        assert changed == trainable  # the frozen export stays as exported
        return float(np.mean(np.argmax(model.predict(x_test, verbose=0), axis=1) == y_test))

    frozen, fine_tuned = accuracy(False), accuracy(True)
    assert 0.15 < frozen and frozen + 0.1 < fine_tuned, (frozen, fine_tuned)  # measured 0.24 vs 0.71
