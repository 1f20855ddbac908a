"""Negatives beyond the batch: a FIFO queue of past keys (MoCo, He et al. 2020) and a
memory bank of one key per example (Wu et al. 2018).

In-batch methods (SimCLR, SupCon) compare each anchor with the other views of
the global batch only. A queue keeps the keys of the last `size` examples, so
every step sees `size` more negatives for the price of one matmul column block,
at any batch size. Its state lives in non-trainable variables of a Keras layer:
checkpoints, `.keras` files and `BackupAndRestore` carry it, so a resumed run
continues with the same queue.

Under a `tf.distribute` strategy each replica enqueues the keys of the whole
global batch (gathered in replica order), so every replica holds the same
queue, equal to the queue one replica fills on the same global batch.
"""

import keras
import tensorflow as tf
from keras import ops

from keras_contrastive import distribute


@keras.saving.register_keras_serializable(package="keras_contrastive")
class Queue(keras.layers.Layer):
    """A first-in first-out queue of `size` keys `[size, dim]`, with their labels.

    Slots fill in order and then wrap around, overwriting the oldest keys
    (MoCo's `_dequeue_and_enqueue`). Slots never written are reported as not
    valid, so a loss masks them out instead of comparing with zeros or random
    vectors: the loss of the first steps is exact, not a warm-up artefact.
    Shapes are static (`size` fixed), as TPUs and `jit_compile=True` need.

    Args:
        size: int > 0. Number of keys kept. MoCo v2 uses 65,536 for
            ImageNet; it must be at least the global batch's keys per step.
        keep_labels: bool. Also keep an int32 label per key (SupCon's
            positives among the queued keys). Defaults to False.
        mochi: `MoCHi` or None. Hard negative mixing: synthetic negatives
            from each anchor's hardest queued keys join its loss. Defaults to
            None.
        dtype: "float32" or "float64". The keys' dtype, float32 under any
            mixed-precision policy. Defaults to "float32".

    `contents()` gives what a loss reads, `enqueue(keys)` adds a step's keys.
    Build it with `queue.build((None, dim))` before use (the trainers do).

    Example:

    >>> queue = Queue(4)
    >>> queue.build((None, 2))
    >>> queue.enqueue(np.eye(2, dtype="float32"))
    >>> keys, labels, valid = queue.contents()
    >>> valid.numpy().tolist()
    [True, True, False, False]

    References:
        He, Fan, Wu, Xie, Girshick. Momentum Contrast for Unsupervised Visual
        Representation Learning. CVPR 2020 (the queue, algorithm 1).
        Chen, Fan, Girshick, He. Improved Baselines with Momentum Contrastive
        Learning. arXiv:2003.04297 (MoCo v2).
    """

    def __init__(self, size, keep_labels=False, mochi=None, **kwargs):
        # Keys are kept and compared in float32 whatever the model's policy (similarity logits in float32);
        # `dtype="float64"` keeps float64 keys (the float64 equivalence tests).
        kwargs["dtype"] = "float64" if kwargs.get("dtype") == "float64" else "float32"
        super().__init__(**kwargs)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"`size` must be an int > 0 (the number of keys kept); got {size!r}.")
        self.size = size
        self.keep_labels = bool(keep_labels)
        if isinstance(mochi, dict):
            mochi = keras.saving.deserialize_keras_object(mochi)
        if mochi is not None and not isinstance(mochi, MoCHi):
            raise ValueError(f"`mochi` must be a keras_contrastive.negatives.MoCHi or None; got {mochi!r}.")
        if mochi is not None and mochi.N > size:
            raise ValueError(f"MoCHi's N={mochi.N} exceeds the queue's size {size}: N hardest of {size} keys.")
        self.mochi = mochi

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim is None:
            raise ValueError(f"The queue needs the keys' static dimension; got shape {input_shape}.")
        # Identical on every replica (each enqueues the gathered global batch): any replica's copy is the value.
        state = dict(trainable=False, aggregation="only_first_replica")
        self.keys = self.add_weight(
            shape=(self.size, dim), initializer="zeros", dtype=self.variable_dtype, name="keys", **state
        )
        self.labels = self.add_weight(
            shape=(self.size,), initializer=keras.initializers.Constant(-1), dtype="int32", name="labels", **state
        )
        # Next slot to write, and the number of slots written so far (at most `size`): two int32 scalars that
        # never overflow, unlike a running count of keys.
        self.pointer = self.add_weight(shape=(), initializer="zeros", dtype="int32", name="pointer", **state)
        self.filled = self.add_weight(shape=(), initializer="zeros", dtype="int32", name="filled", **state)
        self.built = True

    @property
    def dim(self):
        return int(self.keys.shape[-1])

    #: Whether `contents` and `enqueue` need each example's index (a memory bank does).
    needs_index = False

    def contents(self, index=None):
        """The queue as the loss reads it, slot by slot (not in age order).

        Args:
            index: ignored (a memory bank's argument: the step's example
                indices).

        Returns:
            `(keys, labels, valid)`: float32 (or float64) `[size, dim]`, int32 `[size]` (-1
            where never written) and bool `[size]`, True for written slots.
        """
        valid = ops.arange(self.size, dtype="int32") < ops.convert_to_tensor(self.filled)
        return ops.convert_to_tensor(self.keys), ops.convert_to_tensor(self.labels), valid

    def ordered(self):
        """The written keys and labels from oldest to newest: `[filled, dim]` and `[filled]` (eager use)."""
        keys, labels = self.keys.numpy(), self.labels.numpy()
        filled, pointer = int(self.filled.numpy()), int(self.pointer.numpy())
        if filled < self.size:
            return keys[:filled], labels[:filled]
        order = [(pointer + i) % self.size for i in range(self.size)]
        return keys[order], labels[order]

    def enqueue(self, keys, labels=None, index=None):
        """Writes this step's keys (of every replica) over the oldest slots.

        Args:
            keys: Tensor `[local_batch, dim]`, or a list of them (e.g. the
                two views' keys); each is gathered from all replicas, in
                replica order, and the lists are joined in list order, so the
                queue is the one a single replica fills on the global batch.
                Gradients do not flow into the queue.
            labels: int Tensor `[local_batch]` or a list matching `keys`;
                required with `keep_labels=True`, ignored otherwise.
            index: ignored (a memory bank's argument).
        """
        if not self.built:
            raise ValueError("Build the queue with `queue.build((None, dim))` before enqueueing.")
        keys = list(keys) if isinstance(keys, (list, tuple)) else [keys]
        if self.keep_labels:
            if labels is None:
                raise ValueError("This queue keeps labels (`keep_labels=True`): pass `labels` with the keys.")
            labels = list(labels) if isinstance(labels, (list, tuple)) else [labels]
            if len(labels) != len(keys):
                raise ValueError(f"Got {len(keys)} key tensors and {len(labels)} label tensors; pass one per key.")
        gathered = ops.concatenate(
            [distribute.all_gather(ops.stop_gradient(ops.cast(k, self.keys.dtype))) for k in keys], axis=0
        )
        if gathered.shape[-1] is not None and gathered.shape[-1] != self.dim:
            raise ValueError(f"The queue holds keys of dimension {self.dim}; got keys of shape {gathered.shape}.")
        batch = gathered.shape[0]
        if batch is not None and batch > self.size:
            raise ValueError(
                f"One step enqueues {batch} keys (all replicas, all views) but the queue holds {self.size}: "
                "make `size` at least the keys per step."
            )
        count = ops.shape(gathered)[0]
        slots = (ops.convert_to_tensor(self.pointer) + ops.arange(count, dtype="int32")) % self.size
        checks = []
        if batch is None:
            checks.append(tf.debugging.assert_less_equal(count, self.size, message="More keys than queue slots."))
        with tf.control_dependencies(checks):
            slots = tf.identity(slots)
        self.keys.assign(tf.tensor_scatter_nd_update(self.keys, slots[:, None], gathered))
        if self.keep_labels:
            gathered_labels = ops.concatenate(
                [distribute.all_gather(ops.cast(ops.reshape(y, (-1,)), "int32")) for y in labels], axis=0
            )
            self.labels.assign(tf.tensor_scatter_nd_update(self.labels, slots[:, None], gathered_labels))
        self.pointer.assign((ops.convert_to_tensor(self.pointer) + count) % self.size)
        self.filled.assign(ops.minimum(ops.convert_to_tensor(self.filled) + count, self.size))

    def get_config(self):
        config = super().get_config()
        config.update(size=self.size, keep_labels=self.keep_labels, dtype=self.variable_dtype)
        config["mochi"] = None if self.mochi is None else keras.saving.serialize_keras_object(self.mochi)
        return config


@keras.saving.register_keras_serializable(package="keras_contrastive")
class MemoryBank(Queue):
    """A memory bank (Wu et al. 2018): one key per training example, drawn from as negatives.

    Row i holds a running average of example i's unit projections: after each
    training step, every example of the global batch gets
    `v_i <- normalize(m v_i + (1 - m) k_i)`, with `k_i` the mean of its
    views' unit keys (the first write takes `k_i` itself; Wu et al.'s and
    PIRL's m = 0.5). Each step's loss reads `num_negatives` rows drawn
    uniformly with replacement (the noise samples of Wu et al.'s NCE), or the
    whole bank with `num_negatives=None`; rows never written, and the rows of
    the examples in the step's global batch (stale copies of the anchors and
    their positives), are reported as not valid, so the loss masks them.

    Unlike a queue, the bank needs to know which example each batch row is:
    the data carries an `index` per example, which `contrastive_views(...,
    with_index=True)` adds (the trainers' `views_dataset` does it when their
    negatives need it). Indices must lie in [0, size).

    The draws are stateless, seeded by `seed` and the bank's update count
    (saved with it), and every replica writes the gathered global batch, so N
    replicas hold and draw what one replica does, and a resumed run continues
    with the same bank and the same draws. Shapes are static (TPU,
    `jit_compile=True`).

    Args:
        size: int > 0. Number of rows: the number of training examples.
            With `contrastive_views(..., input_context=...)`, examples are
            numbered `local_position * pipelines + pipeline_id`: below the
            number of examples plus the pipelines where `load` shards element
            by element (local files, arrays, folders); tfds shards by file,
            so uneven files number up to `pipelines * largest shard`.
        num_negatives: int > 0 or None. Rows drawn per step. Wu et al. draw
            4096. Defaults to 4096; None reads every row.
        momentum: float in [0, 1). Weight of the old row in the update. 0
            keeps only the newest keys. Defaults to 0.5.
        keep_labels: bool. Also keep each example's int32 label (SupCon).
            Defaults to False.
        mochi: `MoCHi` or None. Hard negative mixing over the drawn rows
            (its N at most `num_negatives`). Defaults to None.
        seed: int. Seed of the draws. Defaults to 0.
        dtype: "float32" or "float64", as for `Queue`.

    Example:

    >>> bank = MemoryBank(60_000, num_negatives=4096)
    >>> model = kc.SimCLR(encoder, augmenter, negatives=bank)
    >>> model.fit(model.views_dataset(train, 256, shuffle_buffer=60_000, repeat=True), ...)

    References:
        Wu, Xiong, Yu, Lin. Unsupervised Feature Learning via Non-Parametric
        Instance Discrimination. CVPR 2018 (the memory bank, section 3.2).
        Misra, van der Maaten. Self-Supervised Learning of Pretext-Invariant
        Representations. CVPR 2020 (PIRL: its momentum 0.5).
    """

    needs_index = True

    def __init__(self, size, num_negatives=4096, momentum=0.5, keep_labels=False, mochi=None, seed=0, **kwargs):
        super().__init__(size, keep_labels=keep_labels, mochi=None, **kwargs)
        if num_negatives is not None and (
            isinstance(num_negatives, bool) or not isinstance(num_negatives, int) or num_negatives < 1
        ):
            raise ValueError(f"`num_negatives` must be an int > 0 or None (every row); got {num_negatives!r}.")
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
            raise ValueError(f"`momentum` must be a number in [0, 1); got {momentum!r}.")
        if isinstance(seed, bool) or not isinstance(seed, int) or not -(2**31) <= seed < 2**31:
            raise ValueError(f"`seed` must be an int32; got {seed!r}.")
        self.num_negatives = num_negatives
        self.momentum = float(momentum)
        self.seed = seed
        if isinstance(mochi, dict):
            mochi = keras.saving.deserialize_keras_object(mochi)
        if mochi is not None and not isinstance(mochi, MoCHi):
            raise ValueError(f"`mochi` must be a keras_contrastive.negatives.MoCHi or None; got {mochi!r}.")
        drawn = size if num_negatives is None else num_negatives
        if mochi is not None and mochi.N > drawn:
            raise ValueError(f"MoCHi's N={mochi.N} exceeds the {drawn} rows the bank gives each step.")
        self.mochi = mochi

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim is None:
            raise ValueError(f"The memory bank needs the keys' static dimension; got shape {input_shape}.")
        # Identical on every replica (each writes the gathered global batch): any replica's copy is the value.
        state = dict(trainable=False, aggregation="only_first_replica")
        self.keys = self.add_weight(
            shape=(self.size, dim), initializer="zeros", dtype=self.variable_dtype, name="keys", **state
        )
        self.labels = self.add_weight(
            shape=(self.size,), initializer=keras.initializers.Constant(-1), dtype="int32", name="labels", **state
        )
        # 1 for the rows written at least once; and the number of updates so far (the draws' seed).
        self.written = self.add_weight(shape=(self.size,), initializer="zeros", dtype="int32", name="written", **state)
        self.update_count = self.add_weight(shape=(), initializer="zeros", dtype="int32", name="update_count", **state)
        self.built = True

    def _global_index(self, index, what):
        if index is None:
            raise ValueError(
                f"A memory bank {what} by example: feed each example's index with the views, "
                "x = {'views': views, 'index': index} (contrastive_views(..., with_index=True), which the "
                "trainers' views_dataset adds when their negatives need it)."
            )
        index = distribute.all_gather(ops.cast(ops.reshape(index, (-1,)), "int32"))
        message = f"Example indices must lie in [0, {self.size}) (the memory bank's size)."
        with tf.control_dependencies(
            [
                tf.debugging.assert_non_negative(index, message=message),
                tf.debugging.assert_less(index, self.size, message=message),
            ]
        ):
            return tf.identity(index)

    def contents(self, index=None):
        """The rows this step's loss reads.

        Args:
            index: int Tensor `[local_batch]`, the examples of this replica's
                batch (gathered from all replicas here), or None (evaluating
                on data without indices: no row is masked as the batch's own).

        Returns:
            `(keys, labels, valid)`: float32 (or float64) `[num_negatives,
            dim]` (`[size, dim]` when `num_negatives` is None), int32 labels
            and bool, True for rows written before and not of an example in
            the global batch.
        """
        batch = None if index is None else self._global_index(index, "is read")
        if self.num_negatives is None:
            rows = ops.arange(self.size, dtype="int32")
        else:
            seed = tf.stack([tf.constant(self.seed, tf.int32), tf.convert_to_tensor(self.update_count)])
            rows = tf.random.stateless_uniform([self.num_negatives], seed, minval=0, maxval=self.size, dtype=tf.int32)
        valid = ops.take(ops.convert_to_tensor(self.written), rows) > 0
        if batch is not None:
            in_batch = ops.any(ops.expand_dims(rows, 1) == ops.expand_dims(batch, 0), axis=1)
            valid = ops.logical_and(valid, ops.logical_not(in_batch))
        keys = ops.take(ops.convert_to_tensor(self.keys), rows, axis=0)
        return keys, ops.take(ops.convert_to_tensor(self.labels), rows), valid

    def ordered(self):
        """The written rows and their labels in example order (eager use): `[written, dim]` and `[written]`."""
        written = self.written.numpy() > 0
        return self.keys.numpy()[written], self.labels.numpy()[written]

    def enqueue(self, keys, labels=None, index=None):
        """Moves the rows of this step's examples (all replicas) towards their new keys.

        Args:
            keys: Tensor `[local_batch, dim]` or a list of them, one per view
                of the same examples (their unit mean is the example's key).
            labels: int Tensor `[local_batch]` or a list (the first is kept);
                required with `keep_labels=True`.
            index: int Tensor `[local_batch]`, the examples' rows.
        """
        if not self.built:
            raise ValueError("Build the bank with `bank.build((None, dim))` before writing to it.")
        index = self._global_index(index, "is written")
        keys = list(keys) if isinstance(keys, (list, tuple)) else [keys]
        per_view = [distribute.all_gather(ops.stop_gradient(ops.cast(k, self.keys.dtype))) for k in keys]
        if per_view[0].shape[-1] is not None and per_view[0].shape[-1] != self.dim:
            raise ValueError(f"The bank holds keys of dimension {self.dim}; got keys of shape {per_view[0].shape}.")
        new = ops.mean(ops.stack(per_view), axis=0)
        # An example twice in one global batch (a repeated dataset's epoch boundary): both rows take the mean of
        # its keys, so the scatter writes one value whichever duplicate lands last.
        same = ops.cast(ops.expand_dims(index, 1) == ops.expand_dims(index, 0), new.dtype)
        new = ops.matmul(same, new) / ops.sum(same, axis=1, keepdims=True)
        old = ops.take(ops.convert_to_tensor(self.keys), index, axis=0)
        seen = ops.expand_dims(ops.take(ops.convert_to_tensor(self.written), index) > 0, 1)
        new = ops.where(seen, self.momentum * old + (1.0 - self.momentum) * new, new)
        new = new * ops.rsqrt(ops.maximum(ops.sum(ops.square(new), axis=-1, keepdims=True), 1e-12))
        rows = ops.expand_dims(index, 1)
        self.keys.assign(tf.tensor_scatter_nd_update(self.keys, rows, new))
        self.written.assign(tf.tensor_scatter_nd_update(self.written, rows, ops.ones_like(index)))
        if self.keep_labels:
            if labels is None:
                raise ValueError("This bank keeps labels (`keep_labels=True`): pass `labels` with the keys.")
            first = labels[0] if isinstance(labels, (list, tuple)) else labels
            gathered = distribute.all_gather(ops.cast(ops.reshape(first, (-1,)), "int32"))
            self.labels.assign(tf.tensor_scatter_nd_update(self.labels, rows, gathered))
        self.update_count.assign(ops.convert_to_tensor(self.update_count) + 1)

    def get_config(self):
        config = super().get_config()
        config.update(num_negatives=self.num_negatives, momentum=self.momentum, seed=self.seed)
        return config


@keras.saving.register_keras_serializable(package="keras_contrastive")
class MoCHi:
    """Hard negative mixing (Kalantidis et al. 2020): synthetic negatives from a queue's hardest keys.

    For each anchor q, the N queued keys most similar to it are its hardest
    negatives. MoCHi adds, as more negatives of q alone:
    * s keys `h = a n_i + (1 - a) n_j`, unit length, with n_i, n_j drawn
      from the N hardest and a uniform in (0, 1) (the paper's eq. 3);
    * s' keys `h' = b q + (1 - b) n_j`, unit length, with b uniform in
      (0, 0.5), so q stays the larger part of neither (eq. 4).
    The synthetic keys carry no gradient (they are negatives, as the queue's
    keys are). Draws are stateless and indexed by the anchor's position in
    the global batch, so N replicas draw what one replica draws. Slots never
    written are never picked as hard negatives: a mix that would use one is
    masked out of the loss.

    Args:
        N: int > 0. Hardest negatives to mix from (at most the queue's size).
            The paper's best ImageNet-100 setting: N=1024.
        s: int >= 0. Synthetic negatives mixed from pairs of hard ones.
            Paper: 1024.
        s_prime: int >= 0. Synthetic negatives mixed from the anchor and a
            hard one. Paper: 512.

    Example:

    >>> queue = Queue(4096, mochi=MoCHi(N=1024, s=1024, s_prime=512))

    References:
        Kalantidis, Sariyildiz, Pion, Weinzaepfel, Larlus. Hard Negative
        Mixing for Contrastive Learning. NeurIPS 2020.
    """

    def __init__(self, N=1024, s=1024, s_prime=512):  # noqa: N803 (the paper's names)
        for name, value, least in (("N", N, 1), ("s", s, 0), ("s_prime", s_prime, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"MoCHi's `{name}` must be an int >= {least}; got {value!r}.")
        if s + s_prime == 0:
            raise ValueError("MoCHi with s = s_prime = 0 adds no negatives; set s or s_prime > 0, or drop mochi.")
        self.N, self.s, self.s_prime = N, s, s_prime

    def synthetic_logits(self, anchors, keys, valid, anchor_index, total_anchors, seed):
        """Cosine similarities of each anchor with its own synthetic negatives.

        Args:
            anchors: float Tensor `[A, dim]`, unit length (this replica's anchors).
            keys: float Tensor `[Q, dim]`, unit length (the queue).
            valid: bool Tensor `[Q]`, the written slots.
            anchor_index: int32 Tensor `[A]`, each anchor's row in the global
                batch of `total_anchors` (its random draws are that row's).
            total_anchors: int32 scalar, anchors in the global batch.
            seed: int32 Tensor `[2]`, stateless seed of this step and loss term.

        Returns:
            `(similarity, usable)`: float `[A, s + s_prime]` (pairs first,
            then anchor mixes) and bool `[A, s + s_prime]`.
        """
        anchors = ops.convert_to_tensor(anchors)
        keys = ops.cast(ops.stop_gradient(keys), anchors.dtype)
        if keys.shape[0] is not None and self.N > keys.shape[0]:
            raise ValueError(f"MoCHi's N={self.N} exceeds the queue's {keys.shape[0]} keys; lower N.")
        similarity = ops.matmul(ops.stop_gradient(anchors), ops.transpose(keys))
        similarity = ops.where(ops.expand_dims(valid, 0), similarity, float("-inf"))
        hardest_similarity, hardest = ops.top_k(similarity, self.N)  # [A, N] each
        hard_ok = hardest_similarity > float("-inf")
        drawn = self.draws(seed, anchor_index, total_anchors)

        def pick(choice):
            """The chosen hard negatives: keys `[A, k, dim]` and whether each is a written slot `[A, k]`."""
            slots = ops.take_along_axis(hardest, choice, axis=1)
            return ops.take(keys, slots, axis=0), ops.take_along_axis(hard_ok, choice, axis=1)

        def unit(x):
            return x * ops.rsqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), 1e-12))

        similarities, usable = [], []
        if self.s:
            first, first_ok = pick(drawn["first"])
            second, second_ok = pick(drawn["second"])
            alpha = ops.cast(drawn["alpha"], anchors.dtype)[..., None]
            mixed = ops.stop_gradient(unit(alpha * first + (1.0 - alpha) * second))
            similarities.append(ops.sum(anchors[:, None, :] * mixed, axis=-1))
            usable.append(ops.logical_and(first_ok, second_ok))
        if self.s_prime:
            hard, hard_ok_q = pick(drawn["hard"])
            beta = ops.cast(drawn["beta"], anchors.dtype)[..., None]
            mixed = ops.stop_gradient(unit(beta * anchors[:, None, :] + (1.0 - beta) * hard))
            similarities.append(ops.sum(anchors[:, None, :] * mixed, axis=-1))
            usable.append(hard_ok_q)
        return ops.concatenate(similarities, axis=1), ops.concatenate(usable, axis=1)

    def draws(self, seed, anchor_index, total_anchors):
        """The random choices of one step for the anchors `anchor_index` of a global batch of `total_anchors`.

        Drawn for every anchor of the global batch, then this replica's rows are taken: N replicas draw what
        one replica draws.

        Returns:
            dict of `[A, s]` tensors `first`, `second` (int32 ranks among the N hardest, 0 the hardest) and
            `alpha` (float32 in [0, 1)); `[A, s_prime]` tensors `hard` (int32 ranks) and `beta` (float32 in
            [0, 0.5)).
        """
        seeds = tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int32), 5))
        shapes = {"first": self.s, "second": self.s, "alpha": self.s, "hard": self.s_prime, "beta": self.s_prime}
        ranges = {"first": (0, self.N), "second": (0, self.N), "alpha": (0.0, 1.0), "hard": (0, self.N)}
        ranges["beta"] = (0.0, 0.5)
        drawn = {}
        for key_seed, name in zip(seeds, shapes):
            low, high = ranges[name]
            every = tf.random.stateless_uniform(
                [total_anchors, shapes[name]],
                key_seed,
                minval=low,
                maxval=high,
                dtype=tf.int32 if isinstance(low, int) else tf.float32,
            )
            drawn[name] = ops.take(every, anchor_index, axis=0)
        return drawn

    def get_config(self):
        return {"N": self.N, "s": self.s, "s_prime": self.s_prime}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
