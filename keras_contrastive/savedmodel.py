"""The layout of an export on disk, and reading it back without Keras.

One place for what `export` writes and what `serving`, `downstream` and the
`python -m keras_contrastive.inspect` command read: the names of the
signatures and their tensors, the files beside the SavedModel, which directory
is a version, and the readers of signatures and metadata. It imports nothing
else of this package, so every other module may import it.

```
<export_dir>/            the model directory (TF Serving's --model_base_path)
    1/                   a version directory
        saved_model.pb
        variables/
        assets.extra/keras_contrastive.json        METADATA_DIR/METADATA_FILE
        assets.extra/encoder.keras                 METADATA_DIR/KERAS_FILE
        assets.extra/tf_serving_warmup_requests    METADATA_DIR/WARMUP_FILE
    2/
        ...
```

Example:

```python
from keras_contrastive import savedmodel

version_path = savedmodel.resolve_version("/models/simclr")  # its highest version
savedmodel.load_metadata(version_path)["output"]["dim"]
sorted(savedmodel.read_signature_defs(version_path))
# ['__saved_model_init_op', 'embed_normalized', 'serving_bytes', 'serving_default']
savedmodel.describe("/models/simclr")  # prints signatures and metadata
```
"""

import json
import os
import sys

import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2

# Signatures and their tensors: the client contract of every export.
INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"
SERVING_SIGNATURE = "serving_default"
NORMALIZED_SIGNATURE = "embed_normalized"
BYTES_SIGNATURE = "serving_bytes"
BYTES_INPUT_NAME = "image_bytes"
# The MetaGraph tag set TF Serving loads.
SERVE_TAG = "serve"
SAVED_MODEL_FILE = "saved_model.pb"
# TF Serving ignores assets.extra/ except for the warmup file.
METADATA_DIR = "assets.extra"
METADATA_FILE = "keras_contrastive.json"
# The encoder as a Keras file beside the SavedModel, for fine-tuning with the
# full Keras semantics (BN in training mode).
KERAS_FILE = "encoder.keras"
METADATA_FORMAT = 1
# TF Serving reads this exact name under assets.extra/ and replays at most
# 1000 records (tensorflow/serving `g3doc/saved_model_warmup.md`).
WARMUP_FILE = "tf_serving_warmup_requests"
WARMUP_PATH = f"{METADATA_DIR}/{WARMUP_FILE}"


def is_version_name(name):
    """Whether TF Serving takes directory `name` for a version.

    It parses version directory names as int64; only plain ASCII digits count
    (not "1.0", "-1", "٣", or the hidden ".tmp-*" directories of exports in
    progress).
    """
    return name.isascii() and name.isdigit()


def _is_version_dir(path):
    return os.path.isfile(os.path.join(path, SAVED_MODEL_FILE))


def resolve_version(path, version=None):
    """The version directory of an export, chosen as TF Serving chooses it.

    Args:
        path: str or os.PathLike. A version directory (holding
            `saved_model.pb`), or a model directory holding numbered version
            directories.
        version: int or None. For a model directory, the version to use.
            Defaults to None, meaning its highest numbered version holding a
            `saved_model.pb` (hidden and non-numeric entries are ignored). For
            a version directory, None or its own number.

    Returns:
        str. The version directory: `path` itself, or `<path>/<version>`.

    Raises:
        ValueError: `path` does not exist, holds no SavedModel and no numbered
            version with one, or has no version `version`.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(
            "`path` must be a str or os.PathLike, got "
            f"{path!r} of type {type(path).__name__}. Pass a version directory "
            "('<export_dir>/<version>') or an export directory."
        )
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 0):
        raise ValueError(f"`version` must be a non-negative int or None, got {version!r}.")
    path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if _is_version_dir(path):
        name = os.path.basename(os.path.normpath(path))
        if version is not None and not (is_version_name(name) and int(name) == version):
            raise ValueError(
                f"{path!r} is a version directory itself, not version {version}. Pass its "
                "model directory to choose a version, or version=None."
            )
        return path
    if not os.path.isdir(path):
        raise ValueError(
            f"No SavedModel found at {path!r}: it does not exist or is not a directory. Pass a "
            "version directory ('<export_dir>/<version>') or an export directory holding numbered versions."
        )
    # {number: entry name}: "007" is version 7 to TF Serving, but only "007" exists.
    versions = {
        int(name): name
        for name in sorted(os.listdir(path))
        if is_version_name(name) and _is_version_dir(os.path.join(path, name))
    }
    if not versions:
        raise ValueError(
            f"No SavedModel found at {path!r}: it holds neither {SAVED_MODEL_FILE} nor a numbered "
            "version directory with one. Pass a version directory ('<export_dir>/<version>') or an "
            "export directory holding numbered versions."
        )
    if version is None:
        version = max(versions)
    elif version not in versions:
        raise ValueError(
            f"No version {version} in {path!r} (it has versions {sorted(versions)}). Pass one of them, "
            "or version=None for the highest."
        )
    return os.path.join(path, versions[version])


def read_signature_defs(version_path):
    """Parses `saved_model.pb` into `{name: SignatureDef}`, without loading the graph.

    Args:
        version_path: str or os.PathLike. A version directory.

    Returns:
        dict of str to `tensorflow.core.protobuf.meta_graph_pb2.SignatureDef`,
        those of the MetaGraph tagged "serve" (the one TF Serving loads),
        including TensorFlow's own `__saved_model_init_op`.
    """
    pb_path = os.path.join(os.fspath(version_path), SAVED_MODEL_FILE)
    if not os.path.isfile(pb_path):
        raise ValueError(
            f"No SavedModel at {os.fspath(version_path)!r}: "
            f"{pb_path!r} does not exist. Pass a version directory such as "
            "'<export_dir>/1'."
        )
    saved_model = saved_model_pb2.SavedModel()
    with open(pb_path, "rb") as f:
        saved_model.ParseFromString(f.read())
    for meta_graph in saved_model.meta_graphs:
        if SERVE_TAG in meta_graph.meta_info_def.tags:
            return dict(meta_graph.signature_def)
    raise ValueError(
        f"SavedModel at {os.fspath(version_path)!r} has no 'serve' tag set, "
        "so TF Serving cannot load it. Re-export it with "
        "`keras_contrastive.export.export_encoder`."
    )


def load_metadata(version_path):
    """Reads the metadata written by `export.export_encoder`.

    Args:
        version_path: str or os.PathLike. A version directory, e.g. the path
            returned by `export_encoder` (`<export_dir>/<version>`).

    Returns:
        dict. The JSON metadata: "format", "input" (name, dtype, shape,
        preprocessing), "output" (name, dim), "encoder", "keras_version",
        "tensorflow_version", "created", "signatures", "keras_file",
        "warmup_file" (None in exports made without the TF Serving protos)
        and any user entries.
    """
    if not isinstance(version_path, (str, os.PathLike)):
        raise ValueError(
            "`version_path` must be a str or os.PathLike, got "
            f"{version_path!r}. Pass a version directory, e.g. "
            "'/models/my_encoder/1'."
        )
    version_path = os.fspath(version_path)
    path = os.path.join(version_path, METADATA_DIR, METADATA_FILE)
    if not os.path.isfile(path):
        hint = ""
        if os.path.isdir(version_path) and not _is_version_dir(version_path):
            hint = (
                f" It holds no {SAVED_MODEL_FILE} either; pass a version directory "
                f"such as {os.path.join(version_path, '1')!r}."
            )
        raise ValueError(
            f"No keras_contrastive metadata at {path!r}: {version_path!r} was not written by `export_encoder`.{hint}"
        )
    with open(path) as f:
        return json.load(f)


def _format_tensor_info(name, info):
    if info.tensor_shape.unknown_rank:
        shape = "unknown rank"
    else:
        dims = [d.size for d in info.tensor_shape.dim]
        shape = "[" + ", ".join("None" if d < 0 else str(d) for d in dims) + "]"
    dtype = tf.dtypes.as_dtype(info.dtype).name
    enum_name = types_pb2.DataType.Name(info.dtype)  # As saved_model_cli shows it.
    return f"    {name}: {dtype} ({enum_name}) shape {shape}"


def describe(path, out=None):
    """Prints an export's signatures (names, dtypes, shapes) and metadata.

    Like `saved_model_cli show --all`, read from `saved_model.pb` without
    loading the graph, e.g. `images: uint8 (DT_UINT8) shape [None, 28, 28, 3]`;
    `serving_default` first, TensorFlow's internal `__*` signatures left out.
    Then the keras_contrastive metadata as JSON, or a line saying there is none.

    Args:
        path: str or os.PathLike. A version directory, or a model directory
            (its highest version, see `resolve_version`).
        out: text file or None. Where to print. Defaults to None, meaning
            `sys.stdout`.

    Returns:
        str. The version directory described.
    """
    out = sys.stdout if out is None else out
    version_path = resolve_version(path)
    print(f"SavedModel: {version_path}", file=out)
    signature_defs = read_signature_defs(version_path)
    # serving_default first: it is what TF Serving uses when none is named.
    names = sorted(signature_defs, key=lambda n: (n != SERVING_SIGNATURE, n))
    for sig_name in names:
        if sig_name.startswith("__"):  # e.g. __saved_model_init_op
            continue
        sig = signature_defs[sig_name]
        print(f"signature {sig_name!r} (method {sig.method_name}):", file=out)
        print("  inputs:", file=out)
        for name in sorted(sig.inputs):
            print(_format_tensor_info(name, sig.inputs[name]), file=out)
        print("  outputs:", file=out)
        for name in sorted(sig.outputs):
            print(_format_tensor_info(name, sig.outputs[name]), file=out)
    try:
        metadata = load_metadata(version_path)
    except ValueError:
        print("metadata: none (not written by keras_contrastive)", file=out)
    else:
        print("metadata:", file=out)
        print(json.dumps(metadata, indent=2, sort_keys=True), file=out)
    return version_path
