import keras
import numpy as np
import pytest
from conftest import assert_replicas_match_one_replica
from conftest import cpu_strategy
from conftest import random_views
from conftest import tiny_encoder
from conftest import train

import keras_contrastive as kc


def unit_rows(x):
    x = np.asarray(x, "float64")
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_nearest_neighbours_are_the_most_similar_valid_rows(rng):
    z, support = rng.normal(size=(6, 4)), rng.normal(size=(9, 4))
    valid = np.array([True, False, True, True, False, True, True, False, True])
    neighbours, indices = kc.losses.nearest_neighbours(z, support, valid)
    cosine = unit_rows(z) @ unit_rows(support).T
    want = np.where(valid, cosine, -np.inf).argmax(axis=1)
    np.testing.assert_array_equal(indices.numpy(), want)
    np.testing.assert_allclose(neighbours.numpy(), unit_rows(support)[want], rtol=1e-12)
    # With every row allowed, the invalid ones win for some embeddings: the mask does the work above.
    assert (cosine.argmax(axis=1) != want).any()
    # An empty support set: every embedding is its own neighbour.
    neighbours, indices = kc.losses.nearest_neighbours(z, support, np.zeros(9, bool))
    np.testing.assert_allclose(neighbours.numpy(), unit_rows(z), rtol=1e-12)
    assert (indices.numpy() == -1).all()


def nnclr_reference(neighbours, predictions, temperature):
    """Eq. 2 of Dwibedi et al. in float64 loops."""
    q, p = unit_rows(neighbours), unit_rows(predictions)
    total = 0.0
    for i in range(len(q)):
        logits = np.array([q[i] @ p[k] for k in range(len(p))]) / temperature
        total += np.log(np.exp(logits).sum()) - logits[i]
    return total / len(q)


def test_nnclr_loss_against_its_definition(rng):
    neighbours, predictions = rng.normal(size=(2, 7, 5))
    got = kc.losses.nnclr_loss(neighbours, predictions, 0.3)
    np.testing.assert_allclose(float(got), nnclr_reference(neighbours, predictions, 0.3), rtol=1e-10)
    with pytest.raises(ValueError, match="must be > 0"):
        kc.losses.nnclr_loss(neighbours, predictions, 0.0)


def build(strategy, learning_rate=0.0, dtype="float32", size=64, num_classes=None, keep_labels=False):
    with strategy.scope():
        model = kc.NNCLR(
            tiny_encoder(),
            support_set=kc.negatives.Queue(size, keep_labels=keep_labels, dtype=dtype),
            temperature=0.2,
            projection_dim=8,
            projection_hidden_dim=16,
            prediction_hidden_dim=16,
            num_classes=num_classes,
        )
        model.compile(optimizer=keras.optimizers.SGD(learning_rate, momentum=0.9))
    return model


def by_hand(model, views):
    """Projections and predictions of both views, in training mode, as the step computes them."""
    z = [model.projector(model.encoder(views[:, v], training=True), training=True).numpy() for v in (0, 1)]
    p = [model.predictor(zv, training=True).numpy() for zv in z]
    return z, p


def test_a_view_is_its_own_neighbour_until_the_support_set_fills_then_its_nearest_key():
    # Learning rate 0: the weights stay, so each step's projections can be recomputed by hand.
    model = build(cpu_strategy(1), num_classes=3, keep_labels=True)
    first, second = random_views(8, seed=1), random_views(8, seed=2)
    labels_1, labels_2 = np.arange(8) % 3, (np.arange(8) + 1) % 3
    loss_1 = model.train_on_batch(first, labels_1, return_dict=True)["loss"]
    (z1, z2), (p1, p2) = by_hand(model, first)
    want_1 = 0.5 * (nnclr_reference(z1, p2, 0.2) + nnclr_reference(z2, p1, 0.2))
    np.testing.assert_allclose(loss_1, want_1, rtol=1e-5)
    support = unit_rows(z1)  # the first view's unit projections, enqueued after the loss
    np.testing.assert_allclose(model.support_set.ordered()[0], support, atol=1e-6)
    np.testing.assert_array_equal(model.support_set.ordered()[1], labels_1)

    logs = model.train_on_batch(second, labels_2, return_dict=True)
    (y1, y2), (q1, q2) = by_hand(model, second)
    nn1, nn2 = (support[(unit_rows(y) @ support.T).argmax(axis=1)] for y in (y1, y2))
    want_2 = 0.5 * (nnclr_reference(nn1, q2, 0.2) + nnclr_reference(nn2, q1, 0.2))
    np.testing.assert_allclose(logs["loss"], want_2, rtol=1e-5)
    # The neighbour's label against the view's own, over the first views.
    step_2 = np.mean(labels_1[(unit_rows(y1) @ support.T).argmax(axis=1)] == labels_2)
    np.testing.assert_allclose(logs["neighbour_accuracy"], step_2, atol=1e-6)


@pytest.mark.parametrize("num_replicas", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_two_replicas_compute_what_one_replica_computes(float64, num_replicas):
    """Three steps of 16 first views through 40 slots on 1 and 2 (4) replicas from the same weights."""
    _, model, _, _ = assert_replicas_match_one_replica(
        lambda strategy: build(strategy, learning_rate=0.05, dtype="float64", size=40), num_replicas, random_views(48)
    )
    assert int(model.support_set.filled.numpy()) == 40


def test_nnclr_trains_saves_and_loads_with_its_support_set(tmp_path):
    model = build(cpu_strategy(1), learning_rate=0.05, size=24)
    history = train(model, random_views(48))
    assert np.isfinite(history["loss"]).all()
    path = str(tmp_path / "nnclr.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, kc.NNCLR) and restored.support_set.size == 24
    np.testing.assert_array_equal(restored.support_set.keys.numpy(), model.support_set.keys.numpy())
    images = random_views(4)[:, 0]
    np.testing.assert_allclose(restored.encoder(images), model.encoder(images), rtol=1e-6)
    config = model.get_config()
    assert (config["temperature"], config["projection_hidden_dim"], config["prediction_hidden_dim"]) == (0.2, 16, 16)


def test_nnclr_refuses_what_it_cannot_train():
    with pytest.raises(ValueError, match="`temperature` must be a number > 0"):
        kc.NNCLR(tiny_encoder(), temperature=0)
    with pytest.raises(ValueError, match="2 views"):
        kc.NNCLR(tiny_encoder(), num_views=3)
    model = build(cpu_strategy(1), keep_labels=True)
    with pytest.raises(ValueError, match="keeps labels"):
        model.train_on_batch(random_views(8))
