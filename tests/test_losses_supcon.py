"""SupCon loss against an independent float64 numpy implementation."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import cpu_strategy
from conftest import shard

from keras_contrastive import losses


def supcon_numpy(features, labels, temperature, base_temperature, contrast_mode):
    """SupCon L_out written from the paper's eq. 2, loops and all, in float64."""
    f = features.astype("float64")
    f /= np.linalg.norm(f, axis=-1, keepdims=True)
    n, v, _ = f.shape
    ids = np.arange(n) if labels is None else np.asarray(labels)
    views = [(i, a) for a in range(v) for i in range(n)]  # every (image, view)
    anchors = views if contrast_mode == "all" else [(i, 0) for i in range(n)]
    terms = []
    for i, a in anchors:
        others = [(j, b) for (j, b) in views if (j, b) != (i, a)]
        denom = np.log(sum(np.exp(f[i, a] @ f[j, b] / temperature) for j, b in others))
        positives = [(j, b) for (j, b) in others if ids[j] == ids[i]]
        if not positives:
            continue
        logp = [f[i, a] @ f[j, b] / temperature - denom for j, b in positives]
        terms.append(-(temperature / base_temperature) * np.mean(logp))
    return np.mean(terms)


@pytest.mark.parametrize("contrast_mode", ["all", "one"])
@pytest.mark.parametrize("num_views", [2, 3])
@pytest.mark.parametrize("temperature,base_temperature", [(0.1, 0.1), (0.5, 0.07)])
def test_supcon_matches_numpy(contrast_mode, num_views, temperature, base_temperature, rng):
    features = rng.normal(size=(12, num_views, 8)).astype("float32")
    labels = rng.integers(0, 4, 12)
    got = float(losses.supcon(features, labels, temperature, base_temperature, contrast_mode))
    want = supcon_numpy(features, labels, temperature, base_temperature, contrast_mode)
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("contrast_mode", ["all", "one"])
def test_unlabelled_supcon_matches_numpy(contrast_mode, rng):
    features = rng.normal(size=(6, 3, 5)).astype("float32")
    got = float(losses.supcon(features, None, 0.3, 0.3, contrast_mode))
    np.testing.assert_allclose(got, supcon_numpy(features, None, 0.3, 0.3, contrast_mode), rtol=1e-5)


@pytest.mark.parametrize("temperature", [0.05, 0.2, 0.5])
def test_without_labels_two_views_is_nt_xent(temperature, rng):
    features = rng.normal(size=(16, 2, 32)).astype("float32")
    got = float(losses.supcon(features, None, temperature, temperature))
    want = float(losses.nt_xent(features[:, 0], features[:, 1], temperature))
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_anchor_without_positive_is_left_out_not_nan(rng):
    features = rng.normal(size=(4, 1, 8)).astype("float32")  # one view: class 3 is alone
    labels = np.array([0, 0, 1, 3])
    got = losses.supcon(features, labels, 0.1, 0.1)
    assert np.isfinite(float(got))
    np.testing.assert_allclose(float(got), supcon_numpy(features, labels, 0.1, 0.1, "all"), rtol=1e-5)
    with tf.GradientTape() as tape:
        x = tf.constant(features)
        tape.watch(x)
        loss = losses.supcon(x, labels, 0.1, 0.1)
    assert np.all(np.isfinite(tape.gradient(loss, x).numpy()))
    # No anchor has a positive at all: zero, not NaN.
    assert float(losses.supcon(features, np.arange(4), 0.1, 0.1)) == 0.0


def test_bad_arguments(rng):
    features = rng.normal(size=(4, 2, 8)).astype("float32")
    with pytest.raises(ValueError, match="4 examples"):
        losses.supcon(features, np.arange(3), 0.1)
    with pytest.raises(ValueError, match="temperature"):
        losses.supcon(features, None, 0.0)
    with pytest.raises(ValueError, match="base_temperature"):
        losses.supcon(features, None, 0.1, base_temperature=-1.0)
    with pytest.raises(ValueError, match="contrast_mode"):
        losses.supcon(features, None, 0.1, contrast_mode="some")
    with pytest.raises(ValueError, match="views"):
        losses.supcon(features[:, 0], None, 0.1)
    with pytest.raises(ValueError, match="integer"):
        losses.supcon(features, np.zeros(4, "float32"), 0.1)


@pytest.mark.parametrize("num_replicas", [2, 4])
@pytest.mark.parametrize("contrast_mode", ["all", "one"])
def test_cross_replica_supcon_equals_single_replica(num_replicas, contrast_mode, rng):
    n = 8
    features = rng.normal(size=(n, 2, 6)).astype("float32")
    labels = np.array([0, 0, 0, 1, 2, 2, 3, 4])  # uneven positives per replica
    x = tf.constant(features)
    with tf.GradientTape() as tape:
        tape.watch(x)
        expected = losses.supcon(x, labels, 0.2, 0.07, contrast_mode)
    expected_grad = tape.gradient(expected, x).numpy()

    strategy = cpu_strategy(num_replicas)

    @tf.function
    def step(f, y):
        def fn(f, y):
            with tf.GradientTape() as tape:
                tape.watch(f)
                loss = losses.supcon(f, y, 0.2, 0.07, contrast_mode)
                scaled = loss / num_replicas
            return loss, tape.gradient(scaled, f)

        return strategy.run(fn, args=(f, y))

    loss, grad = step(shard(strategy, features), shard(strategy, labels.astype("int32")))
    per_replica = [float(v) for v in strategy.experimental_local_results(loss)]
    np.testing.assert_allclose(np.mean(per_replica), float(expected), rtol=1e-5)
    got = np.concatenate([g.numpy() for g in strategy.experimental_local_results(grad)])
    np.testing.assert_allclose(got, expected_grad, rtol=1e-4, atol=1e-6)
