import gc
import sys
import weakref

import keras
import numpy as np
import pytest

from keras_contrastive import evaluation


def test_knn_exact_on_constructed_features():
    # Two clusters along orthogonal axes; queries near each cluster.
    bank = np.array([[1, 0.1], [1, -0.1], [0.1, 1], [-0.1, 1]], "float32")
    labels = np.array([0, 0, 1, 1])
    queries = np.array([[1, 0], [0, 1], [0.9, 0.2]], "float32")
    assert evaluation.knn_accuracy(bank, labels, queries, [0, 1, 0], k=2, verbose=0) == 1.0
    assert evaluation.knn_accuracy(bank, labels, queries, [1, 0, 1], k=2, verbose=0) == 0.0


def test_knn_weights_by_similarity():
    # k=3: two far neighbours of class 1 against one identical neighbour of
    # class 0; with temperature 0.1 the exp(sim / t) weights let class 0 win.
    bank = np.array([[1, 0], [0.2, 1], [0.2, 1.1]], "float32")
    labels = np.array([0, 1, 1])
    pred = evaluation.knn_predict(bank, labels, np.array([[1, 0]], "float32"), k=3, temperature=0.1)
    assert pred[0] == 0
    # Unweighted-ish (huge temperature): the majority wins.
    pred = evaluation.knn_predict(bank, labels, np.array([[1, 0]], "float32"), k=3, temperature=100.0)
    assert pred[0] == 1


def test_knn_matches_numpy_reference(rng):
    bank = rng.normal(size=(300, 16)).astype("float32")
    labels = rng.integers(0, 5, 300)
    queries = rng.normal(size=(50, 16)).astype("float32")
    got = evaluation.knn_predict(bank, labels, queries, k=20, temperature=0.1, batch_size=7)
    b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = q @ b.T
    want = []
    for row in sims:
        idx = np.argsort(-row)[:20]
        scores = np.zeros(5)
        np.add.at(scores, labels[idx], np.exp(row[idx] / 0.1))
        want.append(np.argmax(scores))
    np.testing.assert_array_equal(got, want)


def test_knn_bad_input():
    with pytest.raises(ValueError, match="labels"):
        evaluation.knn_accuracy(np.ones((3, 2)), [0, 1], np.ones((1, 2)), [0])
    with pytest.raises(ValueError, match="temperature"):
        evaluation.knn_predict(np.ones((3, 2)), [0, 1, 1], np.ones((1, 2)), temperature=0)


@pytest.mark.parametrize("solver", evaluation.PROBE_SOLVERS)
def test_linear_probe_learns_separable_features(rng, solver):
    centers = rng.normal(size=(3, 8)) * 3
    y = rng.integers(0, 3, 600)
    x = (centers[y] + rng.normal(size=(600, 8))).astype("float32")
    acc = evaluation.linear_probe(
        x[:500], y[:500], x[500:], y[500:], solver=solver, epochs=20, batch_size=100, verbose=0
    )
    assert acc > 0.95
    # Shuffled labels: no better than chance + noise.
    acc = evaluation.linear_probe(
        x[:500], rng.permutation(y[:500]), x[500:], y[500:], solver=solver, epochs=5, verbose=0
    )
    assert acc < 0.6


def test_extract_features_matches_direct_call_and_uses_inference_mode(rng):
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.BatchNormalization()(keras.layers.Conv2D(3, 3)(inputs))
    encoder = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(h))
    encoder.layers[2].moving_mean.assign([0.5, -0.5, 1.0])
    images = rng.integers(0, 256, (10, 8, 8, 1)).astype("uint8")
    feats = evaluation.extract_features(encoder, images, batch_size=3, verbose=0)
    np.testing.assert_allclose(feats, encoder(images / 255.0, training=False).numpy(), atol=1e-5)


def test_repeated_extraction_and_search_reuse_their_traces_and_free_them_with_the_encoder(rng):
    """The per-epoch kNN monitor calls both every epoch: no retrace after the first, no encoder kept alive."""
    inputs = keras.Input((8, 8, 1))
    encoder = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(3, 3)(inputs)))
    images = rng.integers(0, 256, (12, 8, 8, 1)).astype("uint8")
    first = evaluation.extract_features(encoder, images, batch_size=6, verbose=0)
    embed = evaluation._embed_function(encoder)
    traces = embed.experimental_get_tracing_count()
    encoder.layers[1].kernel.assign(encoder.layers[1].kernel * 2.0)  # later epochs see the new weights
    second = evaluation.extract_features(encoder, images, batch_size=6, verbose=0)
    assert evaluation._embed_function(encoder) is embed
    assert embed.experimental_get_tracing_count() == traces
    np.testing.assert_allclose(second, 2.0 * first, rtol=1e-5, atol=1e-6)

    bank = rng.normal(size=(50, 3)).astype("float32")
    evaluation.nearest_neighbours(bank, second, k=5, bank_batch_size=20)
    search_traces = evaluation._chunk_top_k.experimental_get_tracing_count()
    evaluation.nearest_neighbours(bank, second, k=5, bank_batch_size=20)
    assert evaluation._chunk_top_k.experimental_get_tracing_count() == search_traces

    encoder_ref = weakref.ref(encoder)
    del encoder, embed
    gc.collect()
    assert encoder_ref() is None  # the cache did not keep it alive


def _small_encoder():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, x)


class _DriftsWhenCalled(keras.layers.Layer):
    """A layer that (wrongly) changes a weight even in inference mode."""

    def build(self, input_shape):
        self.counter = self.add_weight(shape=(), initializer="zeros", trainable=False)

    def call(self, x, training=None):
        self.counter.assign_add(1.0)
        return x


def test_evaluate_frozen_scores_and_checks_the_encoder_is_unchanged(rng):
    x = (rng.random((60, 8, 8, 1)) * 255).astype("uint8")
    y = np.arange(60) % 3
    encoder = _small_encoder()
    before = [w.copy() for w in encoder.get_weights()]
    results = evaluation.evaluate_frozen(encoder, (x[:40], y[:40]), (x[40:], y[40:]), k=5, probe_epochs=2, verbose=0)
    features = evaluation.extract_features(encoder, x, verbose=0)
    assert results["knn_accuracy"] == evaluation.knn_accuracy(
        features[:40], y[:40], features[40:], y[40:], k=5, verbose=0
    )
    assert 0.0 <= results["linear_probe_accuracy"] <= 1.0
    # One neighbour search serves both: the same retrieval figures as retrieval_metrics on its own.
    retrieval = evaluation.retrieval_metrics(features[:40], y[:40], features[40:], y[40:])
    assert set(retrieval) == {"recall@1", "recall@5", "recall@10", "map@100"}
    assert {name: results[name] for name in retrieval} == retrieval
    for a, b in zip(before, encoder.get_weights()):
        np.testing.assert_array_equal(a, b)
    # An encoder that changes during evaluation is reported, not scored.
    inputs = keras.Input((8, 8, 1))
    drifting = keras.Model(inputs, _DriftsWhenCalled()(encoder(inputs)))
    with pytest.raises(RuntimeError, match="changed during frozen evaluation"):
        evaluation.evaluate_frozen(drifting, (x[:40], y[:40]), (x[40:], y[40:]), k=5, probe_epochs=0, verbose=0)


def test_labels_out_of_range_are_clear_errors(rng):
    f = rng.normal(size=(10, 4)).astype("float32")
    y = np.arange(10) % 3
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        evaluation.linear_probe(f, y + 1, f, y, num_classes=3, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"Test labels must lie in \[0, 3\)"):
        evaluation.linear_probe(f, y, f, -y - 1, num_classes=3, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\)"):
        evaluation.knn_predict(f, y, f, k=3, num_classes=2)
    with pytest.raises(ValueError, match="integer class ids"):
        evaluation.linear_probe(f, y + 0.5, f, y, epochs=1, verbose=0)


def test_lbfgs_probe_without_scikit_learn_names_the_pip_command(rng, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.linear_model", None)
    f = rng.normal(size=(10, 4)).astype("float32")
    y = np.arange(10) % 2
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        evaluation.linear_probe(f, y, f, y, verbose=0)
    assert evaluation.linear_probe(f, y, f, y, solver="adamw", epochs=1, verbose=0) >= 0.0
    with pytest.raises(ValueError, match="solver"):
        evaluation.linear_probe(f, y, f, y, solver="sgd")


def test_knn_searches_the_bank_in_chunks_with_the_same_answer(rng):
    """The bank is compared a chunk at a time keeping the running top k (ImageNet's bank would not fit one
    similarity block): any chunk size, even smaller than k, gives the one-block answer and the numpy one."""
    bank = rng.normal(size=(500, 8)).astype("float32")
    labels = rng.integers(0, 4, 500)
    queries = rng.normal(size=(40, 8)).astype("float32")
    whole = evaluation.knn_predict(bank, labels, queries, k=30, bank_batch_size=10_000)
    b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    sims = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ b.T
    want = []
    for row in sims:
        idx = np.argsort(-row)[:30]
        want.append(np.argmax(np.bincount(labels[idx], weights=np.exp(row[idx] / 0.1), minlength=4)))
    np.testing.assert_array_equal(whole, want)
    for chunk in (7, 64, 499):
        np.testing.assert_array_equal(
            evaluation.knn_predict(bank, labels, queries, k=30, bank_batch_size=chunk, batch_size=16), want
        )


def test_evaluate_frozen_streams_datasets_to_the_same_figures_as_arrays(rng):
    """The recipes stream both splits as `(image, label)` datasets (issue 11): the same kNN and probe as arrays."""
    import tensorflow as tf

    x = (rng.random((60, 8, 8, 1)) * 255).astype("uint8")
    y = (np.arange(60) % 3).astype("int32")
    encoder = _small_encoder()
    arrays = evaluation.evaluate_frozen(encoder, (x[:40], y[:40]), (x[40:], y[40:]), k=5, probe_epochs=2, verbose=0)
    train = tf.data.Dataset.from_tensor_slices((x[:40], y[:40]))
    test = tf.data.Dataset.from_tensor_slices((x[40:], y[40:])).batch(7)
    streamed = evaluation.evaluate_frozen(encoder, train, test, k=5, probe_epochs=2, verbose=0)
    assert streamed == arrays
    with pytest.raises(ValueError, match="without labels"):
        evaluation.evaluate_frozen(encoder, train.map(lambda a, b: a), test, k=5, probe_epochs=0, verbose=0)


def test_nearest_neighbours_and_retrieval_on_features_whose_neighbours_are_known():
    """Bank rows at known angles: every query's neighbours (and their order) are known, so the indices, recall@K
    and mAP@R are exact; any bank chunk size gives the same."""
    angles = np.array([0, 10, 20, 90, 100, 110, 180, 190]) * np.pi / 180  # three clusters on the circle
    bank = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype("float32")
    labels = np.array([0, 0, 1, 1, 1, 1, 2, 0])
    queries = np.array([[1.0, 0.01], [0.01, 1.0]], "float32")  # near 0 and 90 degrees
    for chunk in (3, 100):
        indices, sims = evaluation.nearest_neighbours(bank, queries, k=4, bank_batch_size=chunk)
        np.testing.assert_array_equal(indices, [[0, 1, 2, 3], [3, 4, 5, 2]])
        np.testing.assert_allclose(sims[0, :3], np.cos(np.radians([0.57, 9.43, 19.43])), atol=2e-3)
    metrics = evaluation.retrieval_metrics(bank, labels, queries, [1, 0], ks=(1, 3), map_at=4)
    # Query 0 (class 1): ranks 1-4 are classes 0 0 1 1 -> recall@1 0, @3 1; AP = (1/3 + 2/4) / 2.
    # Query 1 (class 0): ranks 1-4 are classes 1 1 1 1 -> no hit, AP 0.
    assert metrics["recall@1"] == 0.0 and metrics["recall@3"] == 0.5
    assert metrics["map@4"] == pytest.approx(((1 / 3 + 2 / 4) / 2 + 0.0) / 2)
    perfect = evaluation.retrieval_metrics(bank, labels, bank[:2], labels[:2], ks=(1,), map_at=1)
    assert perfect == {"recall@1": 1.0, "map@1": 1.0}


def test_knn_and_retrieval_equals_the_separate_figures_and_returns_the_neighbours(rng):
    bank, queries = rng.normal(size=(300, 8)), rng.normal(size=(40, 8))
    bank_labels, query_labels = rng.integers(0, 4, 300), rng.integers(0, 4, 40)
    for k in (1, 3, 20):
        results, indices = evaluation.knn_and_retrieval(bank, bank_labels, queries, query_labels, k=k)
        assert results["knn_accuracy"] == evaluation.knn_accuracy(bank, bank_labels, queries, query_labels, k=k)
    assert {k: v for k, v in results.items() if k != "knn_accuracy"} == evaluation.retrieval_metrics(
        bank, bank_labels, queries, query_labels
    )
    normalized = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    expected = np.argsort(-normalized(queries) @ normalized(bank).T, axis=1, kind="stable")[:, :100]
    np.testing.assert_array_equal(indices, expected)
    with pytest.raises(ValueError, match="temperature"):
        evaluation.knn_and_retrieval(bank, bank_labels, queries, query_labels, temperature=0.0)
    # One label per row on either side, and the bank's labels checked as knn_predict checks them.
    with pytest.raises(ValueError, match="300 training features but 299 labels"):
        evaluation.knn_and_retrieval(bank, bank_labels[:-1], queries, query_labels)
    with pytest.raises(ValueError, match="40 test features but 39 labels"):
        evaluation.knn_and_retrieval(bank, bank_labels, queries, query_labels[:-1])
    with pytest.raises(ValueError, match="integer class ids"):
        evaluation.knn_and_retrieval(bank, bank_labels + 0.5, queries, query_labels)
