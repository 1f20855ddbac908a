"""SimCLR: encoder + projection head + NT-Xent over 2N views."""

import keras
from keras import ops

from keras_contrastive import distribute
from keras_contrastive import heads
from keras_contrastive import losses
from keras_contrastive.trainers.base import ContrastiveTrainer


@keras.saving.register_keras_serializable(package="keras_contrastive")
class SimCLR(ContrastiveTrainer):
    """SimCLR trainer (Chen et al. 2020): a `keras.Model` trained with `fit`.

    Each image gives two views; the encoder maps both to features h, the
    projection head to z, and NT-Xent treats the other view of the same image
    as the positive and the 2(N-1) other views of the global batch (all
    replicas) as negatives. Downstream uses `model.encoder` alone.

    Args:
        encoder: keras.Model. Float images in [0, 1] to `[batch, dim]`.
        augmenter: layer or pair of layers (see `ContrastiveTrainer`).
        temperature: float > 0. Defaults to 0.5 (paper's CIFAR-10 setting;
            0.1 for ImageNet with large batches, Table 5 / appendix B.9).
        projection_dim: int. Defaults to 128.
        projection_hidden_dim: int or None. Defaults to the feature size.
        head_version: int. 1 (2-layer MLP, SimCLR v1) or 2 (3 layers with BN,
            SimCLR v2). Defaults to 2.
        synchronized_bn: bool or None. Cross-replica BN in the head; None (the
            default) synchronizes under a strategy with several replicas.
        num_classes: int or None. Online linear probe. Defaults to None.
        seed: int. In-step augmentation seed. Defaults to 0.
        projection_head: a layer `[batch, feature_dim]` -> `[batch, dim]`, or
            None. Replaces the head that `head_version`,
            `projection_dim`, `projection_hidden_dim` and `synchronized_bn`
            describe (e.g. `kc.heads.ProjectionHead([2048], 128,
            batch_norm=True)`). It must be serializable to save the model.
            Defaults to None.
        num_views: int >= 2. Views per image. With more than 2, every other
            view of an image is a positive of each of its views (multi-view
            NT-Xent, `kc.losses.multiview_nt_xent`). Defaults to 2.
        concatenate_views: bool. True encodes and projects all views in one
            call, so every BatchNorm layer normalizes over the 2N views
            together (SimCLR's reference code); False calls the encoder and
            the head once per view, so BatchNorm statistics are per view (as
            lightly's SimCLR example and MoCo do). Measured on Fashion-MNIST
            (benchmarks/RESULTS.md): per-view statistics gave a better linear
            probe at a 4-epoch budget. Defaults to True.
        negatives: `kc.negatives.Queue` or None. More negatives from past
            steps: every anchor is also compared with the queue's keys (the
            L2-normalized projections of both views of earlier batches, all
            replicas), and each training step enqueues its own after the
            loss. Two views only. Defaults to None (in-batch negatives, the
            paper's SimCLR).

    Inputs to `fit`: views `[batch, num_views, H, W, C]` (from `model.views_dataset`)
    or raw images `[batch, H, W, C]`, optionally with labels `[batch]`.

    Metrics: `loss` (NT-Xent plus any regularization losses of the encoder
    and head), `contrastive_accuracy` (2 views: top-1 of the positive among
    the 2N - 1 candidates) and, with labels and `num_classes`,
    `probe_loss` / `probe_accuracy`.

    Example:

    >>> model = SimCLR(ResNet18((32, 32, 3), width_multiplier=0.25), SimCLRAugmenter(32))
    >>> model.compile(optimizer=LARS(learning_rate=0.3))
    >>> model.fit(model.views_dataset(kc.data.load("fashion_mnist"), 256), epochs=1)

    References:
        Chen, Kornblith, Norouzi, Hinton. A Simple Framework for Contrastive
        Learning of Visual Representations. ICML 2020.
        Chen et al. Big Self-Supervised Models are Strong Semi-Supervised
        Learners. NeurIPS 2020 (SimCLR v2 head).
    """

    num_views = 2

    def __init__(
        self,
        encoder,
        augmenter=None,
        temperature=0.5,
        projection_dim=128,
        projection_hidden_dim=None,
        head_version=2,
        synchronized_bn=None,
        num_classes=None,
        seed=0,
        projection_head=None,
        num_views=2,
        concatenate_views=True,
        negatives=None,
        **kwargs,
    ):
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ValueError(f"`temperature` must be a number > 0; got {temperature!r}.")
        super().__init__(encoder, augmenter, num_classes=num_classes, seed=seed, num_views=num_views, **kwargs)
        self._set_concatenate_views(concatenate_views)
        self.temperature = float(temperature)
        self.projection_dim = int(projection_dim)
        self.projection_hidden_dim = projection_hidden_dim
        self.head_version = head_version
        self.synchronized_bn = distribute.sync_batch_norm_default(synchronized_bn)
        synchronized_bn = self.synchronized_bn
        self._set_projection_head(
            projection_head,
            lambda: heads.simclr_projection_head(
                head_version, self.feature_dim, projection_dim, projection_hidden_dim, synchronized_bn
            ),
        )
        if negatives is not None and self.num_views != 2:
            raise ValueError(f"A queue of negatives works with 2 views; this SimCLR has num_views={self.num_views}.")
        self._set_negatives(negatives, self.projection_head.compute_output_shape((None, self.feature_dim))[-1])
        if self.num_views == 2:
            self._track("contrastive_accuracy")
        self.built = True

    def contrastive_loss(self, features, labels, training, views, index=None):
        z = self.project(features, training=training)
        if self.num_views > 2:
            # Multi-view NT-Xent: every other view of the same image is a
            # positive (SupCon's L_out with each image its own class and the
            # loss scale 1), never a negative.
            per_view = ops.split(z, self.num_views, axis=0)
            stacked = ops.stack(per_view, axis=1)  # [batch, views, dim]
            return losses.multiview_nt_xent(stacked, self.temperature), self.collapse_metrics(features, per_view)
        z1, z2 = ops.split(z, 2, axis=0)
        queued, valid, mochi = None, None, None
        if self.negatives is not None:
            queued, _, valid = self.negatives.contents(index)
            mochi = self.negatives.mochi
        seed = self.mochi_seed(training) if mochi is not None else None
        logits, labels = losses.nt_xent_logits(z1, z2, self.temperature, queued, valid, mochi, seed)
        loss = ops.mean(losses.cross_entropy_from_logits(logits, labels))
        accuracy = ops.mean(ops.cast(ops.argmax(logits, axis=1) == labels, "float32"))
        if self.negatives is not None and training:
            # After the loss has read the queue: this batch's keys are negatives of later batches only.
            self.negatives.enqueue([losses.l2_normalize(z1), losses.l2_normalize(z2)], index=index)
        return loss, {"contrastive_accuracy": accuracy, **self.collapse_metrics(features, [z1, z2])}

    def get_config(self):
        config = super().get_config()
        config.update(
            temperature=self.temperature,
            projection_dim=self.projection_dim,
            projection_hidden_dim=self.projection_hidden_dim,
            head_version=self.head_version,
            synchronized_bn=self.synchronized_bn,
            concatenate_views=self.concatenate_views,
            projection_head=keras.saving.serialize_keras_object(self.projection_head),
            negatives=keras.saving.serialize_keras_object(self.negatives),
        )
        return config
