"""Batched, seeded view augmentation for contrastive learning.

Every transform here works on a whole batch `[batch, H, W, C]` at once and
draws its own random parameters for every image from a *stateless* seed, so

* a run with the same seed repeats exactly, even when `tf.data` maps batches
  in parallel (`keras_contrastive.data.contrastive_views` passes each batch
  and view its own seed), and
* the same augmenter runs inside `tf.data` on the host (where this library
  runs it by default, as TPU input pipelines do) or inside a compiled step.

Why not the keras-cv 0.9 layers directly (measured in
`benchmarks/augment_throughput.py`, figures in `benchmarks/RESULTS.md`):
their randomness comes from a stateful seed generator, so under a parallel
`tf.data.map` the draws depend on thread scheduling and seeded runs do not
repeat; `RandomApply` fails inside a Keras 3 `train_step` ("Using a symbolic
tf.Tensor as a Python bool"); `RandomCropAndResize` loops over images one by
one. Keras' core image layers have the same stateful seeds, and their
`get_random_transformation(seed=...)` evaluates `seed or ...` (a Python bool
on a tensor) and reuses one seed for several draws. The ops below follow the
same definitions (SimCLR's reference code, `data_util.py`) with one vectorized
draw per parameter.
"""

import math

import keras
import tensorflow as tf

# The SimCLR colour jitter with strength s: brightness, contrast and saturation
# 0.8 s, hue 0.2 s (paper appendix A, `color_jitter` in the reference code).
_JITTER_SCALE = (0.8, 0.8, 0.8, 0.2)


def _split(seed, num):
    """`num` independent stateless seeds `[num, 2]` from one seed `[2]`."""
    return tf.random.experimental.stateless_split(seed, num=num)


def _uniform(seed, batch, minval, maxval):
    return tf.random.stateless_uniform([batch], seed, minval=minval, maxval=maxval)


def _bernoulli(seed, batch, probability):
    return tf.random.stateless_uniform([batch], seed) < probability


def _per_image(mask):
    """Broadcasts a `[batch]` tensor against `[batch, H, W, C]`."""
    return mask[:, None, None, None]


def _apply_with_probability(seed, images, transformed, probability):
    """Each image independently takes `transformed` with `probability`."""
    if probability >= 1.0:
        return transformed
    if probability <= 0.0:
        return images
    batch = tf.shape(images)[0]
    return tf.where(_per_image(_bernoulli(seed, batch, probability)), transformed, images)


def random_resized_crop(seed, images, size, area=(0.08, 1.0), aspect_ratio=(3 / 4, 4 / 3), attempts=10):
    """Crops a random box of each image and resizes it to `size` (bilinear).

    The box covers a fraction of the image area drawn uniformly from `area`,
    with a log-uniform aspect ratio from `aspect_ratio`, at a uniform position
    (Inception-style crop, SimCLR appendix A). Each image draws `attempts`
    candidate boxes at once and keeps the first that fits; if none fits it
    falls back to the whole image, as `tf.image.sample_distorted_bounding_box`
    does in the reference code.

    Args:
        seed: int32 `[2]` stateless seed.
        images: float32 `[batch, H, W, C]`.
        size: `(height, width)` of the output.

    Returns:
        float32 `[batch, size[0], size[1], C]`.
    """
    batch = tf.shape(images)[0]
    height = tf.cast(tf.shape(images)[1], tf.float32)
    width = tf.cast(tf.shape(images)[2], tf.float32)
    s_area, s_ratio, s_y, s_x = tf.unstack(_split(seed, 4))
    shape = [batch, attempts]
    target_area = tf.random.stateless_uniform(shape, s_area, area[0], area[1])
    log_ratio = tf.random.stateless_uniform(
        shape, s_ratio, math.log(aspect_ratio[0]), math.log(aspect_ratio[1])
    )
    ratio = tf.exp(log_ratio)
    # Box size as fractions of the image side: area fraction a and aspect ratio
    # r = w / h in pixels give w_px = sqrt(a H W r), h_px = sqrt(a H W / r).
    box_w = tf.sqrt(target_area * ratio * height / width)
    box_h = tf.sqrt(target_area / ratio * width / height)
    fits = (box_w <= 1.0) & (box_h <= 1.0)
    first = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)
    any_fit = tf.reduce_any(fits, axis=1)
    box_w = tf.where(any_fit, tf.gather(box_w, first, batch_dims=1), 1.0)
    box_h = tf.where(any_fit, tf.gather(box_h, first, batch_dims=1), 1.0)
    y0 = tf.random.stateless_uniform([batch], s_y) * (1.0 - box_h)
    x0 = tf.random.stateless_uniform([batch], s_x) * (1.0 - box_w)
    boxes = tf.stack([y0, x0, y0 + box_h, x0 + box_w], axis=1)
    # crop_and_resize maps box coordinates to pixel centres, so a full box
    # [0, 0, 1, 1] returns the image unchanged at the same size.
    return tf.image.crop_and_resize(
        images, boxes, tf.range(batch), size, method="bilinear"
    )


def random_flip(seed, images):
    """Flips each image left-right with probability 1/2."""
    return _apply_with_probability(seed, images, tf.reverse(images, axis=[2]), 0.5)


def _rgb_to_gray(images):
    # ITU-R 601 luma, as tf.image.rgb_to_grayscale.
    weights = tf.constant([0.2989, 0.5870, 0.1140], images.dtype)
    return tf.reduce_sum(images * weights, axis=-1, keepdims=True)


def adjust_brightness(images, factor):
    """SimCLR v2 brightness: multiply by a per-image factor `[batch]`."""
    return tf.clip_by_value(images * _per_image(factor), 0.0, 1.0)


def adjust_contrast(images, factor):
    """`(x - mean) * factor + mean` with the per-image, per-channel mean."""
    mean = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
    return tf.clip_by_value((images - mean) * _per_image(factor) + mean, 0.0, 1.0)


def adjust_saturation(images, factor):
    """Scales the HSV saturation by a per-image factor (tf.image's definition)."""
    hsv = tf.image.rgb_to_hsv(images)
    h, s, v = tf.unstack(hsv, axis=-1)
    s = tf.clip_by_value(s * factor[:, None, None], 0.0, 1.0)
    return tf.clip_by_value(tf.image.hsv_to_rgb(tf.stack([h, s, v], axis=-1)), 0.0, 1.0)


def adjust_hue(images, delta):
    """Rotates the HSV hue by a per-image `delta` in [-0.5, 0.5] turns."""
    hsv = tf.image.rgb_to_hsv(images)
    h, s, v = tf.unstack(hsv, axis=-1)
    h = tf.math.floormod(h + delta[:, None, None], 1.0)
    return tf.clip_by_value(tf.image.hsv_to_rgb(tf.stack([h, s, v], axis=-1)), 0.0, 1.0)


def color_jitter(seed, images, strength=1.0, random_order=True):
    """SimCLR colour distortion: brightness, contrast, saturation, hue.

    Factors are drawn per image: brightness and contrast and saturation
    uniform in `[1 - 0.8 s, 1 + 0.8 s]` (brightness floored at 0), hue shift
    uniform in `[-0.2 s, 0.2 s]`. With `random_order` each image applies the
    four in its own random order, as the reference code does (one stage per
    position, each stage computing the candidate ops and selecting per
    image). Saturation and hue are skipped for 1-channel images, where they
    are the identity.

    Args:
        seed: int32 `[2]` stateless seed.
        images: float32 `[batch, H, W, C]` in [0, 1], C in {1, 3}.
        strength: float. The paper's s. Defaults to 1.0.
        random_order: bool. Defaults to True.
    """
    batch = tf.shape(images)[0]
    b, c, s, h = (strength * k for k in _JITTER_SCALE)
    seeds = tf.unstack(_split(seed, 5))
    factors = [
        _uniform(seeds[0], batch, max(1.0 - b, 0.0), 1.0 + b),
        _uniform(seeds[1], batch, max(1.0 - c, 0.0), 1.0 + c),
        _uniform(seeds[2], batch, max(1.0 - s, 0.0), 1.0 + s),
        _uniform(seeds[3], batch, -h, h),
    ]
    ops = [adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue]
    if images.shape[-1] == 1:
        ops, factors = ops[:2], factors[:2]
    if not random_order:
        for op, factor in zip(ops, factors):
            images = op(images, factor)
        return images
    # A random permutation per image: argsort of uniform noise.
    num_ops = len(ops)
    order = tf.argsort(tf.random.stateless_uniform([batch, num_ops], seeds[4]), axis=1)
    for position in range(num_ops):
        chosen = order[:, position]
        candidates = [op(images, factor) for op, factor in zip(ops, factors)]
        images = tf.gather(tf.stack(candidates, axis=1), chosen, batch_dims=1)
    return images


def to_grayscale(images):
    """Luma, repeated back to the input's channel count."""
    if images.shape[-1] == 1:
        return images
    return tf.tile(_rgb_to_gray(images), [1, 1, 1, images.shape[-1]])


def gaussian_blur(seed, images, kernel_size, sigma=(0.1, 2.0)):
    """Separable Gaussian blur with a per-image sigma uniform in `sigma`.

    One depthwise convolution for the whole batch: images are folded into the
    channel axis (`[1, H, W, batch * C]`) so each image convolves with its own
    kernel. Zero padding ('SAME'), as in the SimCLR reference code.

    Args:
        seed: int32 `[2]` stateless seed.
        images: float32 `[batch, H, W, C]`; batch and C must be static.
        kernel_size: int. SimCLR uses 10% of the image side.
        sigma: `(min, max)`. Defaults to (0.1, 2.0) as in SimCLR.
    """
    batch = images.shape[0]
    channels = images.shape[-1]
    if batch is None:
        raise ValueError(
            "gaussian_blur needs a static batch size; batch the dataset with "
            "`drop_remainder=True` (contrastive_views does)."
        )
    radius = kernel_size // 2
    sig = _uniform(seed, batch, sigma[0], sigma[1])  # [batch]
    offsets = tf.cast(tf.range(-radius, radius + 1), tf.float32)  # [k]
    kernel = tf.exp(-tf.square(offsets)[None, :] / (2.0 * tf.square(sig)[:, None]))
    kernel = kernel / tf.reduce_sum(kernel, axis=1, keepdims=True)  # [batch, k]
    kernel = tf.repeat(kernel, channels, axis=0)  # [batch * C, k], image-major
    k = 2 * radius + 1
    folded = tf.transpose(images, [1, 2, 0, 3])  # [H, W, batch, C]
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    folded = tf.reshape(folded, [1, height, width, batch * channels])
    kernel_h = tf.reshape(tf.transpose(kernel), [k, 1, batch * channels, 1])
    kernel_w = tf.reshape(tf.transpose(kernel), [1, k, batch * channels, 1])
    out = tf.nn.depthwise_conv2d(folded, kernel_h, [1, 1, 1, 1], "SAME")
    out = tf.nn.depthwise_conv2d(out, kernel_w, [1, 1, 1, 1], "SAME")
    out = tf.reshape(out, [height, width, batch, channels])
    return tf.transpose(out, [2, 0, 1, 3])


def solarize(images, threshold=0.5):
    """Inverts pixels at or above `threshold` (BYOL / MoCo v3 solarization)."""
    return tf.where(images < threshold, images, 1.0 - images)


def _to_float_images(images):
    """uint8 [0, 255] or float [0, 1] images to float32 [0, 1]."""
    if images.dtype == tf.uint8:
        return tf.cast(images, tf.float32) / 255.0
    if not images.dtype.is_floating:
        raise ValueError(
            f"Images must be uint8 in [0, 255] or float in [0, 1]; got dtype {images.dtype.name}."
        )
    images = tf.debugging.check_numerics(tf.cast(images, tf.float32), "Images contain NaN or inf")
    # A cheap host-side check: float data in [0, 255] is the classic mistake.
    tf.debugging.assert_greater_equal(
        tf.reduce_min(images), 0.0, message="Float images must be in [0, 1] (divide by 255?)"
    )
    tf.debugging.assert_less_equal(
        tf.reduce_max(images), 1.0, message="Float images must be in [0, 1] (divide by 255?)"
    )
    return images


def _image_size(image_size):
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    image_size = tuple(int(s) for s in image_size)
    if len(image_size) != 2 or min(image_size) < 1:
        raise ValueError(f"`image_size` must be an int or (height, width) > 0; got {image_size}.")
    return image_size


@keras.saving.register_keras_serializable(package="keras_contrastive")
class SimCLRAugmenter(keras.layers.Layer):
    """SimCLR's view augmentation as one batched, seeded Keras layer.

    In order: random resized crop back to `image_size`, horizontal flip,
    colour jitter of strength s with probability `color_jitter_probability`,
    grayscale with probability `grayscale_probability`, Gaussian blur with
    probability `blur_probability` and optional solarization. Every image
    gets its own random parameters. Works on 1- and 3-channel images.

    Args:
        image_size: int or `(height, width)`. Output size.
        crop_area: `(min, max)` fraction of the image area kept by the crop.
            Defaults to (0.08, 1.0) as in the paper.
        crop_aspect_ratio: `(min, max)` aspect ratio of the crop. Defaults
            to (3/4, 4/3).
        horizontal_flip: bool. Defaults to True.
        color_jitter_strength: float. The paper's s (1.0 for ImageNet, 0.5
            for CIFAR-10). Defaults to 1.0.
        color_jitter_probability: float. Defaults to 0.8.
        grayscale_probability: float. Defaults to 0.2.
        blur: bool or None. None turns the blur on for images larger than
            32 pixels: the paper blurs ImageNet views but not CIFAR's 32x32.
            Defaults to None.
        blur_probability: float. Defaults to 0.5.
        solarize_probability: float. Defaults to 0.0 (SimCLR does not
            solarize; BYOL and MoCo v3 do on their second view).
        seed: int or None. Seed for calls that do not pass one. Defaults to None.

    Call arguments:
        images: uint8 `[batch, H, W, C]` in [0, 255] or float in [0, 1]; a
            single image `[H, W, C]` is treated as a batch of one.
        seed: optional int32 `[2]` stateless seed for this call.
            `contrastive_views` passes one per batch and view.

    Returns:
        float32 `[batch, height, width, C]` in [0, 1].

    Example:

    >>> aug = SimCLRAugmenter(32, seed=1)
    >>> views = aug(np.zeros((4, 28, 28, 1), "uint8"))  # -> (4, 32, 32, 1)

    References:
        Chen et al. A Simple Framework for Contrastive Learning of Visual
        Representations. ICML 2020, appendix A.
    """

    def __init__(
        self,
        image_size,
        crop_area=(0.08, 1.0),
        crop_aspect_ratio=(3 / 4, 4 / 3),
        horizontal_flip=True,
        color_jitter_strength=1.0,
        color_jitter_probability=0.8,
        grayscale_probability=0.2,
        blur=None,
        blur_probability=0.5,
        solarize_probability=0.0,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.image_size = _image_size(image_size)
        if not 0 < crop_area[0] <= crop_area[1] <= 1:
            raise ValueError(f"`crop_area` must satisfy 0 < min <= max <= 1; got {crop_area}.")
        if not 0 < crop_aspect_ratio[0] <= crop_aspect_ratio[1]:
            raise ValueError(f"`crop_aspect_ratio` must satisfy 0 < min <= max; got {crop_aspect_ratio}.")
        for name, p in [
            ("color_jitter_probability", color_jitter_probability),
            ("grayscale_probability", grayscale_probability),
            ("blur_probability", blur_probability),
            ("solarize_probability", solarize_probability),
        ]:
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"`{name}` must be in [0, 1]; got {p}.")
        if color_jitter_strength < 0:
            raise ValueError(f"`color_jitter_strength` must be >= 0; got {color_jitter_strength}.")
        self.crop_area = tuple(crop_area)
        self.crop_aspect_ratio = tuple(crop_aspect_ratio)
        self.horizontal_flip = horizontal_flip
        self.color_jitter_strength = color_jitter_strength
        self.color_jitter_probability = color_jitter_probability
        self.grayscale_probability = grayscale_probability
        self.blur = blur
        self.blur_probability = blur_probability
        self.solarize_probability = solarize_probability
        self.seed = seed
        self._seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape):
        # No weights: any image shape works.
        self.built = True

    @property
    def blur_enabled(self):
        if self.blur is None:
            return min(self.image_size) > 32
        return bool(self.blur)

    def call(self, images, seed=None):
        images = tf.convert_to_tensor(images)
        if images.shape.rank == 3:
            return self.call(images[None], seed)[0]
        if images.shape.rank != 4:
            raise ValueError(
                f"Expected images [batch, height, width, channels] (or one image [H, W, C]); "
                f"got shape {images.shape}."
            )
        if images.shape[-1] not in (1, 3):
            raise ValueError(f"Expected 1 or 3 channels; got shape {images.shape}.")
        if seed is None:
            seed = tf.cast(self._seed_generator.next(), tf.int32)
        seed = tf.cast(tf.convert_to_tensor(seed), tf.int32)
        s = tf.unstack(_split(seed, 8))
        x = _to_float_images(images)
        x = random_resized_crop(s[0], x, self.image_size, self.crop_area, self.crop_aspect_ratio)
        if self.horizontal_flip:
            x = random_flip(s[1], x)
        if self.color_jitter_probability > 0 and self.color_jitter_strength > 0:
            jittered = color_jitter(s[2], x, self.color_jitter_strength)
            x = _apply_with_probability(s[3], x, jittered, self.color_jitter_probability)
        if self.grayscale_probability > 0 and x.shape[-1] == 3:
            x = _apply_with_probability(s[4], x, to_grayscale(x), self.grayscale_probability)
        if self.blur_enabled and self.blur_probability > 0:
            kernel_size = max(3, int(round(0.1 * min(self.image_size))) // 2 * 2 + 1)
            blurred = gaussian_blur(s[5], x, kernel_size)
            x = _apply_with_probability(s[6], x, blurred, self.blur_probability)
        if self.solarize_probability > 0:
            x = _apply_with_probability(s[7], x, solarize(x), self.solarize_probability)
        return tf.clip_by_value(x, 0.0, 1.0)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.image_size, input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(
            image_size=self.image_size,
            crop_area=self.crop_area,
            crop_aspect_ratio=self.crop_aspect_ratio,
            horizontal_flip=self.horizontal_flip,
            color_jitter_strength=self.color_jitter_strength,
            color_jitter_probability=self.color_jitter_probability,
            grayscale_probability=self.grayscale_probability,
            blur=self.blur,
            blur_probability=self.blur_probability,
            solarize_probability=self.solarize_probability,
            seed=self.seed,
        )
        return config


# Presets: keyword arguments for SimCLRAugmenter, by the setting they come from.
PRESETS = {
    # Paper defaults for 224x224 ImageNet (blur on, s = 1.0).
    "imagenet": dict(color_jitter_strength=1.0, blur=True),
    # Paper's CIFAR-10 setting: s = 0.5, no blur (appendix B.9).
    "cifar": dict(color_jitter_strength=0.5, blur=False),
    # Small grayscale images (Fashion-MNIST, MNIST): a gentler crop keeps
    # enough of a 28x28 object to recognise; colour jitter reduces to
    # brightness and contrast; there is no colour to drop.
    "grayscale_small": dict(crop_area=(0.2, 1.0), color_jitter_strength=0.5, blur=False),
}


def simclr_preset(name, image_size, **overrides):
    """A `SimCLRAugmenter` configured for a named setting.

    Args:
        name: str. One of `PRESETS` ("imagenet", "cifar", "grayscale_small").
        image_size: int or `(height, width)`.
        **overrides: any other `SimCLRAugmenter` argument.
    """
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
    return SimCLRAugmenter(image_size, **{**PRESETS[name], **overrides})
