"""Keras preprocessing layers and keras-cv layers as view augmenters.

`LayerAugmenter` adapts a Keras core image preprocessing layer
(`keras.layers.RandomFlip`, `RandomColorJitter`, `RandomGrayscale`, ...), a
keras-cv 0.9 augmentation layer, or a `keras.Sequential` /
`keras.layers.Pipeline` of them to the augmenter protocol of this package:
`augmenter(images, seed=seed)` on a `uint8` batch, returning float32 views in
[0, 1]. `as_augmenter` does it for any layer that does not take a `seed`, so
`contrastive_views` and the trainers accept such layers directly.

Three things separate these layers from a drop-in augmenter:

* **Value range.** Keras' and keras-cv's colour layers work in a declared
  `value_range`, (0, 255) by default, and return images in that range. This
  package's views are float in [0, 1] (the exported encoder divides raw
  pixels by 255), so a [0, 255] view would train at 255 times the scale the
  export feeds. The adapter scales the `uint8` input into the layers' range
  and the output back to [0, 1], and checks that the output lies in the
  range it was told about.
* **Seeds.** Their randomness comes from stateful generators, so under a
  parallel `tf.data` map the draws depend on thread scheduling. Neither
  library takes a seed per call (Keras' `get_random_transformation(seed=)`
  is not used by composite layers such as `RandomColorJitter`, which draw
  from their own generator), so the adapter stands in for the generators
  while it calls a layer: Keras' `SeedGenerator`s, keras-cv's
  `tf.random.Generator`s and factor samplers, all replaced by stateless
  draws from the call's seed. keras-cv's per-image layers
  (`RandomCropAndResize`, `RandomApply`, ...) are called one image at a
  time, each with a seed split from the call's. A layer with a random
  source of another kind makes `seeded` False, with a warning.
* **Errors.** A layer that cannot run on the batch (a colour layer given
  one channel, say) fails with an error naming it.

In a trainer's step (raw images in, `augmenter=` set), keras-cv's per-image
layers run through AutoGraph, as in `tf.data`; XLA cannot compile keras-cv's
`RandomCropAndResize` (`tf.image.crop_and_resize`), so with
`jit_compile=True` augment on the host (`model.views_dataset`) instead.

Our own ops (`keras_contrastive.augment`) stay the default: they are seeded
everywhere and measured 5-10x faster at 32x32 (2x at 96x96) than the same
pipeline of keras-cv layers on 2 CPU cores (`benchmarks/augment_throughput.py`, figures in
`benchmarks/RESULTS.md`).
"""

import inspect
import warnings

import keras
import tensorflow as tf

# Private, but the only way to tell Keras' build-by-tracing pass from a real
# call (see `_Draws.next`).
from keras.src.backend.common.symbolic_scope import in_symbolic_scope

# How far a view may leave the declared range before it is an error rather
# than float rounding (bicubic resizing overshoots a little); `data` checks
# views against the same margin.
RANGE_TOLERANCE = 0.02


def _keras_cv():
    """keras-cv, imported on first use (it costs about a second)."""
    import keras_cv

    return keras_cv


class _Draws:
    """Stateless seeds for one call: the call's seed folded with a draw counter.

    The counter advances at trace time, so each random op in the traced
    function gets its own seed, fixed by its position in the pipeline.
    """

    def __init__(self, seed):
        self.seed = tf.cast(seed, tf.int32)
        self.count = 0

    def next(self):
        if in_symbolic_scope():
            # Keras builds an unbuilt layer by running its `call` once on
            # symbolic inputs (`compute_output_spec`), which may happen inside
            # a real call (keras-cv builds a `RandomApply`'s inner layer the
            # first time it applies it). Draws there must not use up numbers,
            # or the first real call would differ from later ones.
            return self.seed
        self.count += 1
        return tf.random.experimental.stateless_fold_in(self.seed, self.count)


class _KerasSeeds(keras.random.SeedGenerator):
    """A `keras.random.SeedGenerator` that hands out `_Draws` seeds.

    Keras' random ops accept an int or a `SeedGenerator` as `seed` (not a
    tensor) and call `next()` once per draw; this one holds no variable, so
    it can be made inside `tf.data` and compiled steps.
    """

    def __init__(self, draws):  # no super().__init__: it would create a state variable
        self._draws = draws

    def next(self, ordered=True):
        return self._draws.next()


class _GeneratorStandIn:
    """Stands in for a keras-cv layer's `tf.random.Generator` during one call."""

    def __init__(self, draws):
        self._draws = draws

    def uniform(self, shape, minval=0, maxval=None, dtype=tf.float32, name=None):
        return tf.random.stateless_uniform(shape, self._draws.next(), minval=minval, maxval=maxval, dtype=dtype)

    def normal(self, shape, mean=0.0, stddev=1.0, dtype=tf.float32, name=None):
        return tf.random.stateless_normal(shape, self._draws.next(), mean=mean, stddev=stddev, dtype=dtype)


class _UniformFactor:
    """Stateless stand-in for keras-cv's `UniformFactorSampler`."""

    def __init__(self, sampler, draws):
        self.lower, self.upper = sampler.lower, sampler.upper
        self._draws = draws

    def __call__(self, shape=(), dtype="float32"):
        return tf.random.stateless_uniform(shape, self._draws.next(), self.lower, self.upper, dtype=dtype)


class _NormalFactor:
    """Stateless stand-in for keras-cv's `NormalFactorSampler` (a clipped normal)."""

    def __init__(self, sampler, draws):
        self.sampler = sampler
        self._draws = draws

    def __call__(self, shape=(), dtype="float32"):
        s = self.sampler
        x = tf.random.stateless_normal(shape, self._draws.next(), mean=s.mean, stddev=s.stddev, dtype=dtype)
        return tf.clip_by_value(x, s.min_value, s.max_value)


def _keras_cv_kind(layer):
    """'vectorized', 'per_image' or None for a keras-cv augmentation layer."""
    if not type(layer).__module__.startswith("keras_cv"):
        return None
    kcv = _keras_cv()
    if isinstance(layer, kcv.layers.VectorizedBaseImageAugmentationLayer):
        return "vectorized"
    if isinstance(layer, kcv.layers.BaseImageAugmentationLayer):
        return "per_image"
    return None


def _sublayers(layer):
    return layer._flatten_layers(include_self=True, recursive=True)


def _stand_ins(layer, draws):
    """`(layer, attribute, stand_in)` for every random source of `layer` that can be seeded.

    Returns None when some random source cannot take a per-call seed. Keras'
    layers draw from `keras.random.SeedGenerator` attributes (`generator` of
    its preprocessing layers); keras-cv 0.9's batched layers from
    `_random_generator` (a `tf.random.Generator`) and from factor samplers
    (`tf.random.uniform` with an op seed); its per-image layers draw the same
    way inside a `tf.map_fn` over the batch (`LayerAugmenter` then calls them
    image by image, each with its own seed).
    """
    kcv = _keras_cv() if any(_keras_cv_kind(sub) for sub in _sublayers(layer)) else None
    found = []
    for sub in _sublayers(layer):
        kind = _keras_cv_kind(sub)
        for name, value in vars(sub).items():
            if isinstance(value, _KerasSeeds):
                continue
            if isinstance(value, keras.random.SeedGenerator):
                found.append((sub, name, _KerasSeeds(draws)))
            elif isinstance(value, tf.random.Generator):
                if kind is None or name != "_random_generator":
                    return None
                found.append((sub, name, _GeneratorStandIn(draws)))
            elif kcv is not None and isinstance(value, kcv.core.FactorSampler):
                if isinstance(value, kcv.core.UniformFactorSampler):
                    found.append((sub, name, _UniformFactor(value, draws)))
                elif isinstance(value, kcv.core.NormalFactorSampler):
                    found.append((sub, name, _NormalFactor(value, draws)))
                elif not isinstance(value, kcv.core.ConstantFactorSampler):
                    return None
    return found


def _flatten(layer):
    """The layers of a (nested) `Sequential` / `Pipeline`, in order."""
    if isinstance(layer, keras.layers.InputLayer):
        return []
    if isinstance(layer, (keras.Sequential, keras.layers.Pipeline)):
        return [leaf for sub in layer.layers for leaf in _flatten(sub)]
    return [layer]


def _declared_ranges(layers):
    """The distinct `value_range`s declared by the layers (and their sub-layers)."""
    ranges = set()
    for layer in layers:
        subs = layer._flatten_layers(include_self=True, recursive=True) if isinstance(layer, keras.layers.Layer) else []
        for sub in subs:
            value_range = getattr(sub, "value_range", None)
            if value_range is not None:
                ranges.add(tuple(float(v) for v in value_range))
    return ranges


def _check_range(name, value_range):
    value_range = tuple(float(v) for v in value_range)
    if len(value_range) != 2 or not value_range[0] < value_range[1]:
        raise ValueError(f"`{name}` must be (low, high) with low < high; got {value_range}.")
    return value_range


def takes_seed(augmenter):
    """True if `augmenter(images, seed=...)` is accepted (this package's protocol).

    A layer must name `seed` in its `call` (Keras' containers take `**kwargs`
    and would pass it on to layers that do not take it); a plain function may
    also take `**kwargs`.
    """
    is_layer = isinstance(augmenter, keras.layers.Layer)
    try:
        parameters = inspect.signature(augmenter.call if is_layer else augmenter).parameters
    except (TypeError, ValueError):
        return False
    return "seed" in parameters or (not is_layer and any(p.kind is p.VAR_KEYWORD for p in parameters.values()))


@keras.saving.register_keras_serializable(package="keras_contrastive")
class LayerAugmenter(keras.layers.Layer):
    """Keras or keras-cv preprocessing layers as a seeded view augmenter.

    Runs the layers in order on a batch, scaling the input from [0, 1] (or
    `uint8` [0, 255]) into `value_range` and the output from `output_range`
    back to [0, 1], with the call's stateless seed passed to every layer that
    can take one (see the module docstring).

    Args:
        layer: a Keras layer, a `keras.Sequential` or `keras.layers.Pipeline`
            of layers (flattened, nested ones too), or a list of layers.
        value_range: `(low, high)` or None. The range the layers expect
            their input in. None takes the `value_range` the colour layers
            declare (Keras' and keras-cv's default is (0, 255)), or (0, 1)
            when no layer declares one. Defaults to None.
        output_range: `(low, high)` or None. The range of the layers' output;
            None means `value_range` (pass (0, 1) if the pipeline ends with a
            `Rescaling(1 / 255)`). Defaults to None.

    Call arguments:
        images: uint8 `[batch, H, W, C]` in [0, 255] or float in [0, 1].
        seed: optional int32 `[2]` stateless seed for this call;
            `contrastive_views` and the trainers pass one per batch and view.

    Returns:
        float32 `[batch, h, w, C']` in [0, 1].

    Raises:
        ValueError: at construction if the layers declare different value
        ranges; when called, if a layer fails on the batch (the message names
        it) or the output leaves `output_range`.

    Example:

    >>> aug = LayerAugmenter(keras.Sequential([
    ...     keras.layers.RandomFlip("horizontal"),
    ...     keras.layers.RandomColorJitter(value_range=(0, 255), brightness_factor=0.4)]))
    >>> views = aug(np.zeros((4, 32, 32, 3), "uint8"), seed=[1, 2])  # (4, 32, 32, 3) in [0, 1]
    """

    def __init__(self, layer, value_range=None, output_range=None, **kwargs):
        super().__init__(**kwargs)
        if _keras_cv_kind(layer) is None and type(layer).__module__.startswith("keras_cv.src.layers.augmenter"):
            # keras-cv's own container never runs `Layer.__init__`, so Keras
            # 3.15 fails on it (`no attribute '_losses'`); same layers, in order.
            layer = list(layer.layers)
        if isinstance(layer, (list, tuple)):
            layer = keras.layers.Pipeline(list(layer))
        if not isinstance(layer, keras.layers.Layer):
            raise ValueError(f"`layer` must be a Keras layer, Sequential, Pipeline or list of layers; got {layer!r}.")
        self.layer = layer
        # One `tf.function` per keras-cv per-image layer, traced once (not once per eager call); set past Keras'
        # attribute tracking, which has nothing to save in it.
        object.__setattr__(self, "_per_image_calls", {})
        self._steps = _flatten(layer)
        if not self._steps:
            raise ValueError(f"`layer` {layer.name!r} holds no layers.")
        declared = _declared_ranges(self._steps)
        if value_range is None:
            if len(declared) > 1:
                raise ValueError(
                    f"The layers of {layer.name!r} declare different value ranges {sorted(declared)}; give them "
                    "one `value_range` or pass `value_range=` to LayerAugmenter."
                )
            value_range = declared.pop() if declared else (0.0, 1.0)
        self.value_range = _check_range("value_range", value_range)
        self.output_range = self.value_range if output_range is None else _check_range("output_range", output_range)
        probe = _Draws(tf.zeros([2], tf.int32))
        self.unseeded_layers = [step.name for step in self._steps if _stand_ins(step, probe) is None]
        if self.unseeded_layers:
            warnings.warn(
                f"LayerAugmenter: {self.unseeded_layers} draw from random sources that take no seed, so views are not "
                "reproducible from the seed and differ between runs. "
                "keras_contrastive.augment's ops are seeded everywhere.",
                stacklevel=2,
            )

    @property
    def seeded(self):
        """True when the same seed always gives the same views."""
        return not self.unseeded_layers

    def build(self, input_shape):
        self.built = True

    def _run(self, step, x, draws):
        """Calls one layer with its random sources drawing from `draws` for this call."""
        if any(_keras_cv_kind(sub) == "per_image" for sub in _sublayers(step)):
            # keras-cv's per-image layers draw inside their own `tf.map_fn`,
            # where one stateless seed would give every image the same draw:
            # call them on one image at a time, each with a seed of its own.
            seeds = tf.random.stateless_uniform(
                [tf.shape(x)[0], 2], draws.next(), minval=None, maxval=None, dtype=tf.int32
            )
            # A `tf.function` so that AutoGraph converts their Python
            # control flow on tensors (`RandomApply`'s `if`), as `tf.data`
            # does; a Keras `train_step` would not, and fail.
            if id(step) not in self._per_image_calls:
                self._per_image_calls[id(step)] = tf.function(
                    lambda image, seed: self._swap_and_call(step, image[None], _Draws(seed))[0]
                )
            one_image = self._per_image_calls[id(step)]
            return tf.map_fn(lambda args: one_image(*args), (x, seeds), fn_output_signature=tf.float32)
        return self._swap_and_call(step, x, draws)

    def _swap_and_call(self, step, x, draws):
        """The stand-ins are swapped in while the call is traced and put back
        afterwards (`object.__setattr__` keeps Keras' attribute tracking out
        of it); the traced ops are stateless, so parallel `tf.data` calls of
        the traced function share no state."""
        stand_ins = _stand_ins(step, draws) or []
        saved = [(sub, name, getattr(sub, name)) for sub, name, _ in stand_ins]
        try:
            for sub, name, stand_in in stand_ins:
                object.__setattr__(sub, name, stand_in)
            return tf.cast(step(x, training=True), tf.float32)
        finally:
            for sub, name, value in reversed(saved):
                object.__setattr__(sub, name, value)

    def call(self, images, seed=None):
        images = tf.convert_to_tensor(images)
        if images.shape.rank != 4:
            raise ValueError(f"Expected images [batch, height, width, channels]; got shape {images.shape}.")
        if seed is None:
            seed = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32)
        if images.dtype == tf.uint8:
            x = tf.cast(images, tf.float32) / 255.0
        elif images.dtype.is_floating:
            x = tf.cast(images, tf.float32)
        else:
            raise ValueError(f"Images must be uint8 in [0, 255] or float in [0, 1]; got dtype {images.dtype.name}.")
        low, high = self.value_range
        x = low + x * (high - low)
        draws = _Draws(seed)
        for step in self._steps:
            try:
                x = self._run(step, x, draws)
            except Exception as error:  # re-raised with the layer's name
                raise ValueError(
                    f"Augmentation layer {step.name!r} ({type(step).__module__}.{type(step).__name__}) failed on "
                    f"images of shape {x.shape} and dtype {x.dtype.name}: {error}"
                ) from error
            x = tf.convert_to_tensor(x)
        low, high = self.output_range
        x = (tf.cast(x, tf.float32) - low) / (high - low)
        message = (
            f"{self.layer.name!r} returned values outside output_range={self.output_range}; tell LayerAugmenter "
            "the range the layers work in (`value_range=` for the input, `output_range=` if the pipeline rescales)"
        )
        tf.debugging.assert_greater_equal(tf.reduce_min(x), -RANGE_TOLERANCE, message=message)
        tf.debugging.assert_less_equal(tf.reduce_max(x), 1.0 + RANGE_TOLERANCE, message=message)
        return tf.clip_by_value(x, 0.0, 1.0)

    def compute_output_spec(self, images, seed=None):
        return keras.KerasTensor((images.shape[0], None, None, None), "float32")

    def get_config(self):
        config = super().get_config()
        config.update(
            layer=keras.layers.serialize(self.layer),
            value_range=self.value_range,
            output_range=self.output_range,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["layer"] = keras.layers.deserialize(config["layer"])
        return cls(**config)


def as_augmenter(augmenter):
    """`augmenter` itself if it takes a `seed`, else wrapped in `LayerAugmenter`.

    Lets `contrastive_views` and the trainers take a bare Keras or keras-cv
    layer (or a Sequential/Pipeline of them). Lists are converted element-wise.
    """
    if isinstance(augmenter, (list, tuple)):
        return [as_augmenter(a) for a in augmenter]
    if isinstance(augmenter, keras.layers.Layer) and not takes_seed(augmenter):
        return LayerAugmenter(augmenter)
    return augmenter


def keras_cv_augmenter(
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
    channels=3,
    seed=None,
):
    """SimCLR's view pipeline built from keras-cv 0.9 layers, as a `LayerAugmenter`.

    Takes `SimCLRAugmenter`'s arguments (so every preset can be built either
    way: `kc.augment.simclr_preset(..., implementation="keras_cv")`) and maps
    them onto `RandomCropAndResize`, `RandomFlip`, `RandomColorJitter`,
    `Grayscale`, `RandomGaussianBlur` and `Solarization`, each with
    probability p through `RandomApply`. Where keras-cv defines an operation
    differently, the mapping keeps the paper's ranges: brightness is additive
    in keras-cv (SimCLR v1's `random_brightness` is too; torchvision's and ours
    multiply), saturation factor f in keras-cv scales saturation by f / (1 - f),
    so a multiplier range [lo, hi] becomes [lo / (1 + lo), hi / (1 + hi)], and
    keras-cv's hue factor f shifts hue by up to f / 2 turns; brightness and
    contrast maxima above 1 (s > 1.25) are clamped to keras-cv's limit of 1.
    keras-cv applies the four jitter operations in a fixed order, not
    SimCLR's random one. An additive shift of up to 0.8 s of the value range
    turns many views all black or all white at s >= 1: the multiplicative
    jitter of our ops is gentler at the same s.

    Args:
        image_size: int or `(height, width)`. Output size.
        channels: int. 1 or 3: with 1, the jitter is brightness and
            contrast only and there is no grayscale conversion. Defaults to 3.
        seed: int or None. Constructor seed of the keras-cv layers (used only
            when called without a seed; `LayerAugmenter` passes one per call).
        Others: as `keras_contrastive.augment.SimCLRAugmenter`.

    Returns:
        `LayerAugmenter` whose `value_range` is (0, 255).
    """
    kcv = _keras_cv()
    from keras_contrastive import augment

    size = augment._image_size(image_size)
    value_range = (0, 255)
    steps = []
    if tuple(crop_area) != (1.0, 1.0) or tuple(crop_aspect_ratio) != (1.0, 1.0):
        # (Both 1: the crop was drawn per image before, by `contrastive_views`' `crop`.)
        steps.append(
            kcv.layers.RandomCropAndResize(
                size, crop_area_factor=tuple(crop_area), aspect_ratio_factor=tuple(crop_aspect_ratio), seed=seed
            )
        )
    if horizontal_flip:
        steps.append(kcv.layers.RandomFlip("horizontal", seed=seed))
    b, c, s, h = (
        color_jitter_factors
        if color_jitter_factors is not None
        else [color_jitter_strength * k for k in augment._JITTER_SCALE]
    )
    # keras-cv takes at most 1 for brightness (additive: a shift by the whole
    # value range) and contrast (factors in [1 - c, 1 + c] within [0, 2]);
    # SimCLR's s = 1.5 asks 1.2 of both.
    b, c = min(b, 1.0), min(c, 1.0)
    if color_jitter_probability > 0 and max(b, c, s, h) > 0:
        if channels == 3:
            low, high = max(1.0 - s, 0.0), 1.0 + s
            jitter = kcv.layers.RandomColorJitter(
                value_range=value_range,
                brightness_factor=b,
                contrast_factor=c,
                saturation_factor=(low / (1 + low), high / (1 + high)),
                hue_factor=min(2 * h, 1.0),
                seed=seed,
            )
        else:  # saturation and hue need colour; as ours, jitter brightness and contrast only
            jitter = keras.Sequential(
                [
                    kcv.layers.RandomBrightness(b, value_range=value_range, seed=seed),
                    kcv.layers.RandomContrast(value_range, c, seed=seed),
                ]
            )
        steps.append(kcv.layers.RandomApply(jitter, rate=color_jitter_probability, seed=seed))
    if grayscale_probability > 0 and channels == 3:
        steps.append(
            kcv.layers.RandomApply(kcv.layers.Grayscale(output_channels=3), rate=grayscale_probability, seed=seed)
        )
    if (min(size) > 32 if blur is None else blur) and blur_probability > 0:
        # SimCLR: kernel side 10% of the image side (odd), sigma in [0.1, 2].
        kernel_size = max(3, int(round(0.1 * min(size))) // 2 * 2 + 1)
        blur_layer = kcv.layers.RandomGaussianBlur(kernel_size, factor=(0.1, 2.0), seed=seed)
        steps.append(kcv.layers.RandomApply(blur_layer, rate=blur_probability, seed=seed))
    if solarize_probability > 0:
        solarize = kcv.layers.Solarization(value_range, threshold_factor=(127.5, 127.5), seed=seed)
        steps.append(kcv.layers.RandomApply(solarize, rate=solarize_probability, seed=seed))
    return LayerAugmenter(keras.Sequential(steps, name="keras_cv_simclr_views"), value_range=value_range)
