"""SupCon: supervised contrastive learning (Khosla et al. 2020)."""

import keras
from keras import ops

from keras_contrastive import heads
from keras_contrastive import losses
from keras_contrastive.trainers.base import ContrastiveTrainer


@keras.saving.register_keras_serializable(package="keras_contrastive")
class SupCon(ContrastiveTrainer):
    """Supervised contrastive trainer (stage 1 of SupCon's two-stage training).

    Every view of every image of the same class is a positive of an anchor
    (`kc.losses.supcon`, L_out); the projection head is SupCon's MLP
    (Dense(hidden) -> ReLU -> Dense(projection_dim)). Stage 2 trains a linear
    classifier on the frozen `model.encoder` (`recipes/supcon.py`).

    Args:
        encoder: keras.Model. Float images in [0, 1] to `[batch, dim]`.
        augmenter: layer or list of `num_views` layers.
        temperature: float > 0. Defaults to 0.1 (paper, section 4).
        base_temperature: float > 0. The reference code's loss scale
            `temperature / base_temperature`. Defaults to 0.07.
        contrast_mode: str. "all" or "one". Defaults to "all".
        num_views: int >= 2. Defaults to 2.
        projection_dim: int. Defaults to 128.
        projection_hidden_dim: int or None. Defaults to the feature size.
        num_classes: int or None. Online linear probe. Defaults to None.
        seed: int. In-step augmentation seed. Defaults to 0.
        projection_head: a layer `[batch, feature_dim]` -> `[batch, dim]`, or
            None (SupCon's MLP of `projection_hidden_dim` and
            `projection_dim`), e.g. `kc.heads.batch_norm_projection_head(dim)`.
            It must be serializable to save the model. Defaults to None.
        concatenate_views: bool. True encodes and projects all views in one
            call (BatchNorm statistics over all views, as SupCon's reference
            code); False calls the encoder and head once per view. Defaults
            to True.
        negatives: `kc.negatives.Queue(size, keep_labels=True)` or None.
            Projections of earlier steps with their labels: more candidates
            for every anchor, and more positives where the label matches;
            each training step enqueues its views after the loss. Defaults to
            None (the global batch only, as the paper).

    Inputs to `fit`: `(views [batch, num_views, H, W, C], labels [batch])` or
    `(images [batch, H, W, C], labels)`. Data without labels is an error:
    SimCLR is the label-free special case.

    Metrics: `loss` and, with `num_classes`, `probe_loss` / `probe_accuracy`.

    Example:

    >>> model = SupCon(ResNet18((32, 32, 3), width_multiplier=0.25), SimCLRAugmenter(32))
    >>> model.compile(optimizer=LARS(learning_rate=0.5))
    >>> model.fit(model.views_dataset(kc.data.load("fashion_mnist"), 256), epochs=1)

    References:
        Khosla et al. Supervised Contrastive Learning. NeurIPS 2020.
    """

    num_views = 2

    def __init__(
        self,
        encoder,
        augmenter=None,
        temperature=0.1,
        base_temperature=0.07,
        contrast_mode="all",
        num_views=2,
        projection_dim=128,
        projection_hidden_dim=None,
        num_classes=None,
        seed=0,
        projection_head=None,
        concatenate_views=True,
        negatives=None,
        **kwargs,
    ):
        for name, value in (("temperature", temperature), ("base_temperature", base_temperature)):
            if not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"`{name}` must be a number > 0; got {value!r}.")
        if contrast_mode not in ("all", "one"):
            raise ValueError(f"`contrast_mode` must be 'all' or 'one'; got {contrast_mode!r}.")
        super().__init__(encoder, augmenter, num_classes=num_classes, seed=seed, num_views=num_views, **kwargs)
        self.temperature = float(temperature)
        self.base_temperature = float(base_temperature)
        self.contrast_mode = contrast_mode
        self.projection_dim = int(projection_dim)
        self.projection_hidden_dim = projection_hidden_dim
        self._set_concatenate_views(concatenate_views)
        hidden = int(projection_hidden_dim or self.feature_dim)
        self._set_projection_head(
            projection_head, lambda: heads.ProjectionHead([hidden], self.projection_dim, name="projection_head")
        )
        if negatives is not None and not getattr(negatives, "keep_labels", True):
            raise ValueError(
                "SupCon's queue must keep the labels of its keys (positives are queued keys of the anchor's "
                "class): pass kc.negatives.Queue(size, keep_labels=True)."
            )
        if negatives is not None and getattr(negatives, "mochi", None) is not None:
            raise ValueError(
                "MoCHi's synthetic negatives have no labels, so SupCon cannot tell whether one is a positive: "
                "use a queue without mochi here (MoCHi works with kc.SimCLR and kc.MoCoV3)."
            )
        self._set_negatives(negatives, self.projection_head.compute_output_shape((None, self.feature_dim))[-1])
        self.built = True

    def contrastive_loss(self, features, labels, training, views, index=None):
        if labels is None:
            raise ValueError(
                "SupCon needs labels: fit it on (views, labels) or (images, labels). For "
                "unlabeled data use kc.SimCLR, SupCon's label-free special case."
            )
        per_view = ops.split(self.project(features, training=training), self.num_views, axis=0)
        z = ops.stack(per_view, axis=1)  # [batch, views, dim]
        labels = ops.reshape(labels, (-1,))
        queued = (None, None, None) if self.negatives is None else self.negatives.contents(index)
        loss = losses.supcon(z, labels, self.temperature, self.base_temperature, self.contrast_mode, *queued)
        if self.negatives is not None and training:
            # Every view's unit projection, view-major as the loss lays out its candidates, with its label.
            self.negatives.enqueue([losses.l2_normalize(p) for p in per_view], [labels] * self.num_views, index=index)
        return loss, self.collapse_metrics(features, per_view)

    def get_config(self):
        config = super().get_config()
        config.update(
            temperature=self.temperature,
            base_temperature=self.base_temperature,
            contrast_mode=self.contrast_mode,
            projection_dim=self.projection_dim,
            projection_hidden_dim=self.projection_hidden_dim,
            concatenate_views=self.concatenate_views,
            projection_head=keras.saving.serialize_keras_object(self.projection_head),
            negatives=keras.saving.serialize_keras_object(self.negatives),
        )
        return config
