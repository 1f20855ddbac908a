import keras
import numpy as np
import pytest

from keras_contrastive import ema


def test_ema_update_matches_hand_computation(rng):
    targets = [keras.Variable(rng.normal(size=(3, 2)).astype("float32")), keras.Variable(np.ones(2, "float32"))]
    sources = [keras.Variable(rng.normal(size=(3, 2)).astype("float32")), keras.Variable(np.zeros(2, "float32"))]
    t0 = [t.numpy().copy() for t in targets]
    ema.ema_update(targets, sources, 0.9)
    for t, s, before in zip(targets, sources, t0):
        np.testing.assert_allclose(t.numpy(), 0.9 * before + 0.1 * s.numpy(), rtol=1e-6)
    ema.ema_update(targets, sources, 1.0)  # momentum 1 freezes the target
    np.testing.assert_allclose(targets[1].numpy(), 0.9 * np.ones(2), rtol=1e-6)
    with pytest.raises(ValueError, match="matching"):
        ema.ema_update(targets, sources[:1], 0.9)


def test_cosine_momentum_start_middle_end():
    values = [float(ema.cosine_momentum(k, 100, 0.99)) for k in (0, 50, 100, 150)]
    np.testing.assert_allclose(values, [0.99, 0.995, 1.0, 1.0], atol=1e-7)
    with pytest.raises(ValueError, match="base_momentum"):
        ema.cosine_momentum(0, 10, 1.5)
    with pytest.raises(ValueError, match="total_steps"):
        ema.cosine_momentum(0, 0)
