"""NNCLR: the positive of a view is its nearest neighbour in a support set of past embeddings."""

import keras
from keras import ops

from keras_contrastive import distribute
from keras_contrastive import heads
from keras_contrastive import losses
from keras_contrastive import negatives as queues
from keras_contrastive.trainers.base import ContrastiveTrainer


@keras.saving.register_keras_serializable(package="keras_contrastive")
class NNCLR(ContrastiveTrainer):
    """NNCLR trainer (Dwibedi et al. 2021): a `keras.Model` trained with `fit`.

    Each view goes through encoder -> projector (z) -> predictor (p). A
    support set (a `kc.negatives.Queue` of past unit projections) replaces z
    of one view by its nearest neighbour NN(z), and the loss pulls NN(z1)
    towards p2 and NN(z2) towards p1, with the other predictions of the
    global batch as negatives (`kc.losses.nnclr_loss`, eq. 2, symmetrized as
    the mean of the two terms). Each training step then enqueues the first
    view's unit projections. The neighbours carry no gradient: the encoder
    learns through the predictions. Until the support set holds a key, a
    view is its own neighbour (SimCLR's positive).

    Args:
        encoder: keras.Model. Float images in [0, 1] to `[batch, dim]`.
        augmenter: layer or pair of layers (see `ContrastiveTrainer`).
        support_set: `kc.negatives.Queue` or None. None: a queue of 16,384
            keys (the paper uses 98,304 at batch 4,096 on ImageNet, table 7).
        temperature: float > 0. Defaults to 0.1 (paper).
        projection_dim: int. Defaults to 256 (paper).
        projection_hidden_dim: int. Defaults to 2048 (paper: 3 layers, BN on each).
        prediction_hidden_dim: int. Defaults to 4096 (paper: 2 layers).
        synchronized_bn: bool or None. Cross-replica BN in the MLPs; None (the
            default) synchronizes under a strategy with several replicas.
        num_classes: int or None. Online linear probe. Defaults to None.
        seed: int. In-step augmentation seed. Defaults to 0.

    Inputs to `fit`: views `[batch, 2, H, W, C]` or raw images `[batch, H, W, C]`,
    optionally with labels `[batch]`.

    Metrics: `loss`, `neighbour_accuracy` (with labels: how often NN(z)
    has the view's own label, the paper's figure 5), the collapse alarms and,
    with labels and `num_classes`, `probe_loss` / `probe_accuracy`.

    Example:

    >>> model = NNCLR(ResNet18((32, 32, 3), width_multiplier=0.25), SimCLRAugmenter(32))
    >>> model.compile(optimizer=LARS(learning_rate=0.3))
    >>> model.fit(model.views_dataset(kc.data.load("fashion_mnist"), 256), epochs=1)

    References:
        Dwibedi, Aytar, Tompson, Sermanet, Zisserman. With a Little Help from
        My Friends: Nearest-Neighbor Contrastive Learning of Visual
        Representations. ICCV 2021.
    """

    num_views = 2
    concatenate_views = False

    def __init__(
        self,
        encoder,
        augmenter=None,
        support_set=None,
        temperature=0.1,
        projection_dim=256,
        projection_hidden_dim=2048,
        prediction_hidden_dim=4096,
        synchronized_bn=None,
        num_classes=None,
        seed=0,
        **kwargs,
    ):
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ValueError(f"`temperature` must be a number > 0; got {temperature!r}.")
        if kwargs.get("num_views", 2) != 2:
            raise ValueError(f"NNCLR is defined on 2 views; got num_views={kwargs['num_views']}.")
        super().__init__(encoder, augmenter, num_classes=num_classes, seed=seed, **kwargs)
        self.temperature = float(temperature)
        self.projection_dim = int(projection_dim)
        self.projection_hidden_dim = int(projection_hidden_dim)
        self.prediction_hidden_dim = int(prediction_hidden_dim)
        self.synchronized_bn = distribute.sync_batch_norm_default(synchronized_bn)
        self.projector = heads.ProjectionHead(
            [self.projection_hidden_dim] * 2,
            self.projection_dim,
            batch_norm=True,
            output_batch_norm=True,
            synchronized_bn=self.synchronized_bn,
            name="projector",
        )
        self.projector.build((None, self.feature_dim))
        self.predictor = heads.ProjectionHead(
            [self.prediction_hidden_dim],
            self.projection_dim,
            batch_norm=True,
            synchronized_bn=self.synchronized_bn,
            name="predictor",
        )
        self.predictor.build((None, self.projection_dim))
        if support_set is None:
            support_set = queues.Queue(16384, keep_labels=num_classes is not None)
        if support_set is not None and getattr(support_set, "mochi", None) is not None:
            raise ValueError("NNCLR's support set gives positives, not negatives: pass a queue without mochi.")
        if getattr(support_set, "needs_index", False):
            raise ValueError(
                "NNCLR's support set is a queue of recent projections (the paper's); a memory bank is not "
                "supported here: pass kc.negatives.Queue(size)."
            )
        # Held as `negatives` (the base's queue attribute: built, checked, saved); `support_set` names it here.
        self._set_negatives(support_set, self.projection_dim)
        if self.num_classes is not None and self.support_set.keep_labels:
            self._track("neighbour_accuracy")
        self.built = True

    @property
    def support_set(self):
        return self.negatives

    def contrastive_loss(self, features, labels, training, views, index=None):
        z1, z2 = (self.projector(h, training=training) for h in features)
        p1, p2 = (self.predictor(z, training=training) for z in (z1, z2))
        support, support_labels, valid = self.support_set.contents()
        nn1, index1 = losses.nearest_neighbours(z1, support, valid)
        nn2, _ = losses.nearest_neighbours(z2, support, valid)
        loss = 0.5 * (losses.nnclr_loss(nn1, p2, self.temperature) + losses.nnclr_loss(nn2, p1, self.temperature))
        metrics = self.collapse_metrics(features, [z1, z2])
        if labels is not None and self.num_classes is not None and self.support_set.keep_labels:
            found = ops.take(support_labels, ops.maximum(index1, 0), axis=0)
            same = ops.logical_and(index1 >= 0, ops.equal(found, ops.cast(labels, "int32")))
            metrics["neighbour_accuracy"] = ops.mean(ops.cast(same, "float32"))
        if training:
            # After the loss has read it: the support set holds earlier batches only.
            if self.support_set.keep_labels:
                if labels is None:
                    raise ValueError(
                        "This NNCLR's support set keeps labels (for `neighbour_accuracy`): fit it on "
                        "(views, labels), or pass support_set=kc.negatives.Queue(size) without labels."
                    )
                self.support_set.enqueue(losses.l2_normalize(z1), labels)
            else:
                self.support_set.enqueue(losses.l2_normalize(z1))
        return loss, metrics

    def get_config(self):
        config = super().get_config()
        config.update(
            support_set=keras.saving.serialize_keras_object(self.support_set),
            temperature=self.temperature,
            projection_dim=self.projection_dim,
            projection_hidden_dim=self.projection_hidden_dim,
            prediction_hidden_dim=self.prediction_hidden_dim,
            synchronized_bn=self.synchronized_bn,
        )
        return config
