"""SimCLR's random resized crop on each image at its own, full resolution.

`keras_contrastive.augment` crops batches of images that share one size,
which is what small datasets held in memory give. On ImageNet-like data the
crop is defined on the decoded image at its own size (SimCLR's
`distorted_bounding_box_crop`, then a resize to the training size), and for
JPEGs only the crop window needs decoding: `tf.image.decode_and_crop_jpeg`
decodes the window alone, which saves most of the decode time for small
crops. These functions do that per image, in a `tf.data` map before batching;
the photometric ops (colour jitter, grayscale, blur, solarize) then stay
batched and vectorized.

Each call draws its window from a stateless seed, so the same seed gives the
same crop in any `tf.data` context, as the batched ops do.
"""

import tensorflow as tf

#: SimCLR's crop: area 8-100% of the image, aspect ratio 3/4-4/3 (appendix A).
DEFAULT_AREA = (0.08, 1.0)
DEFAULT_ASPECT_RATIO = (3 / 4, 4 / 3)


def sample_crop_window(seed, image_shape, area=DEFAULT_AREA, aspect_ratio=DEFAULT_ASPECT_RATIO, attempts=100):
    """A random crop window `[y, x, height, width]` (int32 pixels) on an image of `image_shape`.

    Drawn as SimCLR's reference code draws it:
    `tf.image.stateless_sample_distorted_bounding_box` over the whole image
    (`min_object_covered=0.1`, `max_attempts=100`); when no candidate fits,
    the window is the whole image.

    Args:
        seed: int32 `[2]` stateless seed.
        image_shape: int32 `[3]` (`[H, W, C]`), e.g. `tf.shape(image)` or
            `tf.image.extract_jpeg_shape(jpeg_bytes)`.
        area: `(min, max)` fraction of the image area. Defaults to (0.08, 1.0).
        aspect_ratio: `(min, max)` width / height. Defaults to (3/4, 4/3).
        attempts: int. Candidates drawn before falling back to the whole
            image. Defaults to 100.

    Returns:
        int32 `[4]`: top, left, height, width.
    """
    whole = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, shape=[1, 1, 4])
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.cast(image_shape, tf.int32),
        bounding_boxes=whole,
        seed=tf.cast(seed, tf.int32),
        min_object_covered=0.1,
        aspect_ratio_range=tuple(aspect_ratio),
        area_range=tuple(area),
        max_attempts=attempts,
        use_image_if_no_bounding_boxes=True,
    )
    return tf.stack([begin[0], begin[1], size[0], size[1]])


def to_uint8(images):
    """Float pixel values in [0, 255] (a resize's output) rounded and clipped back to uint8."""
    return tf.cast(tf.clip_by_value(tf.round(images), 0.0, 255.0), tf.uint8)


def _resize(crop, size):
    """Bicubic resize (SimCLR's) back to uint8, `[h, w, C]` -> `[size[0], size[1], C]`."""
    return to_uint8(tf.image.resize(tf.cast(crop, tf.float32), size, method="bicubic"))


def random_resized_crop(image, seed, size, area=DEFAULT_AREA, aspect_ratio=DEFAULT_ASPECT_RATIO):
    """Crops a random window of a decoded image at its own size and resizes it to `size`.

    Args:
        image: uint8 `[H, W, C]`, any H and W.
        seed: int32 `[2]` stateless seed.
        size: `(height, width)` of the output.
        area, aspect_ratio: see `sample_crop_window`.

    Returns:
        uint8 `[size[0], size[1], C]`.
    """
    window = sample_crop_window(seed, tf.shape(image), area, aspect_ratio)
    crop = tf.slice(image, [window[0], window[1], 0], [window[2], window[3], -1])
    return _resize(crop, size)


def decode_random_resized_crop(
    jpeg_bytes, seed, size, channels=3, area=DEFAULT_AREA, aspect_ratio=DEFAULT_ASPECT_RATIO
):
    """`random_resized_crop` of an encoded JPEG that decodes only the crop window.

    The window is drawn from the size in the JPEG header
    (`tf.image.extract_jpeg_shape`), then `tf.image.decode_and_crop_jpeg`
    decodes just that window: the same pixels as decoding the whole image
    and cropping it (up to the decoder's rounding), for a fraction of the
    work when the window is small.

    Args:
        jpeg_bytes: scalar string tensor, a JPEG file's contents.
        seed: int32 `[2]` stateless seed.
        size: `(height, width)` of the output.
        channels: int. 1 or 3. Defaults to 3.
        area, aspect_ratio: see `sample_crop_window`.

    Returns:
        uint8 `[size[0], size[1], channels]`.
    """
    shape = tf.image.extract_jpeg_shape(jpeg_bytes)
    window = sample_crop_window(seed, shape, area, aspect_ratio)
    crop = tf.image.decode_and_crop_jpeg(jpeg_bytes, window, channels=channels)
    return _resize(crop, size)


def center_crop(image, size, crop_fraction=0.875):
    """Evaluation's resize + center crop: the central `crop_fraction` of the shorter side, resized to `size`.

    The standard ImageNet evaluation transform (resize to 256, center crop
    224: a fraction of 0.875).

    Args:
        image: uint8 `[H, W, C]`.
        size: `(height, width)` of the output.
        crop_fraction: float in (0, 1]. Defaults to 0.875.

    Returns:
        uint8 `[size[0], size[1], C]`.
    """
    shape = tf.shape(image)
    side = tf.cast(tf.cast(tf.minimum(shape[0], shape[1]), tf.float32) * crop_fraction, tf.int32)
    top = (shape[0] - side) // 2
    left = (shape[1] - side) // 2
    crop = tf.slice(image, [top, left, 0], [side, side, -1])
    return _resize(crop, size)


class RandomResizedCrop:
    """Per-image geometry for `contrastive_views(..., crop=...)`: one crop per view, at full resolution.

    Called as `crop(image, seed)` on one element: a decoded uint8 image
    `[H, W, C]` of any size, or a scalar string of an encoded image (from
    `load(..., decode=False)`), for which JPEGs decode only the window and
    other formats decode whole, then crop.

    Args:
        size: int or `(height, width)`. Output size.
        area: `(min, max)` fraction of the image area. Defaults to (0.08, 1.0).
        aspect_ratio: `(min, max)` width / height. Defaults to (3/4, 4/3).
        channels: int. 1 or 3: channels decoded from encoded images (decoded
            images keep theirs). Defaults to 3.

    Returns (when called):
        uint8 `[height, width, C]`.
    """

    def __init__(self, size, area=DEFAULT_AREA, aspect_ratio=DEFAULT_ASPECT_RATIO, channels=3):
        self.size = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"`size` must be an int or (height, width) > 0; got {size}.")
        if not 0 < area[0] <= area[1] <= 1:
            raise ValueError(f"`area` must satisfy 0 < min <= max <= 1; got {area}.")
        if not 0 < aspect_ratio[0] <= aspect_ratio[1]:
            raise ValueError(f"`aspect_ratio` must satisfy 0 < min <= max; got {aspect_ratio}.")
        if channels not in (1, 3):
            raise ValueError(f"`channels` must be 1 or 3; got {channels}.")
        self.area, self.aspect_ratio, self.channels = tuple(area), tuple(aspect_ratio), channels

    def __call__(self, image, seed):
        image = tf.convert_to_tensor(image)
        if image.dtype != tf.string:
            crop = random_resized_crop(image, seed, self.size, self.area, self.aspect_ratio)
            crop.set_shape([*self.size, image.shape[-1]])
            return crop

        def jpeg():
            return decode_random_resized_crop(image, seed, self.size, self.channels, self.area, self.aspect_ratio)

        def other():
            decoded = tf.io.decode_image(image, channels=self.channels, expand_animations=False)
            return random_resized_crop(decoded, seed, self.size, self.area, self.aspect_ratio)

        crop = tf.cond(tf.io.is_jpeg(image), jpeg, other)
        crop.set_shape([*self.size, self.channels])
        return crop
