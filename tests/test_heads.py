"""Projection heads against numpy forward passes of the layers their papers name."""

import keras
import numpy as np
import pytest

import keras_contrastive as kc


def numpy_batch_norm(x, gamma=None, beta=None, epsilon=1e-5):
    """Training-mode BN over the batch axis (biased variance, as Keras and PyTorch)."""
    y = (x - x.mean(0)) / np.sqrt(x.var(0) + epsilon)
    if gamma is not None:
        y = y * gamma
    if beta is not None:
        y = y + beta
    return y


def weights_by_name(layer):
    return {w.path.split("/", 1)[1]: np.asarray(w.numpy(), np.float64) for w in layer.weights}


def random_weights(layer, seed):
    rng = np.random.default_rng(seed)
    for w in layer.weights:
        if "moving" not in w.path:
            w.assign(rng.normal(size=w.shape).astype("float32") * 0.5 + ("gamma" in w.path))


def test_batch_norm_projection_head_is_dense_bn_relu_dense_in_training_mode():
    head = kc.heads.batch_norm_projection_head(feature_dim=6, projection_dim=3, hidden_dim=5)
    head.build((None, 6))
    random_weights(head, seed=0)
    w = weights_by_name(head)
    assert sorted(w) == [
        "bn0/beta",
        "bn0/gamma",
        "bn0/moving_mean",
        "bn0/moving_variance",
        "dense0/kernel",
        "output_dense/bias",
        "output_dense/kernel",
    ]  # no hidden bias (BN's beta replaces it), a bias on the output
    x = np.random.default_rng(1).normal(size=(8, 6))
    hidden = numpy_batch_norm(x @ w["dense0/kernel"], w["bn0/gamma"], w["bn0/beta"])
    want = np.maximum(hidden, 0) @ w["output_dense/kernel"] + w["output_dense/bias"]
    got = head(x.astype("float32"), training=True)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)
    assert head.name == "projection_head" and head.hidden_dims == [5] and head.output_dim == 3
    assert kc.heads.batch_norm_projection_head(6).hidden_dims == [6]  # hidden width defaults to the feature size


def test_simclr_v2_head_has_bn_on_every_layer_and_no_output_beta():
    head = kc.heads.simclr_projection_head(2, feature_dim=6, projection_dim=3, hidden_dim=4)
    head.build((None, 6))
    random_weights(head, seed=2)
    w = weights_by_name(head)
    assert "output_dense/bias" not in w and "output_bn/beta" not in w and "output_bn/gamma" in w
    x = np.random.default_rng(3).normal(size=(8, 6))
    h = x
    for i in range(2):
        h = np.maximum(numpy_batch_norm(h @ w[f"dense{i}/kernel"], w[f"bn{i}/gamma"], w[f"bn{i}/beta"]), 0)
    want = numpy_batch_norm(h @ w["output_dense/kernel"], w["output_bn/gamma"])
    np.testing.assert_allclose(np.asarray(head(x.astype("float32"), training=True)), want, rtol=1e-4, atol=1e-4)


def test_simclr_v1_head_and_moco_v3_mlp_biases():
    v1 = kc.heads.simclr_projection_head(1, feature_dim=6, projection_dim=3)
    v1.build((None, 6))
    assert sorted(weights_by_name(v1)) == ["dense0/bias", "dense0/kernel", "output_dense/bias", "output_dense/kernel"]
    mlp = kc.heads.moco_v3_mlp(3, hidden_dim=4, output_dim=3)
    mlp.build((None, 6))
    names = weights_by_name(mlp)
    assert not [n for n in names if n.endswith("bias") or n.startswith("output_bn/") and "moving" not in n]
    with pytest.raises(ValueError, match="must be 1 or 2"):
        kc.heads.simclr_projection_head(3, 6)


def test_heads_round_trip_through_their_config():
    head = kc.heads.batch_norm_projection_head(6, 3, hidden_dim=5)
    head.build((None, 6))
    random_weights(head, seed=4)
    again = keras.layers.deserialize(keras.layers.serialize(head))  # built from its build config
    again.set_weights(head.get_weights())
    x = np.random.default_rng(5).normal(size=(4, 6)).astype("float32")
    np.testing.assert_allclose(np.asarray(again(x, training=False)), np.asarray(head(x, training=False)), atol=1e-6)
    assert again.get_config() == head.get_config()
