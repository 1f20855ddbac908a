"""Image encoders: ResNet-18 / ResNet-50 that return the pooled feature vector.

An encoder, in this library, is any `keras.Model` that maps float32 images in
[0, 1], `[batch, H, W, C]`, to features `[batch, dim]`. The ResNets here are
functional models built from Keras layers and `kc.layers`' registered
Conv2D and BatchNormalization (Keras' own with faster training paths; they
save to `.keras` and load in safe mode) with the two stems used in the
contrastive literature:

* `stem="cifar"`: a 3x3 stride-1 convolution and no max-pool, for 32x32
  images (SimCLR appendix B.9, CIFAR-10 experiments);
* `stem="imagenet"`: the original 7x7 stride-2 convolution and 3x3 max-pool.
"""

import keras
from keras import layers

from keras_contrastive import distribute
from keras_contrastive import layers as kc_layers
from keras_contrastive.layers import batch_normalization

# SimCLR's ResNet uses a BN decay of 0.9 and epsilon 1e-5 (reference resnet.py).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def _check_args(input_shape, stem, width_multiplier):
    if len(input_shape) != 3 or any(d is None or d < 1 for d in input_shape):
        raise ValueError(f"`input_shape` must be (height, width, channels) with known sizes; got {input_shape}.")
    if stem not in ("cifar", "imagenet"):
        raise ValueError(f"`stem` must be 'cifar' or 'imagenet'; got {stem!r}.")
    if not width_multiplier > 0:
        raise ValueError(f"`width_multiplier` must be > 0; got {width_multiplier}.")


def batch_norm(synchronized, name, zero_init=False):
    """BatchNormalization with SimCLR's settings; optionally synchronized.

    Synchronized BN computes batch statistics over the global batch (all
    replicas), which contrastive methods need so that a replica cannot use
    its local statistics to find the positive (SimCLR section 2.2, "Global BN").
    `zero_init` starts the residual branch's last BN at gamma = 0, so every
    block starts as the identity (Goyal et al. 2017, used by SimCLR's ResNet).
    """
    return batch_normalization(
        synchronized,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        gamma_initializer="zeros" if zero_init else "ones",
        name=name,
    )


def _conv(filters, kernel_size, strides, name):
    return kc_layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=name,
    )


def _basic_block(x, filters, strides, synchronized, name, zero_init):
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = _conv(filters, 1, strides, f"{name}_proj_conv")(x)
        shortcut = batch_norm(synchronized, f"{name}_proj_bn")(shortcut)
    y = _conv(filters, 3, strides, f"{name}_conv1")(x)
    y = batch_norm(synchronized, f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = _conv(filters, 3, 1, f"{name}_conv2")(y)
    y = batch_norm(synchronized, f"{name}_bn2", zero_init=zero_init)(y)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.ReLU(name=f"{name}_out")(y)


def _bottleneck_block(x, filters, strides, synchronized, name, zero_init):
    out_filters = 4 * filters
    shortcut = x
    if strides != 1 or x.shape[-1] != out_filters:
        shortcut = _conv(out_filters, 1, strides, f"{name}_proj_conv")(x)
        shortcut = batch_norm(synchronized, f"{name}_proj_bn")(shortcut)
    y = _conv(filters, 1, 1, f"{name}_conv1")(x)
    y = batch_norm(synchronized, f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    # Stride on the 3x3 convolution (ResNet v1.5), as torchvision and SimCLR do.
    y = _conv(filters, 3, strides, f"{name}_conv2")(y)
    y = batch_norm(synchronized, f"{name}_bn2")(y)
    y = layers.ReLU(name=f"{name}_relu2")(y)
    y = _conv(out_filters, 1, 1, f"{name}_conv3")(y)
    y = batch_norm(synchronized, f"{name}_bn3", zero_init=zero_init)(y)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.ReLU(name=f"{name}_out")(y)


def _resnet(block, blocks_per_stage, input_shape, stem, width_multiplier, synchronized_bn, zero_init_residual, name):
    _check_args(tuple(input_shape), stem, width_multiplier)
    synchronized_bn = distribute.sync_batch_norm_default(synchronized_bn)
    width = lambda c: max(1, int(round(c * width_multiplier)))  # noqa: E731
    inputs = keras.Input(tuple(input_shape), name="images")
    if stem == "cifar":
        x = _conv(width(64), 3, 1, "stem_conv")(inputs)
        x = batch_norm(synchronized_bn, "stem_bn")(x)
        x = layers.ReLU(name="stem_relu")(x)
    else:
        x = _conv(width(64), 7, 2, "stem_conv")(inputs)
        x = batch_norm(synchronized_bn, "stem_bn")(x)
        x = layers.ReLU(name="stem_relu")(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for stage, num_blocks in enumerate(blocks_per_stage):
        filters = width(64 * 2**stage)
        for i in range(num_blocks):
            strides = 2 if (i == 0 and stage > 0) else 1
            x = block(x, filters, strides, synchronized_bn, f"stage{stage + 1}_block{i + 1}", zero_init_residual)
    features = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, features, name=name)


def ResNet18(
    input_shape=(32, 32, 3),
    stem="cifar",
    width_multiplier=1.0,
    synchronized_bn=None,
    zero_init_residual=True,
    name="resnet18",
):
    """ResNet-18 encoder returning the global-average-pooled features.

    Args:
        input_shape: tuple. `(height, width, channels)`. Defaults to (32, 32, 3).
        stem: str. "cifar" (3x3 conv, no max-pool) or "imagenet" (7x7/2 conv
            and max-pool). Defaults to "cifar".
        width_multiplier: float. Scales every layer's channels. Defaults to 1.0.
        synchronized_bn: bool or None. Cross-replica BatchNorm; None (the
            default) synchronizes when built under a strategy with several
            replicas (`keras_contrastive.distribute.sync_batch_norm_default`).
        zero_init_residual: bool. Start each residual branch's last BN at
            gamma = 0, as SimCLR's ResNet does (torchvision's default is
            False). Defaults to True.
        name: str. Defaults to "resnet18".

    Input: float32 `[batch, height, width, channels]` in [0, 1].
    Output: float32 `[batch, 512 * width_multiplier]`.

    Example:

    >>> encoder = ResNet18((32, 32, 3), width_multiplier=0.25)
    >>> encoder(np.zeros((2, 32, 32, 3))).shape
    TensorShape([2, 128])

    References:
        He et al. Deep Residual Learning for Image Recognition. CVPR 2016.
    """
    return _resnet(
        _basic_block, (2, 2, 2, 2), input_shape, stem, width_multiplier, synchronized_bn, zero_init_residual, name
    )


def ResNet50(
    input_shape=(224, 224, 3),
    stem="imagenet",
    width_multiplier=1.0,
    synchronized_bn=None,
    zero_init_residual=True,
    name="resnet50",
):
    """ResNet-50 encoder returning the global-average-pooled features.

    Same arguments as `ResNet18` (defaults: 224x224x3, ImageNet stem).

    Output: float32 `[batch, 2048 * width_multiplier]`.
    """
    return _resnet(
        _bottleneck_block, (3, 4, 6, 3), input_shape, stem, width_multiplier, synchronized_bn, zero_init_residual, name
    )


def feature_dim(encoder):
    """Size of an encoder's output vector; a clear error if it is not a vector."""
    shape = encoder.output_shape
    if isinstance(shape, list) or len(shape) != 2 or shape[-1] is None:
        raise ValueError(
            f"The encoder must map images to vectors [batch, dim]; its output shape is "
            f"{shape}. Add a pooling layer (e.g. GlobalAveragePooling2D) at its end."
        )
    return int(shape[-1])


# ----------------------------------------------------------------------------- ViT


def sincos_position_embedding_2d(grid_h, grid_w, dim, temperature=10000.0):
    """Fixed 2-D sin-cos position embedding `[grid_h * grid_w, dim]` (MoCo v3's).

    A quarter of the channels each for sin(w), cos(w), sin(h), cos(h) of the
    patch coordinates, with frequencies `1 / temperature^(i / (dim / 4))`;
    patches are numbered row by row, so token `r * grid_w + c` has w = c and
    h = r. (MoCo v3's vits.py builds its grid with `torch.meshgrid(grid_w,
    grid_h)` in "ij" order, which on its square grids gives the first half of
    the channels the row: the same embedding with the two halves swapped, an
    equivalent choice under the random patch projection.)
    """
    import numpy as np

    if dim % 4:
        raise ValueError(f"The 2-D sin-cos embedding needs a width divisible by 4; got {dim}.")
    h, w = np.meshgrid(np.arange(grid_h, dtype="float64"), np.arange(grid_w, dtype="float64"), indexing="ij")
    quarter = dim // 4
    omega = 1.0 / temperature ** (np.arange(quarter, dtype="float64") / quarter)
    out_w = w.reshape(-1)[:, None] * omega[None]
    out_h = h.reshape(-1)[:, None] * omega[None]
    return np.concatenate([np.sin(out_w), np.cos(out_w), np.sin(out_h), np.cos(out_h)], axis=1).astype("float32")


@keras.saving.register_keras_serializable(package="keras_contrastive")
class ClassTokenAndPosition(layers.Layer):
    """Prepends a learned class token and adds the fixed 2-D sin-cos position embedding.

    Input: `[batch, grid_h * grid_w, dim]` patch embeddings. Output:
    `[batch, 1 + grid_h * grid_w, dim]`; the class token's position embedding
    is zero, as in MoCo v3.
    """

    def __init__(self, grid_size, **kwargs):
        super().__init__(**kwargs)
        self.grid_size = tuple(grid_size)

    def build(self, input_shape):
        dim = input_shape[-1]
        # MoCo v3 initializes the class token with N(0, 1e-6).
        self.class_token = self.add_weight(
            shape=(1, 1, dim), initializer=keras.initializers.RandomNormal(stddev=1e-6), name="class_token"
        )
        pos = sincos_position_embedding_2d(*self.grid_size, dim)
        import numpy as np

        self._position = np.concatenate([np.zeros((1, dim), "float32"), pos])[None]
        self.built = True

    def call(self, patches):
        batch = keras.ops.shape(patches)[0]
        token = keras.ops.broadcast_to(keras.ops.cast(self.class_token, patches.dtype), (batch, 1, patches.shape[-1]))
        tokens = keras.ops.concatenate([token, patches], axis=1)
        return tokens + keras.ops.cast(self._position, patches.dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1] + 1, input_shape[2])

    def get_config(self):
        config = super().get_config()
        config["grid_size"] = self.grid_size
        return config


def _vit_block(x, dim, num_heads, mlp_ratio, name):
    y = layers.LayerNormalization(epsilon=1e-6, name=f"{name}_norm1")(x)
    y = layers.MultiHeadAttention(num_heads, dim // num_heads, name=f"{name}_attention")(y, y)
    x = layers.Add(name=f"{name}_add1")([x, y])
    y = layers.LayerNormalization(epsilon=1e-6, name=f"{name}_norm2")(x)
    y = layers.Dense(int(dim * mlp_ratio), activation="gelu", name=f"{name}_mlp1")(y)
    y = layers.Dense(dim, name=f"{name}_mlp2")(y)
    return layers.Add(name=f"{name}_add2")([x, y])


def ViT(input_shape, patch_size, dim, depth, num_heads, mlp_ratio=4.0, freeze_patch_projection=True, name="vit"):
    """Vision Transformer encoder returning the class token's features.

    Patch projection (a strided convolution, the layer named
    "patch_projection"), a class token, the fixed 2-D sin-cos position
    embedding, `depth` pre-norm Transformer blocks and a final LayerNorm.
    With `freeze_patch_projection` the projection keeps its random initial
    weights for the whole run, which MoCo v3 found to stabilize training
    (section 4.2). Written here because keras-hub is not among this
    project's dependencies and its ViT has a learned position embedding.

    Args:
        input_shape: tuple `(height, width, channels)`, divisible by the patch.
        patch_size: int.
        dim: int. Width (divisible by 4 and by `num_heads`).
        depth: int. Number of blocks.
        num_heads: int.
        mlp_ratio: float. Defaults to 4.
        freeze_patch_projection: bool. Defaults to True.
        name: str.

    Input: float32 `[batch, height, width, channels]` in [0, 1].
    Output: float32 `[batch, dim]`.

    References:
        Dosovitskiy et al. An Image is Worth 16x16 Words. ICLR 2021.
        Chen, Xie, He. An Empirical Study of Training Self-Supervised Vision
        Transformers. ICCV 2021.
    """
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or input_shape[0] % patch_size or input_shape[1] % patch_size:
        raise ValueError(
            f"`input_shape` must be (height, width, channels) divisible by patch_size={patch_size}; got {input_shape}."
        )
    if dim % num_heads or dim % 4:
        raise ValueError(f"`dim` must be divisible by 4 and by num_heads={num_heads}; got {dim}.")
    grid = (input_shape[0] // patch_size, input_shape[1] // patch_size)
    # MoCo v3's patch projection init: uniform with the fan of a linear map
    # from a 3 * p * p patch to dim (its vits.py), not Keras' conv fan.
    limit = (6.0 / (input_shape[2] * patch_size * patch_size + dim)) ** 0.5
    inputs = keras.Input(input_shape, name="images")
    patch_projection = layers.Conv2D(
        dim,
        patch_size,
        strides=patch_size,
        kernel_initializer=keras.initializers.RandomUniform(-limit, limit),
        name="patch_projection",
    )
    patch_projection.trainable = not freeze_patch_projection
    x = patch_projection(inputs)
    x = layers.Reshape((grid[0] * grid[1], dim), name="patches")(x)
    x = ClassTokenAndPosition(grid, name="class_token_and_position")(x)
    for i in range(depth):
        x = _vit_block(x, dim, num_heads, mlp_ratio, f"block{i + 1}")
    x = layers.LayerNormalization(epsilon=1e-6, name="norm")(x)
    features = ClassFeatures(name="class_features")(x)
    return keras.Model(inputs, features, name=name)


@keras.saving.register_keras_serializable(package="keras_contrastive")
class ClassFeatures(layers.Layer):
    """Selects the class token: `[batch, tokens, dim]` to `[batch, dim]`."""

    def call(self, tokens):
        return tokens[:, 0]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2])


def ViTTiny(input_shape=(224, 224, 3), patch_size=16, freeze_patch_projection=True, depth=12, name="vit_tiny"):
    """ViT-Tiny (DeiT): width 192, 3 heads. Arguments as `ViT`; `depth` defaults to 12."""
    return ViT(input_shape, patch_size, 192, depth, 3, freeze_patch_projection=freeze_patch_projection, name=name)


def ViTSmall(input_shape=(224, 224, 3), patch_size=16, freeze_patch_projection=True, depth=12, name="vit_small"):
    """ViT-Small as in MoCo v3: width 384, 12 heads (its vits.py). Arguments as `ViT`."""
    return ViT(input_shape, patch_size, 384, depth, 12, freeze_patch_projection=freeze_patch_projection, name=name)


def ViTBase(input_shape=(224, 224, 3), patch_size=16, freeze_patch_projection=True, depth=12, name="vit_base"):
    """ViT-Base: width 768, 12 heads. Arguments as `ViT`."""
    return ViT(input_shape, patch_size, 768, depth, 12, freeze_patch_projection=freeze_patch_projection, name=name)
