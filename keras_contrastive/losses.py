"""Contrastive losses, written in `keras.ops` with float32 similarity logits.

Under a `tf.distribute` strategy every loss here gathers the embeddings of all
replicas (see `keras_contrastive.distribute`), so the negatives of an anchor
are drawn from the global batch and N replicas compute what one replica
computes on the same global batch. Each replica returns the mean over its own
anchors; the mean of those over replicas is the global mean, which is what
trainers optimize (they divide by the number of replicas before the gradient
all-reduce sums them).
"""

import keras
from keras import ops

from keras_contrastive import distribute


def _check_temperature(temperature):
    if isinstance(temperature, (int, float)) and not temperature > 0:
        raise ValueError(
            f"`temperature` must be > 0, got {temperature}. SimCLR uses 0.1-0.5 "
            "(0.5 for CIFAR-size images, paper Table 5)."
        )


def at_least_float32(x):
    """Casts bfloat16/float16 to float32; float32 and float64 stay as they are."""
    dtype = "float64" if keras.backend.standardize_dtype(x.dtype) == "float64" else "float32"
    return ops.cast(x, dtype)


def l2_normalize(x, axis=-1, epsilon=1e-12):
    """L2-normalizes `x` in at least float32 (cosine similarity needs unit vectors).

    Computed in float32 for bfloat16/float16 inputs, so low-precision
    embeddings do not lose the small differences that a temperature of 0.05
    magnifies twentyfold (float64 inputs stay float64).
    """
    x = at_least_float32(x)
    norm_sq = ops.sum(ops.square(x), axis=axis, keepdims=True)
    return x * ops.rsqrt(ops.maximum(norm_sq, epsilon))


def nt_xent_logits(z1, z2, temperature, negatives=None, negatives_valid=None, mochi=None, seed=None):
    """Logits and positive indices of NT-Xent for this replica's 2n anchors.

    Candidates are the 2N views of the global batch (N = n x replicas), laid out
    as `[all first views ; all second views]`; an anchor's own column is masked
    with -inf.

    Args:
        z1: Tensor `[n, dim]`, embeddings of the first view of each image.
        z2: Tensor `[n, dim]`, embeddings of the second view.
        temperature: float > 0.
        negatives: Tensor `[Q, dim]` or None. Extra negatives of every anchor
            (e.g. `kc.negatives.Queue` keys), appended as Q more columns; the
            same on every replica. Defaults to None.
        negatives_valid: bool Tensor `[Q]` or None. False columns (queue slots
            never written) are masked with -inf. Defaults to all valid.
        mochi: `kc.negatives.MoCHi` or None. Appends each anchor's synthetic
            hard negatives mixed from `negatives` (s + s' more columns).
            Defaults to None.
        seed: int32 Tensor `[2]`. MoCHi's stateless seed (this step's).

    Returns:
        `(logits, labels)`: float32 (float64 for float64 inputs) `[2n, 2N + Q (+ s + s')]`
        and int32 `[2n]`. Rows
        `[0, n)` are the first views as anchors, rows `[n, 2n)` the second views.
    """
    _check_temperature(temperature)
    z1 = l2_normalize(z1)
    z2 = l2_normalize(z2)
    n = ops.shape(z1)[0]
    distribute.check_even_split(n)
    # Negatives from every replica; after the gather this replica's rows start
    # at `offset` within each half of the candidate set.
    z1_all = distribute.all_gather(z1)
    z2_all = distribute.all_gather(z2)
    big_n = ops.shape(z1_all)[0]
    candidates = ops.concatenate([z1_all, z2_all], axis=0)  # [2N, dim]
    anchors = ops.concatenate([z1, z2], axis=0)  # [2n, dim]
    logits = ops.matmul(anchors, ops.transpose(candidates)) / temperature

    offset = distribute.global_offset(n)
    local = ops.arange(n, dtype="int32") + offset
    # Anchor i of view 1 is column local[i]; its positive is view 2's column
    # N + local[i]. For view-2 anchors the roles swap.
    self_index = ops.concatenate([local, local + big_n], axis=0)
    labels = ops.concatenate([local + big_n, local], axis=0)
    self_mask = ops.one_hot(self_index, 2 * big_n, dtype="bool")
    logits = ops.where(self_mask, float("-inf"), logits)
    if negatives is not None:
        extra = ops.matmul(anchors, ops.transpose(ops.cast(l2_normalize(negatives), anchors.dtype))) / temperature
        if negatives_valid is not None:
            extra = ops.where(ops.expand_dims(negatives_valid, 0), extra, float("-inf"))
        logits = ops.concatenate([logits, extra], axis=1)
        # An anchor's row in the global batch is its own column, `self_index`: MoCHi's draws are indexed by it.
        logits = _with_mochi(
            logits, anchors, negatives, negatives_valid, mochi, seed, self_index, 2 * big_n, temperature
        )
    return logits, labels


def _with_mochi(logits, anchors, negatives, valid, mochi, seed, anchor_index, total_anchors, temperature):
    """`logits` with MoCHi's synthetic negatives of each anchor appended (masked where not usable)."""
    if mochi is None:
        return logits
    if seed is None:
        raise ValueError("MoCHi needs `seed`, a stateless int32 [2] seed of the step.")
    keys = ops.cast(l2_normalize(negatives), anchors.dtype)
    if valid is None:
        valid = ops.ones((ops.shape(keys)[0],), "bool")
    similarity, usable = mochi.synthetic_logits(anchors, keys, valid, anchor_index, total_anchors, seed)
    return ops.concatenate([logits, ops.where(usable, similarity / temperature, float("-inf"))], axis=1)


def cross_entropy_from_logits(logits, labels):
    """Per-row `-log softmax(logits)[label]`, float32 `[rows]`.

    Written with logsumexp so that -inf (masked) columns are exact zeros in the
    softmax and never produce NaN.
    """
    picked = ops.take_along_axis(logits, ops.expand_dims(labels, 1), axis=1)[:, 0]
    return ops.logsumexp(logits, axis=1) - picked


def nt_xent(z1, z2, temperature=0.5, negatives=None, negatives_valid=None, mochi=None, seed=None):
    """NT-Xent, the SimCLR loss (Chen et al. 2020, eq. 1), mean over all 2N anchors.

    l(i, j) = -log( exp(sim(z_i, z_j)/t) / sum_{k != i} exp(sim(z_i, z_k)/t) )
    with sim the cosine similarity; every one of the 2N views is an anchor and
    the loss is the mean of l over them. Inputs are L2-normalized here.

    Args:
        z1: Tensor `[batch, dim]`, projections of the first views.
        z2: Tensor `[batch, dim]`, projections of the second views (row i is
            the positive of row i of `z1`).
        temperature: float > 0. Defaults to 0.5.
        negatives: Tensor `[Q, dim]` or None. More negatives for every anchor
            (a queue's keys, see `nt_xent_logits`). Defaults to None.
        negatives_valid: bool Tensor `[Q]` or None. Which of them count.
            Defaults to all.
        mochi: `kc.negatives.MoCHi` or None, with `seed`: hard negative mixing
            from `negatives` (see `nt_xent_logits`). Defaults to None.
        seed: int32 Tensor `[2]` or None. Defaults to None.

    Returns:
        float32 scalar. Under a strategy: the mean over this replica's anchors,
        with negatives from all replicas.

    Example:

    >>> z1 = keras.random.normal((8, 16)); z2 = keras.random.normal((8, 16))
    >>> float(nt_xent(z1, z2, 0.5)) > 0
    True

    References:
        Chen, Kornblith, Norouzi, Hinton. A Simple Framework for Contrastive
        Learning of Visual Representations. ICML 2020.
    """
    logits, labels = nt_xent_logits(z1, z2, temperature, negatives, negatives_valid, mochi, seed)
    return ops.mean(cross_entropy_from_logits(logits, labels))


@keras.saving.register_keras_serializable(package="keras_contrastive")
class NTXent(keras.losses.Loss):
    """NT-Xent as a `keras.losses.Loss` on `y_pred = [batch, 2, dim]`.

    Args:
        temperature: float > 0. Defaults to 0.5.

    `y_true` is ignored. Convenient when a model outputs the two projections
    stacked; the trainers call `nt_xent` directly.
    """

    def __init__(self, temperature=0.5, name="nt_xent", **kwargs):
        _check_temperature(temperature)
        super().__init__(name=name, **kwargs)
        self.temperature = temperature

    def call(self, y_true, y_pred):
        return nt_xent(y_pred[:, 0], y_pred[:, 1], self.temperature)

    def get_config(self):
        config = super().get_config()
        config["temperature"] = self.temperature
        return config


def _check_labels(labels, batch):
    if labels is None:
        return None
    labels = ops.convert_to_tensor(labels)
    if len(labels.shape) == 2 and labels.shape[1] == 1:
        labels = ops.reshape(labels, (-1,))
    if len(labels.shape) != 1:
        raise ValueError(f"`labels` must be a vector [batch]; got shape {tuple(labels.shape)}.")
    if labels.shape[0] is not None and batch is not None and labels.shape[0] != batch:
        raise ValueError(
            f"`labels` has {labels.shape[0]} entries but `features` has {batch} examples; pass one label per example."
        )
    if "int" not in keras.backend.standardize_dtype(labels.dtype):
        raise ValueError(f"`labels` must be integer class ids; got dtype {labels.dtype}.")
    return ops.cast(labels, "int32")


def supcon(
    features,
    labels=None,
    temperature=0.07,
    base_temperature=0.07,
    contrast_mode="all",
    negatives=None,
    negatives_labels=None,
    negatives_valid=None,
):
    """Supervised contrastive loss, SupCon L_out (Khosla et al. 2020, eq. 2).

    For every anchor i (all views, or the first view only), with P(i) the
    other views that share its label and A(i) every view but i itself:

        l_i = -(temperature / base_temperature) / |P(i)|
              * sum_{p in P(i)} log( exp(z_i.z_p / t) / sum_{a in A(i)} exp(z_i.z_a / t) )

    and the loss is the mean of l_i over the anchors that have at least one
    positive (an anchor alone in its class is left out rather than NaN). The
    (temperature / base_temperature) factor is the reference code's. Without
    labels every image is its own class, which is SimCLR's loss: with 2 views
    and `base_temperature == temperature` it equals `nt_xent`.

    Under a strategy, features and labels are gathered from all replicas:
    anchors are this replica's, candidates the global batch's. Each replica
    returns `R * (its anchors' loss sum) / (global number of valid anchors)`,
    so the mean over replicas is the global mean even when replicas hold
    different numbers of anchors with positives.

    Args:
        features: Tensor `[batch, views, dim]`; L2-normalized here.
        labels: int Tensor `[batch]` or None. Defaults to None.
        temperature: float > 0. Defaults to 0.07 (paper).
        base_temperature: float > 0. Defaults to 0.07.
        contrast_mode: str. "all" (every view is an anchor) or "one" (the
            first view only). Defaults to "all".
        negatives: Tensor `[Q, dim]` or None. Queued keys of earlier steps
            (`kc.negatives.Queue(keep_labels=True)`), the same on every
            replica: more candidates in A(i), and in P(i) where their label is
            the anchor's. Defaults to None.
        negatives_labels: int Tensor `[Q]` or None. Their labels; required
            with `negatives` when `labels` is given (without labels every
            queued key is a negative). Defaults to None.
        negatives_valid: bool Tensor `[Q]` or None. False slots are left out
            of A(i) and P(i). Defaults to all valid.

    Returns:
        float32 scalar (float64 for float64 features).

    Example:

    >>> f = keras.random.normal((8, 2, 16)); y = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    >>> float(supcon(f, y, temperature=0.1)) > 0
    True

    References:
        Khosla et al. Supervised Contrastive Learning. NeurIPS 2020.
    """
    _check_temperature(temperature)
    if not (isinstance(base_temperature, (int, float)) and base_temperature > 0):
        raise ValueError(f"`base_temperature` must be > 0; got {base_temperature}.")
    if contrast_mode not in ("all", "one"):
        raise ValueError(f"`contrast_mode` must be 'all' or 'one'; got {contrast_mode!r}.")
    features = ops.convert_to_tensor(features)
    if len(features.shape) != 3 or features.shape[1] is None:
        raise ValueError(
            f"`features` must be [batch, views, dim] with a known number of views; got shape "
            f"{tuple(features.shape)}. For one view per image, stack two augmented views."
        )
    labels = _check_labels(labels, features.shape[0])
    num_views = features.shape[1]
    features = l2_normalize(features)
    n = ops.shape(features)[0]
    distribute.check_even_split(n)
    offset = distribute.global_offset(n)
    gathered = distribute.all_gather(features)  # [N, V, dim]
    big_n = ops.shape(gathered)[0]
    if labels is None:
        # Every image its own class: the positives are its other views.
        ids = ops.arange(n, dtype="int32") + offset
        all_ids = ops.arange(big_n, dtype="int32")
    else:
        ids = labels
        all_ids = distribute.all_gather(labels)
    # View-major layout: column v * N + j is view v of global image j.
    candidates = ops.reshape(ops.transpose(gathered, (1, 0, 2)), (num_views * big_n, -1))
    candidate_ids = ops.tile(all_ids, (num_views,))
    local = ops.arange(n, dtype="int32") + offset
    if contrast_mode == "all":
        anchors = ops.reshape(ops.transpose(features, (1, 0, 2)), (num_views * n, -1))
        anchor_ids = ops.tile(ids, (num_views,))
        self_index = ops.concatenate([local + v * big_n for v in range(num_views)], axis=0)
    else:
        anchors = features[:, 0]
        anchor_ids = ids
        self_index = local
    logits = ops.matmul(anchors, ops.transpose(candidates)) / temperature
    self_mask = ops.one_hot(self_index, num_views * big_n, dtype="bool")
    positive = ops.logical_and(ops.equal(anchor_ids[:, None], candidate_ids[None, :]), ops.logical_not(self_mask))
    logits = ops.where(self_mask, float("-inf"), logits)
    if negatives is not None:
        extra = ops.matmul(anchors, ops.transpose(ops.cast(l2_normalize(negatives), anchors.dtype))) / temperature
        queued = ops.ones((ops.shape(extra)[1],), "bool") if negatives_valid is None else negatives_valid
        extra = ops.where(ops.expand_dims(queued, 0), extra, float("-inf"))
        if labels is None:
            extra_positive = ops.zeros(ops.shape(extra), "bool")
        else:
            if negatives_labels is None:
                raise ValueError("`negatives_labels` is required with `negatives` and `labels` (a queue of labels).")
            same = ops.equal(anchor_ids[:, None], ops.cast(negatives_labels, "int32")[None, :])
            extra_positive = ops.logical_and(same, ops.expand_dims(queued, 0))
        logits = ops.concatenate([logits, extra], axis=1)
        positive = ops.concatenate([positive, extra_positive], axis=1)
    log_prob = logits - ops.logsumexp(logits, axis=1, keepdims=True)
    num_positive = ops.sum(ops.cast(positive, log_prob.dtype), axis=1)
    summed = ops.sum(ops.where(positive, log_prob, 0.0), axis=1)
    per_anchor = -(temperature / base_temperature) * summed / ops.maximum(num_positive, 1.0)
    valid = ops.cast(num_positive > 0, per_anchor.dtype)
    local_sum = ops.sum(per_anchor * valid)
    global_count = distribute.all_reduce_sum(ops.sum(valid))
    replicas = ops.cast(distribute.num_replicas(), per_anchor.dtype)
    return replicas * local_sum / ops.maximum(global_count, 1.0)


def multiview_nt_xent(features, temperature=0.5):
    """NT-Xent over any number of views per image: SupCon's L_out without labels.

    For V views of N images (VN anchors), anchor i's positives P(i) are the
    V - 1 other views of its image and its candidates every view but itself:

        l_i = -1 / (V - 1) * sum_{p in P(i)} log( exp(z_i.z_p / t) / sum_{a != i} exp(z_i.z_a / t) )

    averaged over all anchors. The other views of an image are never its
    negatives. With V = 2 it equals `nt_xent`; it is `supcon(features,
    labels=None, temperature, base_temperature=temperature)` (Khosla et al.
    2020, eq. 2, with every image its own class).

    Args:
        features: Tensor `[batch, views, dim]`; L2-normalized here.
        temperature: float > 0. Defaults to 0.5.

    Returns:
        float32 scalar (float64 for float64 features): the mean over this
        replica's anchors, negatives from all replicas.
    """
    return supcon(features, None, temperature=temperature, base_temperature=temperature)


def info_nce(query, key, temperature=0.2, negatives=None, negatives_valid=None, mochi=None, seed=None):
    """MoCo v3's InfoNCE: cross-entropy of `q k^T / t` against the matching key, times 2t.

    Query i's positive is key i (the same image's other view); the negatives
    are every other key of the global batch: keys are gathered from all
    replicas and the labels offset by this replica's position, so N replicas
    compute what one replica computes. The 2t factor is MoCo v3's (its
    reference `contrastive_loss`), which keeps the gradient scale
    independent of the temperature. Both inputs are L2-normalized here;
    keys come from the momentum branch and get no gradient.

    Args:
        query: Tensor `[batch, dim]`, the query branch's predictions.
        key: Tensor `[batch, dim]`, the momentum branch's projections.
        temperature: float > 0. Defaults to 0.2 (MoCo v3, ViT).
        negatives: Tensor `[Q, dim]` or None. More keys that are negatives of
            every query (a `kc.negatives.Queue`, MoCo v1/v2's queue), appended
            as Q columns. Defaults to None.
        negatives_valid: bool Tensor `[Q]` or None. False columns are masked
            with -inf. Defaults to all valid.
        mochi: `kc.negatives.MoCHi` or None. Hard negative mixing from
            `negatives` (MoCHi's own setting: MoCo with a queue). Defaults to None.
        seed: int32 Tensor `[2]` or None. MoCHi's stateless seed.

    Returns:
        float32 scalar: mean over this replica's queries.

    References:
        Chen, Xie, He. An Empirical Study of Training Self-Supervised Vision
        Transformers. ICCV 2021 (Algorithm 1).
    """
    _check_temperature(temperature)
    q = l2_normalize(query)
    k = ops.stop_gradient(l2_normalize(key))
    n = ops.shape(q)[0]
    distribute.check_even_split(n)
    k_all = distribute.all_gather(k)
    logits = ops.matmul(q, ops.transpose(k_all)) / temperature
    if negatives is not None:
        extra = ops.matmul(q, ops.transpose(ops.cast(ops.stop_gradient(l2_normalize(negatives)), q.dtype)))
        extra = extra / temperature
        if negatives_valid is not None:
            extra = ops.where(ops.expand_dims(negatives_valid, 0), extra, float("-inf"))
        logits = ops.concatenate([logits, extra], axis=1)
    labels = ops.arange(n, dtype="int32") + distribute.global_offset(n)
    if negatives is not None:
        # A query's row in the global batch is its positive's column, `labels`: MoCHi's draws are indexed by it.
        total = ops.shape(k_all)[0]
        logits = _with_mochi(logits, q, negatives, negatives_valid, mochi, seed, labels, total, temperature)
    return ops.mean(cross_entropy_from_logits(logits, labels)) * (2.0 * temperature)


def nearest_neighbours(embeddings, support, support_valid=None):
    """Each embedding's nearest neighbour (cosine) in a support set: NNCLR's positive.

    Args:
        embeddings: Tensor `[batch, dim]`.
        support: Tensor `[Q, dim]`, e.g. a `kc.negatives.Queue`'s keys.
        support_valid: bool Tensor `[Q]` or None. Only True rows can be
            chosen. Defaults to all.

    Returns:
        `(neighbours, indices)`: the chosen support rows, L2-normalized and
        without gradient, `[batch, dim]` (float32, float64 for float64
        inputs), and their int32 rows `[batch]`. Where no row is valid (an
        empty support set, the first step) an embedding is its own
        neighbour (normalized, without gradient) and its index is -1.
    """
    z = l2_normalize(embeddings)
    bank = ops.cast(l2_normalize(support), z.dtype)
    similarity = ops.matmul(z, ops.transpose(bank))
    if support_valid is not None:
        similarity = ops.where(ops.expand_dims(support_valid, 0), similarity, float("-inf"))
        any_valid = ops.any(support_valid)
    else:
        any_valid = ops.convert_to_tensor(True)
    indices = ops.cast(ops.argmax(similarity, axis=1), "int32")
    neighbours = ops.where(any_valid, ops.take(bank, indices, axis=0), z)
    return ops.stop_gradient(neighbours), ops.where(any_valid, indices, -1)


def nnclr_loss(neighbours, predictions, temperature=0.1):
    """NNCLR's InfoNCE (Dwibedi et al. 2021, eq. 2): a view's support-set neighbour against the other view's predictions.

        l_i = -log( exp(NN(z_i) . p_i+ / t) / sum_k exp(NN(z_i) . p_k+ / t) )

    with k over the global batch (predictions gathered from every replica,
    with their gradient); the neighbours carry no gradient. Mean over this
    replica's rows.

    Args:
        neighbours: Tensor `[batch, dim]`, NN(z) of one view (`nearest_neighbours`).
        predictions: Tensor `[batch, dim]`, the predictor's outputs p+ of the
            other view; row i is the positive of neighbour i.
        temperature: float > 0. Defaults to 0.1 (paper).

    Returns:
        float32 scalar (float64 for float64 inputs).

    References:
        Dwibedi, Aytar, Tompson, Sermanet, Zisserman. With a Little Help from
        My Friends: Nearest-Neighbor Contrastive Learning of Visual
        Representations. ICCV 2021.
    """
    _check_temperature(temperature)
    q = ops.stop_gradient(l2_normalize(neighbours))
    p = l2_normalize(predictions)
    n = ops.shape(q)[0]
    distribute.check_even_split(n)
    p_all = distribute.all_gather(p)
    logits = ops.matmul(q, ops.transpose(ops.cast(p_all, q.dtype))) / temperature
    labels = ops.arange(n, dtype="int32") + distribute.global_offset(n)
    return ops.mean(cross_entropy_from_logits(logits, labels))


def sinkhorn(scores, epsilon=0.05, iterations=3, valid=None):
    """SwAV's codes: Sinkhorn-Knopp's equipartition of the global batch over the prototypes.

    Q = exp(scores / epsilon), then `iterations` rounds of: scale each
    prototype's column so that its mass is 1/K, scale each row so that its
    mass is 1/B; returned times B, so every row (one embedding's soft
    assignment) sums to 1 (Caron et al. 2020, section 3.1 and algorithm 1,
    with the paper's 3 iterations and epsilon 0.05). B and the column sums
    run over the global batch: the column sums are all-reduced across
    replicas, so N replicas compute the codes one replica computes on the
    same global batch. No gradient flows through the codes.

    Args:
        scores: Tensor `[rows, K]`: this replica's rows of prototype scores
            (cosine similarities of unit embeddings with unit prototypes).
        epsilon: float > 0. Entropy regularization: smaller gives harder
            codes. Defaults to 0.05 (paper).
        iterations: int >= 1. Defaults to 3 (paper).
        valid: bool Tensor `[rows]` or None. Rows that are False take no
            part (their codes are 0); e.g. the slots of a feature queue not
            yet usable. Defaults to all rows.

    Returns:
        Codes `[rows, K]` (float32, float64 for float64 scores), rows summing to
        1 (0 for rows that are not valid).

    References:
        Caron, Misra, Mairal, Goyal, Bojanowski, Joulin. Unsupervised Learning
        of Visual Features by Contrasting Cluster Assignments. NeurIPS 2020.
        Cuturi. Sinkhorn Distances. NeurIPS 2013.
    """
    if not (isinstance(epsilon, (int, float)) and epsilon > 0):
        raise ValueError(f"`epsilon` must be a number > 0; got {epsilon!r}. SwAV uses 0.05 (0.03 with a queue).")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"`iterations` must be an int >= 1; got {iterations!r}. SwAV uses 3.")
    s = ops.stop_gradient(at_least_float32(scores))
    # Subtracting the global maximum changes nothing after the first normalization but keeps exp() finite
    # for any scores (unit vectors give |s| <= 1, but exp(1 / 0.05) times B*K entries is large in float32).
    top = ops.max(distribute.all_gather(ops.reshape(ops.max(s), (1,))))
    q = ops.exp((s - top) / epsilon)
    if valid is None:
        weight = ops.ones((ops.shape(s)[0], 1), s.dtype)
    else:
        weight = ops.cast(ops.reshape(valid, (-1, 1)), s.dtype)
    q = q * weight
    rows = distribute.all_reduce_sum(ops.sum(weight))  # B: the valid rows of the global batch
    prototypes = ops.cast(ops.shape(s)[1], s.dtype)  # K
    q = q / distribute.all_reduce_sum(ops.sum(q))
    for _ in range(iterations):
        q = q / (distribute.all_reduce_sum(ops.sum(q, axis=0, keepdims=True)) * prototypes)
        row_mass = ops.sum(q, axis=1, keepdims=True)
        # Rows that are not valid hold zeros; divide them by 1 instead of 0.
        q = q / (ops.where(weight > 0, row_mass, 1.0) * rows)
    return q * rows


def swav_loss(scores, codes, temperature=0.1):
    """SwAV's swapped prediction (Caron et al. 2020, eq. 1 and 2), mean over this replica's rows.

        L = mean over assigned views i of ( mean over views v != i of
            -sum_k q_i[k] log softmax(scores_v / t)[k] )

    Each view's prototype scores predict the codes of the other (assigned)
    views of the same image. The codes carry no gradient. Every term is per
    row, so the mean over replicas' means is the global mean.

    Args:
        scores: list of `V` Tensors `[batch, K]`, the prototype scores of each view.
        codes: list of `C <= V` Tensors `[batch, K]`: `codes[i]` are the codes
            (`sinkhorn`) of view i (SwAV's "crops for assign", the 2 global views).
        temperature: float > 0. Defaults to 0.1 (paper).

    Returns:
        float32 scalar (float64 for float64 inputs).
    """
    _check_temperature(temperature)
    if len(scores) < 2 or not 1 <= len(codes) <= len(scores):
        raise ValueError(
            f"Need at least 2 views' scores and 1 to {len(scores)} views' codes; got {len(scores)} and {len(codes)}."
        )
    log_p = [ops.log_softmax(at_least_float32(s) / temperature, axis=1) for s in scores]
    total = 0.0
    for i, q in enumerate(codes):
        q = ops.stop_gradient(ops.cast(q, log_p[0].dtype))
        terms = [ops.mean(-ops.sum(q * lp, axis=1)) for v, lp in enumerate(log_p) if v != i]
        total = total + ops.sum(ops.stack(terms)) / len(terms)
    return total / len(codes)
