"""MoCo v3: a query branch with a predictor, a momentum key branch, symmetric InfoNCE."""

import keras
from keras import ops

from keras_contrastive import distribute
from keras_contrastive import ema
from keras_contrastive import heads
from keras_contrastive import losses
from keras_contrastive.trainers.base import ContrastiveTrainer


def _copy_of(layer, name, input_shape=None):
    """A new instance of `layer` (same config) holding a copy of its weights.

    `keras.models.clone_model` re-initializes weights, so they are copied
    explicitly: the momentum branch starts equal to the query branch.
    """
    if isinstance(layer, keras.Model):
        copy = keras.models.clone_model(layer)
    else:
        copy = layer.__class__.from_config({**layer.get_config(), "name": name})
        copy.build(input_shape)
    copy.set_weights(layer.get_weights())
    return copy


@keras.saving.register_keras_serializable(package="keras_contrastive")
class MoCoV3(ContrastiveTrainer):
    """MoCo v3 trainer (Chen, Xie, He 2021): a `keras.Model` trained with `fit`.

    Query branch: encoder -> projector MLP -> predictor MLP. Key branch: a
    copy of encoder + projector that receives no gradient; before each step it
    moves towards the query branch, `key <- m key + (1 - m) query` over the
    trainable weights (its BatchNorm statistics come from its own forward
    passes, as in the reference code), with m following the cosine schedule
    from `base_momentum` to 1 over `total_steps`. The loss is
    `info_nce(q1, k2) + info_nce(q2, k1)`, each scaled by 2 * temperature.
    Each view goes through the encoder separately, as in the reference code.

    Args:
        encoder: keras.Model. Float images in [0, 1] to `[batch, dim]`; a ResNet
            or a ViT (`kc.encoders.ViTSmall`, with its frozen patch projection).
        augmenter: layer or pair of layers (MoCo v3's asymmetric pair:
            `kc.augment.moco_v3_augmenters`).
        temperature: float > 0. Defaults to 0.2 (ViT; the paper uses 1.0 for
            ResNet-50).
        base_momentum: float in [0, 1]. m at step 0. Defaults to 0.99.
        total_steps: int or None. Length of the momentum schedule (the whole
            run); None keeps m at `base_momentum`. Defaults to None.
        projection_dim: int. Defaults to 256.
        hidden_dim: int. MLP width. Defaults to 4096.
        projector_layers: int or None. None: 3 for a ViT (an encoder with a
            layer named "patch_projection"), 2 otherwise, as in the paper.
        predictor_layers: int. Defaults to 2.
        synchronized_bn: bool or None. Cross-replica BN in the MLPs; None (the
            default) synchronizes under a strategy with several replicas.
        num_classes: int or None. Online linear probe. Defaults to None.
        seed: int. In-step augmentation seed. Defaults to 0.
        negatives: `kc.negatives.Queue` or None. Keys of earlier steps as
            more negatives of every query (MoCo v1/v2's queue): both loss
            terms read the queue as it was before the step, then the step
            enqueues both views' keys (unit length, all replicas). Defaults
            to None (MoCo v3: the batch's keys only).

    Metrics: `loss`, `momentum` and, with labels, `probe_loss` / `probe_accuracy`.

    References:
        Chen, Xie, He. An Empirical Study of Training Self-Supervised Vision
        Transformers. ICCV 2021.
    """

    num_views = 2
    concatenate_views = False

    def __init__(
        self,
        encoder,
        augmenter=None,
        temperature=0.2,
        base_momentum=0.99,
        total_steps=None,
        projection_dim=256,
        hidden_dim=4096,
        projector_layers=None,
        predictor_layers=2,
        synchronized_bn=None,
        num_classes=None,
        seed=0,
        negatives=None,
        **kwargs,
    ):
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ValueError(f"`temperature` must be a number > 0; got {temperature!r}.")
        if not (isinstance(base_momentum, (int, float)) and 0.0 <= base_momentum <= 1.0):
            raise ValueError(f"`base_momentum` must be in [0, 1]; got {base_momentum!r}.")
        if total_steps is not None and int(total_steps) < 1:
            raise ValueError(f"`total_steps` must be a positive int or None; got {total_steps!r}.")
        if kwargs.get("num_views", 2) != 2:
            raise ValueError(
                f"MoCo v3 is defined on 2 views (the symmetric loss q1-k2 + q2-k1); got "
                f"num_views={kwargs['num_views']}. Use kc.SimCLR or kc.SupCon for more views."
            )
        super().__init__(encoder, augmenter, num_classes=num_classes, seed=seed, **kwargs)
        self.temperature = float(temperature)
        self.base_momentum = float(base_momentum)
        self.total_steps = None if total_steps is None else int(total_steps)
        self.projection_dim = int(projection_dim)
        self.hidden_dim = int(hidden_dim)
        is_vit = any("patch_projection" in layer.name for layer in encoder.layers)
        self.projector_layers = int(projector_layers or (3 if is_vit else 2))
        self.predictor_layers = int(predictor_layers)
        self.synchronized_bn = distribute.sync_batch_norm_default(synchronized_bn)
        synchronized_bn = self.synchronized_bn
        self.projector = heads.moco_v3_mlp(
            self.projector_layers, hidden_dim, projection_dim, True, synchronized_bn, name="projector"
        )
        self.projector.build((None, self.feature_dim))
        self.predictor = heads.moco_v3_mlp(
            self.predictor_layers, hidden_dim, projection_dim, False, synchronized_bn, name="predictor"
        )
        self.predictor.build((None, self.projection_dim))
        self.momentum_encoder = _copy_of(encoder, "momentum_encoder")
        self.momentum_projector = _copy_of(self.projector, "momentum_projector", (None, self.feature_dim))
        # The key branch is an average of the query branch, never optimized:
        # its variables are marked non-trainable (the layers stay trainable,
        # so its BatchNorm still normalizes by batch statistics), which keeps
        # them out of `trainable_variables`, so the optimizer creates no slots
        # for them and backups carry none.
        for key in self.momentum_encoder.weights + self.momentum_projector.weights:
            key.trainable = False
        self._set_negatives(negatives, self.projection_dim)
        self._track("momentum")
        self.built = True

    @property
    def query_variables(self):
        variables = self.encoder.trainable_variables + self.projector.trainable_variables
        variables += self.predictor.trainable_variables
        if self.probe is not None:
            variables += self.probe.trainable_variables
        return variables

    @property
    def optimized_variables(self):
        return self.query_variables

    def momentum_pairs(self):
        """`[(key_variable, query_variable)]`: each trainable query weight and its momentum copy.

        The copies have the same structure, so weights pair by position; the
        BatchNorm moving statistics (not trainable in the query branch) are
        not averaged: each branch keeps its own, as in the reference code.
        """
        pairs = []
        for key_model, query_model in (
            (self.momentum_encoder, self.encoder),
            (self.momentum_projector, self.projector),
        ):
            pairs += [(key, query) for key, query in zip(key_model.weights, query_model.weights) if query.trainable]
        return pairs

    def regularized_layers(self):
        return [layer for layer in (self.encoder, self.projector, self.predictor, self.probe) if layer is not None]

    def momentum(self):
        """The current m: the cosine schedule at the optimizer's step (constant without total_steps)."""
        if self.total_steps is None or self.optimizer is None:
            return ops.convert_to_tensor(self.base_momentum, "float32")
        return ema.cosine_momentum(self.optimizer.iterations, self.total_steps, self.base_momentum)

    def update_momentum_branch(self, momentum):
        """EMA of the query encoder + projector into the key branch (trainable weights only)."""
        pairs = self.momentum_pairs()
        ema.ema_update([key for key, _ in pairs], [query for _, query in pairs], momentum)

    def train_step(self, data):
        # As the reference code: the key branch moves before the forward pass
        # that uses it (at step 0 the two branches are equal, so it is a no-op).
        self.update_momentum_branch(self.momentum())
        return super().train_step(data)

    def contrastive_loss(self, features, labels, training, views, index=None):
        q1, q2 = (self.predictor(self.projector(h, training=training), training=training) for h in features)
        # Keys: the momentum branch in training mode (batch statistics), no gradient.
        k1, k2 = (
            ops.stop_gradient(self.momentum_projector(self.momentum_encoder(v, training=training), training=training))
            for v in views
        )
        queued, valid, mochi = None, None, None
        if self.negatives is not None:
            queued, _, valid = self.negatives.contents(index)
            mochi = self.negatives.mochi
        seeds = [self.mochi_seed(training, term) if mochi is not None else None for term in (0, 1)]
        loss = losses.info_nce(q1, k2, self.temperature, queued, valid, mochi, seeds[0])
        loss += losses.info_nce(q2, k1, self.temperature, queued, valid, mochi, seeds[1])
        if self.negatives is not None and training:
            self.negatives.enqueue([losses.l2_normalize(k1), losses.l2_normalize(k2)], index=index)
        return loss, {"momentum": self.momentum(), **self.collapse_metrics(features, [q1, q2])}

    def get_config(self):
        config = super().get_config()
        config.update(
            temperature=self.temperature,
            base_momentum=self.base_momentum,
            total_steps=self.total_steps,
            projection_dim=self.projection_dim,
            hidden_dim=self.hidden_dim,
            projector_layers=self.projector_layers,
            predictor_layers=self.predictor_layers,
            synchronized_bn=self.synchronized_bn,
            negatives=keras.saving.serialize_keras_object(self.negatives),
        )
        return config
