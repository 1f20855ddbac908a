import numpy as np
import keras
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
        ref["k"] = lars_reference(*ref["k"], gk, 0.5, 0.9, 1e-3, 0.01, False, nesterov) if False else \
            lars_reference(ref["k"][0], gk, ref["k"][1], 0.5, 0.9, 1e-3, 0.01, False, nesterov)
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
    opt = optimizers.LARS(exclude_names=["probe"])
    v = keras.Variable(np.ones((2, 2), "float32"), name="kernel")
    assert not opt._excluded(v)
    assert opt._excluded(keras.Variable(np.ones(2, "float32")))


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
