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


@pytest.mark.parametrize("method", ["simclr", "supcon", "mocov3"])
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
