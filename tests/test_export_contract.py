"""The serving and saving contract of exported / saved models, end to end.

What `test_export.py` does not cover: the TF1 session path TF Serving itself
uses, `saved_model_cli run`, an export of an encoder trained with synchronized
BatchNorm on 2 replicas, a process killed in the middle of an export, path
traversal through `version`, and safe-mode `.keras` round trips of every
trainer and encoder.
"""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import NO_KERAS_PRELUDE
from conftest import random_views
from conftest import train

import keras_contrastive as kc

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W, C = 16, 16, 3


def _subprocess_env():
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(cmd, timeout=180):
    return subprocess.run(cmd, capture_output=True, text=True, env=_subprocess_env(), timeout=timeout)


def _images(n, seed, channels=C):
    return np.random.default_rng(seed).integers(0, 256, size=(n, H, W, channels), dtype=np.uint8)


def _reference(encoder, images):
    """What serving must compute, computed here with Keras: encoder(uint8 / 255) in inference mode."""
    x = images.astype("float32") / 255.0
    return keras.ops.convert_to_numpy(encoder(x, training=False))


def _perturb(model, seed):
    """Moves every float weight away from its initializer, BN statistics included.

    At initialization BN's moving mean/variance are 0/1 and the residual
    branches' last gamma is 0 (zero_init_residual), so a save/load or an
    export that dropped those would still reproduce the outputs; perturbed,
    it would not.
    """
    rng = np.random.default_rng(seed)
    for v in model.weights:
        if not v.dtype.startswith("float"):
            continue
        shape = tuple(v.shape)
        if "moving_variance" in v.path:
            new = rng.uniform(0.5, 2.0, shape)
        elif "moving_mean" in v.path:
            new = rng.normal(0.0, 0.2, shape)
        else:
            new = keras.ops.convert_to_numpy(v) + rng.normal(0.0, 0.05, shape)
        v.assign(new.astype(v.dtype))


def _library_encoder(seed=0):
    keras.utils.set_random_seed(seed)
    encoder = kc.encoders.ResNet18((H, W, C), width_multiplier=0.125, synchronized_bn=False)
    _perturb(encoder, seed)
    return encoder


@pytest.fixture(scope="module")
def encoder():
    encoder = _library_encoder()
    # BN mode must matter for these weights, or an export that ran BN in
    # training mode would pass the comparisons below.
    x = _images(8, seed=1).astype("float32") / 255.0
    infer = keras.ops.convert_to_numpy(encoder(x, training=False))
    trained = keras.ops.convert_to_numpy(encoder(x, training=True))
    assert np.max(np.abs(infer - trained)) > 1e-2
    return encoder


@pytest.fixture(scope="module")
def exported(encoder, tmp_path_factory):
    return kc.export.export_encoder(encoder, tmp_path_factory.mktemp("exported"))


# ------------------------------------------------------------ TF1 session path

# Same technique as test_export.py's `_LOAD_WITHOUT_KERAS`: `keras` resolves to
# a spec whose loader raises ImportError (TensorFlow 2.21 calls find_spec on
# it and only catches ImportError on import), `keras_contrastive` cannot be
# found at all. Then the SignatureDef is served the way TF Serving does:
# a TF1 Session, `loader.load(sess, ["serve"], dir)`, tensor names read from
# the MetaGraphDef, `sess.run`.
_SESSION_SERVER = NO_KERAS_PRELUDE + textwrap.dedent(
    """
    data_dir, version_dir, names = sys.argv[1], sys.argv[2], sys.argv[3:]
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        meta_graph = tf.compat.v1.saved_model.loader.load(sess, ["serve"], version_dir)
        signature = meta_graph.signature_def["serving_default"]
        input_name = signature.inputs["images"].name
        output_name = signature.outputs["embeddings"].name
        for name in names:
            images = np.load(os.path.join(data_dir, name + ".npy"))
            out = sess.run(output_name, feed_dict={input_name: images})
            np.save(os.path.join(data_dir, name + "_out.npy"), out)
            singles = [sess.run(output_name, feed_dict={input_name: images[i : i + 1]})
                       for i in range(len(images))]
            np.save(os.path.join(data_dir, name + "_singles.npy"), np.concatenate(singles))
        info = {
            "method_name": signature.method_name,
            "input_name": input_name,
            "output_name": output_name,
            "devices": [d.name for d in sess.list_devices()],
        }
    leaked = sorted(m for m in sys.modules if _blocked(m))
    assert not leaked, leaked
    with open(os.path.join(data_dir, "info.json"), "w") as f:
        json.dump(info, f)
    print("OK")
    """
)


def _serve_with_session(version_dir, batches, data_dir):
    """Runs `_SESSION_SERVER` on `{name: uint8 images}`; returns (info, {name: (batched, singles)})."""
    for name, images in batches.items():
        np.save(os.path.join(data_dir, name + ".npy"), images)
    result = _run([sys.executable, "-c", _SESSION_SERVER, str(data_dir), str(version_dir), *batches])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("OK")
    with open(os.path.join(data_dir, "info.json")) as f:
        info = json.load(f)
    outputs = {
        name: tuple(np.load(os.path.join(data_dir, f"{name}_{kind}.npy")) for kind in ("out", "singles"))
        for name in batches
    }
    return info, outputs


def test_tf1_session_serving_matches_encoder(encoder, exported, tmp_path):
    batches = {f"batch{n}": _images(n, seed=20 + n) for n in (1, 3, 17, 7)}
    info, outputs = _serve_with_session(exported, batches, tmp_path)
    assert info["method_name"] == "tensorflow/serving/predict"
    dim = encoder.output_shape[-1]
    for name, images in batches.items():
        got, singles = outputs[name]
        assert got.dtype == np.float32 and got.shape == (len(images), dim), name
        np.testing.assert_allclose(got, _reference(encoder, images), rtol=0, atol=1e-5, err_msg=name)
    # A batch of 7 gives the rows of 7 one-image calls (no batch statistics).
    got7, singles7 = outputs["batch7"]
    assert singles7.shape == got7.shape
    np.testing.assert_allclose(singles7, got7, rtol=0, atol=1e-5)


def _saved_model_cli():
    # The console script installed with this interpreter's TensorFlow (a
    # PATH lookup could find another environment's); else the module.
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    if os.path.exists(cli):
        return [cli]
    return [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]


def test_saved_model_cli_run_matches_encoder(encoder, exported, tmp_path):
    images = _images(3, seed=31)
    inputs = tmp_path / "images.npy"
    np.save(inputs, images)
    outdir = tmp_path / "out"
    cmd = _saved_model_cli() + [
        "run", "--dir", exported, "--tag_set", "serve", "--signature_def", "serving_default",
        "--inputs", f"images={inputs}", "--outdir", str(outdir),
    ]  # fmt: skip
    result = _run(cmd)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(os.listdir(outdir)) == ["embeddings.npy"]
    got = np.load(outdir / "embeddings.npy")
    assert got.dtype == np.float32 and got.shape == (3, encoder.output_shape[-1])
    np.testing.assert_allclose(got, _reference(encoder, images), rtol=0, atol=1e-5)


# ------------------------------------------- trained on 2 replicas, synced BN


def _collective_mirrored_strategy(num_replicas):
    """MirroredStrategy whose cross-replica sums are CollectiveReduceV2 ops.

    conftest's `cpu_strategy` reduces with `ReductionToOneDevice`, which
    builds cross-replica sums from AddN and copies: a graph traced under it
    holds no collective op even in training mode (checked: the SyncBN
    all-reduce becomes AddN), so "no collective op in the export" could not
    fail. With `CollectiveAllReduce` (the all-reduce of
    MultiWorkerMirroredStrategy, and what TensorFlow's own MirroredStrategy
    tests use on CPUs) it can. `cross_device_ops.CollectiveAllReduce` has no
    public name. A group key range of its own keeps its collective groups
    apart from any other strategy's in the same process.
    """
    from tensorflow.python.distribute import cross_device_ops
    from tensorflow.python.distribute import cross_device_utils

    devices = [f"/cpu:{i}" for i in range(num_replicas)]
    reduce_ops = cross_device_ops.CollectiveAllReduce(
        devices=devices,
        group_size=num_replicas,
        options=tf.distribute.experimental.CommunicationOptions(),
        collective_keys=cross_device_utils.CollectiveKeys(group_key_start=9000),
    )
    return tf.distribute.MirroredStrategy(devices, cross_device_ops=reduce_ops)


def _op_types(graph_def):
    """Op types of a GraphDef's nodes and of every function in its library."""
    types = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        types |= {node.op for node in function.node_def}
    return types


def _saved_model_op_types(version_dir):
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(version_dir, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    assert len(saved_model.meta_graphs) >= 1
    types = set()
    for meta_graph in saved_model.meta_graphs:
        types |= _op_types(meta_graph.graph_def)
    return types


def _collective_ops(types):
    return sorted(t for t in types if "Collective" in t or "Nccl" in t)


@pytest.mark.slow
def test_export_of_encoder_trained_with_synced_bn_on_two_replicas(tmp_path):
    strategy = _collective_mirrored_strategy(2)
    assert strategy.num_replicas_in_sync == 2
    keras.utils.set_random_seed(1)
    with strategy.scope():
        encoder = kc.encoders.ResNet18((H, W, 1), width_multiplier=0.125, synchronized_bn=True)
        model = kc.SimCLR(encoder, projection_dim=8)
        model.compile(optimizer=keras.optimizers.SGD(0.1))
    sync_bn = [layer for layer in encoder._flatten_layers() if isinstance(layer, kc.layers.SyncBatchNormalization)]
    assert len(sync_bn) > 1
    history = train(model, random_views(n=16, channels=1), steps=2)
    assert np.isfinite(history["loss"]).all()
    # It trained: BN moving statistics left their initial 0.
    assert np.abs(keras.ops.convert_to_numpy(sync_bn[0].moving_mean)).max() > 1e-4

    # Negative control for the walk below: the same encoder in training mode
    # under the strategy does all-reduce its batch statistics with collectives,
    # and in inference mode it does not.
    spec = tf.TensorSpec([4, H, W, 1], tf.float32)

    def traced(training):
        fn = tf.function(lambda x: strategy.run(lambda y: encoder(y, training=training), args=(x,)))
        return _op_types(fn.get_concrete_function(spec).graph.as_graph_def())

    assert _collective_ops(traced(True)), "the walk finds no collective op where there must be one"
    assert not _collective_ops(traced(False))

    path = kc.export.export_encoder(model, tmp_path / "models")
    assert path == str(tmp_path / "models" / "1")
    served_ops = _saved_model_op_types(path)
    assert "Conv2D" in served_ops  # the walk reaches the encoder's computation
    assert not _collective_ops(served_ops), _collective_ops(served_ops)

    batches = {f"batch{n}": _images(n, seed=40 + n, channels=1) for n in (1, 5)}
    info, outputs = _serve_with_session(path, batches, tmp_path)
    cpus = [d for d in info["devices"] if "CPU" in d]
    assert len(cpus) == 1, info["devices"]  # a single-device server
    for name, images in batches.items():
        got, singles = outputs[name]
        np.testing.assert_allclose(got, _reference(encoder, images), rtol=0, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(singles, got, rtol=0, atol=1e-5, err_msg=name)


# ------------------------------------------------------- kill during export

_KILLED_EXPORT = textwrap.dedent(
    """
    import json, os, signal, sys

    import keras
    from keras_contrastive import export

    seam, export_dir, marker = sys.argv[1:]

    def die(tmp_path):
        files = sorted(
            os.path.relpath(os.path.join(root, f), tmp_path)
            for root, _, names in os.walk(tmp_path) for f in names
        )
        with open(marker, "w") as f:
            json.dump({"tmp_path": tmp_path, "files": files}, f)
        os.kill(os.getpid(), signal.SIGKILL)

    # Seams are module attributes looked up at call time. (Replacing
    # `tf.saved_model.save` is not one in a fresh process: Keras' call still
    # reaches the original there, measured with TF 2.21 / Keras 3.15.)
    if seam == "torn_saved_model_pb":
        # Variables written, saved_model.pb half written: the middle of
        # tf.saved_model.save.
        from tensorflow.python.lib.io import file_io

        real_write = file_io.atomic_write_string_to_file

        def write_half_then_die(filename, contents, *args, **kwargs):
            if os.path.basename(filename) != "saved_model.pb":
                return real_write(filename, contents, *args, **kwargs)
            with open(filename, "wb") as f:
                f.write(contents[: len(contents) // 2])
            die(os.path.dirname(filename))

        file_io.atomic_write_string_to_file = write_half_then_die
    elif seam == "after_saved_model_written":
        # The SavedModel is complete; its check, the metadata, encoder.keras
        # and the rename are still to come.
        def verify_then_die(path):
            die(path)

        export._verify_signatures = verify_then_die
    else:
        # The whole version is written; only the rename into place is left.
        def move_then_die(tmp_path, final_path, overwrite):
            die(tmp_path)

        export._move_into_place = move_then_die

    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3)(inp)
    x = keras.layers.BatchNormalization()(x)
    out = keras.layers.GlobalAveragePooling2D()(x)
    export.export_encoder(keras.Model(inp, out), export_dir)
    print("export finished: the seam was not reached")
    sys.exit(3)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("seam", ["torn_saved_model_pb", "after_saved_model_written", "before_rename"])
def test_kill_during_export_leaves_no_version(encoder, tmp_path, seam):
    export_dir = tmp_path / "models"
    marker = tmp_path / "marker.json"
    result = _run([sys.executable, "-c", _KILLED_EXPORT, seam, str(export_dir), str(marker)])
    assert result.returncode == -signal.SIGKILL, result.stdout + result.stderr
    with open(marker) as f:
        state = json.load(f)
    # The kill came after files were written, inside export_dir.
    assert os.path.dirname(state["tmp_path"]) == str(export_dir)
    assert "saved_model.pb" in state["files"]
    assert "variables/variables.index" in state["files"]
    written_metadata = "assets.extra/keras_contrastive.json" in state["files"]
    assert written_metadata == (seam == "before_rename")

    entries = os.listdir(export_dir)
    # Nothing TF Serving would take for a version (it parses names as int64).
    assert not [n for n in entries if re.fullmatch(r"[0-9]+", n)], entries
    # What was written is still there, under a hidden name (SIGKILL runs no cleanup).
    assert entries == [os.path.basename(state["tmp_path"])]
    assert entries[0].startswith(".")
    assert kc.export.next_version(export_dir) == 1

    path = kc.export.export_encoder(encoder, export_dir)
    assert path == str(export_dir / "1")
    images = _images(4, seed=50)
    served = tf.saved_model.load(path).signatures["serving_default"]
    np.testing.assert_allclose(
        served(images=tf.constant(images))["embeddings"].numpy(), _reference(encoder, images), rtol=0, atol=1e-5
    )


# test_export.py's test_bad_version passes "a" and "1"; these are the path-like
# strings a caller could smuggle into `<export_dir>/<version>`.
@pytest.mark.parametrize(
    "version",
    ["..", "../1", os.path.join("..", "..", "1"), "/tmp/1", os.path.abspath("1"), "1/2", "1\\2", ".", "", b"1"],
)
def test_path_like_versions_are_rejected(encoder, tmp_path, version):
    export_dir = tmp_path / "base" / "models"
    with pytest.raises(ValueError, match="`version` must be"):
        kc.export.export_encoder(encoder, export_dir, version=version)
    assert os.listdir(tmp_path) == []  # nothing created, inside or outside export_dir


def test_cli_rejects_path_like_version(tmp_path, capsys):
    model_file = tmp_path / "encoder.keras"
    inp = keras.Input((H, W, C))
    keras.Model(inp, keras.layers.GlobalAveragePooling2D()(inp)).save(model_file)
    for version in ["../1", "/tmp/1", "1/2"]:
        argv = ["export", "--model", str(model_file), "--export_dir", str(tmp_path / "models"), "--version", version]
        with pytest.raises(SystemExit) as exit_info:
            kc.export.main(argv)
        assert exit_info.value.code == 2
        assert "invalid int value" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["encoder.keras"]


def test_encoder_name_does_not_become_a_path(tmp_path):
    # The encoder's name goes into the metadata only; ".." must not move files.
    inp = keras.Input((H, W, C))
    model = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(inp), name="..")
    path = kc.export.export_encoder(model, tmp_path / "models")
    assert path == str(tmp_path / "models" / "1")
    assert os.listdir(tmp_path) == ["models"]
    assert os.listdir(tmp_path / "models") == ["1"]
    assert kc.export.load_metadata(path)["encoder"] == ".."


# ------------------------------------------------- safe-mode .keras round trips


def _lambda_layers(model):
    return [layer.name for layer in model._flatten_layers() if isinstance(layer, keras.layers.Lambda)]


def _saved_config(path):
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("config.json"))


def _class_entries(config):
    """Every serialized object (a dict with "class_name" and "module") in a saved config."""
    if isinstance(config, dict):
        if "class_name" in config and "module" in config:
            yield config
        for value in config.values():
            yield from _class_entries(value)
    elif isinstance(config, list):
        for value in config:
            yield from _class_entries(value)


def _not_registered_under_package(config):
    """Classes outside core Keras that are not registered as "keras_contrastive>Name"."""
    bad = []
    for entry in _class_entries(config):
        module, name, registered = entry["module"], entry["class_name"], entry.get("registered_name")
        if name.startswith("__"):  # "__tuple__", "__keras_tensor__", ...
            continue
        if module == "keras" or module.startswith("keras."):
            if registered not in (None, name):
                bad.append((module, name, registered))
            continue
        if (
            not module.startswith("keras_contrastive.")
            or registered != f"keras_contrastive>{name}"
            or keras.saving.get_registered_object(registered) is None
        ):
            bad.append((module, name, registered))
    return bad


def test_save_checks_can_fail(tmp_path):
    # The checks used below on a model that breaks both rules.
    @keras.saving.register_keras_serializable(package="other_package")
    class Scale(keras.layers.Layer):
        def call(self, x):
            return 2.0 * x

    class Unregistered(keras.layers.Layer):
        def call(self, x):
            return x + 1.0

    inp = keras.Input((4,))
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda x: x * 3.0, name="triple")])
    out = Unregistered()(Scale()(inner(inp)))
    model = keras.Model(inp, out)
    assert _lambda_layers(model) == ["triple"]  # found inside the nested model
    model.save(tmp_path / "m.keras")
    bad = _not_registered_under_package(_saved_config(tmp_path / "m.keras"))
    assert sorted(name for _, name, _ in bad) == ["Scale", "Unregistered"]


def _resnet18(synchronized_bn=False):
    return kc.encoders.ResNet18((H, W, C), width_multiplier=0.125, synchronized_bn=synchronized_bn)


def _vit():
    # ViT-Tiny's width (192, 3 heads) at 16x16 with 4x4 patches and one block.
    return kc.encoders.ViTTiny((H, W, C), patch_size=4, depth=1)


# (build, expected hyperparameters after reload: attribute and get_config()).
SAVED_MODELS = {
    "ResNet18": (lambda: _resnet18(), {}),
    "ResNet18_sync_bn": (lambda: _resnet18(synchronized_bn=True), {}),
    "ResNet50": (lambda: kc.encoders.ResNet50((H, W, C), stem="cifar", width_multiplier=0.0625), {}),
    "ViTTiny": (_vit, {}),
    "SimCLR": (
        lambda: kc.SimCLR(
            _resnet18(synchronized_bn=True),
            kc.augment.SimCLRAugmenter(H, color_jitter_strength=0.5, seed=3),
            temperature=0.3,
            projection_dim=8,
            projection_hidden_dim=12,
            seed=7,
        ),
        {
            "temperature": 0.3,
            "projection_dim": 8,
            "projection_hidden_dim": 12,
            "head_version": 2,
            "seed": 7,
            "synchronized_bn": False,
            "num_classes": None,
        },
    ),
    "SimCLR_online_probe": (
        lambda: kc.SimCLR(_resnet18(), temperature=0.2, projection_dim=8, head_version=1, num_classes=5),
        {"temperature": 0.2, "head_version": 1, "num_classes": 5},
    ),
    "SupCon": (
        lambda: kc.SupCon(
            _resnet18(), temperature=0.2, base_temperature=0.1, contrast_mode="one", num_views=3, projection_dim=8
        ),
        {"temperature": 0.2, "base_temperature": 0.1, "contrast_mode": "one", "num_views": 3, "projection_dim": 8},
    ),
    "MoCoV3_ResNet18": (
        lambda: kc.MoCoV3(
            _resnet18(), temperature=0.7, base_momentum=0.95, total_steps=50, projection_dim=8, hidden_dim=16
        ),
        {
            "temperature": 0.7,
            "base_momentum": 0.95,
            "total_steps": 50,
            "projection_dim": 8,
            "hidden_dim": 16,
            "projector_layers": 2,
            "predictor_layers": 2,
        },
    ),
    "MoCoV3_ViTTiny": (
        lambda: kc.MoCoV3(_vit(), temperature=0.2, projection_dim=8, hidden_dim=16, num_classes=3),
        {"temperature": 0.2, "projector_layers": 3, "num_classes": 3},
    ),
}


@pytest.mark.parametrize("name", list(SAVED_MODELS))
def test_keras_file_round_trip_in_safe_mode(name, tmp_path):
    build, hyperparameters = SAVED_MODELS[name]
    keras.utils.set_random_seed(0)
    model = build()
    is_trainer = isinstance(model, kc.trainers.base.ContrastiveTrainer)
    if name == "SimCLR":
        # The optimizer is saved too: it must be registered and load in safe mode.
        model.compile(optimizer=kc.optimizers.LARS(0.2, weight_decay=1e-4, eta=0.002))
        model.optimizer.build(model.trainable_variables)
    # The momentum branch of MoCo v3 starts equal to the query branch; the
    # perturbation moves it elsewhere, so a reload that mixed the two up fails.
    _perturb(model, seed=1)
    path = tmp_path / f"{name}.keras"
    model.save(path)

    config = _saved_config(path)
    assert not _not_registered_under_package(config), _not_registered_under_package(config)
    assert not [e for e in _class_entries(config) if e["class_name"] == "Lambda"]

    reloaded = keras.saving.load_model(path, safe_mode=True)
    assert type(reloaded) is type(model)
    assert not _lambda_layers(reloaded)
    # The walk reaches the layers inside the (nested) encoder.
    assert any(isinstance(layer, keras.layers.Conv2D) for layer in reloaded._flatten_layers())

    weights = [(v.path, keras.ops.convert_to_numpy(v)) for v in model.weights]
    reloaded_weights = [(v.path, keras.ops.convert_to_numpy(v)) for v in reloaded.weights]
    assert [p for p, _ in reloaded_weights] == [p for p, _ in weights]
    for (p, want), (_, got) in zip(weights, reloaded_weights):
        np.testing.assert_array_equal(got, want, err_msg=p)

    x = _images(5, seed=60).astype("float32") / 255.0
    encoder, reloaded_encoder = (model.encoder, reloaded.encoder) if is_trainer else (model, reloaded)
    want = keras.ops.convert_to_numpy(encoder(x, training=False))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(reloaded_encoder(x, training=False)), want, rtol=0, atol=1e-6)
    if is_trainer:
        np.testing.assert_allclose(keras.ops.convert_to_numpy(reloaded(x)), want, rtol=0, atol=1e-6)
        reloaded_config = reloaded.get_config()
        for key, value in hyperparameters.items():
            assert getattr(reloaded, key) == value, key
            assert reloaded_config[key] == value, key
        # Compared as JSON, the form a .keras file stores (tuples come back as lists).
        scalar = lambda c: json.loads(json.dumps({k: v for k, v in c.items() if k not in ("encoder", "augmenter")}))  # noqa: E731
        assert scalar(reloaded_config) == scalar(model.get_config())
        assert (reloaded.probe is None) == (hyperparameters.get("num_classes") is None)
    if name == "SimCLR":
        assert isinstance(reloaded.augmenter, kc.augment.SimCLRAugmenter)
        assert reloaded.augmenter.get_config() == model.augmenter.get_config()
        assert isinstance(reloaded.optimizer, kc.optimizers.LARS)
        assert reloaded.optimizer.get_config() == model.optimizer.get_config()
