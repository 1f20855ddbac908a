"""LARS, batch-size learning-rate scaling and warmup + cosine schedules.

Keras ships no LARS, so it is written here as a `keras.optimizers.Optimizer`
subclass; the schedule is Keras' own `CosineDecay` with its warmup.
"""

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_contrastive")
class LARS(keras.optimizers.Optimizer):
    """Layer-wise Adaptive Rate Scaling, as in SimCLR's reference `lars_optimizer.py`.

    For each variable w with gradient g (all in the variable's dtype):

        g <- g + weight_decay * w                       (if w is decayed)
        trust = eta * ||w|| / ||g||  (1 if either norm is 0; 1 if w is excluded)
        v <- momentum * v + learning_rate * trust * g
        w <- w - v          (nesterov: w <- w - (momentum * v + lr * trust * g))

    Biases and BatchNorm parameters are excluded from both weight decay and
    the trust ratio, as in SimCLR (which excludes names containing "bias" and
    "batch_normalization"): here every variable of rank <= 1 is excluded,
    plus any whose path contains one of `exclude_names`.

    Args:
        learning_rate: float or `LearningRateSchedule`. Defaults to 0.001.
        momentum: float in [0, 1). Defaults to 0.9.
        weight_decay: float >= 0. L2 penalty added to the gradient before the
            trust ratio (coupled, not AdamW-style). Defaults to 0.0.
        eta: float > 0. Trust coefficient. Defaults to 0.001.
        nesterov: bool. Defaults to False.
        exclude_bias_and_norm: bool. Exclude rank <= 1 variables. Defaults to True.
        exclude_names: list of str. Extra substrings of variable paths to
            exclude from decay and adaptation (e.g. a linear probe's head).
            Defaults to None.
        **kwargs: the base `keras.optimizers.Optimizer` arguments (clipnorm,
            loss_scale_factor, ...).

    Example:

    >>> opt = LARS(learning_rate=0.3, weight_decay=1e-6)

    References:
        You, Gitman, Ginsburg. Large Batch Training of Convolutional Networks. 2017.
    """

    def __init__(
        self,
        learning_rate=0.001,
        momentum=0.9,
        weight_decay=0.0,
        eta=0.001,
        nesterov=False,
        exclude_bias_and_norm=True,
        exclude_names=None,
        name="LARS",
        **kwargs,
    ):
        kwargs.pop("weight_decay", None)
        # The base class' weight_decay is decoupled (AdamW-style) and applied
        # after the update; LARS needs it inside the gradient, before the trust
        # ratio, so the base one stays off.
        super().__init__(learning_rate=learning_rate, name=name, weight_decay=None, **kwargs)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"`momentum` must be in [0, 1); got {momentum}.")
        if weight_decay < 0:
            raise ValueError(f"`weight_decay` must be >= 0; got {weight_decay}.")
        if not eta > 0:
            raise ValueError(f"`eta` must be > 0; got {eta}.")
        self.momentum = float(momentum)
        self.lars_weight_decay = float(weight_decay)
        self.eta = float(eta)
        self.nesterov = bool(nesterov)
        self.exclude_bias_and_norm = bool(exclude_bias_and_norm)
        self.exclude_names = list(exclude_names or [])

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = self.add_optimizer_variables(variables, "momentum")

    def _excluded(self, variable):
        if self.exclude_bias_and_norm and len(variable.shape) <= 1:
            return True
        path = getattr(variable, "path", variable.name)
        return any(name in path for name in self.exclude_names)

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        grad = ops.cast(gradient, variable.dtype)
        excluded = self._excluded(variable)
        if not excluded and self.lars_weight_decay > 0:
            grad = grad + self.lars_weight_decay * variable
        if excluded:
            scaled_lr = lr
        else:
            w_norm = ops.sqrt(ops.sum(ops.square(variable)))
            g_norm = ops.sqrt(ops.sum(ops.square(grad)))
            trust = ops.where(
                w_norm > 0,
                ops.where(g_norm > 0, self.eta * w_norm / ops.maximum(g_norm, 1e-30), 1.0),
                1.0,
            )
            scaled_lr = lr * ops.cast(trust, variable.dtype)
        m = self.momentums[self._get_variable_index(variable)]
        new_m = self.momentum * m + scaled_lr * grad
        self.assign(m, new_m)
        if self.nesterov:
            self.assign_sub(variable, self.momentum * new_m + scaled_lr * grad)
        else:
            self.assign_sub(variable, new_m)

    def get_config(self):
        config = super().get_config()
        config.update(
            momentum=self.momentum,
            weight_decay=self.lars_weight_decay,
            eta=self.eta,
            nesterov=self.nesterov,
            exclude_bias_and_norm=self.exclude_bias_and_norm,
            exclude_names=self.exclude_names,
        )
        return config


WEIGHT_DECAY_TYPES = ("coupled", "decoupled")


@keras.saving.register_keras_serializable(package="keras_contrastive")
class SGD(keras.optimizers.SGD):
    """Keras' SGD with a choice of coupled (PyTorch) or decoupled (Keras) weight decay.

    The two forms users know under the one name "weight decay" differ by about
    `1 / (1 - momentum)` in strength (10x at momentum 0.9), so the form is an
    explicit argument:

    * `"coupled"`: an L2 penalty's gradient, `g <- g + weight_decay * w`, added
      before the momentum buffer, as PyTorch's `torch.optim.SGD` and the LARS of
      SimCLR's reference code. This is what a PyTorch recipe's
      `weight_decay=5e-4` means.
    * `"decoupled"`: Keras' own, `w <- w - learning_rate * weight_decay * w`
      just before the step, outside the momentum (Loshchilov & Hutter's SGDW).

    Keras' SGD has only the decoupled form, hence this subclass; both forms
    honour Keras' `exclude_from_weight_decay(...)` and, with
    `exclude_bias_and_norm`, skip every variable of rank <= 1 (biases and
    BatchNorm parameters, excluded by SimCLR, MoCo v3 and BYOL).

    Args:
        learning_rate: float or `LearningRateSchedule`. Defaults to 0.01.
        momentum: float in [0, 1]. Defaults to 0.9.
        nesterov: bool. Defaults to False.
        weight_decay: float >= 0. Defaults to 0.0.
        weight_decay_type: str. `"coupled"` or `"decoupled"`. Defaults to
            `"coupled"` (PyTorch's meaning of the number).
        exclude_bias_and_norm: bool. No decay on rank <= 1 variables.
            Defaults to False (PyTorch's SGD decays every parameter).
        **kwargs: the base `keras.optimizers.Optimizer` arguments.

    Example:

    >>> opt = SGD(0.12, momentum=0.9, weight_decay=5e-4, weight_decay_type="coupled")

    References:
        Loshchilov, Hutter. Decoupled Weight Decay Regularization. ICLR 2019.
    """

    def __init__(
        self,
        learning_rate=0.01,
        momentum=0.9,
        nesterov=False,
        weight_decay=0.0,
        weight_decay_type="coupled",
        exclude_bias_and_norm=False,
        name="SGD",
        **kwargs,
    ):
        if weight_decay_type not in WEIGHT_DECAY_TYPES:
            raise ValueError(
                f"`weight_decay_type` must be one of {WEIGHT_DECAY_TYPES}; got {weight_decay_type!r}. "
                "'coupled' adds weight_decay * w to the gradient (PyTorch SGD); 'decoupled' shrinks w "
                "outside the momentum (Keras, AdamW)."
            )
        weight_decay = float(weight_decay or 0.0)
        if weight_decay < 0:
            raise ValueError(f"`weight_decay` must be >= 0; got {weight_decay}.")
        decoupled = weight_decay if (weight_decay_type == "decoupled" and weight_decay > 0) else None
        super().__init__(
            learning_rate=learning_rate,
            momentum=float(momentum),
            nesterov=nesterov,
            weight_decay=decoupled,
            name=name,
            **kwargs,
        )
        self.weight_decay_type = weight_decay_type
        self.exclude_bias_and_norm = bool(exclude_bias_and_norm)
        self.coupled_weight_decay = weight_decay if weight_decay_type == "coupled" else 0.0

    def _use_weight_decay(self, variable):
        if self.exclude_bias_and_norm and len(variable.shape) <= 1:
            return False
        return super()._use_weight_decay(variable)

    def update_step(self, gradient, variable, learning_rate):
        if self.coupled_weight_decay and self._use_weight_decay(variable):
            gradient = (
                ops.cast(gradient, variable.dtype) + ops.cast(self.coupled_weight_decay, variable.dtype) * variable
            )
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config.update(
            weight_decay=self.coupled_weight_decay or (self.weight_decay or 0.0),
            weight_decay_type=self.weight_decay_type,
            exclude_bias_and_norm=self.exclude_bias_and_norm,
        )
        return config


def scale_learning_rate(base_learning_rate, batch_size, rule="linear"):
    """Learning rate for a global batch size.

    Args:
        base_learning_rate: float. For "linear", the rate at batch 256
            (SimCLR: 0.3 with LARS); for "sqrt", the coefficient of
            sqrt(batch) (SimCLR: 0.075, better for small batches / long
            training, appendix B.1).
        batch_size: int. The global batch size (all replicas).
        rule: str. "linear" (lr * batch / 256) or "sqrt" (lr * sqrt(batch)).

    Returns:
        float.
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1; got {batch_size}.")
    if rule == "linear":
        return base_learning_rate * batch_size / 256.0
    if rule == "sqrt":
        return base_learning_rate * math.sqrt(batch_size)
    raise ValueError(f"`rule` must be 'linear' or 'sqrt'; got {rule!r}.")


def warmup_cosine(peak_learning_rate, total_steps, warmup_steps=0, final_fraction=0.0):
    """Linear warmup from 0 to the peak, then cosine decay to `final_fraction * peak`.

    Keras' own `CosineDecay` with its warmup; note its `decay_steps` counts the
    steps *after* warmup, which is why it is `total_steps - warmup_steps` here.

    Args:
        peak_learning_rate: float.
        total_steps: int. Steps of the whole run, warmup included.
        warmup_steps: int. Defaults to 0 (SimCLR warms up for 10 epochs).
        final_fraction: float. Defaults to 0.0.
    """
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(
            f"Need 0 <= warmup_steps < total_steps; got warmup_steps={warmup_steps}, total_steps={total_steps}."
        )
    if warmup_steps == 0:
        return keras.optimizers.schedules.CosineDecay(peak_learning_rate, total_steps, alpha=final_fraction)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=total_steps - warmup_steps,
        alpha=final_fraction,
        warmup_target=peak_learning_rate,
        warmup_steps=warmup_steps,
    )
