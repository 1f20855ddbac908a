import json

import pytest
import tensorflow as tf

from keras_contrastive import distribute


def test_strategy_by_name(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute.strategy("default") is tf.distribute.get_strategy()
    mirrored = distribute.strategy("mirrored")
    assert isinstance(mirrored, tf.distribute.MirroredStrategy)
    assert distribute.strategy("auto") is tf.distribute.get_strategy()  # no GPU, no TF_CONFIG
    with pytest.raises(ValueError, match="Unknown strategy"):
        distribute.strategy("gpu")
    with pytest.raises(ValueError, match="TF_CONFIG"):
        distribute.strategy("multi_worker")


def test_auto_reads_tf_config_workers(monkeypatch):
    cluster = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(cluster))
    calls = []
    monkeypatch.setattr(tf.distribute, "MultiWorkerMirroredStrategy", lambda: calls.append(1) or "mwms")
    assert distribute.strategy("auto") == "mwms" and calls == [1]


def test_replica_helpers_without_a_strategy():
    assert distribute.num_replicas() == 1
    assert int(distribute.replica_id()) == 0
    x = tf.constant([[1.0, 2.0]])
    assert distribute.all_gather(x) is x
    assert distribute.check_even_split(3) is None
