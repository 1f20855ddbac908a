"""Evaluate frozen encoders: feature extraction, weighted kNN, linear probe.

All three batch their work and show a progress bar (`verbose=1`).
"""

import weakref

import keras
import numpy as np
import tensorflow as tf

# One traced embedding function per encoder, kept while the encoder lives: the
# per-epoch kNN monitor calls `extract_features` on the same encoder every
# epoch, and a new `tf.function` per call would retrace each time (and make
# TensorFlow warn about frequent retracing in every recipe's log).
_EMBED_FUNCTIONS = weakref.WeakKeyDictionary()


def _embed_function(encoder):
    """The encoder's inference function on image batches, traced once per encoder.

    The function refers to the encoder through a weak reference, so the cache
    entry (and its traces) goes when the encoder does.
    """
    fn = _EMBED_FUNCTIONS.get(encoder)
    if fn is not None:
        return fn
    # Downstream models (`kc.downstream.load_encoder`) take uint8 images, the
    # serving contract's input; encoders take floats in [0, 1].
    inputs = getattr(encoder, "inputs", None)
    takes_uint8 = bool(inputs) and keras.backend.standardize_dtype(inputs[0].dtype) == "uint8"
    encoder_ref = weakref.ref(encoder)

    @tf.function(reduce_retracing=True)
    def embed(x):
        x = _as_float_images(x)
        if takes_uint8:
            x = tf.cast(tf.round(tf.clip_by_value(x, 0.0, 1.0) * 255.0), tf.uint8)
        return encoder_ref()(x, training=False)

    _EMBED_FUNCTIONS[encoder] = embed
    return embed


def _as_float_images(images):
    if images.dtype == tf.uint8:
        return tf.cast(images, tf.float32) / 255.0
    return tf.cast(images, tf.float32)


def _check_class_labels(labels, num_classes, what):
    """Integer class ids in [0, num_classes): a clear error instead of a silent one-hot of zeros."""
    labels = np.asarray(labels).reshape(-1)
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.equal(np.mod(labels, 1), 0)):
            raise ValueError(f"{what} must be integer class ids; got dtype {labels.dtype} with fractional values.")
    labels = labels.astype("int64")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{what} must lie in [0, {num_classes}) for num_classes={num_classes}; got values from "
            f"{labels.min()} to {labels.max()}. Pass num_classes = the number of classes, or map the "
            "labels to 0..num_classes-1."
        )
    return labels.astype("int32")


def extract_features(encoder, images, batch_size=512, verbose=1):
    """Runs a frozen encoder (inference mode) over images.

    Args:
        encoder: keras.Model (or a trainer: its `.encoder` is used). A model
            whose input is uint8 (`kc.downstream.load_encoder`) gets uint8
            images, any other gets floats in [0, 1].
        images: uint8 `[N, H, W, C]` (divided by 255 here) or float in
            [0, 1]; or a `tf.data.Dataset` of such images (or of
            `(images, labels)`; labels are then returned too), batched or not.
        batch_size: int. Defaults to 512.
        verbose: int. 1 shows a progress bar. Defaults to 1.

    Returns:
        float32 numpy `[N, dim]`; for a dataset of `(images, labels)`, the
        tuple `(features, labels)`.
    """
    encoder = getattr(encoder, "encoder", encoder)
    if isinstance(images, tf.data.Dataset):
        dataset = images
        spec = dataset.element_spec
        first = spec[0] if isinstance(spec, tuple) else spec
        if first.shape.rank == 3:
            dataset = dataset.batch(batch_size)
        total = int(dataset.cardinality())
        total = total if total >= 0 else None  # unknown (after a filter): the bar counts without a total
    else:
        images = np.asarray(images)
        if images.ndim != 4:
            raise ValueError(f"Expected images [N, H, W, C]; got shape {images.shape}.")
        dataset = tf.data.Dataset.from_tensor_slices(images).batch(batch_size)
        total = int(np.ceil(len(images) / batch_size))

    embed = _embed_function(encoder)
    progbar = keras.utils.Progbar(total, unit_name="batch", verbose=verbose) if verbose else None
    features, labels = [], []
    for i, batch in enumerate(dataset):
        if isinstance(batch, tuple):
            batch, y = batch[0], batch[1]
            labels.append(np.asarray(y))
        features.append(embed(batch).numpy())
        if progbar is not None:
            progbar.update(i + 1)
    features = np.concatenate(features).astype("float32")
    if labels:
        return features, np.concatenate(labels)
    return features


@tf.function(reduce_retracing=True)
def _chunk_top_k(queries, bank, offset, best_sims, best_indices, k):
    """Merges a bank chunk's k most similar rows into the running top k `[queries, <=k]`.

    One module-level function (k a tensor) so that repeated searches, such as
    the per-epoch kNN monitor's, reuse its traces.
    """
    sims = tf.matmul(queries, tf.math.l2_normalize(bank, axis=1), transpose_b=True)
    sims, idx = tf.math.top_k(sims, k=tf.minimum(k, tf.shape(sims)[1]))
    sims = tf.concat([best_sims, sims], axis=1)
    indices = tf.concat([best_indices, tf.cast(idx, tf.int64) + offset], axis=1)
    sims, idx = tf.math.top_k(sims, k=tf.minimum(k, tf.shape(sims)[1]))
    return sims, tf.gather(indices, idx, batch_dims=1)


def nearest_neighbours(bank_features, query_features, k, batch_size=1024, bank_batch_size=65_536, verbose=0):
    """The `k` most cosine-similar bank rows of every query, most similar first.

    Each block of `batch_size` queries is compared with the bank a chunk of
    `bank_batch_size` rows at a time, keeping the running top k, so a
    similarity block never exceeds `batch_size x bank_batch_size` (ImageNet's
    1.28M-row bank would otherwise make 5 GB blocks).

    Args:
        bank_features: float `[N, dim]`.
        query_features: float `[M, dim]`.
        k: int. Neighbours (at most N).
        batch_size: int. Queries per block. Defaults to 1024.
        bank_batch_size: int. Bank rows per block. Defaults to 65,536.
        verbose: int. 1 shows a progress bar. Defaults to 0.

    Returns:
        `(indices, similarities)`: int64 numpy `[M, k]` rows of the bank and
        float32 numpy `[M, k]` cosine similarities, in decreasing similarity.
    """
    bank_features = np.asarray(bank_features, "float32")
    k = int(min(k, len(bank_features)))
    bank_batch_size = max(int(bank_batch_size), k)
    chunks = [
        (tf.constant(bank_features[i : i + bank_batch_size]), tf.constant(i, tf.int64))
        for i in range(0, len(bank_features), bank_batch_size)
    ]

    k_tensor = tf.constant(k, tf.int32)
    query_features = np.asarray(query_features, "float32")
    blocks = range(0, len(query_features), batch_size)
    progbar = keras.utils.Progbar(len(blocks), unit_name="block", verbose=verbose) if verbose else None
    all_indices, all_sims = [], []
    for i, start in enumerate(blocks):
        queries = tf.math.l2_normalize(tf.constant(query_features[start : start + batch_size]), axis=1)
        sims = tf.zeros([queries.shape[0], 0], tf.float32)
        indices = tf.zeros([queries.shape[0], 0], tf.int64)
        for bank, offset in chunks:
            sims, indices = _chunk_top_k(queries, bank, offset, sims, indices, k_tensor)
        all_indices.append(indices.numpy())
        all_sims.append(sims.numpy())
        if progbar is not None:
            progbar.update(i + 1)
    return np.concatenate(all_indices), np.concatenate(all_sims)


def knn_predict(
    train_features,
    train_labels,
    test_features,
    k=200,
    temperature=0.1,
    num_classes=None,
    batch_size=1024,
    verbose=0,
    bank_batch_size=65_536,
):
    """Weighted kNN class predictions over a feature bank.

    Cosine similarity between L2-normalized features; each of the k nearest
    training features votes for its class with weight exp(sim / temperature)
    (Wu et al. 2018, the protocol most self-supervised papers report).

    Args:
        train_features: float `[N, dim]`, the bank.
        train_labels: int `[N]`.
        test_features: float `[M, dim]`.
        k: int. Neighbours. Defaults to 200.
        temperature: float > 0. Defaults to 0.1.
        num_classes: int or None. Defaults to `max(train_labels) + 1`.
        batch_size: int. Test rows per similarity block. Defaults to 1024.
        verbose: int. Defaults to 0.
        bank_batch_size: int. Bank rows per similarity block (see
            `nearest_neighbours`). Defaults to 65,536.

    Returns:
        int numpy `[M]` predicted classes.
    """
    train_labels, num_classes = _check_bank(train_features, train_labels, temperature, num_classes)
    indices, sims = nearest_neighbours(train_features, test_features, k, batch_size, bank_batch_size, verbose)
    return _weighted_votes(indices, sims, train_labels, temperature, num_classes, batch_size)


def _check_bank(features, labels, temperature, num_classes):
    """The kNN bank's labels as int `[N]` and the number of classes, or a ValueError naming what is wrong."""
    if not temperature > 0:
        raise ValueError(f"`temperature` must be > 0; got {temperature}.")
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(features):
        raise ValueError(f"{len(features)} training features but {len(labels)} labels.")
    num_classes = int(num_classes or labels.max() + 1)
    return _check_class_labels(labels, num_classes, "Training labels"), num_classes


def _weighted_votes(indices, sims, bank_labels, temperature, num_classes, batch_size=1024):
    """The class with the largest sum of exp(sim / temperature) among each query's neighbours."""
    predictions = []
    for start in range(0, len(indices), batch_size):  # votes [block, classes]: never [M, k, classes]
        labels = bank_labels[indices[start : start + batch_size]]
        weights = np.exp(sims[start : start + batch_size].astype("float64") / temperature)
        votes = np.zeros((len(labels), num_classes))
        np.add.at(votes, (np.arange(len(labels))[:, None], labels), weights)
        predictions.append(np.argmax(votes, axis=1).astype("int32"))
    return np.concatenate(predictions) if predictions else np.zeros([0], "int32")


#: The retrieval figures `evaluate_frozen` reports: recall@1/5/10 and mAP@100.
RETRIEVAL_KS, RETRIEVAL_MAP_AT = (1, 5, 10), 100


def retrieval_metrics(
    bank_features,
    bank_labels,
    query_features,
    query_labels,
    ks=RETRIEVAL_KS,
    map_at=RETRIEVAL_MAP_AT,
    bank_batch_size=65_536,
):
    """Top-K retrieval of each query's class in the bank: recall@K and mAP@R (cosine similarity).

    recall@K: the fraction of queries with at least one bank item of their
    class among their K nearest. mAP@R: the mean over queries of the average
    precision of their R nearest, `sum_k P(k) rel(k) / sum_k rel(k)` over
    ranks k <= R (0 for a query with no relevant item there), as image
    retrieval benchmarks report it (e.g. mAP@1000 on CIFAR-10).

    Args:
        bank_features: float `[N, dim]`. bank_labels: int `[N]`.
        query_features: float `[M, dim]`. query_labels: int `[M]`.
        ks: ints. Defaults to (1, 5, 10).
        map_at: int. R. Defaults to 100.
        bank_batch_size: int. See `nearest_neighbours`. Defaults to 65,536.

    Returns:
        dict: `recall@K` for each K and `map@R`, floats in [0, 1].
    """
    bank_labels = np.asarray(bank_labels).reshape(-1)
    query_labels = np.asarray(query_labels).reshape(-1)
    if len(bank_labels) != len(bank_features) or len(query_labels) != len(query_features):
        raise ValueError("Each feature array needs exactly one label per row.")
    depth = max(max(ks), map_at)
    indices, _ = nearest_neighbours(bank_features, query_features, depth, bank_batch_size=bank_batch_size)
    return _retrieval_from(indices, bank_labels, query_labels, ks, map_at)


def _retrieval_from(indices, bank_labels, query_labels, ks, map_at):
    """`retrieval_metrics` from each query's bank rows, nearest first `[M, >= max(ks, map_at)]`."""
    relevant = bank_labels[indices] == query_labels[:, None]  # [M, depth]
    results = {f"recall@{k}": float(np.mean(relevant[:, :k].any(axis=1))) for k in ks}
    hits = relevant[:, :map_at]
    precision = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)
    found = hits.sum(axis=1)
    average_precision = np.where(found > 0, (precision * hits).sum(axis=1) / np.maximum(found, 1), 0.0)
    results[f"map@{map_at}"] = float(np.mean(average_precision))
    return results


def knn_accuracy(
    train_features,
    train_labels,
    test_features,
    test_labels,
    k=200,
    temperature=0.1,
    num_classes=None,
    batch_size=1024,
    verbose=1,
    bank_batch_size=65_536,
):
    """Accuracy of the weighted kNN classifier (see `knn_predict`).

    Args:
        train_features, train_labels, test_features: as in `knn_predict`.
        test_labels: int `[M]`.
        k, temperature, num_classes, batch_size, verbose, bank_batch_size: as
            in `knn_predict`.

    Returns:
        float in [0, 1].

    Example:

    >>> bank = np.eye(3); labels = np.arange(3)
    >>> knn_accuracy(bank, labels, bank, labels, k=1)
    1.0
    """
    test_labels = np.asarray(test_labels).reshape(-1)
    if len(test_labels) != len(test_features):
        raise ValueError(f"{len(test_features)} test features but {len(test_labels)} labels.")
    predictions = knn_predict(
        train_features, train_labels, test_features, k, temperature, num_classes, batch_size, verbose, bank_batch_size
    )
    return float(np.mean(predictions == test_labels))


def knn_and_retrieval(
    bank_features, bank_labels, query_features, query_labels, k=200, temperature=0.1, num_classes=None, verbose=0
):
    """Weighted kNN accuracy (`knn_accuracy`) and retrieval (`retrieval_metrics`) from one neighbour search.

    Args:
        bank_features: float `[N, dim]`. bank_labels: int `[N]`.
        query_features: float `[M, dim]`. query_labels: int `[M]`.
        k, temperature, num_classes, verbose: as in `knn_predict`.

    Returns:
        `(results, indices)`: the dict of `knn_accuracy`, `recall@K` and
        `map@R` (`RETRIEVAL_KS`, `RETRIEVAL_MAP_AT`), floats in [0, 1], and the
        int64 `[M, max(k, 10, 100)]` bank rows nearest to each query, nearest
        first (for pictures of the neighbours).
    """
    bank_labels, classes = _check_bank(bank_features, bank_labels, temperature, num_classes)
    query_labels = np.asarray(query_labels).reshape(-1)
    if len(query_labels) != len(query_features):
        raise ValueError(f"{len(query_features)} test features but {len(query_labels)} labels.")
    indices, sims = nearest_neighbours(
        bank_features, query_features, max(k, *RETRIEVAL_KS, RETRIEVAL_MAP_AT), verbose=verbose
    )
    depth = min(k, len(bank_labels))
    votes = _weighted_votes(indices[:, :depth], sims[:, :depth], bank_labels, temperature, classes)
    results = {"knn_accuracy": float(np.mean(votes == query_labels))}
    results.update(_retrieval_from(indices, bank_labels, query_labels, RETRIEVAL_KS, RETRIEVAL_MAP_AT))
    return results, indices


PROBE_SOLVERS = ("lbfgs", "adamw")


def linear_probe(
    train_features,
    train_labels,
    test_features,
    test_labels,
    num_classes=None,
    solver="lbfgs",
    epochs=50,
    batch_size=1024,
    learning_rate=0.1,
    weight_decay=1e-4,
    max_iter=1000,
    seed=0,
    verbose=1,
):
    """Multinomial logistic regression on frozen, standardized features; test accuracy.

    Features are standardized with the training mean and std. The default
    solver is scikit-learn's `LogisticRegression` (L-BFGS to convergence,
    C=1), the probe of shared/BENCHMARKS.md's reference figures and of
    `benchmarks/lightly_reference.py`, so figures compare across libraries.
    A convex problem has one answer, but a stochastic solver stops wherever
    its budget ends, and where that is depends on the features: an AdamW
    probe at 30 epochs and rate 1e-2 stopped 0.9 points below L-BFGS on
    SimCLR features (84.05% against 84.96%) and 0.4 above it on raw pixels
    (83.84% against 83.47%); at 50 epochs and 0.1 it was 0.1 above on the
    features and 2.3 below on pixels (benchmarks/RESULTS.md). `solver="adamw"`
    (a softmax layer trained with AdamW and a cosine schedule, in batches)
    remains for data too large for L-BFGS in memory.

    Args:
        train_features: float `[N, dim]`. train_labels: int `[N]`.
        test_features: float `[M, dim]`. test_labels: int `[M]`.
        num_classes: int or None. Defaults to `max(train_labels) + 1`.
        solver: str. `"lbfgs"` (needs scikit-learn) or `"adamw"`. Defaults
            to `"lbfgs"`.
        epochs: int. AdamW only. Defaults to 50.
        batch_size: int. AdamW only. Defaults to 1024.
        learning_rate: float. AdamW only: the peak rate. Defaults to 0.1.
        weight_decay: float. AdamW only. Defaults to 1e-4.
        max_iter: int. L-BFGS only: iteration limit. Defaults to 1000.
        seed: int. Defaults to 0.
        verbose: int. Keras fit verbosity (AdamW). Defaults to 1.

    Returns:
        float in [0, 1], accuracy on the test features.
    """
    if solver not in PROBE_SOLVERS:
        raise ValueError(f"`solver` must be one of {PROBE_SOLVERS}; got {solver!r}.")
    train_features = np.asarray(train_features, "float32")
    test_features = np.asarray(test_features, "float32")
    train_labels = np.asarray(train_labels).reshape(-1)
    test_labels = np.asarray(test_labels).reshape(-1)
    if len(train_labels) != len(train_features) or len(test_labels) != len(test_features):
        raise ValueError("Each feature array needs exactly one label per row.")
    num_classes = int(num_classes or max(train_labels.max(), test_labels.max()) + 1)
    train_labels = _check_class_labels(train_labels, num_classes, "Training labels")
    test_labels = _check_class_labels(test_labels, num_classes, "Test labels")
    mean = train_features.mean(axis=0)
    std = train_features.std(axis=0) + 1e-6
    train_x = (train_features - mean) / std
    test_x = (test_features - mean) / std

    if solver == "lbfgs":
        try:
            from sklearn.linear_model import LogisticRegression
        except ImportError as error:
            raise ImportError(
                "linear_probe(solver='lbfgs') uses scikit-learn: pip install scikit-learn (or "
                "pip install 'keras_contrastive[eval]'), or pass solver='adamw'."
            ) from error
        classifier = LogisticRegression(C=1.0, max_iter=max_iter, random_state=seed)
        classifier.fit(train_x.astype("float64"), train_labels)
        return float(np.mean(classifier.predict(test_x.astype("float64")) == test_labels))

    keras.utils.set_random_seed(seed)
    classifier = keras.Sequential([keras.Input((train_x.shape[1],)), keras.layers.Dense(num_classes)])
    steps = epochs * int(np.ceil(len(train_x) / batch_size))
    classifier.compile(
        optimizer=keras.optimizers.AdamW(
            keras.optimizers.schedules.CosineDecay(learning_rate, steps), weight_decay=weight_decay
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    classifier.fit(train_x, train_labels, batch_size=batch_size, epochs=epochs, verbose=verbose)
    logits = classifier.predict(test_x, batch_size=4096, verbose=0)
    return float(np.mean(np.argmax(logits, axis=1) == test_labels))


def evaluate_frozen(
    encoder,
    train,
    test,
    k=200,
    temperature=0.1,
    probe_epochs=50,
    num_classes=None,
    solver="lbfgs",
    verbose=1,
    retrieval=True,
):
    """kNN and linear-probe accuracy of a frozen encoder, checking that it stayed frozen.

    Extracts features of both splits in inference mode, scores the weighted
    kNN (`knn_accuracy`) and a linear probe (`linear_probe`, 0 epochs skips
    it), and compares every weight of the encoder (BatchNorm statistics
    included) before and after, bit for bit, as MoCo v3's linear evaluation
    does with its `sanity_check`: a probe that moved the encoder would
    report fine-tuning as linear accuracy.

    Args:
        encoder: keras.Model (or a trainer: its `.encoder`).
        train: `(images, labels)` arrays, or a `tf.data.Dataset` of
            `(image, label)` (batched or not, streamed through the encoder a
            batch at a time: only the features are kept): the kNN bank and
            the probe's training set.
        test: the same for the test split.
        k: int. Defaults to 200.
        temperature: float. kNN vote temperature. Defaults to 0.1.
        probe_epochs: int. 0 skips the linear probe; the AdamW probe's
            epochs. Defaults to 50.
        num_classes: int or None. Defaults to the largest label + 1.
        solver: str. The linear probe's solver (see `linear_probe`).
            Defaults to "lbfgs".
        retrieval: bool. Also the test split's retrieval in the bank
            (`retrieval_metrics`: recall@1/5/10, mAP@100). Defaults to True.
        verbose: int. Defaults to 1.

    Returns:
        dict with `knn_accuracy`, the retrieval metrics and (unless
        `probe_epochs=0`) `linear_probe_accuracy`, floats in [0, 1].
    """
    encoder = getattr(encoder, "encoder", encoder)
    before = [np.array(w) for w in encoder.get_weights()]
    f_train, y_train = _features_and_labels(encoder, train, "train", verbose)
    f_test, y_test = _features_and_labels(encoder, test, "test", verbose)
    if retrieval:
        results, _ = knn_and_retrieval(f_train, y_train, f_test, y_test, k, temperature, num_classes, verbose)
    else:
        results = {
            "knn_accuracy": knn_accuracy(
                f_train, y_train, f_test, y_test, k=k, temperature=temperature, num_classes=num_classes, verbose=verbose
            )
        }
    if probe_epochs:
        results["linear_probe_accuracy"] = linear_probe(
            f_train, y_train, f_test, y_test, num_classes=num_classes, solver=solver, epochs=probe_epochs, verbose=0
        )
    after = encoder.get_weights()
    changed = [w.path for w, a, b in zip(encoder.weights, before, after) if not np.array_equal(a, b)]
    if changed:
        raise RuntimeError(
            f"The encoder changed during frozen evaluation ({len(changed)} weights, e.g. {changed[:3]}); "
            "features must be extracted in inference mode (training=False) from a frozen encoder."
        )
    return results


def _features_and_labels(encoder, data, what, verbose):
    """Features and labels of `(images, labels)` arrays or of a dataset of `(image, label)`."""
    if isinstance(data, tf.data.Dataset):
        if not isinstance(data.element_spec, tuple):
            raise ValueError(f"The {what} dataset yields images without labels; kNN and the probe need labels.")
        return extract_features(encoder, data, verbose=verbose)
    images, labels = data
    return extract_features(encoder, images, verbose=verbose), labels
