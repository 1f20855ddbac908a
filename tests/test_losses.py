import numpy as np
import pytest
import tensorflow as tf
from conftest import cpu_strategy
from conftest import shard

from keras_contrastive import losses


def nt_xent_numpy(z1, z2, temperature):
    """Independent float64 NT-Xent: the 2N x 2N similarity matrix, eq. 1 literally."""
    z = np.concatenate([z1, z2]).astype("float64")
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z1)
    sim = z @ z.T / temperature
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        others = [k for k in range(2 * n) if k != i]
        total += -sim[i, j] + np.log(np.sum(np.exp(sim[i, others])))
    return total / (2 * n)


@pytest.mark.parametrize("temperature", [0.05, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("n,dim", [(2, 3), (8, 16), (32, 128)])
def test_nt_xent_matches_numpy(temperature, n, dim, rng):
    z1 = rng.normal(size=(n, dim)).astype("float32")
    z2 = rng.normal(size=(n, dim)).astype("float32")
    got = float(losses.nt_xent(z1, z2, temperature))
    np.testing.assert_allclose(got, nt_xent_numpy(z1, z2, temperature), rtol=1e-5)


def multiview_nt_xent_numpy(z, temperature):
    """Independent float64 multi-view NT-Xent: anchor (i, v) against its V - 1 other views, looped."""
    n, num_views, _ = z.shape
    z = z.astype("float64") / np.linalg.norm(z, axis=2, keepdims=True)
    flat = [(i, v) for v in range(num_views) for i in range(n)]
    total = 0.0
    for i, v in flat:
        sims = {(j, w): float(z[i, v] @ z[j, w]) / temperature for j, w in flat if (j, w) != (i, v)}
        log_denominator = np.log(np.sum(np.exp(list(sims.values()))))
        positives = [sims[(i, w)] - log_denominator for w in range(num_views) if w != v]
        total += -np.mean(positives)
    return total / len(flat)


@pytest.mark.parametrize("num_views", [2, 3, 4])
def test_multiview_nt_xent_matches_numpy(num_views, rng):
    z = rng.normal(size=(6, num_views, 5)).astype("float32")
    got = float(losses.multiview_nt_xent(z, 0.3))
    np.testing.assert_allclose(got, multiview_nt_xent_numpy(z, 0.3), rtol=1e-5)
    if num_views == 2:
        np.testing.assert_allclose(got, nt_xent_numpy(z[:, 0], z[:, 1], 0.3), rtol=1e-5)


def test_identical_embeddings_give_log_2n_minus_1():
    z = np.ones((6, 4), "float32")
    np.testing.assert_allclose(float(losses.nt_xent(z, z, 0.3)), np.log(11), rtol=1e-6)


def test_scale_invariant_inputs_are_normalized(rng):
    z1 = rng.normal(size=(4, 8)).astype("float32")
    z2 = rng.normal(size=(4, 8)).astype("float32")
    np.testing.assert_allclose(
        float(losses.nt_xent(z1 * 7.0, z2 * 0.01, 0.5)), float(losses.nt_xent(z1, z2, 0.5)), rtol=1e-5
    )


def test_logits_labels_and_self_mask(rng):
    z1 = rng.normal(size=(3, 5)).astype("float32")
    z2 = rng.normal(size=(3, 5)).astype("float32")
    logits, labels = losses.nt_xent_logits(z1, z2, 0.5)
    assert logits.shape == (6, 6) and logits.dtype == "float32"
    np.testing.assert_array_equal(labels.numpy(), [3, 4, 5, 0, 1, 2])
    assert np.all(np.isneginf(np.diag(logits.numpy())))


@pytest.mark.parametrize("bad", [0.0, -0.1])
def test_temperature_must_be_positive(bad):
    z = np.ones((2, 3), "float32")
    with pytest.raises(ValueError, match="temperature"):
        losses.nt_xent(z, z, bad)
    with pytest.raises(ValueError, match="temperature"):
        losses.NTXent(temperature=bad)


def test_low_precision_inputs_are_stable_at_small_temperature(rng):
    z1 = rng.normal(size=(64, 128)).astype("float32")
    z2 = rng.normal(size=z1.shape).astype("float32")
    for dtype in ("bfloat16", "float16"):
        a, b = tf.cast(z1, dtype), tf.cast(z2, dtype)
        got = losses.nt_xent(a, b, 0.05)
        assert got.dtype == tf.float32 and np.isfinite(float(got))
        ref = nt_xent_numpy(tf.cast(a, "float32").numpy(), tf.cast(b, "float32").numpy(), 0.05)
        np.testing.assert_allclose(float(got), ref, rtol=1e-5)


def test_gradient_is_finite_with_masked_columns(rng):
    z1 = tf.constant(rng.normal(size=(4, 8)), tf.float32)
    z2 = tf.constant(rng.normal(size=(4, 8)), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch([z1, z2])
        loss = losses.nt_xent(z1, z2, 0.1)
    for g in tape.gradient(loss, [z1, z2]):
        assert np.all(np.isfinite(g.numpy()))


@pytest.mark.parametrize("num_replicas", [2, 4])
def test_cross_replica_loss_and_gradient_equal_single_replica(num_replicas, rng):
    """N replicas with gathered negatives compute the global-batch loss and gradient."""
    n, dim = 8, 16
    z1 = rng.normal(size=(n, dim)).astype("float32")
    z2 = rng.normal(size=(n, dim)).astype("float32")
    a, b = tf.constant(z1), tf.constant(z2)
    with tf.GradientTape() as tape:
        tape.watch([a, b])
        expected = losses.nt_xent(a, b, 0.2)
    expected_grads = [g.numpy() for g in tape.gradient(expected, [a, b])]

    strategy = cpu_strategy(num_replicas)

    @tf.function
    def step(p, q):
        def replica_fn(p, q):
            with tf.GradientTape() as tape:
                tape.watch([p, q])
                loss = losses.nt_xent(p, q, 0.2)
                scaled = loss / num_replicas
            return loss, tape.gradient(scaled, [p, q])

        return strategy.run(replica_fn, args=(p, q))

    loss, grads = step(shard(strategy, z1), shard(strategy, z2))
    per_replica = [float(v) for v in strategy.experimental_local_results(loss)]
    np.testing.assert_allclose(np.mean(per_replica), float(expected), rtol=1e-5)
    for g, want in zip(grads, expected_grads):
        got = np.concatenate([v.numpy() for v in strategy.experimental_local_results(g)])
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_loss_class_wraps_function(rng):
    z = rng.normal(size=(4, 2, 8)).astype("float32")
    loss = losses.NTXent(temperature=0.3)
    np.testing.assert_allclose(float(loss(np.zeros(4), z)), nt_xent_numpy(z[:, 0], z[:, 1], 0.3), rtol=1e-5)
    assert losses.NTXent.from_config(loss.get_config()).temperature == 0.3


def info_nce_numpy(q, k, temperature):
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    k = k / np.linalg.norm(k, axis=1, keepdims=True)
    logits = q.astype("float64") @ k.astype("float64").T / temperature
    ce = [np.log(np.exp(row).sum()) - row[i] for i, row in enumerate(logits)]
    return np.mean(ce) * 2 * temperature


@pytest.mark.parametrize("temperature", [0.1, 0.2, 1.0])
def test_info_nce_matches_numpy(temperature, rng):
    q = rng.normal(size=(16, 32)).astype("float32")
    k = rng.normal(size=(16, 32)).astype("float32")
    np.testing.assert_allclose(float(losses.info_nce(q, k, temperature)), info_nce_numpy(q, k, temperature), rtol=1e-5)
    # The symmetric MoCo v3 loss is the sum of the two directions.
    q2, k2 = rng.normal(size=(2, 16, 32)).astype("float32")
    sym = float(losses.info_nce(q, k2, temperature) + losses.info_nce(q2, k, temperature))
    want = info_nce_numpy(q, k2, temperature) + info_nce_numpy(q2, k, temperature)
    np.testing.assert_allclose(sym, want, rtol=1e-5)


def test_info_nce_sends_no_gradient_to_keys(rng):
    q = tf.constant(rng.normal(size=(4, 8)), tf.float32)
    k = tf.constant(rng.normal(size=(4, 8)), tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([q, k])
        loss = losses.info_nce(q, k, 0.2)
    assert tape.gradient(loss, k) is None
    assert np.abs(tape.gradient(loss, q).numpy()).max() > 0
    with pytest.raises(ValueError, match="temperature"):
        losses.info_nce(q, k, 0.0)


@pytest.mark.parametrize("num_replicas", [2, 4])
def test_cross_replica_info_nce_equals_single_replica(num_replicas, rng):
    n = 8
    q = rng.normal(size=(n, 6)).astype("float32")
    k = rng.normal(size=(n, 6)).astype("float32")
    expected = float(losses.info_nce(q, k, 0.2))
    strategy = cpu_strategy(num_replicas)

    loss = tf.function(lambda a, b: strategy.run(lambda x, y: losses.info_nce(x, y, 0.2), args=(a, b)))(
        shard(strategy, q), shard(strategy, k)
    )
    np.testing.assert_allclose(
        np.mean([float(v) for v in strategy.experimental_local_results(loss)]), expected, rtol=1e-5
    )
