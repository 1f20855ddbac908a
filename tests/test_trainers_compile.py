"""Every trainer under jit_compile=True and under mixed precision: one trace, and the same step as the plain
eager float32 path (jit: to float32 rounding; bfloat16 / float16: to their rounding)."""

import types

import keras
import numpy as np
import pytest
from conftest import random_views
from conftest import tiny_encoder
from conftest import train

import keras_contrastive as kc

LABELS = np.arange(48) % 4


def count_traces(model):
    """Counts Python executions of train_step, i.e. traces of the train function."""
    traces = []
    step = model.train_step

    def counted(data):
        traces.append(1)
        return step(data)

    model.train_step = counted
    return traces


def make(method):
    if method == "simclr":
        return kc.SimCLR(tiny_encoder(synchronized_bn=False), temperature=0.5, projection_dim=8)
    if method == "supcon":
        return kc.SupCon(tiny_encoder(synchronized_bn=False), projection_dim=8)
    return kc.MoCoV3(tiny_encoder(synchronized_bn=False), hidden_dim=16, projection_dim=8, total_steps=3)


# MoCo v3's XLA compile (two encoders) is the longest of the three: in the full suite only.
@pytest.mark.parametrize("method", ["simclr", "supcon", pytest.param("moco_v3", marks=pytest.mark.slow)])
def test_jit_compile_traces_once_and_its_step_equals_the_eager_step(method):
    # One step from the same weights on the same batch: XLA and eager agree to float32 rounding. (Over
    # several steps this tiny MoCo v3 amplifies rounding: graph and eager already differ by 2e-4 after two.)
    fast, plain = make(method), make(method)
    fast.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), jit_compile=True)
    plain.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), run_eagerly=True)
    plain.set_weights(fast.get_weights())
    traces = count_traces(fast)
    got = train(fast, random_views(48), LABELS, batch=48, steps=1)
    want = train(plain, random_views(48), LABELS, batch=48, steps=1)
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
    for a, b in zip(fast.weights, plain.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5, err_msg=a.path)
    # Two more steps, in another fit call: the compiled step is reused, never traced again (one XLA compile
    # for the whole test: it is the test's cost).
    more = train(fast, random_views(96, seed=1), np.tile(LABELS, 2), batch=48, steps=2)
    assert np.all(np.isfinite(more["loss"])) and len(traces) == 1


@pytest.mark.parametrize("method", ["simclr", "supcon", "moco_v3"])
def test_a_mixed_bfloat16_step_matches_float32(method):
    """Same weights, same batch: the bfloat16 loss is the float32 one within 3e-2 relative, and the update
    points the same way with the same size; two more bfloat16 steps stay finite in the same trace."""
    try:
        model, init, delta16, hist16 = one_step_update(method, "mixed_bfloat16")
        assert model.encoder.layers[1].compute_dtype == "bfloat16"
        more = train(model, random_views(96, seed=1), np.tile(LABELS, 2), batch=48, steps=2)
        _, _, delta32, hist32 = one_step_update(method, "float32", init)
    finally:
        keras.config.set_dtype_policy("float32")
    assert np.all(np.isfinite(more["loss"])) and len(model.trace_log.calls) == 1
    assert abs(hist16["loss"][0] - hist32["loss"][0]) <= 3e-2 * abs(hist32["loss"][0])
    moved = [(d16, d32) for d16, d32 in zip(delta16, delta32) if np.abs(d32).max() > 1e-4]
    assert len(moved) >= 3
    for d16, d32 in moved:  # each variable moves the same way (bfloat16 keeps 8 bits: sizes vary per variable)
        assert np.sum(d16 * d32) / (np.linalg.norm(d16) * np.linalg.norm(d32)) > 0.9
    d16, d32 = (np.concatenate([d[i].ravel() for d in moved]) for i in (0, 1))
    assert 0.9 < np.linalg.norm(d16) / np.linalg.norm(d32) < 1.1  # and the whole update has the same size


@pytest.fixture
def float16():
    keras.config.set_dtype_policy("mixed_float16")
    yield
    keras.config.set_dtype_policy("float32")


def one_step_update(method, policy, init=None):
    keras.config.set_dtype_policy(policy)
    model = make(method)
    optimizer = keras.optimizers.SGD(0.05)
    if policy == "mixed_float16":
        # Keras' default first scale, 2**15, overflows on this net's first step
        # (the step is then skipped and the scale halved): start lower.
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=2.0**8)
    model.compile(optimizer=optimizer)
    # Kept in a plain object: a list set on a Keras model becomes a tracked copy.
    model.trace_log = types.SimpleNamespace(calls=count_traces(model))
    if init is not None:
        model.set_weights(init)
    before = [w.copy() for w in model.get_weights()]
    hist = train(model, random_views(48), LABELS, batch=48, steps=1)
    return model, before, [a - b for a, b in zip(model.get_weights(), before)], hist


@pytest.mark.parametrize("method", ["simclr", "supcon", "moco_v3"])
def test_mixed_float16_scales_the_loss_and_matches_float32(method, float16):
    """Keras wraps the optimizer in a LossScaleOptimizer; the custom step must scale the loss
    (or small float16 gradients vanish) and the optimizer unscale it: one SGD step in
    mixed_float16 moves the weights as float32 does, up to float16 rounding."""
    auto = make(method)
    auto.compile(optimizer=keras.optimizers.SGD(0.05))
    assert isinstance(auto.optimizer, keras.optimizers.LossScaleOptimizer)  # Keras wraps it
    model, init, delta16, hist = one_step_update(method, "mixed_float16")
    assert model.optimizer.dynamic_scale.numpy() == 2.0**8  # the step was applied, not skipped
    assert np.isfinite(hist["loss"]).all()
    _, _, delta32, _ = one_step_update(method, "float32", init)
    moved = [(d16, d32) for d16, d32 in zip(delta16, delta32) if np.abs(d32).max() > 1e-4]
    assert len(moved) >= 3
    for d16, d32 in moved:
        # Same direction, same size: a loss scaled but not unscaled would move
        # the weights 256 times too far.
        cosine = np.sum(d16 * d32) / (np.linalg.norm(d16) * np.linalg.norm(d32))
        ratio = np.linalg.norm(d16) / np.linalg.norm(d32)
        assert cosine > 0.95 and 0.8 < ratio < 1.25


@pytest.mark.parametrize("method", ["simclr", "supcon", "moco_v3", "simclr_in_step"])
def test_steps_per_execution_gives_the_weights_of_one_step_per_call(method):
    """Keras runs `steps_per_execution` steps in one call of the train function (fewer Python round trips, issue
    13); the steps themselves, the MoCo v3 momentum schedule and the in-step augmenter's per-step seeds (both read
    the optimizer's step counter inside the loop) must not change."""
    runs = []
    for steps_per_execution in (1, 3):
        if method == "simclr_in_step":
            augmenter = kc.augment.SimCLRAugmenter(16, seed=3)
            model = kc.SimCLR(tiny_encoder(synchronized_bn=False), augmenter, temperature=0.5, projection_dim=8)
        else:
            model = make(method)
        if runs:
            model.set_weights(runs[0][1])
        model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), steps_per_execution=steps_per_execution)
        init = [w.copy() for w in model.get_weights()]
        data = random_views(96)[:, 0] if method == "simclr_in_step" else random_views(96)
        hist = train(model, data, np.arange(96) % 4, batch=16, steps=6)
        runs.append((hist, init, model))
    (hist1, _, one), (hist3, _, three) = runs
    assert one.optimizer.iterations.numpy() == three.optimizer.iterations.numpy() == 6
    moved = 0
    for a, b, w0 in zip(one.weights, three.weights, runs[0][1]):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)
        moved += not np.allclose(a.numpy(), w0)
    assert moved >= 3  # the six steps trained
    # Keras reports the mean over the epoch either way.
    np.testing.assert_allclose(hist3["loss"], hist1["loss"], rtol=1e-5)
