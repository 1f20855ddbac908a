import keras
import numpy as np
import pytest

from keras_contrastive import optimizers


def lars_reference(w, g, v, lr, momentum, wd, eta, excluded, nesterov=False):
    """Hand-written LARS step (SimCLR's lars_optimizer.py), float64."""
    w, g, v = (np.asarray(a, "float64") for a in (w, g, v))
    if not excluded:
        g = g + wd * w
        w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g)
        trust = eta * w_norm / g_norm if (w_norm > 0 and g_norm > 0) else 1.0
    else:
        trust = 1.0
    v_new = momentum * v + lr * trust * g
    update = momentum * v_new + lr * trust * g if nesterov else v_new
    return w - update, v_new


@pytest.mark.parametrize("nesterov", [False, True])
def test_two_updates_match_reference(nesterov, rng):
    kernel = keras.Variable(rng.normal(size=(3, 4)).astype("float32"), name="kernel")
    bias = keras.Variable(rng.normal(size=(4,)).astype("float32"), name="bias")
    opt = optimizers.LARS(learning_rate=0.5, momentum=0.9, weight_decay=1e-3, eta=0.01, nesterov=nesterov)
    ref = {"k": (kernel.numpy(), np.zeros((3, 4))), "b": (bias.numpy(), np.zeros(4))}
    for _ in range(2):
        gk = rng.normal(size=(3, 4)).astype("float32")
        gb = rng.normal(size=(4,)).astype("float32")
        opt.apply([gk, gb], [kernel, bias])
        ref["k"] = (
            lars_reference(*ref["k"], gk, 0.5, 0.9, 1e-3, 0.01, False, nesterov)
            if False
            else lars_reference(ref["k"][0], gk, ref["k"][1], 0.5, 0.9, 1e-3, 0.01, False, nesterov)
        )
        ref["b"] = lars_reference(ref["b"][0], gb, ref["b"][1], 0.5, 0.9, 1e-3, 0.01, True, nesterov)
    np.testing.assert_allclose(kernel.numpy(), ref["k"][0], rtol=1e-5)
    np.testing.assert_allclose(bias.numpy(), ref["b"][0], rtol=1e-5)


def test_trust_ratio_changes_the_step():
    """The kernel's step is eta * ||w|| / ||g|| times the plain SGD step."""
    w0 = np.full((2, 2), 3.0, "float32")
    g = np.full((2, 2), 0.5, "float32")
    kernel = keras.Variable(w0)
    optimizers.LARS(learning_rate=1.0, momentum=0.0, eta=0.1).apply([g], [kernel])
    step = w0 - kernel.numpy()
    np.testing.assert_allclose(step, 0.1 * np.linalg.norm(w0) / np.linalg.norm(g) * g, rtol=1e-6)


def test_exclude_names():
    """A variable whose path holds an excluded name gets plain momentum SGD: no decay, no trust ratio."""
    layer = keras.layers.Dense(3, name="online_probe")
    layer.build((None, 2))
    other = keras.layers.Dense(3, name="encoder_dense")
    other.build((None, 2))
    assert "online_probe" in layer.kernel.path
    opt = optimizers.LARS(learning_rate=0.5, momentum=0.0, weight_decay=0.1, eta=0.01, exclude_names=["online_probe"])
    assert opt._excluded(layer.kernel) and not opt._excluded(other.kernel)
    g = np.full((2, 3), 0.25, "float32")
    w_probe, w_other = layer.kernel.numpy().copy(), other.kernel.numpy().copy()
    opt.apply([g, g], [layer.kernel, other.kernel])
    np.testing.assert_allclose(layer.kernel.numpy(), w_probe - 0.5 * g, rtol=1e-6)
    want_other, _ = lars_reference(w_other, g, np.zeros((2, 3)), 0.5, 0.0, 0.1, 0.01, False)
    np.testing.assert_allclose(other.kernel.numpy(), want_other, rtol=1e-5)


def sgd_reference(w, grads, lr, momentum, wd, coupled):
    """PyTorch's SGD (coupled: g + wd * w before the momentum buffer) or Keras' decoupled form, float64."""
    w, v = np.asarray(w, "float64"), np.zeros_like(w, "float64")
    for g in grads:
        g = np.asarray(g, "float64")
        if coupled:
            g = g + wd * w
        else:
            w = w - lr * wd * w  # Keras shrinks the weights just before the step
        v = momentum * v - lr * g
        w = w + v
    return w


@pytest.mark.parametrize("decay_type", ["coupled", "decoupled"])
def test_sgd_weight_decay_forms_match_hand_computation(decay_type, rng):
    kernel = keras.Variable(rng.normal(size=(3, 4)).astype("float32"), name="kernel")
    bias = keras.Variable(rng.normal(size=(4,)).astype("float32"), name="bias")
    opt = optimizers.SGD(0.5, momentum=0.9, weight_decay=0.01, weight_decay_type=decay_type, exclude_bias_and_norm=True)
    grads = [(rng.normal(size=(3, 4)).astype("float32"), rng.normal(size=(4,)).astype("float32")) for _ in range(3)]
    k0, b0 = kernel.numpy(), bias.numpy()
    for gk, gb in grads:
        opt.apply([gk, gb], [kernel, bias])
    coupled = decay_type == "coupled"
    np.testing.assert_allclose(
        kernel.numpy(), sgd_reference(k0, [g for g, _ in grads], 0.5, 0.9, 0.01, coupled), rtol=1e-5
    )
    # The bias (rank 1) is excluded from decay.
    np.testing.assert_allclose(
        bias.numpy(), sgd_reference(b0, [g for _, g in grads], 0.5, 0.9, 0.0, coupled), rtol=1e-5
    )


def test_coupled_decay_is_about_ten_times_decoupled_at_momentum_0_9():
    """With a zero gradient, the coupled decay compounds through momentum: ~1 / (1 - 0.9) = 10x after many steps."""
    shrink = {}
    for decay_type in optimizers.WEIGHT_DECAY_TYPES:
        w = keras.Variable(np.ones((2, 2), "float32"))
        opt = optimizers.SGD(0.01, momentum=0.9, weight_decay=0.01, weight_decay_type=decay_type)
        for _ in range(200):
            opt.apply([np.zeros((2, 2), "float32")], [w])
        shrink[decay_type] = -np.log(float(w.numpy()[0, 0]))
    assert 8.0 < shrink["coupled"] / shrink["decoupled"] < 10.5


def test_sgd_config_round_trip_and_validation():
    for decay_type in optimizers.WEIGHT_DECAY_TYPES:
        opt = optimizers.SGD(
            0.1, momentum=0.8, weight_decay=5e-4, weight_decay_type=decay_type, exclude_bias_and_norm=True
        )
        clone = optimizers.SGD.from_config(opt.get_config())
        assert (clone.weight_decay_type, clone.exclude_bias_and_norm, clone.momentum) == (decay_type, True, 0.8)
        assert (clone.coupled_weight_decay, clone.weight_decay) == (
            (5e-4, None) if decay_type == "coupled" else (0.0, 5e-4)
        )
    with pytest.raises(ValueError, match="weight_decay_type"):
        optimizers.SGD(weight_decay_type="l2")
    with pytest.raises(ValueError, match="weight_decay"):
        optimizers.SGD(weight_decay=-1.0)


def test_config_round_trip_and_validation():
    opt = optimizers.LARS(learning_rate=0.3, momentum=0.8, weight_decay=1e-6, eta=0.002, nesterov=True)
    clone = optimizers.LARS.from_config(opt.get_config())
    assert (clone.momentum, clone.lars_weight_decay, clone.eta, clone.nesterov) == (0.8, 1e-6, 0.002, True)
    for kwargs in ({"momentum": 1.0}, {"weight_decay": -1.0}, {"eta": 0.0}):
        with pytest.raises(ValueError):
            optimizers.LARS(**kwargs)


def test_scale_learning_rate():
    assert optimizers.scale_learning_rate(0.3, 4096) == pytest.approx(4.8)
    assert optimizers.scale_learning_rate(0.075, 4096, "sqrt") == pytest.approx(4.8)
    with pytest.raises(ValueError):
        optimizers.scale_learning_rate(0.3, 256, "cubic")


def test_warmup_cosine_values():
    schedule = optimizers.warmup_cosine(1.0, total_steps=110, warmup_steps=10)
    values = [float(schedule(s)) for s in (0, 5, 10, 60, 110)]
    np.testing.assert_allclose(values, [0.0, 0.5, 1.0, 0.5, 0.0], atol=1e-6)
    with pytest.raises(ValueError):
        optimizers.warmup_cosine(1.0, total_steps=10, warmup_steps=10)
