"""SwAV: online clustering; each view predicts the other views' cluster codes."""

import keras
from keras import ops

from keras_contrastive import distribute
from keras_contrastive import heads
from keras_contrastive import losses
from keras_contrastive.trainers.base import ContrastiveTrainer


@keras.saving.register_keras_serializable(package="keras_contrastive")
class SwAV(ContrastiveTrainer):
    """SwAV trainer (Caron et al. 2020): a `keras.Model` trained with `fit`.

    All views go through encoder -> projection head -> L2 normalization ->
    prototypes (`kc.heads.Prototypes`), giving scores `[batch, K]` per view.
    The codes of the first two views (the paper's "crops for assign") come
    from Sinkhorn-Knopp over the global batch (`kc.losses.sinkhorn`, sums
    all-reduced across replicas); each view's scores then predict the codes
    of the other assigned view(s) (`kc.losses.swav_loss`). The prototypes
    are kept on the unit sphere and receive no gradient for the first
    `freeze_prototypes_steps` steps (the paper's fix for early collapse).

    With a feature `queue`, the unit projections of the two assigned views
    of earlier batches are scored against the current prototypes and join
    Sinkhorn's equipartition (only their codes are discarded), which is what
    makes small batches work (paper section 4.3). As in the reference code,
    the queue joins only once all its slots are written. Each replica feeds
    Sinkhorn its own 1/N of the queue's slots, so the queue's rows are
    counted once in the cross-replica sums; `queue.size` must be divisible by
    the number of replicas.

    Args:
        encoder: keras.Model. Float images in [0, 1] to `[batch, dim]`.
        augmenter: layer or list of layers (see `ContrastiveTrainer`).
        num_prototypes: int >= 2. K. Defaults to 3000 (paper, ImageNet).
        temperature: float > 0. The softmax temperature of the predictions.
            Defaults to 0.1 (paper).
        epsilon: float > 0. Sinkhorn's entropy regularization. Defaults to
            0.05 (paper; the reference code uses 0.03 with a queue).
        sinkhorn_iterations: int >= 1. Defaults to 3 (paper).
        freeze_prototypes_steps: int >= 0. Steps during which the prototypes
            get zero gradient. Defaults to 313 (reference code: one ImageNet
            epoch at batch 4,096; it uses 5,005 at batch 256).
        queue: `kc.negatives.Queue` or None. The feature queue; it holds
            the two assigned views' unit projections side by side (keys of
            dimension 2 * projection_dim). Defaults to None (paper: 3,840
            keys at batch 256).
        queue_start_step: int >= 0. The queue joins the codes from this step
            on (once full). Defaults to 0. The reference code starts it at
            epoch 15: a queue of the first steps' features, which change
            fast, lets Sinkhorn spread the queue evenly while the batch
            collapses onto a few prototypes (measured here: see
            benchmarks/RESULTS.md).
        projection_dim: int. Defaults to 128 (paper).
        projection_hidden_dim: int. Defaults to 2048 (paper: one hidden
            layer with BN and ReLU).
        synchronized_bn: bool or None. Cross-replica BN in the head; None (the
            default) synchronizes under a strategy with several replicas.
        num_classes: int or None. Online linear probe. Defaults to None.
        seed: int. In-step augmentation seed. Defaults to 0.
        num_views: int >= 2 or None. Views per image (all of one size); the
            first two are the assigned ones. Defaults to None (2).

    Inputs to `fit`: views `[batch, V, H, W, C]` or raw images `[batch, H, W, C]`,
    optionally with labels `[batch]`.

    Metrics: `loss`, `prototype_usage` (the share of prototypes that are the
    top code of at least one example of the replica's batch: a collapse
    alarm of its own), the collapse alarms and, with labels and
    `num_classes`, `probe_loss` / `probe_accuracy`.

    Example:

    >>> model = SwAV(ResNet18((32, 32, 3), width_multiplier=0.25), SimCLRAugmenter(32), num_prototypes=100)
    >>> model.compile(optimizer=LARS(learning_rate=0.3))
    >>> model.fit(model.views_dataset(kc.data.load("fashion_mnist"), 256), epochs=1)

    References:
        Caron, Misra, Mairal, Goyal, Bojanowski, Joulin. Unsupervised Learning
        of Visual Features by Contrasting Cluster Assignments. NeurIPS 2020.
    """

    num_views = 2
    #: All views through the encoder and the head in one call (the reference code concatenates crops of one size).
    concatenate_views = True
    #: The views whose codes are predicted (the reference code's `crops_for_assign`).
    assigned_views = 2

    def __init__(
        self,
        encoder,
        augmenter=None,
        num_prototypes=3000,
        temperature=0.1,
        epsilon=0.05,
        sinkhorn_iterations=3,
        freeze_prototypes_steps=313,
        queue=None,
        queue_start_step=0,
        projection_dim=128,
        projection_hidden_dim=2048,
        synchronized_bn=None,
        num_classes=None,
        seed=0,
        **kwargs,
    ):
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ValueError(f"`temperature` must be a number > 0; got {temperature!r}.")
        if not (isinstance(epsilon, (int, float)) and epsilon > 0):
            raise ValueError(f"`epsilon` must be a number > 0; got {epsilon!r}.")
        if isinstance(sinkhorn_iterations, bool) or not isinstance(sinkhorn_iterations, int) or sinkhorn_iterations < 1:
            raise ValueError(f"`sinkhorn_iterations` must be an int >= 1; got {sinkhorn_iterations!r}.")
        for name, value in (
            ("freeze_prototypes_steps", freeze_prototypes_steps),
            ("queue_start_step", queue_start_step),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"`{name}` must be an int >= 0; got {value!r}.")
        super().__init__(encoder, augmenter, num_classes=num_classes, seed=seed, **kwargs)
        self.temperature = float(temperature)
        self.epsilon = float(epsilon)
        self.sinkhorn_iterations = sinkhorn_iterations
        self.freeze_prototypes_steps = freeze_prototypes_steps
        self.queue_start_step = queue_start_step
        self.projection_dim = int(projection_dim)
        self.projection_hidden_dim = int(projection_hidden_dim)
        self.synchronized_bn = distribute.sync_batch_norm_default(synchronized_bn)
        self.projection_head = heads.ProjectionHead(
            [self.projection_hidden_dim],
            self.projection_dim,
            batch_norm=True,
            synchronized_bn=self.synchronized_bn,
            name="projection_head",
        )
        self.projection_head.build((None, self.feature_dim))
        self.prototypes = heads.Prototypes(num_prototypes, name="prototypes")
        self.prototypes.build((None, self.projection_dim))
        if queue is not None and getattr(queue, "mochi", None) is not None:
            raise ValueError("SwAV's queue takes part in the clustering, not as negatives: pass a queue without mochi.")
        if getattr(queue, "needs_index", False):
            raise ValueError(
                "SwAV's feature queue holds the last batches (the paper's); pass kc.negatives.Queue(size)."
            )
        self._set_negatives(queue, self.assigned_views * self.projection_dim)
        self._track("prototype_usage")
        self.built = True

    @property
    def queue(self):
        return self.negatives

    @property
    def num_prototypes(self):
        return self.prototypes.num_prototypes

    def process_gradients(self, gradients, variables):
        if self.freeze_prototypes_steps == 0:
            return gradients
        # Zero, not absent: the graph stays one for every step. A zero gradient leaves SGD's and Adam's
        # state at zero, and weight decay only rescales a prototype, which the unit-norm constraint undoes.
        frozen = ops.convert_to_tensor(self.optimizer.iterations) < self.freeze_prototypes_steps
        kernel = self.prototypes.kernel
        return [
            ops.where(frozen, ops.zeros_like(g), g) if (g is not None and v is kernel) else g
            for g, v in zip(gradients, variables)
        ]

    def _queue_scores(self, training):
        """This replica's share of the queue, scored by view, and whether it is usable: `([Q/N, K] * 2, [Q/N])`."""
        replicas = distribute.num_replicas()
        if self.queue.size % replicas:
            raise ValueError(
                f"SwAV splits its queue's {self.queue.size} slots over the {replicas} replicas: make the "
                "queue's size divisible by the number of replicas."
            )
        keys, _, valid = self.queue.contents()
        share = self.queue.size // replicas
        start = distribute.replica_id() * share
        keys = ops.slice(keys, (start, 0), (share, self.queue.dim))
        # The reference code uses the queue once every slot is written, never a partly filled one.
        usable = ops.logical_and(ops.slice(valid, (start,), (share,)), ops.all(valid))
        if self.queue_start_step:
            step = self.optimizer.iterations if (training and self.optimizer is not None) else self.queue_start_step
            usable = ops.logical_and(usable, ops.convert_to_tensor(step) >= self.queue_start_step)
        return [ops.stop_gradient(self.prototypes(k)) for k in ops.split(keys, self.assigned_views, axis=1)], usable

    def codes(self, scores, training=False):
        """Sinkhorn codes of the assigned views: a list of `[batch, K]`, the queue (if any) joining the equipartition."""
        batch = ops.shape(scores[0])[0]
        out = []
        if self.queue is not None:
            queued, usable = self._queue_scores(training)
        for view in range(self.assigned_views):
            rows, valid = ops.stop_gradient(scores[view]), None
            if self.queue is not None:
                rows = ops.concatenate([ops.cast(queued[view], rows.dtype), rows], axis=0)
                valid = ops.concatenate([usable, ops.ones((batch,), "bool")], axis=0)
            q = losses.sinkhorn(rows, self.epsilon, self.sinkhorn_iterations, valid)
            out.append(q[-batch:] if self.queue is not None else q)
        return out

    def contrastive_loss(self, features, labels, training, views, index=None):
        if len(features) < self.assigned_views:
            raise ValueError(f"SwAV needs at least {self.assigned_views} views; got {len(features)}.")
        batch = ops.shape(features[0])[0]
        distribute.check_even_split(batch)
        z = losses.l2_normalize(self.project(features, training=training))
        scores = ops.split(self.prototypes(z), len(features), axis=0)
        z = ops.split(z, len(features), axis=0)
        codes = self.codes(scores, training)
        loss = losses.swav_loss(scores, codes, self.temperature)
        metrics = self.collapse_metrics(features, z)
        top = ops.argmax(ops.stop_gradient(scores[0]), axis=1)
        hit = ops.max(ops.one_hot(top, self.num_prototypes, dtype="float32"), axis=0)
        metrics["prototype_usage"] = ops.mean(hit)
        if training and self.queue is not None:
            # After the codes have read it: the queue holds earlier batches only.
            self.queue.enqueue(ops.concatenate(z[: self.assigned_views], axis=1))
        return loss, metrics

    def get_config(self):
        config = super().get_config()
        config.update(
            num_prototypes=self.num_prototypes,
            temperature=self.temperature,
            epsilon=self.epsilon,
            sinkhorn_iterations=self.sinkhorn_iterations,
            freeze_prototypes_steps=self.freeze_prototypes_steps,
            queue_start_step=self.queue_start_step,
            queue=None if self.queue is None else keras.saving.serialize_keras_object(self.queue),
            projection_dim=self.projection_dim,
            projection_hidden_dim=self.projection_hidden_dim,
            synchronized_bn=self.synchronized_bn,
        )
        return config
