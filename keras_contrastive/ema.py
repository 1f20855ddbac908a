"""Momentum (exponential moving average) encoders: the update and its schedule."""

import math

from keras import ops


def ema_update(target_variables, source_variables, momentum):
    """`target <- momentum * target + (1 - momentum) * source`, variable by variable.

    Args:
        target_variables: list of variables (the momentum branch).
        source_variables: list of variables (the online / query branch), in
            the same order and shapes.
        momentum: float or scalar tensor in [0, 1].
    """
    target_variables, source_variables = list(target_variables), list(source_variables)
    if len(target_variables) != len(source_variables):
        raise ValueError(
            f"EMA needs matching variable lists; got {len(target_variables)} targets and "
            f"{len(source_variables)} sources."
        )
    for target, source in zip(target_variables, source_variables):
        m = ops.cast(momentum, target.dtype)
        target.assign(m * target + (1.0 - m) * ops.cast(source, target.dtype))


def cosine_momentum(step, total_steps, base_momentum=0.99):
    """MoCo v3 / BYOL momentum schedule: from `base_momentum` at step 0 to 1 at the end.

    m(k) = 1 - (1 - m0) * (1 + cos(pi * k / K)) / 2  (MoCo v3 reference code,
    `adjust_moco_momentum`; BYOL section 3.2).

    Args:
        step: int or scalar tensor, the current step k.
        total_steps: int K > 0.
        base_momentum: float m0 in [0, 1]. Defaults to 0.99.
    """
    if not 0.0 <= base_momentum <= 1.0:
        raise ValueError(f"`base_momentum` must be in [0, 1]; got {base_momentum}.")
    if total_steps <= 0:
        raise ValueError(f"`total_steps` must be > 0; got {total_steps}.")
    progress = ops.minimum(ops.cast(step, "float32") / float(total_steps), 1.0)
    return 1.0 - (1.0 - base_momentum) * 0.5 * (1.0 + ops.cos(math.pi * progress))
