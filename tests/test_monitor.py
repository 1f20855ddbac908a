"""Collapse alarms: values against numpy definitions, and the callback on collapsed and healthy batches."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_contrastive as kc
from keras_contrastive import monitor


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_statistics_match_their_numpy_definitions():
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(40, 16)), rng.normal(size=(40, 16))
    features = np.abs(rng.normal(size=(40, 24)))  # ReLU-like, not centred
    n1, n2 = _unit(z1), _unit(z2)
    np.testing.assert_allclose(monitor.projection_std(z1), n1.std(axis=0).mean(), rtol=1e-5)
    np.testing.assert_allclose(monitor.alignment(z1, z2), np.mean(np.sum((n1 - n2) ** 2, axis=1)), rtol=1e-5)
    distances = np.sum((n1[:, None] - n1[None]) ** 2, axis=-1)
    pairs = distances[~np.eye(40, dtype=bool)]
    np.testing.assert_allclose(monitor.uniformity(z1), np.log(np.mean(np.exp(-2 * pairs))), rtol=1e-4)
    s = np.linalg.svd(features, compute_uv=False)
    p = s / s.sum()
    np.testing.assert_allclose(monitor.effective_rank(features), np.exp(-np.sum(p * np.log(p))), rtol=1e-4)


def test_a_collapsed_batch_and_a_healthy_one():
    """The issue's figures: constant embeddings give std < 1e-6 and effective rank <= 2; Gaussian 256 x 64 give
    std * sqrt(d) in [0.8, 1.2] and effective rank >= 32."""
    constant = np.tile(np.random.default_rng(1).normal(size=(1, 64)), (256, 1)).astype("float32")
    gaussian = np.random.default_rng(2).normal(size=(256, 64)).astype("float32")
    assert float(monitor.projection_std(constant)) < 1e-6 and float(monitor.effective_rank(constant)) <= 2
    assert 0.8 <= float(monitor.projection_std(gaussian)) * np.sqrt(64) <= 1.2
    assert float(monitor.effective_rank(gaussian)) >= 32
    assert float(monitor.uniformity(constant)) == pytest.approx(0.0, abs=1e-5)
    assert float(monitor.uniformity(gaussian)) < -3.0


class _Model:
    monitored_dim = 64


def _logs(batch):
    metrics = monitor.collapse_metrics(batch, [batch, batch])
    return {name: float(value) for name, value in metrics.items()}


def test_the_callback_fires_on_collapse_only():
    constant = np.tile(np.random.default_rng(1).normal(size=(1, 64)), (256, 1)).astype("float32")
    gaussian = np.random.default_rng(2).normal(size=(256, 64)).astype("float32")
    callback = kc.callbacks.CollapseMonitor(check_every=1)
    callback.set_model(_Model())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        callback.on_train_batch_end(0, _logs(gaussian))
        assert not caught
        callback.on_train_batch_end(1, _logs(constant))
        assert len(caught) == 2  # both alarms, once each
        assert "projection_std * sqrt(dim) = " in str(caught[0].message) and "at batch 2" in str(caught[0].message)
        callback.on_train_batch_end(2, _logs(constant))
        assert len(caught) == 2  # not repeated while collapsed
    stopping = kc.callbacks.CollapseMonitor(stop=True)
    stopping.set_model(_Model())
    stopping.on_epoch_end(0, _logs(gaussian))
    with pytest.raises(RuntimeError, match="Representation collapse at the end of epoch 2: effective_rank"):
        stopping.on_epoch_end(1, {"effective_rank": 1.0})


@pytest.mark.parametrize("method", ["simclr", "supcon", pytest.param("mocov3", marks=pytest.mark.slow)])
def test_every_trainer_reports_the_alarms_as_metrics(method):
    keras.utils.set_random_seed(0)
    encoder = kc.encoders.ResNet18((16, 16, 3), width_multiplier=0.125)
    augmenter = kc.augment.SimCLRAugmenter(16, blur=False)
    if method == "simclr":
        model = kc.SimCLR(encoder, augmenter, projection_dim=32)
    elif method == "supcon":
        model = kc.SupCon(encoder, augmenter, projection_dim=32)
    else:
        model = kc.MoCoV3(encoder, augmenter, projection_dim=32, hidden_dim=64, total_steps=2)
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    images = np.random.default_rng(0).integers(0, 256, (16, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(16) % 4
    history = model.fit(tf.data.Dataset.from_tensor_slices((images, labels)).batch(8), epochs=1, verbose=0)
    logs = {k: v[-1] for k, v in history.history.items()}
    assert set(monitor.METRICS) <= set(logs) and model.monitored_dim == 32
    assert 0 < logs["projection_std"] * np.sqrt(32) < 1.5
    assert 1 <= logs["effective_rank"] <= 8 and logs["uniformity"] < 0 and 0 < logs["alignment"] < 4


def test_the_knn_monitor_logs_knn_accuracy_of_the_current_encoder_on_any_replica_count():
    """It equals a numpy kNN on the encoder's own features, and 1 replica equals 2 (the same weights)."""
    from conftest import cpu_strategy
    from conftest import numpy_knn
    from conftest import tiny_encoder

    rng = np.random.default_rng(0)
    labels = np.arange(96) % 4
    level = (labels[:, None, None, None] * 50 + rng.integers(0, 60, (96, 1, 1, 1))).astype("float32")
    images = np.clip(level + rng.normal(0, 20, (96, 16, 16, 1)), 0, 255).astype("uint8")
    bank, test = (images[:64], labels[:64]), tf.data.Dataset.from_tensor_slices((images[64:], labels[64:]))
    weights, figures = None, []
    for replicas in (1, 2):
        with cpu_strategy(replicas).scope():
            model = kc.SimCLR(tiny_encoder(), kc.augment.SimCLRAugmenter(16, blur=False), projection_dim=8)
            model.compile(optimizer=keras.optimizers.SGD(0.1))
        if weights is None:
            views = np.stack([images, images[::-1]], axis=1).astype("float32") / 255
            model.fit(views[:64], epochs=1, batch_size=32, verbose=0)  # weights and BN statistics moved
            weights = model.get_weights()
        model.set_weights(weights)
        monitor_ = kc.callbacks.KNNMonitor(bank, test, k=10)
        monitor_.set_model(model)
        logs = {}
        monitor_.on_epoch_end(0, logs)
        figures.append(logs["knn_accuracy"])
    features = model.encoder(images.astype("float32") / 255, training=False).numpy()
    want = numpy_knn(features[:64], labels[:64], features[64:], labels[64:], k=10)
    assert figures == [pytest.approx(want, abs=1e-9)] * 2
    assert want > 0.3  # not a degenerate comparison: the classes are separable by brightness


def test_the_knn_monitor_reaches_the_history_every_n_epochs():
    from conftest import tiny_encoder

    images = np.random.default_rng(1).integers(0, 256, (32, 16, 16, 1), dtype=np.uint8)
    labels = np.arange(32) % 2
    model = kc.SimCLR(tiny_encoder(), kc.augment.SimCLRAugmenter(16, blur=False), projection_dim=8)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    every_second = kc.callbacks.KNNMonitor((images, labels), (images, labels), every=2, k=5)
    history = model.fit(images, epochs=3, batch_size=16, verbose=0, callbacks=[every_second])
    assert len(history.history["knn_accuracy"]) == 1  # epoch 2 only
    with pytest.raises(ValueError, match="every"):
        kc.callbacks.KNNMonitor((images, labels), (images, labels), every=0)
