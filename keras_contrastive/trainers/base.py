"""The shared base of every contrastive trainer.

A trainer is a plain `keras.Model` with its own `train_step`/`test_step`,
trained with `model.fit`. The base holds what every method shares: the
encoder, the augmenter(s), the optional online linear probe, the metrics, the
Keras duties of a custom step (loss / replicas, `optimizer.scale_loss`) and
(de)serialization. A method subclass only defines its heads and
`contrastive_loss(features, training)`.
"""

import warnings

import keras
import tensorflow as tf
from keras import ops

from keras_contrastive import distribute
from keras_contrastive import layer_augmenter
from keras_contrastive import monitor
from keras_contrastive import negatives as queues
from keras_contrastive.encoders import feature_dim as _feature_dim
from keras_contrastive.layers import batch_normalization
from keras_contrastive.losses import at_least_float32
from keras_contrastive.losses import cross_entropy_from_logits


def _serialize(obj):
    if obj is None:
        return None
    if isinstance(obj, (list, tuple)):
        return [keras.saving.serialize_keras_object(o) for o in obj]
    return keras.saving.serialize_keras_object(obj)


def _deserialize(config):
    if config is None:
        return None
    if isinstance(config, list):
        return [keras.saving.deserialize_keras_object(c) for c in config]
    return keras.saving.deserialize_keras_object(config)


def _warn_if_unsynchronized(encoder):
    """Warns when an encoder with per-replica BatchNorm is trained on several replicas."""
    if tf.distribute.get_strategy().num_replicas_in_sync < 2:
        return
    local = [
        layer.name
        for layer in encoder._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized
    ]
    if local:
        warnings.warn(
            f"The encoder has {len(local)} BatchNormalization layer(s) that are not synchronized "
            f"({', '.join(local[:3])}{', ...' if len(local) > 3 else ''}), and this strategy has "
            f"{tf.distribute.get_strategy().num_replicas_in_sync} replicas: each replica will normalize "
            "by its own batch statistics, so the run differs from one replica on the same global batch "
            "and a contrastive loss can find positives by their local statistics. Build the encoder "
            "with synchronized_bn=True, or convert it with "
            "keras_contrastive.layers.synchronize_batch_norm(encoder) under the strategy's scope.",
            stacklevel=3,
        )


def _runs_of_one_size(views):
    """Consecutive views of one static shape, grouped: `[[v0, v1], [v2, v3, v4]]` for 2 global + 3 local crops."""
    runs = []
    for view in views:
        if runs and tuple(runs[-1][0].shape[1:]) == tuple(view.shape[1:]):
            runs[-1].append(view)
        else:
            runs.append([view])
    return runs


class ContrastiveTrainer(keras.Model):
    """Base class: encoder + augmenter + online probe + the custom step.

    Data given to `fit` / `evaluate` is either
    * views, float32 `[batch, num_views, H, W, C]` in [0, 1], as made on the
      host by `keras_contrastive.data.contrastive_views` (the default path,
      see `views_dataset`): every replica then sees exactly the views one
      replica would see; or
    * raw images `[batch, H, W, C]` (uint8 or float in [0, 1]): the trainer's
      augmenter runs inside the step, seeded by the step counter and the
      replica id (convenient for `fit(x_numpy)`, not bit-identical across
      replica counts);
    optionally with integer labels `[batch]` for the online linear probe.

    Args:
        encoder: keras.Model. Images (float32 in [0, 1]) to `[batch, dim]`.
        augmenter: a layer (used for every view) or a list of `num_views`
            layers, each called as `augmenter(images, seed=...)`; a Keras or
            keras-cv preprocessing layer (or a Sequential/Pipeline of them)
            is wrapped in `keras_contrastive.augment.LayerAugmenter`. May be
            None if the data always arrives as views.
        num_classes: int or None. Adds an online linear probe on the
            stop-gradient features, trained from the labels in the data, that
            reports `probe_accuracy` and never changes the encoder's
            gradients (SimCLR appendix B.6). Defaults to None.
        seed: int. Seed of the in-step augmentation. Defaults to 0.
        num_views: int or None. Views per image; None takes the method's
            `num_views`. Defaults to None.
    """

    #: Number of augmented views per image that the method consumes.
    num_views = 2
    #: Encode all views in one call (BatchNorm statistics over all views, as
    #: SimCLR does) or one call per view (MoCo v3).
    concatenate_views = True

    def __init__(self, encoder, augmenter=None, num_classes=None, seed=0, num_views=None, **kwargs):
        super().__init__(**kwargs)
        if num_views is not None:
            if int(num_views) < 2:
                raise ValueError(f"`num_views` must be >= 2; got {num_views}.")
            self.num_views = int(num_views)
        if not isinstance(encoder, keras.Model):
            raise ValueError(f"`encoder` must be a keras.Model; got {type(encoder).__name__}.")
        self.encoder = encoder
        self.feature_dim = _feature_dim(encoder)
        _warn_if_unsynchronized(encoder)
        if isinstance(augmenter, (list, tuple)):
            if len(augmenter) != self.num_views:
                raise ValueError(
                    f"Got {len(augmenter)} augmenters for {self.num_views} views; pass one "
                    "augmenter (used for every view) or one per view."
                )
            augmenter = list(augmenter)
        # Keras / keras-cv preprocessing layers (no `seed` argument) are
        # wrapped to take the step's seed and give views in [0, 1].
        augmenter = layer_augmenter.as_augmenter(augmenter)
        self.augmenter = augmenter
        for layer in augmenter if isinstance(augmenter, list) else [augmenter]:
            # Augmenters hold no weights; mark them built so the whole model
            # counts as built without seeing data (see _maybe_symbolic_build).
            if isinstance(layer, keras.layers.Layer) and not layer.built:
                layer.build((None, None, None, None))
        if num_classes is not None and int(num_classes) < 2:
            raise ValueError(f"`num_classes` must be >= 2 or None; got {num_classes}.")
        self.num_classes = None if num_classes is None else int(num_classes)
        self.seed = int(seed)
        self.probe = None
        self.probe_norm = None
        if self.num_classes:
            # BN without affine parameters before the probe (as MAE's linear
            # probe): the features' scale drifts during pretraining, and the
            # probe, trained by the same optimizer at the same learning rate,
            # diverged without it (probe loss 11 at epoch 1 of the recipe).
            self.probe_norm = batch_normalization(True, center=False, scale=False, name="online_probe_norm")
            self.probe_norm.build((None, self.feature_dim))
            self.probe = keras.layers.Dense(self.num_classes, name="online_probe")
            self.probe.build((None, self.feature_dim))
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.probe_loss_tracker = keras.metrics.Mean(name="probe_loss")
        self.probe_accuracy = keras.metrics.SparseCategoricalAccuracy(name="probe_accuracy")
        self._extra_trackers = {}
        for name in monitor.METRICS:  # collapse alarms, reported by every trainer (see `collapse_metrics`)
            self._track(name)
        self.monitored_dim = None

    # ----------------------------------------------------------- subclass API
    def contrastive_loss(self, features, labels, training, views, index=None):
        """The method's loss on the encoder features of each view.

        Args:
            features: list of `num_views` tensors `[local_batch, feature_dim]`.
            labels: int tensor `[local_batch]`, or None when the data has none.
            training: bool.
            views: list of `num_views` float image batches (for methods with a
                second, momentum encoder).
            index: int tensor `[local_batch]`, each example's index in the
                training set, when the data carries one (`x = {"views",
                "index"}`, for a memory bank); passed only then.

        Returns:
            `(loss, metrics)`: float32 scalar, the mean over this replica's
            anchors (negatives from all replicas), and a dict of float scalars
            to report (each becomes a tracked mean).
        """
        raise NotImplementedError

    def collapse_metrics(self, features, projections):
        """`kc.monitor`'s collapse statistics of this replica's batch, for `contrastive_loss` to report.

        Args:
            features: list of `num_views` encoder feature tensors `[batch, feature_dim]`.
            projections: list of the embeddings the loss compares, one `[batch, dim]` per view.

        Returns:
            dict of float32 scalars (`kc.monitor.METRICS`), computed without gradient.
        """
        self.monitored_dim = int(projections[0].shape[-1])  # static; `CollapseMonitor` scales by it
        return monitor.collapse_metrics(ops.stop_gradient(features[0]), [ops.stop_gradient(p) for p in projections])

    def _set_projection_head(self, projection_head, default):
        """Keeps `projection_head` (a Keras layer), or `default()` when it is
        None, built on `[batch, feature_dim]` features."""
        if projection_head is None:
            projection_head = default()
        elif not isinstance(projection_head, keras.layers.Layer):
            raise ValueError(f"`projection_head` must be a Keras layer or None; got {type(projection_head).__name__}.")
        self.projection_head = projection_head
        if not projection_head.built:
            projection_head.build((None, self.feature_dim))

    def _set_negatives(self, negatives, dim):
        """Keeps `negatives` (a `kc.negatives.Queue`, `MemoryBank` or None), built for keys of dimension `dim`."""
        if negatives is not None and not isinstance(negatives, queues.Queue):
            raise ValueError(
                "`negatives` must be a keras_contrastive.negatives.Queue or MemoryBank, or None; got "
                f"{type(negatives).__name__}."
            )
        if negatives is not None and not negatives.built:
            negatives.build((None, dim))
        elif negatives is not None and negatives.dim != dim:
            raise ValueError(f"The queue holds keys of dimension {negatives.dim}; this model's are {dim}.")
        self.negatives = negatives

    def mochi_seed(self, training, term=0):
        """The stateless seed `[2]` of MoCHi's draws in this step: the trainer's seed and the step (and loss term)."""
        step = self.optimizer.iterations if (training and self.optimizer is not None) else 0
        return tf.stack([tf.constant(self.seed, tf.int32), ops.cast(step, "int32") * 2 + term])

    def _set_concatenate_views(self, concatenate_views):
        if not isinstance(concatenate_views, bool):
            raise ValueError(f"`concatenate_views` must be True or False; got {concatenate_views!r}.")
        self.concatenate_views = concatenate_views

    def project(self, features, training=False):
        """`self.projection_head` on every view's features, in one call on all
        views (`concatenate_views`: BatchNorm statistics over all of them) or
        one call per view.

        Args:
            features: list of `num_views` tensors `[batch, feature_dim]`.
            training: bool.

        Returns:
            `[num_views * batch, projection_dim]`, view-major (all first views,
            then all second views, ...).
        """
        if self.concatenate_views:
            return self.projection_head(ops.concatenate(features, axis=0), training=training)
        return ops.concatenate([self.projection_head(f, training=training) for f in features], axis=0)

    def _track(self, name):
        if name not in self._extra_trackers:
            self._extra_trackers[name] = keras.metrics.Mean(name=name)
        return self._extra_trackers[name]

    # ------------------------------------------------------------------ model
    def call(self, images, training=False):
        """Encoder features of float images in [0, 1]: `[batch, feature_dim]`."""
        return self.encoder(images, training=training)

    @property
    def optimized_variables(self):
        """The variables the optimizer updates (momentum branches are excluded)."""
        return self.trainable_variables

    @property
    def metrics(self):
        trackers = [self.loss_tracker, *self._extra_trackers.values()]
        if self.probe is not None:
            trackers += [self.probe_loss_tracker, self.probe_accuracy]
        return trackers

    @property
    def needs_index(self):
        """True when the data must carry each example's index (negatives from a `kc.negatives.MemoryBank`)."""
        return bool(getattr(getattr(self, "negatives", None), "needs_index", False))

    def views_dataset(self, dataset, batch_size, **kwargs):
        """`keras_contrastive.data.contrastive_views` with this trainer's augmenter (and `with_index=True` when
        the trainer `needs_index`)."""
        from keras_contrastive import data

        if self.augmenter is None:
            raise ValueError("This trainer has no augmenter; pass one to the constructor.")
        kwargs.setdefault("with_index", self.needs_index)
        return data.contrastive_views(dataset, self.augmenter, batch_size, num_views=self.num_views, **kwargs)

    # ------------------------------------------------------------------- step
    def _augmenter_for(self, view):
        if isinstance(self.augmenter, list):
            return self.augmenter[view]
        return self.augmenter

    def _to_views(self, x, training):
        """The list of `num_views` views `[batch, H, W, C]` from views, groups of views (multi-crop) or raw images."""
        if isinstance(x, (tuple, list)):
            # Multi-crop: one `[batch, V_g, H_g, W_g, C]` tensor per crop size (`contrastive_views` groups them).
            groups = [tf.convert_to_tensor(g) for g in x]
            if any(g.shape.rank != 5 or g.shape[1] is None for g in groups):
                raise ValueError(
                    "Multi-crop views come as a tuple of groups [batch, views, H, W, C], one per crop size; got "
                    f"shapes {[list(g.shape) for g in groups]}."
                )
            if sum(g.shape[1] for g in groups) != self.num_views:
                raise ValueError(
                    f"{type(self).__name__} takes {self.num_views} views per image; the groups hold "
                    f"{[g.shape[1] for g in groups]} (shapes {[list(g.shape) for g in groups]})."
                )
            return [ops.cast(g[:, v], "float32") for g in groups for v in range(g.shape[1])]
        x = tf.convert_to_tensor(x)
        rank = x.shape.rank
        if rank == 5:
            if x.shape[1] is not None and x.shape[1] != self.num_views:
                raise ValueError(
                    f"{type(self).__name__} takes {self.num_views} views per image; the data "
                    f"has {x.shape[1]} (shape {x.shape})."
                )
            return [ops.cast(x[:, v], "float32") for v in range(self.num_views)]
        if rank == 4:
            if self.augmenter is None:
                raise ValueError(
                    "Got raw images [batch, H, W, C] but the trainer has no augmenter; pass "
                    "`augmenter=` or feed views from `model.views_dataset(...)`."
                )
            # In-step augmentation: a distinct stateless seed per step, replica
            # and view, so no random state has to be kept in sync.
            step = self.optimizer.iterations if (training and self.optimizer is not None) else 0
            stream = ops.cast(step, "int32") * distribute.num_replicas() + distribute.replica_id()
            views = []
            for v in range(self.num_views):
                seed = tf.stack([tf.constant(self.seed, tf.int32), stream * self.num_views + v])
                views.append(self._augmenter_for(v)(x, seed=seed))
            return views
        raise ValueError(
            f"Expected views [batch, {self.num_views}, H, W, C] or images [batch, H, W, C]; got shape {x.shape}."
        )

    def process_gradients(self, gradients, variables):
        """The gradients the optimizer applies, given those of the loss: a hook for methods
        that hold some variables still for a while (SwAV's prototypes). The identity here.

        Args:
            gradients: list of Tensors (or None), one per variable.
            variables: `optimized_variables`.
        """
        return gradients

    def _encoder_at(self, shape):
        """The encoder, for images of `shape` `[batch, H, W, C]`: itself at its input size; at another size
        (multi-crop's small views) the same layers, and so the same weights, on an input of that size."""
        try:
            expected = tuple(self.encoder.input_shape[1:])
        except (AttributeError, ValueError):  # a subclassed encoder: it takes whatever its `call` takes
            return self.encoder
        size = tuple(shape[1:])
        if size == expected or None in size:
            return self.encoder
        # Not tracked as a sub-layer: it holds no variables of its own, and saved models must not count them twice.
        cache = self.__dict__.setdefault("_resized_encoders", {})
        if size not in cache:
            try:
                cache[size] = keras.models.clone_model(
                    self.encoder, input_tensors=keras.Input(size), clone_function=lambda layer: layer
                )
            except Exception as error:
                raise ValueError(
                    f"Views of size {size} cannot pass through this encoder (built for {expected}): {error}. "
                    "Multi-crop needs an encoder whose layers take any image size (the ResNets do; a ViT's "
                    "position embeddings do not)."
                ) from error
        return cache[size]

    def regularized_layers(self):
        """The layers whose `losses` (weight and activity regularizers) join the loss.

        Every sub-layer by default; MoCo v3 leaves out its momentum branch,
        which is an average of the query branch and is never optimized.
        """
        return [self]

    def regularization_loss(self):
        """Sum of the `losses` of `regularized_layers()` from the current forward pass: a float32 scalar.

        Kernel/bias regularizers are evaluated on the current weights;
        activity regularizers are the ones recorded by the calls of this
        step (`_forward` runs inside one Keras call context, so a layer
        called once per view keeps the losses of every call).
        """
        penalties = [at_least_float32(ops.sum(loss)) for layer in self.regularized_layers() for loss in layer.losses]
        if not penalties:
            return None
        return ops.sum(ops.stack(penalties))

    def _check_probe_labels(self, y):
        """Labels for the online probe must lie in [0, num_classes): checked in the graph."""
        labels = ops.cast(ops.reshape(y, (-1,)), "int32")
        message = (
            f"Labels for the online probe must be integers in [0, {self.num_classes}) "
            f"(num_classes={self.num_classes}); pass num_classes = the number of classes "
            "or num_classes=None to train without the probe."
        )
        with tf.control_dependencies(
            [
                tf.debugging.assert_non_negative(labels, message=message),
                tf.debugging.assert_less(labels, self.num_classes, message=message),
            ]
        ):
            return tf.identity(labels)

    def _forward(self, data, training):
        # One Keras call context around the whole forward pass (as
        # `Layer.__call__` opens for a model called as a whole): a sub-layer's
        # activity-regularization losses are otherwise cleared each time it
        # is called again (once per view), leaving only the last view's.
        # `_get_call_context` / `_maybe_reset_call_context` are Keras 3.15's.
        self._get_call_context()
        try:
            return self._forward_in_context(data, training)
        finally:
            self._maybe_reset_call_context()

    def _forward_in_context(self, data, training):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if sample_weight is not None:
            raise ValueError(
                f"{type(self).__name__} does not take sample weights: a contrastive loss couples every "
                "example of the batch (each is a negative of all others), so a per-example weight has no "
                "single meaning. Drop `sample_weight` (or the third element of the dataset's tuples); "
                "to rebalance classes, resample the data, e.g. with kc.data.class_balanced."
            )
        if y is not None and self.probe is not None:
            y = self._check_probe_labels(y)
        index = None
        if isinstance(x, dict):
            # Views (or images) with each example's index: `contrastive_views(..., with_index=True)`.
            if set(x) != {"views", "index"}:
                raise ValueError(
                    f"A dict of inputs must hold exactly 'views' and 'index' (each example's index, for a memory "
                    f"bank); got keys {sorted(x)}."
                )
            x, index = x["views"], x["index"]
        elif self.needs_index and training:
            # Evaluation may read the bank without indices; training must write each example's row.
            raise ValueError(
                f"{type(self).__name__}'s negatives come from a memory bank, which needs each example's index: "
                "feed x = {'views': views, 'index': index}, e.g. from model.views_dataset(...) or "
                "kc.data.contrastive_views(..., with_index=True)."
            )
        views = self._to_views(x, training)
        if self.concatenate_views:
            # One encoder call on all views: BatchNorm statistics cover the 2N
            # views together, as in SimCLR's reference code. Views of several
            # sizes (multi-crop): one call per run of views of one size, as
            # SwAV's reference code does.
            features = []
            for group in _runs_of_one_size(views):
                encoded = self._encoder_at(group[0].shape)(ops.concatenate(group, axis=0), training=training)
                features.extend(ops.split(encoded, len(group), axis=0) if len(group) > 1 else [encoded])
        else:
            features = [self._encoder_at(view.shape)(view, training=training) for view in views]
        # The index only when the data has one: subclasses written before it keep working.
        by_example = {} if index is None else {"index": index}
        loss, extra = self.contrastive_loss(features, y, training=training, views=views, **by_example)
        penalty = self.regularization_loss()
        if penalty is not None:
            # The model's own losses (kernel / activity regularizers of the
            # encoder and heads), as Keras' `compute_loss` adds them; the
            # reported `loss` includes them.
            loss = loss + ops.cast(penalty, loss.dtype)
        probe_loss, probe_logits, probe_labels = None, None, None
        if self.probe is not None and y is not None:
            # stop_gradient: the probe learns from the features but never
            # sends gradient into the encoder.
            probe_in = ops.stop_gradient(ops.concatenate(features, axis=0))
            probe_logits = at_least_float32(self.probe(self.probe_norm(probe_in, training=training)))
            probe_labels = ops.tile(ops.cast(ops.reshape(y, (-1,)), "int32"), (self.num_views,))
            probe_loss = ops.mean(cross_entropy_from_logits(probe_logits, probe_labels))
        return loss, extra, probe_loss, probe_logits, probe_labels

    def _update_metrics(self, loss, extra, probe_loss, probe_logits, probe_labels):
        self.loss_tracker.update_state(loss)
        for name, value in extra.items():
            self._track(name).update_state(value)
        if probe_loss is not None:
            self.probe_loss_tracker.update_state(probe_loss)
            self.probe_accuracy.update_state(probe_labels, probe_logits)
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, data):
        with tf.GradientTape() as tape:
            loss, extra, probe_loss, probe_logits, probe_labels = self._forward(data, training=True)
            total = loss if probe_loss is None else loss + probe_loss
            # Keras' duties in a custom step: each replica's loss is the mean
            # over its own examples and the optimizer all-reduces (sums)
            # gradients, so divide by the replica count; then the
            # mixed-precision loss scale.
            total = total / ops.cast(distribute.num_replicas(), total.dtype)
            total = self.optimizer.scale_loss(total)
        variables = self.optimized_variables
        gradients = self.process_gradients(tape.gradient(total, variables), variables)
        self.optimizer.apply(gradients, variables)
        return distribute.keras_reducible(self._update_metrics(loss, extra, probe_loss, probe_logits, probe_labels))

    def test_step(self, data):
        return distribute.keras_reducible(self._update_metrics(*self._forward(data, training=False)))

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        x = tf.convert_to_tensor(x)
        if x.dtype == tf.uint8:
            x = tf.cast(x, tf.float32) / 255.0
        return self.encoder(x, training=False)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras' TF trainer (checked on Keras 3.15) peeks at the first batch
        # under a tf.distribute strategy to build the model symbolically: it
        # opens an extra iterator over the dataset and throws it away. That
        # advances every per-iteration random stream of the input pipeline
        # (shuffle order, the per-epoch view keys of `contrastive_views`), so
        # N replicas would train on other views than one replica does; it also
        # MEAN-reduces the batch, which fails on uint8 images
        # (keras-team/keras#20585). Every trainer here creates its variables in
        # __init__, so unless compile() added Keras losses or metrics, which do
        # need a batch to build, only the optimizer remains to be built.
        if (
            self._compile_loss is None
            and self._compile_metrics is None
            and all(layer.built for layer in self._flatten_layers())
        ):
            with self.distribute_strategy.scope():
                self._symbolic_build(data_batch=None)
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    # -------------------------------------------------------- serialization
    def get_config(self):
        return {
            "name": self.name,
            "encoder": _serialize(self.encoder),
            "augmenter": _serialize(self.augmenter),
            "num_classes": self.num_classes,
            "seed": self.seed,
            "num_views": self.num_views,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = _deserialize(config["encoder"])
        config["augmenter"] = _deserialize(config.get("augmenter"))
        for name in ("projection_head", "negatives", "support_set", "queue"):  # trainers that take any head or a queue
            if config.get(name) is not None:
                config[name] = keras.saving.deserialize_keras_object(config[name])
        return cls(**config)
