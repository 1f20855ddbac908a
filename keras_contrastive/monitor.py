"""Collapse alarms: cheap statistics of a batch's embeddings that fall when a representation collapses.

Contrastive training can fail quietly: the loss falls while the embeddings
shrink onto a point or a few directions. These statistics read the tensors a
training step already has (no extra forward pass); the trainers report them as
metrics and `keras_contrastive.callbacks.CollapseMonitor` warns (or stops)
when they fall below thresholds.

- `projection_std`: the per-dimension standard deviation of the
  L2-normalized projections, averaged over dimensions. About `1/sqrt(d)` for
  embeddings spread over the sphere, 0 when every embedding is the same
  (SimSiam's collapse indicator, Chen & He 2021, section 4.1).
- `effective_rank`: `exp` of the entropy of the normalized singular values
  of a batch of encoder features (Roy & Vetterli 2007; RankMe, Garrido et al.
  2023): between 1 (all features on one direction) and `min(batch, dim)`.
- `alignment` and `uniformity` of the normalized projections (Wang & Isola
  2020): the mean squared distance between the two views of an image (lower
  is better aligned) and the log of the mean Gaussian potential
  `exp(-2 ||z_i - z_j||^2)` over pairs of different images (lower is more
  uniform; 0 for a collapsed batch, about -4 on a well-spread 128-d batch).
"""

import tensorflow as tf

#: What each step reports, in the order the trainers log them.
METRICS = ("projection_std", "effective_rank", "alignment", "uniformity")


def _normalized(z):
    return tf.math.l2_normalize(tf.cast(z, tf.float32), axis=-1)


def projection_std(z):
    """Mean over dimensions of the batch standard deviation of L2-normalized `z`.

    Args:
        z: float `[batch, dim]`.

    Returns:
        float32 scalar: about `1/sqrt(dim)` when healthy, 0 when collapsed.
    """
    return tf.reduce_mean(tf.math.reduce_std(_normalized(z), axis=0))


def effective_rank(features, epsilon=1e-7):
    """Effective rank of a batch of features: `exp(-sum p_k log p_k)`, `p = s / sum(s)` over singular values `s`.

    Args:
        features: float `[batch, dim]` (not centred, as RankMe).
        epsilon: float. Added to `p` inside the log. Defaults to 1e-7.

    Returns:
        float32 scalar in `[1, min(batch, dim)]`.
    """
    s = tf.linalg.svd(tf.cast(features, tf.float32), compute_uv=False)
    p = s / (tf.reduce_sum(s) + epsilon) + epsilon
    return tf.exp(-tf.reduce_sum(p * tf.math.log(p)))


def alignment(z1, z2):
    """Mean squared distance between matching rows of L2-normalized `z1` and `z2` `[batch, dim]` (alpha = 2)."""
    return tf.reduce_mean(tf.reduce_sum(tf.square(_normalized(z1) - _normalized(z2)), axis=-1))


def uniformity(z, t=2.0):
    """`log mean exp(-t ||z_i - z_j||^2)` over pairs `i != j` of L2-normalized `z` `[batch, dim]`."""
    z = _normalized(z)
    n = tf.shape(z)[0]
    # ||a - b||^2 = 2 - 2 a.b on the unit sphere.
    squared = tf.maximum(2.0 - 2.0 * tf.matmul(z, z, transpose_b=True), 0.0)
    # The diagonal masked with -inf rather than dropped: static shapes for XLA.
    potentials = tf.where(tf.eye(n, dtype=tf.bool), tf.constant(-float("inf")), -t * squared)
    count = tf.cast(n * (n - 1), tf.float32)
    return tf.reduce_logsumexp(potentials) - tf.math.log(count)


def collapse_metrics(features, projections):
    """Every statistic of `METRICS` from one step's tensors.

    Args:
        features: float `[batch, feature_dim]`: the encoder features of the first view.
        projections: list of float `[batch, dim]`, one per view (the first two are used for alignment).

    Returns:
        dict of float32 scalars named as `METRICS`.
    """
    z1 = projections[0]
    metrics = {
        "projection_std": projection_std(z1),
        "effective_rank": effective_rank(features),
        "uniformity": uniformity(z1),
    }
    if len(projections) > 1:
        metrics["alignment"] = alignment(z1, projections[1])
    return metrics
