"""Test setup: split the CPU into 4 logical devices before TensorFlow starts.

MirroredStrategy over these devices runs the multi-replica code paths (all_gather,
synchronized BatchNorm, gradient all-reduce) on a machine without accelerators.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

NUM_LOGICAL_CPUS = 4

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(NUM_LOGICAL_CPUS)]
)


def cpu_strategy(num_replicas):
    """MirroredStrategy over `num_replicas` logical CPUs (1 -> the default strategy)."""
    if num_replicas == 1:
        return tf.distribute.get_strategy()
    devices = [f"/cpu:{i}" for i in range(num_replicas)]
    return tf.distribute.MirroredStrategy(devices, cross_device_ops=tf.distribute.ReductionToOneDevice())


@pytest.fixture
def rng():
    return np.random.default_rng(0)
