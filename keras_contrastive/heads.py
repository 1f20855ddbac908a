"""Projection heads (MLPs) that sit between an encoder and a contrastive loss."""

import keras
from keras import layers
from keras import ops

from keras_contrastive import distribute
from keras_contrastive.layers import batch_normalization


@keras.saving.register_keras_serializable(package="keras_contrastive")
class ProjectionHead(keras.layers.Layer):
    """An MLP projection head `g(h)` for contrastive learning.

    Every hidden layer is Dense -> (BN) -> ReLU; the output layer is Dense,
    followed by BN when `output_batch_norm` (SimCLR v2 puts BN on every layer
    of its head, the last one without a bias/beta; MoCo v3 uses BN without
    affine parameters on the projection output).

    Args:
        hidden_dims: list of int. Width of each hidden layer.
        output_dim: int. Projection size.
        batch_norm: bool. BN in hidden layers (and no Dense bias there, BN's
            beta replaces it). Defaults to False (SimCLR v1).
        output_batch_norm: bool. BN on the output. Defaults to False.
        output_bn_affine: bool. Scale (gamma) on the output BN; its beta is
            always off, as in SimCLR v2. MoCo v3 turns both off. Defaults to True.
        synchronized_bn: bool or None. Cross-replica BN; None (the default)
            synchronizes under a strategy with several replicas.
        output_use_bias: bool or None. Bias on the output Dense; None means
            "unless output_batch_norm". MoCo v3's MLPs have no biases at all.
            Defaults to None.

    Input: `[batch, in_dim]`. Output: `[batch, output_dim]`.

    Example:

    >>> head = ProjectionHead([256], 128)  # SimCLR v1: W2 relu(W1 h)
    >>> head(np.zeros((4, 512))).shape
    TensorShape([4, 128])
    """

    def __init__(
        self,
        hidden_dims,
        output_dim,
        batch_norm=False,
        output_batch_norm=False,
        output_bn_affine=True,
        synchronized_bn=None,
        output_use_bias=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.output_use_bias = output_use_bias
        self.hidden_dims = [int(d) for d in hidden_dims]
        self.output_dim = int(output_dim)
        self.batch_norm = batch_norm
        self.output_batch_norm = output_batch_norm
        self.output_bn_affine = output_bn_affine
        self.synchronized_bn = distribute.sync_batch_norm_default(synchronized_bn)
        synchronized_bn = self.synchronized_bn
        self.blocks = []
        for i, dim in enumerate(self.hidden_dims):
            block = [layers.Dense(dim, use_bias=not batch_norm, name=f"dense{i}")]
            if batch_norm:
                block.append(batch_normalization(synchronized_bn, momentum=0.9, epsilon=1e-5, name=f"bn{i}"))
            block.append(layers.ReLU(name=f"relu{i}"))
            self.blocks.append(block)
        use_bias = (not output_batch_norm) if output_use_bias is None else bool(output_use_bias)
        self.output_dense = layers.Dense(self.output_dim, use_bias=use_bias, name="output_dense")
        self.output_bn = None
        if output_batch_norm:
            self.output_bn = batch_normalization(
                synchronized_bn,
                momentum=0.9,
                epsilon=1e-5,
                center=False,
                scale=output_bn_affine,
                name="output_bn",
            )

    def build(self, input_shape):
        shape = tuple(input_shape)
        for block in self.blocks:
            for layer in block:
                layer.build(shape)
                shape = layer.compute_output_shape(shape)
        self.output_dense.build(shape)
        shape = self.output_dense.compute_output_shape(shape)
        if self.output_bn is not None:
            self.output_bn.build(shape)
        self.built = True

    def call(self, x, training=None):
        for block in self.blocks:
            for layer in block:
                x = layer(x, training=training) if isinstance(layer, layers.BatchNormalization) else layer(x)
        x = self.output_dense(x)
        if self.output_bn is not None:
            x = self.output_bn(x, training=training)
        return x

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_dims=self.hidden_dims,
            output_dim=self.output_dim,
            batch_norm=self.batch_norm,
            output_batch_norm=self.output_batch_norm,
            output_bn_affine=self.output_bn_affine,
            synchronized_bn=self.synchronized_bn,
            output_use_bias=self.output_use_bias,
        )
        return config


@keras.saving.register_keras_serializable(package="keras_contrastive")
class Prototypes(keras.layers.Layer):
    """SwAV's prototypes: K trainable unit vectors c_k, scored against unit embeddings.

    The kernel `[dim, K]` holds one prototype per column. A `UnitNorm`
    constraint puts every column back on the unit sphere after each optimizer
    update (Keras applies variable constraints after `apply`), which is the
    reference code's normalization of the prototypes before each forward
    pass; they start normalized too. The scores are computed in float32 (in
    float64 under a float64 policy), whatever the model's mixed precision.

    Args:
        num_prototypes: int >= 2. K. SwAV uses 3,000 on ImageNet (table 10).

    Input: `[batch, dim]` embeddings (normalized here). Output: `[batch, K]`
    cosine similarities z . c_k, in [-1, 1].

    Example:

    >>> prototypes = Prototypes(30)
    >>> prototypes(np.ones((4, 8))).shape
    TensorShape([4, 30])

    References:
        Caron, Misra, Mairal, Goyal, Bojanowski, Joulin. Unsupervised Learning
        of Visual Features by Contrasting Cluster Assignments. NeurIPS 2020.
    """

    def __init__(self, num_prototypes, **kwargs):
        # Scores in full precision: under a mixed policy the layer keeps float32 (the variables' dtype).
        if kwargs.get("dtype") is None:
            kwargs["dtype"] = keras.config.dtype_policy().variable_dtype
        super().__init__(**kwargs)
        if isinstance(num_prototypes, bool) or not isinstance(num_prototypes, int) or num_prototypes < 2:
            raise ValueError(f"`num_prototypes` must be an int >= 2; got {num_prototypes!r}.")
        self.num_prototypes = num_prototypes

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim is None:
            raise ValueError(f"Prototypes need the embeddings' static dimension; got shape {input_shape}.")
        self.kernel = self.add_weight(
            shape=(dim, self.num_prototypes),
            initializer=keras.initializers.RandomNormal(stddev=1.0, seed=None),
            constraint=keras.constraints.UnitNorm(axis=0),
            name="kernel",
        )
        self.kernel.assign(self.kernel.constraint(self.kernel))
        self.built = True

    def call(self, x):
        z = ops.cast(x, self.compute_dtype)
        z = z * ops.rsqrt(ops.maximum(ops.sum(ops.square(z), axis=-1, keepdims=True), 1e-12))
        return ops.matmul(z, ops.cast(self.kernel, self.compute_dtype))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_prototypes)

    def get_config(self):
        config = super().get_config()
        config.update(num_prototypes=self.num_prototypes)
        return config


def simclr_projection_head(version, feature_dim, projection_dim=128, hidden_dim=None, synchronized_bn=None):
    """SimCLR's projection head.

    Args:
        version: int. 1: Dense(hidden) -> ReLU -> Dense(out) (SimCLR v1,
            section 2.1). 2: three layers, BN on each (SimCLR v2, section 2).
        feature_dim: int. Encoder output size (the default hidden width).
        projection_dim: int. Defaults to 128 as in the paper.
        hidden_dim: int or None. Defaults to `feature_dim`.
        synchronized_bn: bool or None. None: synchronized under several replicas.
    """
    hidden = int(hidden_dim or feature_dim)
    if version == 1:
        return ProjectionHead([hidden], projection_dim, name="projection_head")
    if version == 2:
        return ProjectionHead(
            [hidden, hidden],
            projection_dim,
            batch_norm=True,
            output_batch_norm=True,
            synchronized_bn=synchronized_bn,
            name="projection_head",
        )
    raise ValueError(f"SimCLR projection head `version` must be 1 or 2; got {version!r}.")


def batch_norm_projection_head(feature_dim, projection_dim=128, hidden_dim=None, synchronized_bn=None):
    """SimCLR v1's head with BatchNorm on its hidden layer: Dense (no bias) ->
    BN -> ReLU -> Dense (with bias).

    The head that measured best for SimCLR on Fashion-MNIST at a few epochs
    (benchmarks/RESULTS.md): v1's two layers with v2's BN in the hidden one.
    (lightly's `SimCLRProjectionHead` is this plus a BN on the output.)

    Args:
        feature_dim: int. Encoder output size (the default hidden width).
        projection_dim: int. Defaults to 128.
        hidden_dim: int or None. Defaults to `feature_dim`.
        synchronized_bn: bool or None. None: synchronized under several replicas.

    Input: `[batch, feature_dim]`. Output: `[batch, projection_dim]`.
    """
    hidden = int(hidden_dim or feature_dim)
    return ProjectionHead(
        [hidden], projection_dim, batch_norm=True, synchronized_bn=synchronized_bn, name="projection_head"
    )


def moco_v3_mlp(num_layers, hidden_dim, output_dim, last_bn=True, synchronized_bn=None, name=None):
    """MoCo v3's MLP (`_build_mlp` in its reference code): no biases, BN + ReLU
    in hidden layers, and with `last_bn` a BN without affine parameters on the
    output (the projector; the predictor has none).

    Args:
        num_layers: int >= 1. 2 or 3 for the projector (ResNet / ViT), 2 for
            the predictor.
        hidden_dim: int. 4096 in the paper.
        output_dim: int. 256 in the paper.
        last_bn: bool. Defaults to True.
        synchronized_bn: bool or None. None: synchronized under several replicas.
    """
    return ProjectionHead(
        [hidden_dim] * (num_layers - 1),
        output_dim,
        batch_norm=True,
        output_batch_norm=last_bn,
        output_bn_affine=False,
        synchronized_bn=synchronized_bn,
        output_use_bias=False,
        name=name,
    )
