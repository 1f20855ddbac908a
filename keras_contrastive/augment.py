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

Each transform is split in two: a `sample_*` function draws the per-image
parameters (tiny `[batch]` tensors, outside XLA so the draws are the same in
every context), and a pure function applies them. `SimCLRAugmenter` applies
all of them in one XLA-compiled function (`jit_compile=True`): on this 2-core
CPU that made colour jitter at 96x96 fifteen times faster, because XLA fuses
the chains of element-wise ops that TensorFlow otherwise runs one by one
(benchmarks/RESULTS.md).
"""

import math

import keras
import tensorflow as tf

from keras_contrastive import distribute

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


def sample_crop_boxes(seed, batch, height, width, area=(0.08, 1.0), aspect_ratio=(3 / 4, 4 / 3), attempts=10):
    """Random resized crop boxes `[batch, 4]` as `[y1, x1, y2, x2]` fractions.

    The box covers a fraction of the image area drawn uniformly from `area`,
    with a log-uniform aspect ratio from `aspect_ratio`, at a uniform position
    (Inception-style crop, SimCLR appendix A). Each image draws `attempts`
    candidate boxes at once and keeps the first that fits; if none fits it
    falls back to the whole image, as `tf.image.sample_distorted_bounding_box`
    does in the reference code.
    """
    height = tf.cast(height, tf.float32)
    width = tf.cast(width, tf.float32)
    s_area, s_ratio, s_y, s_x = tf.unstack(_split(seed, 4))
    shape = [batch, attempts]
    target_area = tf.random.stateless_uniform(shape, s_area, area[0], area[1])
    log_ratio = tf.random.stateless_uniform(shape, s_ratio, math.log(aspect_ratio[0]), math.log(aspect_ratio[1]))
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
    return tf.stack([y0, x0, y0 + box_h, x0 + box_w], axis=1)


def _sample_positions(start, end, in_size, out_size):
    """Source coordinates `[batch, out_size]` and their two neighbours/weights."""
    if out_size > 1:
        step = (end - start) * (in_size - 1) / (out_size - 1)
        pos = start[:, None] * (in_size - 1) + tf.range(out_size, dtype=tf.float32)[None, :] * step[:, None]
    else:
        pos = (0.5 * (start + end) * (in_size - 1))[:, None]
    low = tf.floor(pos)
    weight = pos - low
    low = tf.cast(low, tf.int32)
    high = tf.minimum(low + 1, in_size - 1)
    return tf.clip_by_value(low, 0, in_size - 1), high, weight


def crop_and_resize(images, boxes, size):
    """Bilinear crop-and-resize of one box per image, XLA-compatible.

    Same coordinate convention as `tf.image.crop_and_resize` (box corners map
    to pixel centres, so the box [0, 0, 1, 1] returns the image unchanged at
    the same size); written with gathers because XLA has no CropAndResize
    kernel, and separably (rows, then columns), which is exact for bilinear.

    Args:
        images: float32 `[batch, H, W, C]` with static H and W.
        boxes: float32 `[batch, 4]`, `[y1, x1, y2, x2]` in [0, 1].
        size: `(height, width)` of the output.

    Returns:
        float32 `[batch, size[0], size[1], C]`.
    """
    in_h, in_w = images.shape[1], images.shape[2]
    y1, x1, y2, x2 = tf.unstack(boxes, axis=1)
    y_lo, y_hi, wy = _sample_positions(y1, y2, in_h, size[0])
    x_lo, x_hi, wx = _sample_positions(x1, x2, in_w, size[1])
    top = tf.gather(images, y_lo, axis=1, batch_dims=1)  # [batch, out_h, W, C]
    bottom = tf.gather(images, y_hi, axis=1, batch_dims=1)
    rows = top + (bottom - top) * wy[:, :, None, None]
    left = tf.gather(rows, x_lo, axis=2, batch_dims=1)  # [batch, out_h, out_w, C]
    right = tf.gather(rows, x_hi, axis=2, batch_dims=1)
    return left + (right - left) * wx[:, None, :, None]


def random_resized_crop(seed, images, size, area=(0.08, 1.0), aspect_ratio=(3 / 4, 4 / 3), attempts=10):
    """Crops a random box of each image (see `sample_crop_boxes`) and resizes it to `size`.

    Args:
        seed: int32 `[2]` stateless seed.
        images: float32 `[batch, H, W, C]`.
        size: `(height, width)` of the output.

    Returns:
        float32 `[batch, size[0], size[1], C]`.
    """
    boxes = sample_crop_boxes(seed, tf.shape(images)[0], images.shape[1], images.shape[2], area, aspect_ratio, attempts)
    return crop_and_resize(images, boxes, size)


def _rgb_to_gray(images):
    # ITU-R 601 luma, as tf.image.rgb_to_grayscale.
    weights = tf.constant([0.2989, 0.5870, 0.1140], images.dtype)
    return tf.reduce_sum(images * weights, axis=-1, keepdims=True)


def _blend(images, other, factor):
    """`other + factor * (images - other)`, clipped: factor 0 gives `other`."""
    return tf.clip_by_value(other + _per_image(factor) * (images - other), 0.0, 1.0)


def adjust_hue(images, delta):
    """Rotates the HSV hue by a per-image `delta` in [-0.5, 0.5] turns."""
    hsv = tf.image.rgb_to_hsv(images)
    h, s, v = tf.unstack(hsv, axis=-1)
    h = tf.math.floormod(h + delta[:, None, None], 1.0)
    return tf.clip_by_value(tf.image.hsv_to_rgb(tf.stack([h, s, v], axis=-1)), 0.0, 1.0)


def sample_color_jitter(seed, batch, strength=1.0, random_order=True, factors=None):
    """Per-image colour jitter parameters (see `apply_color_jitter`).

    Returns:
        dict: `factors` float32 `[batch, 3]` (brightness, contrast,
        saturation, each uniform in `[max(0, 1 - 0.8 s), 1 + 0.8 s]`), `hue`
        float32 `[batch]` (uniform in `[-0.2 s, 0.2 s]`), `order` int32
        `[batch, 4]` (op indices 0-3 = brightness, contrast, saturation, hue,
        in the order each image applies them). `factors`, a tuple of the four
        maxima `(brightness, contrast, saturation, hue)`, replaces
        `strength * (0.8, 0.8, 0.8, 0.2)` (MoCo v3 / BYOL: (0.4, 0.4, 0.2, 0.1)).
    """
    b, c, s, h = factors if factors is not None else (strength * k for k in _JITTER_SCALE)
    seeds = tf.unstack(_split(seed, 5))
    factors = tf.stack(
        [
            _uniform(seeds[0], batch, max(1.0 - b, 0.0), 1.0 + b),
            _uniform(seeds[1], batch, max(1.0 - c, 0.0), 1.0 + c),
            _uniform(seeds[2], batch, max(1.0 - s, 0.0), 1.0 + s),
        ],
        axis=1,
    )
    if random_order:
        order = tf.argsort(tf.random.stateless_uniform([batch, 4], seeds[4]), axis=1, stable=True)
    else:
        order = tf.tile(tf.range(4)[None], [batch, 1])
    return {"factors": factors, "hue": _uniform(seeds[3], batch, -h, h), "order": tf.cast(order, tf.int32)}


def apply_color_jitter(images, params):
    """Applies brightness, contrast, saturation and hue in each image's order.

    The definitions are those of torchvision's `ColorJitter`, which the SimCLR
    paper's pseudo-code uses (appendix A): brightness multiplies, contrast
    blends with the mean gray level, saturation blends with the grayscale
    image, hue rotates in HSV; the result is clipped to [0, 1] after each.
    For 1-channel images saturation and hue are the identity and skipped.

    Vectorized random order: brightness, contrast and saturation are all
    `f * x + (1 - f) * target` with target 0, the mean gray level or the
    grayscale image, so each position in the order is one blend whose factor
    and target are chosen per image (factor 1, the identity, where the op at
    that position is hue or lies on the other side of hue). Hue, the costly
    HSV round trip, runs once for the whole batch between the two passes.

    Args:
        images: float32 `[batch, H, W, C]` in [0, 1], C in {1, 3}.
        params: dict from `sample_color_jitter`.
    """
    order, factors = params["order"], params["factors"]
    rgb = images.shape[-1] == 3
    hue_position = tf.argmax(tf.cast(tf.equal(order, 3), tf.int32), axis=1, output_type=tf.int32)
    usable = 3 if rgb else 2  # ops 0..usable-1 act on this image type

    def stages(x, before_hue):
        # Hue holds one of the 4 positions: only positions 0-2 can come before it and 1-3 after it (6 blend
        # passes over the batch instead of 8; each pass reads the whole batch for its per-image mean).
        for position in range(3) if before_hue else range(1, 4):
            op = order[:, position]
            active = (position < hue_position) if before_hue else (position > hue_position)
            active &= op < usable
            factor = tf.where(active, tf.gather(factors, tf.minimum(op, 2), batch_dims=1), 1.0)
            gray = _rgb_to_gray(x) if rgb else x
            mean = tf.reduce_mean(gray, axis=[1, 2, 3], keepdims=True)
            target = tf.where(_per_image(op == 0), 0.0, tf.where(_per_image(op == 1), mean, gray))
            x = _blend(x, target, factor)
        return x

    images = stages(images, before_hue=True)
    if rgb:
        images = stages(adjust_hue(images, params["hue"]), before_hue=False)
    else:
        images = stages(images, before_hue=False)
    return images


def color_jitter(seed, images, strength=1.0, random_order=True):
    """SimCLR colour distortion of strength s with fresh per-image parameters.

    `apply_color_jitter(images, sample_color_jitter(seed, batch, ...))`.

    Args:
        seed: int32 `[2]` stateless seed.
        images: float32 `[batch, H, W, C]` in [0, 1], C in {1, 3}.
        strength: float. The paper's s. Defaults to 1.0.
        random_order: bool. Defaults to True.
    """
    params = sample_color_jitter(seed, tf.shape(images)[0], strength, random_order)
    return apply_color_jitter(images, params)


def to_grayscale(images):
    """Luma, repeated back to the input's channel count."""
    if images.shape[-1] == 1:
        return images
    return tf.tile(_rgb_to_gray(images), [1, 1, 1, images.shape[-1]])


def gaussian_blur(images, sigma, kernel_size):
    """Separable Gaussian blur with a per-image `sigma` `[batch]`.

    'SAME' zero padding, as in the SimCLR reference code. Two forms, the
    same values up to float rounding, chosen where the graph is traced:

    * under XLA (a `jit_compile` step, TPUs), each pass is a weighted sum of
      `kernel_size` shifted copies of the padded batch with per-image
      weights: element-wise work that XLA fuses. A depthwise convolution
      measured 19x slower there on the CPU (467 against 8,700 views/s at
      96x96);
    * elsewhere (called directly, or by an augmenter with
      `jit_compile=False`), one depthwise convolution per pass with the
      batch folded into the channels, which oneDNN runs in one kernel: 2.3x
      (96x96) and 8x (224x224) the shifted sums outside XLA, 1.2x and 1.9x
      XLA's. `SimCLRAugmenter` compiles its whole transform, blur included:
      taking the blur out between two XLA parts made the pipeline slower
      (benchmarks/RESULTS.md).

    Args:
        images: float32 `[batch, H, W, C]` with static H and W.
        sigma: float32 `[batch]`. SimCLR draws it uniformly in [0.1, 2.0].
        kernel_size: int. SimCLR uses 10% of the image side.
    """
    radius = kernel_size // 2
    offsets = tf.cast(tf.range(-radius, radius + 1), tf.float32)  # [k]
    kernel = tf.exp(-tf.square(offsets)[None, :] / (2.0 * tf.square(sigma)[:, None]))
    kernel = kernel / tf.reduce_sum(kernel, axis=1, keepdims=True)  # [batch, k]
    if not distribute.in_xla_context():
        return _depthwise_blur(images, kernel)
    height, width = images.shape[1], images.shape[2]
    padded = tf.pad(images, [[0, 0], [radius, radius], [0, 0], [0, 0]])
    rows = sum(kernel[:, i, None, None, None] * padded[:, i : i + height] for i in range(2 * radius + 1))
    padded = tf.pad(rows, [[0, 0], [0, 0], [radius, radius], [0, 0]])
    return sum(kernel[:, i, None, None, None] * padded[:, :, i : i + width] for i in range(2 * radius + 1))


def _depthwise_blur(images, kernel):
    """`gaussian_blur`'s two passes as depthwise convolutions: `[batch, H, W, C]` becomes one `[1, H, W, batch*C]`
    image whose channel b*C + c is blurred with image b's `kernel` `[batch, k]`."""
    shape = tf.shape(images)
    channels = images.shape[-1]
    folded = tf.reshape(tf.transpose(images, [1, 2, 0, 3]), [1, shape[1], shape[2], -1])
    taps = tf.transpose(tf.repeat(kernel, channels, axis=0))  # [k, batch*C]
    folded = tf.nn.depthwise_conv2d(folded, taps[:, None, :, None], [1, 1, 1, 1], "SAME")  # along H
    folded = tf.nn.depthwise_conv2d(folded, taps[None, :, :, None], [1, 1, 1, 1], "SAME")  # along W
    return tf.transpose(tf.reshape(folded, [shape[1], shape[2], shape[0], channels]), [2, 0, 1, 3])


def solarize(images, threshold=0.5):
    """Inverts pixels at or above `threshold` (BYOL / MoCo v3 solarization)."""
    return tf.where(images < threshold, images, 1.0 - images)


def _to_float_images(images):
    """uint8 [0, 255] or float [0, 1] images to float32 [0, 1]."""
    if images.dtype == tf.uint8:
        return tf.cast(images, tf.float32) / 255.0
    if not images.dtype.is_floating:
        raise ValueError(f"Images must be uint8 in [0, 255] or float in [0, 1]; got dtype {images.dtype.name}.")
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
        color_jitter_factors: tuple or None. `(brightness, contrast,
            saturation, hue)` maxima overriding `color_jitter_strength`.
            Defaults to None.
        grayscale_probability: float. Defaults to 0.2.
        blur: bool or None. None turns the blur on for images larger than
            32 pixels: the paper blurs ImageNet views but not CIFAR's 32x32.
            Defaults to None.
        blur_probability: float. Defaults to 0.5.
        solarize_probability: float. Defaults to 0.0 (SimCLR does not
            solarize; BYOL and MoCo v3 do on their second view).
        seed: int or None. Seed for calls that do not pass one. Defaults to None.
        jit_compile: bool. Apply the transforms in one XLA-compiled function
            (the random draws stay outside XLA, so results match the
            uncompiled path up to float rounding). Defaults to True.

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
        color_jitter_factors=None,
        grayscale_probability=0.2,
        blur=None,
        blur_probability=0.5,
        solarize_probability=0.0,
        seed=None,
        jit_compile=True,
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
        if color_jitter_factors is not None:
            color_jitter_factors = tuple(float(f) for f in color_jitter_factors)
            if len(color_jitter_factors) != 4 or min(color_jitter_factors) < 0 or color_jitter_factors[3] > 0.5:
                raise ValueError(
                    "`color_jitter_factors` must be 4 non-negative maxima (brightness, contrast, "
                    f"saturation, hue <= 0.5); got {color_jitter_factors}."
                )
        self.color_jitter_factors = color_jitter_factors
        self.grayscale_probability = grayscale_probability
        self.blur = blur
        self.blur_probability = blur_probability
        self.solarize_probability = solarize_probability
        self.seed = seed
        self.jit_compile = bool(jit_compile)
        self._seed_generator = keras.random.SeedGenerator(seed)
        self._compiled_transform = tf.function(self.transform, jit_compile=True, reduce_retracing=True)

    def build(self, input_shape):
        # No weights: any image shape works.
        self.built = True

    @property
    def blur_enabled(self):
        if self.blur is None:
            return min(self.image_size) > 32
        return bool(self.blur)

    @property
    def keeps_whole_image(self):
        """Whether the crop keeps the whole image (area and aspect ratio fixed at 1: `contrastive_views`'
        `crop` drew it per image)."""
        return self.crop_area == (1.0, 1.0) and self.crop_aspect_ratio == (1.0, 1.0)

    def sample_parameters(self, seed, batch, height, width):
        """Every random parameter of one call, per image (tiny `[batch, ...]` tensors).

        Args:
            seed: int32 `[2]` stateless seed.
            batch: int or scalar tensor. height, width: input image size.

        Returns:
            dict of tensors consumed by `transform`.
        """
        s = tf.unstack(_split(seed, 9))
        params = {
            "boxes": sample_crop_boxes(s[0], batch, height, width, self.crop_area, self.crop_aspect_ratio),
            "flip": _bernoulli(s[1], batch, 0.5 if self.horizontal_flip else 0.0),
            "jitter": _bernoulli(s[3], batch, self.color_jitter_probability),
            "grayscale": _bernoulli(s[4], batch, self.grayscale_probability),
            "blur": _bernoulli(s[6], batch, self.blur_probability if self.blur_enabled else 0.0),
            "sigma": _uniform(s[5], batch, 0.1, 2.0),  # SimCLR's blur sigma range
            "solarize": _bernoulli(s[7], batch, self.solarize_probability),
        }
        params.update(sample_color_jitter(s[2], batch, self.color_jitter_strength, factors=self.color_jitter_factors))
        return params

    def transform(self, images, params):
        """Applies sampled parameters to float32 images `[batch, H, W, C]` in [0, 1]."""
        select = lambda mask, new, old: tf.where(_per_image(mask), new, old)  # noqa: E731
        if self.keeps_whole_image and tuple(images.shape[1:3]) == tuple(self.image_size):
            x = images  # the crop was drawn per image before (kc.crops), at this size
        else:
            x = crop_and_resize(images, params["boxes"], self.image_size)
        if self.horizontal_flip:
            x = select(params["flip"], tf.reverse(x, axis=[2]), x)
        if self.color_jitter_probability > 0 and (self.color_jitter_strength > 0 or self.color_jitter_factors):
            x = select(params["jitter"], apply_color_jitter(x, params), x)
        if self.grayscale_probability > 0 and x.shape[-1] == 3:
            x = select(params["grayscale"], to_grayscale(x), x)
        if self.blur_enabled and self.blur_probability > 0:
            # SimCLR: kernel side 10% of the image side (odd).
            kernel_size = max(3, int(round(0.1 * min(self.image_size))) // 2 * 2 + 1)
            x = select(params["blur"], gaussian_blur(x, params["sigma"], kernel_size), x)
        if self.solarize_probability > 0:
            x = select(params["solarize"], solarize(x), x)
        return tf.clip_by_value(x, 0.0, 1.0)

    def call(self, images, seed=None):
        images = tf.convert_to_tensor(images)
        if images.shape.rank == 3:
            return self.call(images[None], seed)[0]
        if images.shape.rank != 4:
            raise ValueError(
                f"Expected images [batch, height, width, channels] (or one image [H, W, C]); got shape {images.shape}."
            )
        if images.shape[-1] not in (1, 3):
            raise ValueError(f"Expected 1 or 3 channels; got shape {images.shape}.")
        if images.shape[1] is None or images.shape[2] is None:
            raise ValueError(f"Images need a static height and width; got shape {images.shape}.")
        if seed is None:
            seed = tf.cast(self._seed_generator.next(), tf.int32)
        seed = tf.cast(tf.convert_to_tensor(seed), tf.int32)
        x = _to_float_images(images)
        params = self.sample_parameters(seed, tf.shape(x)[0], x.shape[1], x.shape[2])
        transform = self._compiled_transform if self.jit_compile else self.transform
        return transform(x, params)

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
            color_jitter_factors=self.color_jitter_factors,
            grayscale_probability=self.grayscale_probability,
            blur=self.blur,
            blur_probability=self.blur_probability,
            solarize_probability=self.solarize_probability,
            seed=self.seed,
            jit_compile=self.jit_compile,
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


IMPLEMENTATIONS = ("keras_contrastive", "keras_cv")


def _check_implementation(implementation):
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"`implementation` must be one of {IMPLEMENTATIONS}; got {implementation!r}.")


def _build(image_size, implementation, channels, **kwargs):
    if implementation == "keras_cv":
        kwargs.pop("jit_compile", None)
        return keras_cv_augmenter(image_size, channels=channels, **kwargs)
    return SimCLRAugmenter(image_size, **kwargs)


def simclr_preset(name, image_size, implementation="keras_contrastive", channels=3, **overrides):
    """A view augmenter configured for a named setting.

    Args:
        name: str. One of `PRESETS` ("imagenet", "cifar", "grayscale_small").
        image_size: int or `(height, width)`.
        implementation: str. "keras_contrastive" (default): this module's
            `SimCLRAugmenter`; "keras_cv": the same settings as a pipeline of
            keras-cv 0.9 layers (`keras_cv_augmenter`), 5-10x slower at 32x32
            and 2x at 96x96 on 2 CPU cores (benchmarks/RESULTS.md,
            `augment_throughput.py`).
        channels: int. Image channels (1 or 3); used by the keras-cv
            pipeline, whose colour layers need to know. Defaults to 3.
        **overrides: any other `SimCLRAugmenter` argument.
    """
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
    _check_implementation(implementation)
    return _build(image_size, implementation, channels, **{**PRESETS[name], **overrides})


def moco_v3_augmenters(image_size, seed=None, implementation="keras_contrastive", channels=3, **overrides):
    """MoCo v3 / BYOL's asymmetric pair of view augmenters.

    Both: random resized crop (0.08-1), flip, colour jitter (0.4, 0.4, 0.2,
    0.1) with p=0.8, grayscale p=0.2. View 1: Gaussian blur with p=1.0. View 2:
    blur with p=0.1 and solarization with p=0.2 (BYOL table 6, MoCo v3's
    `augmentation1` / `augmentation2`).

    Args:
        image_size: int or `(height, width)`.
        seed: int or None. The second augmenter uses `seed + 1`.
        implementation: str. "keras_contrastive" or "keras_cv" (see
            `simclr_preset`). Defaults to "keras_contrastive".
        channels: int. Image channels, for the keras-cv pipeline. Defaults to 3.
        **overrides: other `SimCLRAugmenter` arguments for both views (e.g.
            `blur=False` for 32x32 images).

    Returns:
        `[augmenter_view1, augmenter_view2]`, to pass as a trainer's augmenter.
    """
    common = dict(color_jitter_factors=(0.4, 0.4, 0.2, 0.1), color_jitter_probability=0.8, grayscale_probability=0.2)
    common.update(overrides)
    first = dict(common, blur_probability=1.0, solarize_probability=0.0)
    second = dict(common, blur_probability=0.1, solarize_probability=0.2)
    first.setdefault("blur", True)
    second.setdefault("blur", True)
    _check_implementation(implementation)
    return [
        _build(image_size, implementation, channels, seed=seed, **first),
        _build(image_size, implementation, channels, seed=None if seed is None else seed + 1, **second),
    ]


# keras-cv and Keras preprocessing layers as augmenters (defined in their own
# module, re-exported here next to our ops).
from keras_contrastive.layer_augmenter import LayerAugmenter  # noqa: E402, F401
from keras_contrastive.layer_augmenter import as_augmenter  # noqa: E402, F401
from keras_contrastive.layer_augmenter import keras_cv_augmenter  # noqa: E402


def multi_crop_augmenters(
    global_size,
    local_size,
    num_local=6,
    global_crop_area=(0.14, 1.0),
    local_crop_area=(0.05, 0.14),
    implementation="keras_contrastive",
    channels=3,
    **overrides,
):
    """Multi-crop (Caron et al. 2020, section 3.2): 2 global views and `num_local` small ones, one augmenter per view.

    The small views cover small parts of the image at a low resolution, so
    they add views at a fraction of the compute; their features are compared
    with the global views' (SwAV predicts the global views' codes from all
    views). Pass the list as a trainer's `augmenter` with `num_views=2 +
    num_local`; `contrastive_views` then yields a tuple of two groups,
    `[batch, 2, G, G, C]` and `[batch, num_local, L, L, C]`, and the trainer
    encodes each group in one call with the same encoder weights.

    Args:
        global_size: int or `(height, width)`. The paper: 224.
        local_size: int or `(height, width)`. The paper: 96.
        num_local: int >= 1. The paper: 6 (table 3 also reports 2 and 4).
        global_crop_area: `(min, max)` area fraction of the global crops. The
            paper: (0.14, 1).
        local_crop_area: `(min, max)` of the small crops. The paper: (0.05, 0.14).
        implementation: "keras_contrastive" or "keras_cv" (see `simclr_preset`).
        channels: int. Image channels, for the keras-cv pipeline. Defaults to 3.
        **overrides: other `SimCLRAugmenter` arguments for every view (e.g.
            `blur=False`, `color_jitter_strength=0.8`, `seed=`).

    Returns:
        `[global, global, local, ...]`: 2 + `num_local` augmenters (the same
        object for every view of a kind; each view draws its own seed).
    """
    if isinstance(num_local, bool) or not isinstance(num_local, int) or num_local < 1:
        raise ValueError(f"`num_local` must be an int >= 1; got {num_local!r}.")
    _check_implementation(implementation)
    big = _build(global_size, implementation, channels, **{**overrides, "crop_area": tuple(global_crop_area)})
    small = _build(local_size, implementation, channels, **{**overrides, "crop_area": tuple(local_crop_area)})
    return [big, big] + [small] * num_local
