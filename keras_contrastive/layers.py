"""Layers the contrastive pieces share."""

import keras
import tensorflow as tf
from keras import ops

# Keras exports no name for the class of Functional models; clone_model
# dispatches on this same class.
from keras.src.models.functional import Functional as _Functional

from keras_contrastive import distribute

# Input dtypes TensorFlow's FusedBatchNormV3 takes (statistics in float32).
_FUSED_DTYPES = ("float16", "bfloat16", "float32")


@keras.saving.register_keras_serializable(package="keras_contrastive")
class BatchNormalization(keras.layers.BatchNormalization):
    """Keras' BatchNormalization, with a fused training step and exact synchronized statistics.

    Same arguments, weights, outputs, gradients and moving statistics as
    `keras.layers.BatchNormalization` (up to float rounding), two changes:

    * Speed. Keras 3 on TensorFlow computes a training-mode BatchNorm op by
      op (moments, then the normalization, then the gradients of each) and,
      under `mixed_bfloat16`, casts the activations to float32 and back. On
      the CPU that took as long as the backward convolutions of a ResNet-18
      step (benchmarks/profile_step.py). Where the batch statistics are this
      replica's own, this layer runs TensorFlow's fused kernel
      (FusedBatchNormV3, `tf.compat.v1.nn.fused_batch_norm`) instead: one
      op forward and one backward, on float32, bfloat16 or float16
      activations with float32 statistics, under XLA too. Keras 3 has no
      fused path of its own, so it is written here. It applies in training
      mode to channels-last inputs of rank 2 to 4 without a mask or
      renormalization; anything else (float64, `axis=1`, masks, `renorm`,
      inference mode) takes Keras' own path. The kernel returns the sample
      variance (Bessel-corrected): the moving variance is updated with the
      population variance, as Keras does.
    * Exactness across replicas. With `synchronized=True` on several
      replicas, the statistics cover the global batch in two passes: the sum
      is all-reduced first, then the squared deviations from the global
      mean, so N replicas compute what one replica computes on the whole
      batch up to summation order. Keras' own synchronized layer takes the
      variance in one pass (`E[x^2] - E[x]^2`), which cancels
      catastrophically when a channel's mean is large next to its spread:
      seen as a 6e-5 relative gradient difference between 1 and 2 replicas
      on the same global batch (SimCLR v2 head), and float32 channels at
      1000 +- 0.5 get variances of 0.5 for an exact 0.35. It costs one more
      all-reduce per layer. The fused kernel then normalizes with the global
      statistics, and the backward pass is the layer's own (one all-reduce
      of two per-channel sums; `_global_batch_norm`), where the kernel's
      gradient would miss the path through the statistics. On one replica a
      synchronized layer is a local one, and takes the local fused path.

    Input shape:
        Any; `axis` (default -1) is the channel axis.

    Output shape:
        Same as the input.
    """

    def call(self, inputs, training=None, mask=None):
        if training and self.trainable and self._fusable(inputs, mask):
            return self._fused_training_call(inputs)
        return super().call(inputs, training=training, mask=mask)

    def _fusable(self, inputs, mask):
        rank = len(inputs.shape)
        return (
            keras.backend.backend() == "tensorflow"
            and mask is None
            and not self.renorm
            and 2 <= rank <= 4
            and self.axis in (-1, rank - 1)
            and keras.backend.standardize_dtype(inputs.dtype) in _FUSED_DTYPES
        )

    def _fused_training_call(self, inputs):
        channels = inputs.shape[-1]
        x = inputs if len(inputs.shape) == 4 else tf.reshape(inputs, [-1, 1, 1, channels])
        gamma = tf.cast(self.gamma, "float32") if self.scale else tf.ones([channels], "float32")
        beta = tf.cast(self.beta, "float32") if self.center else tf.zeros([channels], "float32")
        if self.synchronized and distribute.num_replicas() > 1:
            y, mean, variance = _global_batch_norm(x, gamma, beta, self.epsilon)
        else:
            y, mean, sample_variance = tf.compat.v1.nn.fused_batch_norm(
                x, gamma, beta, epsilon=self.epsilon, data_format="NHWC", is_training=True
            )
            # The kernel's variance divides by count - 1 (by 1 when count is 1).
            count = tf.cast(tf.size(x, out_type=tf.int64) // channels, "float32")
            variance = sample_variance * (tf.maximum(count - 1.0, 1.0) / count)
        momentum = self.momentum
        self.moving_mean.assign(ops.cast(self.moving_mean, "float32") * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(ops.cast(self.moving_variance, "float32") * momentum + variance * (1.0 - momentum))
        # TensorFlow's graph optimizer fuses this kernel with a ReLU after it into
        # one oneDNN kernel whose ReLU maps NaN to 0: a batch with a NaN or Inf
        # would give finite outputs (and NaN moving statistics) where Keras' layer
        # passes the NaN on to the loss. A zero-valued loss that is NaN exactly when
        # the batch mean is not finite carries it there instead (the trainers and
        # Keras' compute_loss add every layer's `losses`); its gradient is zero.
        self.add_loss(ops.sum(mean) * 0.0)
        if len(inputs.shape) != 4:
            y = tf.reshape(y, tf.shape(inputs))
        return ops.cast(y, self.compute_dtype)

    def _moments(self, inputs, mask):  # Keras' path (masks, renorm, float64, axis != last) with exact sync
        if mask is not None or not self.synchronized:
            return super()._moments(inputs, mask)
        axes = self._reduction_axes
        local_count = ops.cast(ops.prod([ops.shape(inputs)[a] for a in axes]), inputs.dtype)
        # The count rides in the sum's collective: one all-reduce, exact even for uneven shards.
        local_sum = ops.sum(inputs, axis=axes, keepdims=True)
        flat = ops.concatenate([ops.reshape(local_sum, [-1]), ops.reshape(local_count, [1])], axis=0)
        totals = distribute.all_reduce_sum(flat)
        count = totals[-1]
        mean = ops.reshape(totals[:-1], ops.shape(local_sum)) / count
        squared = ops.sum(ops.square(inputs - mean), axis=axes, keepdims=True)
        variance = distribute.all_reduce_sum(squared) / count
        return ops.squeeze(mean, axis=axes), ops.squeeze(variance, axis=axes)


def _global_batch_norm(x, gamma, beta, epsilon):
    """Training-mode batch norm of `x` `[n, H, W, C]` with the statistics of the global batch (all replicas).

    Forward: the two-pass exact statistics (the sum all-reduced, then the squared deviations from the global
    mean), then TensorFlow's fused kernel normalizes with them (FusedBatchNormV3 given the mean and variance:
    one op, in `x`'s dtype). Backward, written out because that kernel's gradient treats given statistics as
    constants: with N the global count, x_hat = (x - mean) / sqrt(var + eps) and the two sums all-reduced in one
    collective, dx = gamma / (N sqrt(var + eps)) * (N dy - sum(dy) - x_hat sum(dy x_hat)); gamma and beta get
    this replica's sums, which the optimizer's all-reduce adds up (as for any weight). PyTorch's SyncBatchNorm
    has the same structure. Returns `(y, mean, variance)`, the variance the population one (float32 `[C]`).
    """

    @tf.custom_gradient
    def normalize(x, gamma, beta):
        axes = [0, 1, 2]
        x32 = tf.cast(x, "float32")
        local_count = tf.cast(tf.size(x32) // tf.shape(x32)[-1], "float32")
        # The count rides in the sum's collective: one all-reduce, exact even for uneven shards.
        totals = distribute.all_reduce_sum(tf.concat([tf.reduce_sum(x32, axes), local_count[None]], axis=0))
        count = totals[-1]
        mean = totals[:-1] / count
        variance = distribute.all_reduce_sum(tf.reduce_sum(tf.square(x32 - mean), axes)) / count
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(
            x, gamma, beta, mean=mean, variance=variance, epsilon=epsilon, data_format="NHWC", is_training=False
        )

        def grad(dy, _dmean, _dvariance):
            dy32 = tf.cast(dy, "float32")
            inv = tf.math.rsqrt(variance + epsilon)
            x_hat = (x32 - mean) * inv
            local = tf.stack([tf.reduce_sum(dy32, axes), tf.reduce_sum(dy32 * x_hat, axes)])  # [2, C]
            sum_dy, sum_dy_x_hat = tf.unstack(distribute.all_reduce_sum(local))
            dx = (gamma * inv / count) * (count * dy32 - sum_dy - x_hat * sum_dy_x_hat)
            return tf.cast(dx, x.dtype), local[1], local[0]

        return (y, tf.identity(mean), tf.identity(variance)), grad

    return normalize(x, gamma, beta)


@keras.saving.register_keras_serializable(package="keras_contrastive")
class SyncBatchNormalization(BatchNormalization):
    """`BatchNormalization` whose batch statistics cover all replicas.

    Takes the arguments of `keras.layers.BatchNormalization`; `synchronized`
    is always True. Its statistics are computed in two passes, exact across
    replicas, and normalized with the fused kernel (see `BatchNormalization`);
    with one replica it is the fused local layer.
    """

    def __init__(self, **kwargs):
        kwargs["synchronized"] = True
        super().__init__(**kwargs)


_KERNEL_GRADIENTS = ("auto", "native", "matmul")


@keras.saving.register_keras_serializable(package="keras_contrastive")
class Conv2D(keras.layers.Conv2D):
    """Keras' Conv2D whose kernel gradient can run as one matmul per kernel tap.

    Same arguments, weights, outputs and gradients as `keras.layers.Conv2D`
    (up to float rounding), plus `kernel_gradient`:

    * `"native"`: TensorFlow's Conv2DBackpropFilter (oneDNN's backward-weights
      kernel on the CPU), as Keras runs it.
    * `"matmul"`: for a stride-1 or stride-2, undilated, ungrouped,
      channels-last convolution, dL/dkernel[i, j] = x_shifted(i, j)^T dy,
      one `[C_in, n*H*W] x [n*H*W, C_out]` matmul per tap (the input
      gradient stays TensorFlow's kernel). Other convolutions take the
      native path.
    * `"auto"` (default): `"matmul"` only where it was measured faster, on
      the CPU outside XLA: bfloat16 with C_in >= 128 and C_in >= 4*H*W at
      stride 1 or C_in >= H*W/2 at stride 2; float32 at stride 1 with
      C_in >= 512 and H*W <= 49 (H, W: the output's). Why: oneDNN's
      backward-weights kernel, as TensorFlow 2.21 ships it, is slow on
      small maps with many channels. In a ResNet-18 step on 32x32 images
      (bfloat16, batch 512, AVX-512 BF16 CPU) the 4x4x512 layers' kernel
      gradients ran at 87 GFLOP/s against 420-560 for their forward pass,
      a fifth of the whole step; the matmuls run them at about 300, and
      the stride-2 8x8 -> 4x4 layer at 243 against 87
      (benchmarks/conv_kernel_grad.py measures both on any machine). On
      accelerators and under XLA the native op is kept.
    """

    def __init__(self, *args, kernel_gradient="auto", **kwargs):
        if kernel_gradient not in _KERNEL_GRADIENTS:
            raise ValueError(f"`kernel_gradient` must be one of {_KERNEL_GRADIENTS}; got {kernel_gradient!r}.")
        super().__init__(*args, **kwargs)
        self.kernel_gradient = kernel_gradient

    def _uses_matmul_gradient(self, inputs):
        strides = tuple(self.strides)
        if self.kernel_gradient == "native" or not (
            strides in ((1, 1), (2, 2))
            and tuple(self.dilation_rate) == (1, 1)
            and self.groups == 1
            and self.data_format == "channels_last"
            and tuple(self.kernel_size) != (1, 1)
        ):
            return False
        height, width, channels = inputs.shape[1:]
        if strides == (2, 2) and None in (height, width):
            return False  # the strided form splits the input into phases of static size
        if self.kernel_gradient == "matmul":
            return True
        if _on_accelerator() or distribute.in_xla_context():
            return False
        if None in (height, width, channels):
            return False
        out_h, out_w = (
            _output_size(height, self.kernel_size[0], strides[0], self.padding),
            _output_size(width, self.kernel_size[1], strides[1], self.padding),
        )
        if self.compute_dtype == "bfloat16":
            return channels >= max(128, (4 if strides == (1, 1) else 0.5) * out_h * out_w)
        return self.compute_dtype == "float32" and strides == (1, 1) and channels >= 512 and out_h * out_w <= 49

    def convolution_op(self, inputs, kernel):
        if not self._uses_matmul_gradient(inputs):
            return super().convolution_op(inputs, kernel)
        padding = self.padding.upper()
        strides = list(self.strides)

        @tf.custom_gradient
        def convolve(x, k):
            def grad(dy):
                dx = tf.raw_ops.Conv2DBackpropInput(
                    input_sizes=tf.shape(x), filter=k, out_backprop=dy, strides=[1, *strides, 1], padding=padding
                )
                return dx, kernel_gradient_by_matmul(x, dy, k.shape, padding, strides[0])

            return tf.nn.conv2d(x, k, strides=strides, padding=padding), grad

        # The kernel is read here, outside the custom gradient (which would otherwise ask for its variables).
        return convolve(inputs, tf.convert_to_tensor(kernel))

    def get_config(self):
        return {**super().get_config(), "kernel_gradient": self.kernel_gradient}


def _on_accelerator():
    return bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))


def _output_size(size, kernel, stride, padding):
    return -(-size // stride) if padding == "same" else (size - kernel) // stride + 1


def kernel_gradient_by_matmul(x, dy, kernel_shape, padding, stride=1):
    """The kernel gradient of an undilated 2-D convolution (stride 1 or 2), one matmul per tap.

    dL/dkernel[i, j] = sum over images and output positions (p, q) of x_padded[:, s*p + i, s*q + j, :]^T
    dy[:, p, q, :]. With stride 2 the padded input is first split into its 2x2 phases (one reshape and transpose),
    so that each tap reads a contiguous block rather than a strided one.

    Args:
        x: the convolution's input, `[n, H, W, C_in]` (static H and W when `stride` is 2).
        dy: the loss's gradient with respect to its output, `[n, OH, OW, C_out]`.
        kernel_shape: `(kh, kw, C_in, C_out)`.
        padding: `"SAME"` (TensorFlow's split: the extra row and column at the end) or `"VALID"`.
        stride: 1 or 2, the same along both axes.

    Returns:
        `[kh, kw, C_in, C_out]`, in `x`'s dtype (the matmuls accumulate in float32 on the CPU).
    """
    kh, kw, c_in, c_out = kernel_shape
    dy_rows = tf.reshape(dy, [-1, c_out])
    if stride == 1:
        if padding == "SAME":
            top, left = (kh - 1) // 2, (kw - 1) // 2
            x = tf.pad(x, [[0, 0], [top, kh - 1 - top], [left, kw - 1 - left], [0, 0]])
        out_h, out_w = tf.shape(dy)[1], tf.shape(dy)[2]
        blocks = [x[:, i : i + out_h, j : j + out_w, :] for i in range(kh) for j in range(kw)]
    else:
        height, width = x.shape[1], x.shape[2]
        out_h, out_w = (_output_size(n, k, stride, padding.lower()) for n, k in ((height, kh), (width, kw)))
        # Padded sizes that are multiples of the stride and cover every tap: stride * ((k - 1) // stride + out).
        size_h, size_w = stride * ((kh - 1) // stride + out_h), stride * ((kw - 1) // stride + out_w)
        top = left = 0
        if padding == "SAME":
            top = max((out_h - 1) * stride + kh - height, 0) // 2
            left = max((out_w - 1) * stride + kw - width, 0) // 2
        x = tf.pad(x, [[0, 0], [top, max(size_h - height - top, 0)], [left, max(size_w - width - left, 0)], [0, 0]])
        x = x[:, :size_h, :size_w, :]
        phases = tf.reshape(x, [-1, size_h // stride, stride, size_w // stride, stride, c_in])
        phases = tf.transpose(phases, [2, 4, 0, 1, 3, 5])  # [stride, stride, n, size_h / stride, size_w / stride, C_in]
        blocks = [
            phases[i % stride, j % stride][:, i // stride : i // stride + out_h, j // stride : j // stride + out_w, :]
            for i in range(kh)
            for j in range(kw)
        ]
    taps = [tf.matmul(tf.reshape(block, [-1, c_in]), dy_rows, transpose_a=True) for block in blocks]
    return tf.reshape(tf.stack(taps), [kh, kw, c_in, c_out])


def batch_normalization(synchronized=False, **kwargs):
    """`SyncBatchNormalization` when `synchronized`, else this module's `BatchNormalization`.

    Both take the arguments of `keras.layers.BatchNormalization` and run the
    fused kernel where the statistics are local.
    """
    if synchronized:
        return SyncBatchNormalization(**kwargs)
    return BatchNormalization(**kwargs)


def set_compute_dtype(model, dtype="float32"):
    """Makes every layer of `model` compute in `dtype`, in place; the weights are not touched.

    For a model trained under a mixed policy (`mixed_bfloat16` on AMX CPUs and
    TPUs, `mixed_float16` on GPUs): its variables are float32 already, so
    after this call it computes what the same weights compute in `dtype`,
    and an export traced afterwards is a pure `dtype` graph that any CPU
    serves (and its saved config records `dtype`). Keras' policies are set
    per layer when a layer is built, so changing the global policy after
    training changes nothing; this sets `dtype_policy` on `model` and every
    nested layer. Functions Keras traced before (`predict_function`, ...)
    are dropped so that they are traced again.

    Args:
        model: `keras.Layer` or `keras.Model` (a trainer, an encoder, a head).
        dtype: str or `keras.DTypePolicy`. Defaults to `"float32"`.

    Returns:
        `model`, for chaining.
    """
    policy = keras.dtype_policies.get(dtype)
    for layer in model._flatten_layers(include_self=True):
        layer.dtype_policy = policy
        if isinstance(layer, keras.Model):
            layer.train_function = layer.test_function = layer.predict_function = None
    return model


def synchronize_batch_norm(model):
    """A copy of `model` whose BatchNormalization layers are `SyncBatchNormalization`.

    Every `keras.layers.BatchNormalization` in `model`, also inside nested
    Functional and Sequential sub-models, becomes a `SyncBatchNormalization`
    with the same config (axis, momentum, epsilon, center, scale, renorm,
    initializers, regularizers, constraints, name, trainable, dtype policy)
    and the same gamma, beta, moving mean and moving variance; every other
    layer is rebuilt from its config with its weights. In inference mode the
    copy computes exactly what `model` computes (bit-identical here); in
    training mode under a `tf.distribute` strategy its batch statistics cover
    the global batch, so N replicas compute the statistics one replica
    computes on the whole batch. Layers that already are
    `SyncBatchNormalization` are copied as they are. `model` is not modified.

    Keras' own `BatchNormalization(synchronized=True)` is converted too. It
    takes the variance in one pass (`E[x^2] - E[x]^2`), and does so even on
    one replica (any replica context, the default one included), which
    cancels catastrophically when a channel's mean is large next to its
    spread: float32 channels at 1000 +- 0.5 get variances of 0.5 for an exact
    0.35 (see `BatchNormalization`). So in training mode the converted
    layer's statistics can differ from the original's, towards the exact ones.

    Call it under the strategy's `scope()`: the copy creates new variables,
    which must be mirrored to train on several replicas.

    Args:
        model: `keras.Model`. A Functional or Sequential model, possibly nesting
            Functional or Sequential models (e.g. `keras.applications.ResNet50`
            or an encoder inside a classifier).

    Input shape:
        Those of `model`'s inputs.

    Output shape:
        Those of `model`'s outputs.

    Returns:
        A new Functional or Sequential `keras.Model` with `model`'s name, layer
        names (auto-named Input layers aside), weights and `trainable` flags (a
        Functional subclass whose constructor does not take `inputs, outputs`
        comes back as a plain Functional model, as from
        `keras.models.clone_model`). If `model` was compiled, the copy is
        compiled from the same compile config, with a new optimizer.

    Raises:
        ValueError: if `model` is a subclassed model, or a layer or sub-model
            inside it that holds a BatchNormalization is a subclassed one:
            Keras cannot rebuild those layer by layer. Also if a layer is a
            subclass of BatchNormalization other than `SyncBatchNormalization`,
            whose behaviour a conversion would silently drop.

    Example:

    ```python
    import keras
    import tensorflow as tf
    import keras_contrastive as kc

    backbone = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None)
    with tf.distribute.MirroredStrategy().scope():
        synced = kc.layers.synchronize_batch_norm(backbone)
    ```
    """
    if not isinstance(model, (keras.Sequential, _Functional)):
        raise ValueError(
            f"synchronize_batch_norm() rebuilds Functional and Sequential models layer by "
            f"layer; it cannot see inside {model.__class__.__name__!r} (a subclassed "
            f"{'model' if isinstance(model, keras.Model) else 'object'}: its `call` is "
            "Python code). Build the encoder with "
            "`keras_contrastive.layers.batch_normalization(True)` in place of "
            "`keras.layers.BatchNormalization()` instead, or pass a Functional or "
            "Sequential model."
        )

    pairs = []  # (original layer, its copy) for every layer clone_model rebuilds

    def clone_layer(layer):
        # clone_model(recursive=True) calls this for every layer except Input
        # layers and nested Functional/Sequential models, which it descends into.
        if isinstance(layer, SyncBatchNormalization):
            copy = layer.__class__.from_config(layer.get_config())
        elif type(layer) in (keras.layers.BatchNormalization, BatchNormalization):
            copy = SyncBatchNormalization.from_config(layer.get_config())
        elif isinstance(layer, keras.layers.BatchNormalization):
            raise ValueError(
                f"Layer {layer.name!r} is a {layer.__class__.__name__}, a subclass of "
                "BatchNormalization: converting it to SyncBatchNormalization would drop "
                "whatever the subclass changes. Replace it in the model's code with "
                "`keras_contrastive.layers.batch_normalization(True)`, or make it "
                "subclass `keras_contrastive.layers.SyncBatchNormalization`."
            )
        else:
            # `_flatten_layers` is Keras' own walk over nested layers (no public one).
            hidden = [
                inner.name
                for inner in layer._flatten_layers(include_self=False)
                if isinstance(inner, keras.layers.BatchNormalization) and not isinstance(inner, SyncBatchNormalization)
            ]
            if hidden:
                raise ValueError(
                    f"Layer {layer.name!r} ({layer.__class__.__name__}, a subclassed layer "
                    f"or model) holds BatchNormalization layers {hidden} that "
                    "synchronize_batch_norm() cannot replace: Keras rebuilds it from its "
                    "config, with the same unsynchronized layers inside. Build it with "
                    "`keras_contrastive.layers.batch_normalization(True)` in place of "
                    "`keras.layers.BatchNormalization()` instead."
                )
            copy = layer.__class__.from_config(layer.get_config())  # clone_model's default
        pairs.append((layer, copy))
        return copy

    # clone_model swaps the layers but re-initializes every weight, and Keras has
    # no helper that carries weights over, so they are copied layer by layer:
    # by position in `model.weights` would silently misalign if the two models
    # listed their layers in different orders.
    copy = keras.models.clone_model(model, clone_function=clone_layer, recursive=True)
    for layer, new_layer in pairs:
        new_layer.set_weights(layer.get_weights())
    _copy_trainable(model, copy)
    if len(copy.weights) != len(model.weights):
        raise ValueError(
            f"The copy of {model.name!r} has {len(copy.weights)} weights, the model "
            f"{len(model.weights)}: some layer's config does not rebuild its weights. "
            "Please report this with `model.summary(expand_nested=True)`."
        )
    return copy


def _copy_trainable(model, copy):
    """Gives `copy` and its nested models the `trainable` flags of `model`'s.

    clone_model builds Sequential models with their flag but Functional ones
    without it, so a frozen Functional backbone comes back saying
    `trainable=True` (and saves that in its config) although every layer in it
    is frozen. The flag is set on the model alone, as `_trainable`: the public
    setter would also overwrite the flag of every layer inside, which the
    layers already have from their configs.
    """
    copy._trainable = model.trainable
    for layer in model.layers:
        if isinstance(layer, (keras.Sequential, _Functional)):
            _copy_trainable(layer, copy.get_layer(layer.name))
