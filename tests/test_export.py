"""Tests for keras_contrastive.export (SavedModel export for TF Serving) and keras_contrastive.savedmodel."""

import io
import json
import os
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import NO_KERAS_PRELUDE

from keras_contrastive import export
from keras_contrastive import savedmodel

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W, C, DIM = 16, 16, 3, 8


def _subprocess_env():
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _images(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, H, W, C), dtype=np.uint8)


def _reference(encoder, images):
    x = images.astype("float32") / 255.0
    return keras.ops.convert_to_numpy(encoder(x, training=False))


@pytest.fixture(scope="module")
def encoder():
    keras.utils.set_random_seed(0)
    inp = keras.Input((H, W, C))
    x = keras.layers.Conv2D(4, 3)(inp)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(DIM)(x)
    model = keras.Model(inp, out, name="tiny_encoder")
    # Moving statistics far from the batch statistics, so that an export that
    # ran BatchNormalization in training mode would give different numbers.
    bn = model.layers[2]
    assert isinstance(bn, keras.layers.BatchNormalization)
    bn.moving_mean.assign(np.linspace(-0.3, 0.4, 4).astype("float32"))
    bn.moving_variance.assign(np.linspace(0.05, 3.0, 4).astype("float32"))
    bn.gamma.assign(np.array([1.5, 0.5, 2.0, 1.0], "float32"))
    bn.beta.assign(np.array([0.2, -0.1, 0.3, 0.5], "float32"))
    x = _images(5, seed=1).astype("float32") / 255.0
    infer = keras.ops.convert_to_numpy(model(x, training=False))
    train = keras.ops.convert_to_numpy(model(x, training=True))
    assert np.max(np.abs(infer - train)) > 1e-2
    return model


@pytest.fixture(scope="module")
def exported(encoder, tmp_path_factory):
    export_dir = tmp_path_factory.mktemp("exported")
    metadata = {"dataset": "unit-test", "epochs": 2, "acc": np.float32(0.5)}
    path = export.export_encoder(encoder, export_dir, metadata=metadata)
    return path


def _entries(export_dir):
    return sorted(os.listdir(export_dir))


def test_versioning_layout_and_overwrite(encoder, tmp_path):
    path1 = export.export_encoder(encoder, tmp_path)
    assert path1 == str(tmp_path / "1")
    assert os.path.isfile(os.path.join(path1, "saved_model.pb"))
    assert os.path.isdir(os.path.join(path1, "variables"))
    assert os.listdir(os.path.join(path1, "variables"))
    path2 = export.export_encoder(encoder, tmp_path, metadata={"run": "b"})
    assert path2 == str(tmp_path / "2")
    assert export.next_version(tmp_path) == 3

    with pytest.raises(ValueError, match="already exists.*overwrite=True"):
        export.export_encoder(encoder, tmp_path, version=1)
    assert "run" not in export.load_metadata(path1)
    path1b = export.export_encoder(encoder, tmp_path, version=1, overwrite=True, metadata={"run": "c"})
    assert path1b == path1
    assert export.load_metadata(path1)["run"] == "c"
    # Explicit versions may leave gaps; the next free one follows the max.
    assert export.export_encoder(encoder, tmp_path, version=7).endswith("7")
    assert export.next_version(tmp_path) == 8
    # No temporary or moved-aside directories are left behind.
    assert _entries(tmp_path) == ["1", "2", "7"]


def test_next_version_ignores_hidden_and_non_numeric(tmp_path):
    assert export.next_version(tmp_path / "missing") == 1
    assert export.next_version(tmp_path) == 1
    for name in ["3", "10", ".tmp-99-abc", "abc", "1.5"]:
        os.makedirs(tmp_path / name)
    assert export.next_version(tmp_path) == 11


def test_exports_encoder_of_trainer(encoder, tmp_path):
    class Trainer(keras.Model):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder
            self.head = keras.layers.Dense(3)

        def call(self, x):
            return self.head(self.encoder(x))

    trainer = Trainer(encoder)
    trainer(np.zeros((1, H, W, C), "float32"))
    path = export.export_encoder(trainer, tmp_path / "models")
    meta = export.load_metadata(path)
    assert meta["encoder"] == "tiny_encoder"
    assert meta["output"]["dim"] == DIM  # not the head's 3

    # Any object with an `.encoder` keras.Model works (duck typing).
    class Holder:
        pass

    holder = Holder()
    holder.encoder = encoder
    path = export.export_encoder(holder, tmp_path / "models")
    assert path == str(tmp_path / "models" / "2")
    images = _images(2, seed=5)
    served = tf.saved_model.load(path).signatures["serving_default"]
    np.testing.assert_allclose(
        served(images=tf.constant(images))["embeddings"].numpy(),
        _reference(encoder, images),
        atol=1e-5,
    )


# Blocks `keras` and `keras_contrastive`. TF 2.21's `import tensorflow` calls
# `importlib.util.find_spec("keras")` (only to locate the lazy `tf.keras`
# API directory; it catches ValueError, not ImportError) and then tries
# `import keras.src.optimizers` inside `try/except ImportError`. So `find_spec`
# must not raise for `keras`: it returns a spec whose loader raises
# ImportError, which to TensorFlow looks exactly like keras not installed.
_LOAD_WITHOUT_KERAS = NO_KERAS_PRELUDE + textwrap.dedent(
    """
    data_dir, path = sys.argv[1], sys.argv[2]
    loaded = tf.saved_model.load(path)
    serve = loaded.signatures["serving_default"]
    normalized = loaded.signatures["embed_normalized"]
    for n in (1, 3, 17, 7):
        images = tf.constant(np.load(os.path.join(data_dir, f"images_{n}.npy")))
        out = serve(images=images)
        assert sorted(out) == ["embeddings"], sorted(out)
        np.save(os.path.join(data_dir, f"out_{n}.npy"), out["embeddings"].numpy())
        out = normalized(images=images)["embeddings"].numpy()
        np.save(os.path.join(data_dir, f"normalized_{n}.npy"), out)
    images = np.load(os.path.join(data_dir, "images_7.npy"))
    singles = [serve(images=tf.constant(images[i : i + 1]))["embeddings"].numpy()
               for i in range(len(images))]
    np.save(os.path.join(data_dir, "singles_7.npy"), np.concatenate(singles))
    leaked = sorted(
        m for m in sys.modules if _blocked(m) or m.startswith("keras_contrastive")
    )
    assert not leaked, leaked
    print("OK")
    """
)


def test_serving_without_keras_matches_encoder(encoder, exported, tmp_path):
    for i, n in enumerate((1, 3, 17, 7)):
        np.save(tmp_path / f"images_{n}.npy", _images(n, seed=10 + i))
    result = subprocess.run(
        [sys.executable, "-c", _LOAD_WITHOUT_KERAS, str(tmp_path), exported],
        capture_output=True,
        text=True,
        env=_subprocess_env(),
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("OK")

    for n in (1, 3, 17, 7):
        images = np.load(tmp_path / f"images_{n}.npy")
        expected = _reference(encoder, images)
        got = np.load(tmp_path / f"out_{n}.npy")
        assert got.dtype == np.float32 and got.shape == (n, DIM)
        np.testing.assert_allclose(got, expected, atol=1e-5)
        normalized = np.load(tmp_path / f"normalized_{n}.npy")
        np.testing.assert_allclose(np.linalg.norm(normalized, axis=1), np.ones(n), atol=1e-5)
        np.testing.assert_allclose(
            normalized,
            expected / np.linalg.norm(expected, axis=1, keepdims=True),
            atol=1e-5,
        )
    # A batch gives the same rows as one call per image (no batch statistics).
    np.testing.assert_allclose(
        np.load(tmp_path / "singles_7.npy"),
        np.load(tmp_path / "out_7.npy"),
        atol=1e-5,
    )


def test_signature_names_in_loaded_model(exported):
    signatures = tf.saved_model.load(exported).signatures
    assert sorted(signatures) == ["embed_normalized", "serving_bytes", "serving_default"]
    for name in ["embed_normalized", "serving_default"]:
        args, kwargs = signatures[name].structured_input_signature
        assert args == ()
        assert list(kwargs) == ["images"]
        assert kwargs["images"].dtype == tf.uint8
        assert kwargs["images"].shape.as_list() == [None, H, W, C]
        outputs = signatures[name].structured_outputs
        assert list(outputs) == ["embeddings"]
        assert outputs["embeddings"].dtype == tf.float32
        assert outputs["embeddings"].shape.as_list() == [None, DIM]


def test_static_contract_read_from_the_proto(exported):
    """What the model server reads, from saved_model.pb itself: one MetaGraph tagged "serve",
    predict signatures with their documented keys, dtypes and shapes."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(exported, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    assert len(proto.meta_graphs) == 1
    meta = proto.meta_graphs[0]
    assert list(meta.meta_info_def.tags) == ["serve"]
    signatures = {k: v for k, v in meta.signature_def.items() if not k.startswith("__")}
    assert sorted(signatures) == ["embed_normalized", "serving_bytes", "serving_default"]

    def shape(info):
        return [d.size for d in info.tensor_shape.dim]

    for name, sig in signatures.items():
        assert sig.method_name == "tensorflow/serving/predict"
        assert list(sig.outputs) == ["embeddings"]
        assert sig.outputs["embeddings"].dtype == tf.float32.as_datatype_enum
        assert shape(sig.outputs["embeddings"]) == [-1, DIM]
        if name == "serving_bytes":
            assert list(sig.inputs) == ["image_bytes"]
            assert sig.inputs["image_bytes"].dtype == tf.string.as_datatype_enum
            assert shape(sig.inputs["image_bytes"]) == [-1]
        else:
            assert list(sig.inputs) == ["images"]
            assert sig.inputs["images"].dtype == tf.uint8.as_datatype_enum
            assert shape(sig.inputs["images"]) == [-1, H, W, C]
    assert os.path.exists(os.path.join(exported, "assets.extra", "tf_serving_warmup_requests"))


def test_saved_model_cli_show(exported):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    if os.path.exists(cli):
        cmd = [cli]
    else:
        cmd = [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
    cmd += [
        "show", "--dir", exported, "--tag_set", "serve",
        "--signature_def", "serving_default",
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, env=_subprocess_env(), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    inputs, outputs = out.split("outputs")[:2]
    assert "['images']" in inputs and "DT_UINT8" in inputs
    assert "(-1, 16, 16, 3)" in inputs
    assert "['embeddings']" in outputs and "DT_FLOAT" in outputs
    assert "(-1, 8)" in outputs
    assert "output_0" not in out


def test_metadata(encoder, exported):
    meta = export.load_metadata(exported)
    assert meta["format"] == 1
    assert meta["input"] == {
        "name": "images",
        "dtype": "uint8",
        "shape": [None, H, W, C],
        "preprocessing": "float32 = uint8 / 255",
    }
    assert meta["output"] == {"name": "embeddings", "dim": DIM}
    assert meta["encoder"] == "tiny_encoder"
    assert meta["keras_version"] == keras.__version__
    assert meta["tensorflow_version"] == tf.__version__
    assert meta["created"].startswith("20") and "T" in meta["created"]
    assert meta["dataset"] == "unit-test" and meta["epochs"] == 2
    assert meta["acc"] == 0.5 and isinstance(meta["acc"], float)
    raw = os.path.join(exported, "assets.extra", "keras_contrastive.json")
    with open(raw) as f:
        assert json.load(f) == meta


@pytest.mark.parametrize("version", [0, -1, "a", 1.0, True, "1"])
def test_bad_version(encoder, tmp_path, version):
    export_dir = tmp_path / "models"
    with pytest.raises(ValueError, match="`version` must be"):
        export.export_encoder(encoder, export_dir, version=version)
    assert not export_dir.exists()  # validated before anything is created


def test_bad_arguments(encoder, tmp_path):
    with pytest.raises(ValueError, match="`export_dir` must be a str"):
        export.export_encoder(encoder, 123)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is a file"):
        export.export_encoder(encoder, tmp_path / "file")
    with pytest.raises(ValueError, match="`.encoder` attribute"):
        export.export_encoder(object(), tmp_path)
    with pytest.raises(ValueError, match="computed from the exported graph"):
        export.export_encoder(encoder, tmp_path, metadata={"output": 1})
    with pytest.raises(ValueError, match="JSON-serializable"):
        export.export_encoder(encoder, tmp_path, metadata={"a": object()})
    flat = keras.Sequential([keras.Input((5,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match=r"\[batch, H, W, C\]"):
        export.export_encoder(flat, tmp_path)
    with pytest.raises(ValueError, match="No keras_contrastive metadata"):
        export.load_metadata(tmp_path)
    assert _entries(tmp_path) == ["file"]


def _fail_after_full_write(monkeypatch):
    # The SavedModel is completely written to the temp dir, then the export
    # fails: the rename into place must not happen.
    real_save = tf.saved_model.save

    def save_then_fail(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)
        assert os.path.isfile(os.path.join(path, "saved_model.pb"))
        # Written under a hidden name in export_dir (same filesystem, ignored
        # by TF Serving), never under a version number.
        parent, name = os.path.split(path)
        assert name.startswith(".tmp-")
        assert [n for n in os.listdir(parent) if not n.startswith(".")] == ["1"]
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(tf.saved_model, "save", save_then_fail)
    return RuntimeError


def _interrupt_before_rename(monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "_move_into_place", interrupt)
    return KeyboardInterrupt


@pytest.mark.parametrize("fail", [_fail_after_full_write, _interrupt_before_rename])
def test_failed_export_leaves_nothing(encoder, tmp_path, monkeypatch, fail):
    path1 = export.export_encoder(encoder, tmp_path, metadata={"run": "a"})
    error = fail(monkeypatch)
    with pytest.raises(error):
        export.export_encoder(encoder, tmp_path)
    with pytest.raises(error):
        export.export_encoder(encoder, tmp_path, version=1, overwrite=True, metadata={"run": "b"})
    assert _entries(tmp_path) == ["1"]
    assert export.load_metadata(path1)["run"] == "a"  # old version intact
    assert os.path.isfile(os.path.join(path1, "saved_model.pb"))


def test_describe(exported):
    out = io.StringIO()
    assert savedmodel.describe(exported, out) == exported
    out = out.getvalue()
    assert out.startswith(f"SavedModel: {exported}\n")
    assert "signature 'serving_default'" in out
    assert "signature 'embed_normalized'" in out
    assert "images: uint8 (DT_UINT8) shape [None, 16, 16, 3]" in out
    assert "embeddings: float32 (DT_FLOAT) shape [None, 8]" in out
    assert "image_bytes: string (DT_STRING) shape [None]" in out
    assert out.index("signature 'serving_default'") < out.index("signature 'embed_normalized'")  # the default first
    assert "__saved_model_init_op" not in out
    assert '"dataset": "unit-test"' in out


def test_cli_export_and_errors(encoder, tmp_path, capsys):
    model_file = str(tmp_path / "encoder.keras")
    encoder.save(model_file)
    export_dir = str(tmp_path / "models")
    argv = ["export", "--model", model_file, "--export_dir", export_dir]
    assert export.main(argv) == 0
    assert capsys.readouterr().out.strip() == os.path.join(export_dir, "1")
    assert export.main(argv + ["--version", "1"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert export.main(argv + ["--version", "5"]) == 0
    assert _entries(export_dir) == ["1", "5"]
    images = _images(4, seed=3)
    served = tf.saved_model.load(os.path.join(export_dir, "5"))
    np.testing.assert_allclose(
        served.signatures["serving_default"](images=tf.constant(images))["embeddings"].numpy(),
        _reference(encoder, images),
        atol=1e-5,
    )
    # Described from the base directory: its latest version.
    out = io.StringIO()
    assert savedmodel.describe(export_dir, out) == os.path.join(export_dir, "5")
    assert out.getvalue().startswith(f"SavedModel: {os.path.join(export_dir, '5')}\n")
    with pytest.raises(ValueError, match="No SavedModel found"):
        savedmodel.describe(str(tmp_path / "nothing"), io.StringIO())
    # `inspect` moved to `python -m keras_contrastive.inspect`.
    with pytest.raises(SystemExit) as exit_info:
        export.main(["inspect", export_dir])
    assert exit_info.value.code == 2
    assert "invalid choice: 'inspect'" in capsys.readouterr().err


def test_verify_signatures_rejects_keras_default_names(encoder, tmp_path):
    # What ExportArchive writes without named specs / dict outputs: the input
    # is named after the Python argument and the output "output_0".
    archive = keras.export.ExportArchive()
    archive.track(encoder)
    archive.add_endpoint(
        "serving_default",
        lambda x: encoder(tf.cast(x, "float32") / 255.0, training=False),
        input_signature=[tf.TensorSpec([None, H, W, C], tf.uint8)],
    )
    archive.write_out(str(tmp_path), verbose=False)
    sig = tf.saved_model.load(str(tmp_path)).signatures["serving_default"]
    assert list(sig.structured_outputs) == ["output_0"]
    with pytest.raises(RuntimeError, match="output_0"):
        export._verify_signatures(str(tmp_path))


def test_overwrite_restores_old_version_if_swap_fails(encoder, tmp_path, monkeypatch):
    path1 = export.export_encoder(encoder, tmp_path, metadata={"run": "a"})
    real_rename = os.rename

    def rename(src, dst):
        # Let the old version be moved aside, fail moving the new one in.
        if os.path.basename(src).startswith(".tmp-"):
            raise OSError("simulated rename failure")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="simulated"):
        export.export_encoder(encoder, tmp_path, version=1, overwrite=True)
    assert _entries(tmp_path) == ["1"]
    assert export.load_metadata(path1)["run"] == "a"


def test_bytes_signature_decodes_png_and_jpeg_like_the_uint8_path(encoder, exported):
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (3, H, W, C)).astype("uint8")
    loaded = tf.saved_model.load(exported)
    sig = loaded.signatures["serving_bytes"]
    args, kwargs = sig.structured_input_signature
    assert list(kwargs) == ["image_bytes"] and kwargs["image_bytes"].dtype == tf.string
    want = loaded.signatures["serving_default"](images=tf.constant(images))["embeddings"].numpy()
    pngs = tf.constant([tf.io.encode_png(im).numpy() for im in images])
    np.testing.assert_allclose(sig(image_bytes=pngs)["embeddings"].numpy(), want, atol=1e-5)
    # A larger JPEG is decoded and resized in the graph: close to resizing it here.
    big = np.repeat(np.repeat(images[:1], 2, axis=1), 2, axis=2)
    jpeg = tf.io.encode_jpeg(big[0], quality=100)
    got = sig(image_bytes=tf.stack([jpeg]))["embeddings"].numpy()
    decoded = tf.image.decode_jpeg(jpeg, channels=C)
    resized = tf.cast(tf.round(tf.image.resize(decoded, (H, W), antialias=True)), tf.uint8)
    ref = loaded.signatures["serving_default"](images=resized[None])["embeddings"].numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_temporaries_of_killed_exports_are_removed_once_stale(encoder, tmp_path):
    base = tmp_path / "model"
    stale, fresh = base / ".tmp-1-killed", base / ".tmp-1-running"
    for path in (stale, fresh):
        (path / "variables").mkdir(parents=True)
    old = time.time() - export.STALE_TEMPORARY_SECONDS - 60
    os.utime(stale, (old, old))
    assert export.export_encoder(encoder, str(base)).endswith("1")
    assert not stale.exists() and fresh.exists()  # a young one may be another process's export


# ------------------------------------------------------------- keras_contrastive.savedmodel


def _fake_version(path):
    # resolve_version looks for saved_model.pb only; an empty one will do.
    os.makedirs(path, exist_ok=True)
    open(os.path.join(path, "saved_model.pb"), "wb").close()
    return str(path)


def test_resolve_version(exported, tmp_path):
    assert savedmodel.resolve_version(exported) == exported  # a version directory is itself
    assert savedmodel.resolve_version(exported, version=1) == exported
    with pytest.raises(ValueError, match="is a version directory itself, not version 2"):
        savedmodel.resolve_version(exported, version=2)

    base = tmp_path / "model"
    for version in (1, 2, 10):
        _fake_version(base / str(version))
    _fake_version(base / ".tmp-11-abc")  # an export in progress
    for name in ("abc", "1.5", "12a", "-13", "٣"):
        _fake_version(base / name)
    os.makedirs(base / "14")  # a numbered directory without a SavedModel
    (base / "15").write_text("")  # a numbered file
    assert savedmodel.resolve_version(base) == str(base / "10")  # numerically, not "2" > "10"
    assert savedmodel.resolve_version(str(base)) == str(base / "10")
    assert savedmodel.resolve_version(base, version=2) == str(base / "2")
    with pytest.raises(ValueError, match=r"No version 3 in .* \(it has versions \[1, 2, 10\]\)"):
        savedmodel.resolve_version(base, version=3)
    with pytest.raises(ValueError, match="No version 14"):
        savedmodel.resolve_version(base, version=14)

    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "empty", tmp_path / "missing", base / "15"):
        with pytest.raises(ValueError, match="No SavedModel found"):
            savedmodel.resolve_version(path)
    with pytest.raises(ValueError, match="must be a str or os.PathLike"):
        savedmodel.resolve_version(None)
    for version in (-1, True, "2", 2.0):
        with pytest.raises(ValueError, match="`version` must be a non-negative int"):
            savedmodel.resolve_version(base, version=version)


def test_old_names_are_the_savedmodel_ones():
    import keras_contrastive as kc

    assert kc.savedmodel is savedmodel
    assert kc.downstream.resolve_version is savedmodel.resolve_version
    assert kc.export.load_metadata is savedmodel.load_metadata
    for name in (
        "INPUT_NAME", "OUTPUT_NAME", "SERVING_SIGNATURE", "NORMALIZED_SIGNATURE", "BYTES_SIGNATURE",
        "BYTES_INPUT_NAME", "METADATA_DIR", "METADATA_FILE", "KERAS_FILE", "METADATA_FORMAT",
    ):  # fmt: skip
        assert getattr(kc.export, name) == getattr(savedmodel, name), name
    assert kc.serving.WARMUP_FILE == savedmodel.WARMUP_FILE == "tf_serving_warmup_requests"
    assert kc.serving.METADATA_WARMUP == savedmodel.WARMUP_PATH == "assets.extra/tf_serving_warmup_requests"


# What each module may import of the package: no circle between export, serving
# and downstream, and savedmodel at the bottom.
ALLOWED_IMPORTS = {
    "savedmodel": set(),
    "serving": {"savedmodel"},
    "export": {"savedmodel", "serving"},
    "downstream": {"savedmodel", "layers"},
}


def _package_imports(source):
    """Modules of keras_contrastive that `source` imports anywhere, inside functions too."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] == "keras_contrastive":
                found |= {parts[1]} if len(parts) > 1 else {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            found |= {node.module.split(".")[0]} if node.module else {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "keras_contrastive" and len(parts) > 1:
                    found.add(parts[1])
    return found


def test_package_imports_follow_the_layers():
    # The reader itself, on the circle these modules had (lazy imports included).
    assert _package_imports(
        "from keras_contrastive import export\ndef f():\n    from keras_contrastive import serving"
    ) == {
        "export",
        "serving",
    }
    assert _package_imports("import keras_contrastive.layers\nfrom keras_contrastive.savedmodel import X") == {
        "layers",
        "savedmodel",
    }
    for module, allowed in ALLOWED_IMPORTS.items():
        with open(os.path.join(REPO_ROOT, "keras_contrastive", f"{module}.py")) as f:
            imported = _package_imports(f.read())
        assert imported <= allowed, (module, sorted(imported - allowed))


# Imports each module of the package in turn, afresh, without running the package's __init__ (which imports
# them all), and prints the package modules that came along with it. One process: TensorFlow and Keras stay
# loaded between the modules (a second import of theirs would cost seconds), the package's modules do not
# (Keras 3.15 accepts a class registered again under the same name).
_IMPORT_ALONE = textwrap.dedent(
    """
    import importlib, json, os, sys, types

    root, modules = sys.argv[1], sys.argv[2:]
    loaded = {}
    for module in modules:
        for name in [m for m in sys.modules if m == "keras_contrastive" or m.startswith("keras_contrastive.")]:
            del sys.modules[name]
        package = types.ModuleType("keras_contrastive")
        package.__path__ = [os.path.join(root, "keras_contrastive")]
        sys.modules["keras_contrastive"] = package
        importlib.import_module("keras_contrastive." + module)
        loaded[module] = sorted(m.split(".")[1] for m in sys.modules if m.startswith("keras_contrastive."))
    print(json.dumps(loaded))
    """
)


def test_importing_a_module_loads_only_the_ones_below_it():
    expected = {
        "savedmodel": ["savedmodel"],
        "serving": ["savedmodel", "serving"],
        "export": ["export", "savedmodel", "serving"],
        "downstream": ["distribute", "downstream", "layers", "savedmodel"],
    }
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALONE, REPO_ROOT, *expected],
        capture_output=True,
        text=True,
        env=_subprocess_env(),
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == expected
