import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import assert_replicas_match_one_replica
from conftest import cpu_strategy
from conftest import random_views
from conftest import tiny_encoder
from conftest import train

import keras_contrastive as kc


def unit_rows(x):
    x = np.asarray(x, "float64")
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def sinkhorn_reference(scores, epsilon, iterations):
    """Algorithm 1 of Caron et al. (2020) in float64 numpy: Q is K x B there."""
    q = np.exp(np.asarray(scores, "float64") / epsilon).T
    q /= q.sum()
    k, b = q.shape
    for _ in range(iterations):
        q /= q.sum(axis=1, keepdims=True)
        q /= k
        q /= q.sum(axis=0, keepdims=True)
        q /= b
    return (q * b).T


def swav_reference(scores, codes, temperature):
    """Eq. 1-2 of the paper, row by row: each assigned view's codes against every other view's softmax."""
    total = 0.0
    for i, q in enumerate(codes):
        terms = []
        for v, s in enumerate(scores):
            if v == i:
                continue
            loss = 0.0
            for row in range(len(q)):
                logits = np.asarray(s[row], "float64") / temperature
                log_p = logits - np.log(np.exp(logits).sum())
                loss -= (q[row] * log_p).sum()
            terms.append(loss / len(q))
        total += sum(terms) / len(terms)
    return total / len(codes)


def test_sinkhorn_against_the_papers_algorithm(rng):
    scores = np.tanh(rng.normal(size=(12, 7)))
    got = kc.losses.sinkhorn(scores, epsilon=0.05, iterations=3).numpy()
    want = sinkhorn_reference(scores, 0.05, 3)
    np.testing.assert_allclose(got, want, rtol=1e-10)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-12)
    # More iterations approach the equipartition: every prototype's mass -> B / K.
    balanced = kc.losses.sinkhorn(scores, epsilon=0.05, iterations=200).numpy()
    np.testing.assert_allclose(balanced.sum(axis=0), 12 / 7, rtol=1e-6)
    assert np.abs(got.sum(axis=0) - 12 / 7).max() > 1e-3  # three iterations are not there yet: the count matters


def test_sinkhorn_leaves_out_rows_that_are_not_valid(rng):
    scores = np.tanh(rng.normal(size=(10, 5)))
    valid = np.array([True, False, True, True, False, True, True, True, False, True])
    got = kc.losses.sinkhorn(scores, epsilon=0.1, iterations=3, valid=valid).numpy()
    np.testing.assert_allclose(got[valid], sinkhorn_reference(scores[valid], 0.1, 3), rtol=1e-10)
    assert (got[~valid] == 0).all()


def test_sinkhorn_sums_over_the_replicas(rng):
    """Two replicas, each with half the rows, give the codes of all rows on one replica."""
    scores = np.tanh(rng.normal(size=(8, 6))).astype("float32")
    strategy = cpu_strategy(2)
    halves = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(scores[4 * ctx.replica_id_in_sync_group : 4 * ctx.replica_id_in_sync_group + 4])
    )
    result = strategy.run(lambda s: kc.losses.sinkhorn(s, 0.05, 3), args=(halves,))
    got = np.concatenate([t.numpy() for t in strategy.experimental_local_results(result)])
    np.testing.assert_allclose(got, sinkhorn_reference(scores, 0.05, 3), rtol=1e-4)
    # Each half on its own is another equipartition.
    alone = kc.losses.sinkhorn(scores[:4], 0.05, 3).numpy()
    assert np.abs(alone - got[:4]).max() > 1e-2


def test_swav_loss_against_its_definition(rng):
    scores = [np.tanh(rng.normal(size=(6, 5))) for _ in range(3)]
    codes = [sinkhorn_reference(s, 0.05, 3) for s in scores[:2]]
    got = kc.losses.swav_loss(scores, codes, 0.2)
    np.testing.assert_allclose(float(got), swav_reference(scores, codes, 0.2), rtol=1e-10)
    with pytest.raises(ValueError, match="must be > 0"):
        kc.losses.swav_loss(scores, codes, 0.0)
    with pytest.raises(ValueError, match="`epsilon` must be a number > 0"):
        kc.losses.sinkhorn(scores[0], epsilon=0)


def test_prototypes_are_unit_columns_and_score_cosines(rng):
    layer = kc.heads.Prototypes(6)
    z = rng.normal(size=(4, 3)).astype("float32")
    scores = layer(z).numpy()
    kernel = layer.kernel.numpy()
    np.testing.assert_allclose(np.linalg.norm(kernel, axis=0), 1.0, rtol=1e-6)
    np.testing.assert_allclose(scores, unit_rows(z) @ kernel, rtol=1e-5, atol=1e-6)
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        assert kc.heads.Prototypes(6).compute_dtype == "float32"  # scores in float32 under mixed precision
    finally:
        keras.config.set_dtype_policy("float32")
    with pytest.raises(ValueError, match="`num_prototypes` must be an int >= 2"):
        kc.heads.Prototypes(1)


def build(strategy, learning_rate=0.0, queue_size=None, freeze=0, dtype="float32", num_views=None, queue_start_step=0):
    with strategy.scope():
        queue = None if queue_size is None else kc.negatives.Queue(queue_size, dtype=dtype)
        model = kc.SwAV(
            tiny_encoder(),
            num_prototypes=10,
            temperature=0.2,
            epsilon=0.1,
            freeze_prototypes_steps=freeze,
            queue=queue,
            queue_start_step=queue_start_step,
            projection_dim=8,
            projection_hidden_dim=16,
            num_views=num_views,
        )
        model.compile(optimizer=keras.optimizers.SGD(learning_rate, momentum=0.9))
    return model


def by_hand(model, views):
    """Unit projections and prototype scores of every view, in training mode, as the step computes them."""
    num_views = views.shape[1]
    features = model.encoder(np.concatenate([views[:, v] for v in range(num_views)]), training=True)
    z = unit_rows(model.projection_head(features, training=True))
    scores = z @ model.prototypes.kernel.numpy()
    return np.split(z, num_views), np.split(scores, num_views)


def multi_crop_views(n=8, seed=0):
    """Multi-crop groups as `contrastive_views` yields them: 2 views at 16x16, 3 at 8x8."""
    return random_views(n, seed=seed), random_views(n, size=8, seed=seed + 1, num_views=3)


def test_a_step_predicts_the_other_views_codes_and_reports_prototype_usage():
    model = build(cpu_strategy(1), num_views=3)  # learning rate 0: the step's numbers can be recomputed
    views = random_views(8, num_views=3)
    logs = model.train_on_batch(views, return_dict=True)
    _, scores = by_hand(model, views)
    codes = [sinkhorn_reference(s, 0.1, 3) for s in scores[:2]]  # the first two views are assigned
    np.testing.assert_allclose(logs["loss"], swav_reference(scores, codes, 0.2), rtol=1e-5)
    usage = len(set(scores[0].argmax(axis=1))) / 10
    np.testing.assert_allclose(logs["prototype_usage"], usage, atol=1e-6)


@pytest.mark.parametrize("queue_start_step, first_use", [(0, 2), (3, 3)])
def test_the_queue_joins_the_codes_once_full_and_started(queue_start_step, first_use):
    """Queue of 16 and batches of 8: steps 1-2 fill it (the codes see the batch alone), step 3 uses it; with
    queue_start_step=3, step 4 does."""
    model = build(cpu_strategy(1), queue_size=16, queue_start_step=queue_start_step)
    batches = [random_views(8, seed=s) for s in (1, 2, 3, 4)]
    for step, views in enumerate(batches):
        queued, _ = model.queue.ordered()
        logs = model.train_on_batch(views, return_dict=True)
        z, scores = by_hand(model, views)
        if step < first_use:
            codes = [sinkhorn_reference(s, 0.1, 3) for s in scores]
        else:
            kernel = model.prototypes.kernel.numpy()
            halves = (queued[:, :8], queued[:, 8:])  # each assigned view's keys, side by side in a slot
            codes = [sinkhorn_reference(np.concatenate([h @ kernel, s]), 0.1, 3)[-8:] for h, s in zip(halves, scores)]
            without = [sinkhorn_reference(s, 0.1, 3) for s in scores]
            assert abs(swav_reference(scores, without, 0.2) - swav_reference(scores, codes, 0.2)) > 1e-3
        np.testing.assert_allclose(logs["loss"], swav_reference(scores, codes, 0.2), rtol=1e-5)
    # The newest keys are the last batch's two unit projections, side by side.
    np.testing.assert_allclose(model.queue.ordered()[0][-8:], np.concatenate(z, axis=1), atol=1e-6)


def test_prototypes_stay_frozen_for_the_first_steps_then_learn_on_the_sphere():
    model = build(cpu_strategy(1), learning_rate=0.5, freeze=2)
    start = model.prototypes.kernel.numpy()
    head = model.projection_head.get_weights()[0].copy()
    for step, views in enumerate(random_views(8 * 3, seed=4).reshape(3, 8, 2, 16, 16, 1)):
        model.train_on_batch(views)
        kernel = model.prototypes.kernel.numpy()
        if step < 2:  # renormalized after every update: float32 rounding of a unit column, no more
            np.testing.assert_allclose(kernel, start, rtol=0, atol=1e-6)
    assert np.abs(kernel - start).max() > 1e-3
    np.testing.assert_allclose(np.linalg.norm(kernel, axis=0), 1.0, rtol=1e-5)
    assert np.abs(model.projection_head.get_weights()[0] - head).max() > 1e-3  # the rest learned all along


@pytest.mark.parametrize("num_replicas", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_replicas_compute_what_one_replica_computes(num_replicas, float64):
    """Three steps of 16 multi-crop images (2 views at 16x16, 3 at 8x8) through a queue of 32 (full, and so used, at
    step 3), prototypes free from step 2."""
    _, model, _, _ = assert_replicas_match_one_replica(
        lambda strategy: build(strategy, learning_rate=0.05, queue_size=32, freeze=1, dtype="float64", num_views=5),
        num_replicas,
        (multi_crop_views(48),),
    )
    assert int(model.queue.filled.numpy()) == 32


def test_swav_under_jit_compile_matches_the_eager_step():
    """Multi-crop groups (each of static shape) and a queue of 16, full at step 2, under XLA."""
    models = [build(cpu_strategy(1), 0.05, queue_size=16, num_views=5) for _ in range(2)]
    eager, jit = models
    jit.set_weights(eager.get_weights())
    jit.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), jit_compile=True)
    for seed in (0, 2, 4):
        groups = multi_crop_views(seed=seed)
        np.testing.assert_allclose(jit.train_on_batch(groups), eager.train_on_batch(groups), rtol=1e-4)
    np.testing.assert_allclose(jit.prototypes.kernel.numpy(), eager.prototypes.kernel.numpy(), atol=1e-4)
    np.testing.assert_allclose(jit.encoder.get_weights()[0], eager.encoder.get_weights()[0], atol=1e-5)


def test_swav_trains_saves_and_loads_with_its_queue(tmp_path):
    model = build(cpu_strategy(1), learning_rate=0.05, queue_size=24)
    history = train(model, random_views(48))
    assert np.isfinite(history["loss"]).all()
    path = str(tmp_path / "swav.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, kc.SwAV) and restored.queue.size == 24 and restored.num_prototypes == 10
    np.testing.assert_array_equal(restored.queue.keys.numpy(), model.queue.keys.numpy())
    np.testing.assert_array_equal(restored.prototypes.kernel.numpy(), model.prototypes.kernel.numpy())
    config = model.get_config()
    assert (config["epsilon"], config["temperature"], config["freeze_prototypes_steps"]) == (0.1, 0.2, 0)


def test_swav_refuses_what_it_cannot_train():
    with pytest.raises(ValueError, match="`temperature` must be a number > 0"):
        kc.SwAV(tiny_encoder(), temperature=-1)
    with pytest.raises(ValueError, match="`epsilon` must be a number > 0"):
        kc.SwAV(tiny_encoder(), epsilon=0)
    with pytest.raises(ValueError, match="`freeze_prototypes_steps`"):
        kc.SwAV(tiny_encoder(), freeze_prototypes_steps=-1)
    with pytest.raises(ValueError, match="`queue_start_step` must be an int >= 0"):
        kc.SwAV(tiny_encoder(), queue_start_step=1.5)
    with pytest.raises(ValueError, match="without mochi"):
        kc.SwAV(tiny_encoder(), queue=kc.negatives.Queue(64, mochi=kc.negatives.MoCHi(4, 4, 2)))
    with pytest.raises(ValueError, match="dimension 8; this model's are 16"):
        queue = kc.negatives.Queue(64)
        queue.build((None, 8))
        kc.SwAV(tiny_encoder(), queue=queue, projection_dim=8, projection_hidden_dim=16)
    model = build(cpu_strategy(2), queue_size=25)
    with pytest.raises(ValueError, match="divisible by the number of replicas"):
        model.train_on_batch(random_views(8))


def test_multi_crop_encodes_each_size_in_one_call_and_every_view_predicts_the_global_codes():
    model = build(cpu_strategy(1), num_views=5)
    big, small = multi_crop_views()
    logs = model.train_on_batch((big, small), return_dict=True)
    # By hand, with an encoder of its own built at 8x8 and given the same weights: the step's shared layers.
    at_8 = tiny_encoder(size=8)
    at_8.set_weights(model.encoder.get_weights())
    features = np.concatenate(
        [
            model.encoder(np.concatenate([big[:, 0], big[:, 1]]), training=True),
            at_8(np.concatenate([small[:, v] for v in range(3)]), training=True),
        ]
    )
    z = unit_rows(model.projection_head(features, training=True))
    scores = np.split(z @ model.prototypes.kernel.numpy(), 5)
    codes = [sinkhorn_reference(s, 0.1, 3) for s in scores[:2]]
    np.testing.assert_allclose(logs["loss"], swav_reference(scores, codes, 0.2), rtol=1e-5)
    fresh = build(cpu_strategy(1), num_views=5)
    with pytest.raises(ValueError, match="takes 5 views per image; the groups hold \\[2, 2\\]"):
        fresh.train_on_batch((big, small[:, :2]))
