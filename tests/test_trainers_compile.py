"""Every trainer under jit_compile=True and under mixed_bfloat16: finite losses, one trace."""

import numpy as np
import keras
import pytest

import keras_contrastive as kc
from conftest import random_views, tiny_encoder, train

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


@pytest.fixture
def bfloat16():
    keras.config.set_dtype_policy("mixed_bfloat16")
    yield
    keras.config.set_dtype_policy("float32")


@pytest.mark.parametrize("method", ["simclr", "supcon", "moco_v3"])
def test_three_steps_with_jit_compile(method):
    model = make(method)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), jit_compile=True)
    traces = count_traces(model)
    hist = train(model, random_views(48), LABELS, steps=3)
    assert np.all(np.isfinite(hist["loss"]))
    assert len(traces) == 1


@pytest.mark.parametrize("method", ["simclr", "supcon", "moco_v3"])
def test_three_steps_in_mixed_bfloat16(method, bfloat16):
    model = make(method)
    assert model.encoder.layers[1].compute_dtype == "bfloat16"
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    traces = count_traces(model)
    hist = train(model, random_views(48), LABELS, steps=3)
    assert np.all(np.isfinite(hist["loss"]))
    assert len(traces) == 1
