"""Exports a trained encoder as a TensorFlow SavedModel that TF Serving serves as is.

Layout written by `export_encoder` (the one TF Serving polls):

```
<export_dir>/
    1/
        saved_model.pb
        variables/
        assets.extra/keras_contrastive.json
        assets.extra/encoder.keras
        assets.extra/tf_serving_warmup_requests
    2/
        ...
```

Each version is first written to a hidden temporary directory inside
`export_dir` (TF Serving skips names that are not integers) and renamed into
place only once complete, so a server polling `export_dir` never sees a
half-written version.

Signatures of every exported version:

- `serving_default`: `images` uint8 `[batch, H, W, C]` -> `embeddings` float32
  `[batch, dim]`. The `uint8 / 255` scaling runs inside the graph, so clients
  send raw pixels and cannot get the preprocessing wrong.
- `embed_normalized`: same input, L2-normalized `embeddings` (unit rows, ready
  for cosine / dot-product retrieval).
- `serving_bytes`: `image_bytes` string `[batch]` (encoded JPEG/PNG) ->
  `embeddings`, decoded and resized to H, W inside the graph.

`assets.extra/tf_serving_warmup_requests` holds a few requests that TF Serving
replays when it loads the version (`keras_contrastive.serving`). The names of
the layout live in `keras_contrastive.savedmodel` (re-exported here, e.g.
`export.INPUT_NAME`, `export.load_metadata`).

The SavedModel needs neither Keras nor this library to be loaded:
`tf.saved_model.load(path).signatures["serving_default"](images=...)` works
with TensorFlow alone.

Command line (`python -m keras_contrastive.inspect PATH` prints an export's
signatures and metadata):

```
python -m keras_contrastive.export export --model FILE.keras --export_dir DIR [--version N]
```
"""

import argparse
import datetime
import json
import numbers
import os
import shutil
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from keras_contrastive import savedmodel
from keras_contrastive import serving

# The layout's names and readers, under the names users know from this module.
from keras_contrastive.savedmodel import BYTES_INPUT_NAME as BYTES_INPUT_NAME
from keras_contrastive.savedmodel import BYTES_SIGNATURE as BYTES_SIGNATURE
from keras_contrastive.savedmodel import INPUT_NAME as INPUT_NAME
from keras_contrastive.savedmodel import KERAS_FILE as KERAS_FILE
from keras_contrastive.savedmodel import METADATA_DIR as METADATA_DIR
from keras_contrastive.savedmodel import METADATA_FILE as METADATA_FILE
from keras_contrastive.savedmodel import METADATA_FORMAT as METADATA_FORMAT
from keras_contrastive.savedmodel import NORMALIZED_SIGNATURE as NORMALIZED_SIGNATURE
from keras_contrastive.savedmodel import OUTPUT_NAME as OUTPUT_NAME
from keras_contrastive.savedmodel import SERVING_SIGNATURE as SERVING_SIGNATURE
from keras_contrastive.savedmodel import WARMUP_PATH as WARMUP_PATH
from keras_contrastive.savedmodel import load_metadata as load_metadata

# Computed from the exported graph; letting `metadata=` override them would
# make the file contradict the SavedModel it describes.
_RESERVED_METADATA_KEYS = ("format", "input", "output", "warmup_file")


def _check_export_dir(export_dir):
    if not isinstance(export_dir, (str, os.PathLike)):
        raise ValueError(
            "`export_dir` must be a str or os.PathLike (e.g. pathlib.Path) "
            f"naming the model's base directory, got {export_dir!r} of type "
            f"{type(export_dir).__name__}. Pass e.g. '/models/my_encoder'; "
            "versions are written to its numbered subdirectories."
        )
    export_dir = os.fspath(export_dir)
    if isinstance(export_dir, bytes):
        export_dir = os.fsdecode(export_dir)
    if not export_dir:
        raise ValueError(
            "`export_dir` must be a non-empty path, got ''. Pass the model's base directory, e.g. '/models/my_encoder'."
        )
    if os.path.exists(export_dir) and not os.path.isdir(export_dir):
        raise ValueError(
            f"`export_dir` must be a directory, but {export_dir!r} exists and "
            "is a file. Pass a directory path (it is created if missing)."
        )
    return export_dir


def _check_version(version):
    # `bool` is an `int` subclass; `True` as a version is almost surely a bug.
    if isinstance(version, bool) or not isinstance(version, numbers.Integral):
        raise ValueError(
            "`version` must be a positive int (TF Serving version directories "
            f"are integers) or None, got {version!r} of type "
            f"{type(version).__name__}. Pass e.g. version=1, or version=None "
            "to use the next free version."
        )
    if version < 1:
        raise ValueError(
            f"`version` must be >= 1, got {version}. Pass a positive int, or version=None to use the next free version."
        )
    return int(version)


def next_version(export_dir):
    """Returns the next free version number under `export_dir`.

    Args:
        export_dir: str or os.PathLike. The model's base directory (the one
            holding the numbered version directories). It does not need to
            exist.

    Returns:
        int. 1 if `export_dir` is missing or holds no numbered entry,
        otherwise the largest numbered entry + 1 (gaps are not reused, so a
        new export always sorts as the latest version for TF Serving).
    """
    export_dir = _check_export_dir(export_dir)
    if not os.path.isdir(export_dir):
        return 1
    # Numbered files count too: renaming the new version onto them would fail.
    versions = [int(n) for n in os.listdir(export_dir) if savedmodel.is_version_name(n)]
    return max(versions, default=0) + 1


def _resolve_encoder(model_or_encoder):
    # Trainers are keras.Models themselves, so look for `.encoder` first: the
    # projection head is a training-time device and is not exported.
    encoder = getattr(model_or_encoder, "encoder", None)
    if isinstance(encoder, keras.Model):
        return encoder
    if isinstance(model_or_encoder, keras.Model):
        return model_or_encoder
    raise ValueError(
        "`model_or_encoder` must be a keras.Model encoder or a trainer whose "
        "`.encoder` attribute is a keras.Model, got "
        f"{type(model_or_encoder).__name__} (its `.encoder` is "
        f"{type(encoder).__name__}). Pass e.g. `trainer` or `trainer.encoder`."
    )


def _image_shape(encoder):
    try:
        shape = encoder.input_shape
    except (AttributeError, ValueError):
        shape = None
    if (
        not isinstance(shape, (tuple, list))
        or len(shape) != 4
        or not all(isinstance(d, int) and d > 0 for d in shape[1:])
    ):
        raise ValueError(
            f"Encoder {encoder.name!r} must take one image input of shape "
            "[batch, H, W, C] with static H, W, C, but its `input_shape` is "
            f"{shape!r}. Build it as a functional model from "
            "`keras.Input((H, W, C))` (e.g. wrap a subclassed encoder: "
            "`inp = keras.Input((32, 32, 3)); keras.Model(inp, encoder(inp))`)."
        )
    return tuple(int(d) for d in shape[1:])


def _json_default(value):
    # Evaluation results are often numpy scalars (np.float32 accuracies);
    # storing them as plain numbers beats refusing the whole metadata.
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _check_metadata(metadata):
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
        raise ValueError(
            "`metadata` must be a dict with str keys or None, got "
            f"{metadata!r}. Pass e.g. metadata={{'dataset': 'cifar10'}}."
        )
    reserved = sorted(set(metadata) & set(_RESERVED_METADATA_KEYS))
    if reserved:
        raise ValueError(
            f"`metadata` may not set {reserved}: these keys are computed from "
            "the exported graph. Rename them (e.g. 'train_input')."
        )
    try:
        # Round trip now, so a bad value fails before anything is written.
        return json.loads(json.dumps(metadata, default=_json_default))
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"`metadata` must be JSON-serializable, got {metadata!r} ({e}). "
            "Use str, int, float, bool, None, lists and dicts (numpy values "
            "and paths are converted); convert e.g. dates with `str()`."
        ) from None


def _build_archive(encoder, image_shape):
    """Returns an `ExportArchive` with both signatures and the embedding dim."""
    spec = tf.TensorSpec([None, *image_shape], tf.uint8, name=INPUT_NAME)

    def embed(images):
        # A request without the batch axis would otherwise crash the serving
        # process inside the convolution (a CHECK failure, not an error), and
        # one of another size would silently give embeddings of the wrong
        # input: both become an INVALID_ARGUMENT for that request.
        images = tf.ensure_shape(images, [None, *image_shape])
        x = tf.cast(images, tf.float32) / 255.0
        # training=False: BatchNormalization must use its moving statistics
        # (and dropout must be off), whatever Keras' global learning phase is.
        y = encoder(x, training=False)
        if not tf.is_tensor(y) or y.shape.rank != 2:
            raise ValueError(
                f"Encoder {encoder.name!r} must return one tensor of shape "
                f"[batch, dim], got {y!r}. Add a pooling / Flatten layer at "
                "the end of the encoder, or export the backbone that ends in "
                "the feature vector (not a multi-output model)."
            )
        # float32 whatever the policy: the signature promises DT_FLOAT.
        return tf.cast(y, tf.float32)

    # Returning dicts names the outputs "embeddings"; a bare tensor would be
    # exported as "output_0". The TensorSpec name names the input "images"
    # (without it the Python argument name would be used).
    def serving_default(images):
        return {OUTPUT_NAME: embed(images)}

    def embed_normalized(images):
        return {OUTPUT_NAME: tf.math.l2_normalize(embed(images), axis=-1)}

    height, width, channels = image_shape

    def decode(encoded):
        image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
        image = tf.image.resize(image, (height, width), antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)

    # Encoded JPEG/PNG/BMP/GIF strings, the form REST clients send base64 in
    # {"b64": ...}: decoded and resized to the encoder's input in the graph.
    def serving_bytes(image_bytes):
        images = tf.map_fn(decode, image_bytes, fn_output_signature=tf.TensorSpec(image_shape, tf.uint8))
        return {OUTPUT_NAME: embed(images)}

    archive = keras.export.ExportArchive()
    archive.track(encoder)
    serve_fn = archive.add_endpoint(SERVING_SIGNATURE, serving_default, input_signature=[spec])
    archive.add_endpoint(NORMALIZED_SIGNATURE, embed_normalized, input_signature=[spec])
    archive.add_endpoint(
        BYTES_SIGNATURE,
        serving_bytes,
        input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT_NAME)],
    )
    out = serve_fn.get_concrete_function().structured_outputs[OUTPUT_NAME]
    dim = out.shape[-1]
    if dim is None:
        raise ValueError(
            f"Encoder {encoder.name!r} must have a static feature dimension, "
            f"got output shape {out.shape}. End the encoder with a layer of "
            "known width (e.g. Dense or GlobalAveragePooling2D)."
        )
    return archive, int(dim)


def _verify_signatures(version_path):
    # Checks the artifact TF Serving actually reads, so a change in how
    # ExportArchive / tf.saved_model name tensors cannot silently break the
    # client contract ("images" in, "embeddings" out).
    signature_defs = savedmodel.read_signature_defs(version_path)
    for name, input_name, input_dtype in (
        (SERVING_SIGNATURE, INPUT_NAME, tf.uint8),
        (NORMALIZED_SIGNATURE, INPUT_NAME, tf.uint8),
        (BYTES_SIGNATURE, BYTES_INPUT_NAME, tf.string),
    ):
        sig = signature_defs.get(name)
        got = None
        if sig is not None:
            got = (
                {k: v.dtype for k, v in sig.inputs.items()},
                {k: v.dtype for k, v in sig.outputs.items()},
            )
        expected = (
            {input_name: input_dtype.as_datatype_enum},
            {OUTPUT_NAME: tf.float32.as_datatype_enum},
        )
        if got != expected:
            raise RuntimeError(
                f"Exported signature {name!r} has (inputs, outputs) "
                f"{got}, expected {expected} (DataType enums). This is a bug "
                "in keras_contrastive.export with this Keras/TensorFlow "
                f"version (keras {keras.__version__}, tensorflow "
                f"{tf.__version__}); please report it."
            )


def _write_version(encoder, path, image_shape, user_metadata):
    """Writes the complete version (SavedModel + metadata) into `path`."""
    archive, dim = _build_archive(encoder, image_shape)
    archive.write_out(path, verbose=False)
    _verify_signatures(path)
    # `path` is the temporary directory inside export_dir, so its parent
    # names the model.
    serving.write_warmup_requests(path, model_name=os.path.basename(os.path.dirname(os.path.abspath(path))))
    metadata = {
        "format": METADATA_FORMAT,
        "input": {
            "name": INPUT_NAME,
            "dtype": "uint8",
            "shape": [None, *image_shape],
            "preprocessing": "float32 = uint8 / 255",
        },
        "output": {"name": OUTPUT_NAME, "dim": dim},
        "encoder": encoder.name,
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "signatures": [SERVING_SIGNATURE, NORMALIZED_SIGNATURE, BYTES_SIGNATURE],
        "keras_file": f"{METADATA_DIR}/{KERAS_FILE}",
        "warmup_file": WARMUP_PATH,
    }
    metadata.update(user_metadata)
    os.makedirs(os.path.join(path, METADATA_DIR), exist_ok=True)
    encoder.save(os.path.join(path, METADATA_DIR, KERAS_FILE))
    with open(os.path.join(path, METADATA_DIR, METADATA_FILE), "w") as f:
        json.dump(metadata, f, indent=2, sort_keys=True)
        f.write("\n")


def export_encoder(model_or_encoder, export_dir, version=None, *, overwrite=False, metadata=None):
    """Exports an encoder as a versioned SavedModel ready for TF Serving.

    Writes `<export_dir>/<version>/` with `saved_model.pb`, `variables/`,
    `assets.extra/keras_contrastive.json`, `assets.extra/encoder.keras` and
    `assets.extra/tf_serving_warmup_requests` (requests TF Serving replays at
    load time, see `serving.write_warmup_requests`; the TF Serving protos are
    a dependency, and without them the export fails before writing anything).
    The version is first written to a hidden temporary directory inside
    `export_dir` and renamed into place when complete; on any error the
    temporary directory is removed, so a numbered directory is always a
    complete SavedModel.

    Signatures (both take `images`, uint8 `[batch, H, W, C]`, any batch size):

    - `serving_default`: `{"embeddings": float32 [batch, dim]}`, computed as
      `encoder(float32(images) / 255, training=False)`.
    - `embed_normalized`: `{"embeddings": ...}` with L2-normalized rows.

    Example:

    ```python
    path = export_encoder(trainer, "/models/simclr")  # "/models/simclr/1"
    served = tf.saved_model.load(path).signatures["serving_default"]
    emb = served(images=tf.constant(uint8_batch))["embeddings"]
    ```

    Args:
        model_or_encoder: keras.Model. Either the encoder itself (float32
            images in [0, 1], `[batch, H, W, C]` with static H, W, C, to
            `[batch, dim]`) or a trainer whose `.encoder` attribute is one;
            a trainer's projection head is not exported.
        export_dir: str or os.PathLike. The model's base directory, the one TF
            Serving's `--model_base_path` points to. Created if missing.
        version: int >= 1 or None. Version directory name. Defaults to None,
            meaning `next_version(export_dir)` (1 for an empty directory).
        overwrite: bool. Whether to replace an existing `<version>` directory.
            The old one is moved aside, the new one renamed in, then the old
            one deleted (so the version is briefly absent, never partial).
            Defaults to False.
        metadata: dict or None. JSON-serializable extra entries merged into the
            metadata file (e.g. `{"dataset": "cifar10", "epochs": 500}`;
            numpy scalars / arrays and paths are converted); may
            override "encoder" or "created" but not "format", "input" or
            "output". Defaults to None.

    Returns:
        str. The version directory, `<export_dir>/<version>`.
    """
    encoder = _resolve_encoder(model_or_encoder)
    export_dir = _check_export_dir(export_dir)
    if version is not None:
        version = _check_version(version)
    if not isinstance(overwrite, bool):
        raise ValueError(f"`overwrite` must be True or False, got {overwrite!r}.")
    user_metadata = _check_metadata(metadata)
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            "export_encoder needs the TensorFlow Keras backend, got "
            f"{keras.backend.backend()!r}. Set KERAS_BACKEND=tensorflow before "
            "importing keras."
        )
    image_shape = _image_shape(encoder)
    # The warmup file needs TF Serving's protos: fail before anything is written.
    serving._serving_apis()

    os.makedirs(export_dir, exist_ok=True)
    _remove_stale_temporaries(export_dir)
    if version is None:
        version = next_version(export_dir)
    final_path = os.path.join(export_dir, str(version))
    if os.path.lexists(final_path) and not overwrite:
        raise ValueError(
            f"Version {version} already exists at {final_path!r}. Pass "
            "overwrite=True to replace it, or version=None to write "
            f"version {next_version(export_dir)}."
        )

    # Same directory => same filesystem, so the final rename is atomic. The
    # leading "." keeps TF Serving (and `next_version`) from treating it as a
    # version while it is being written.
    tmp_path = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=export_dir)
    try:
        _write_version(encoder, tmp_path, image_shape, user_metadata)
        _move_into_place(tmp_path, final_path, overwrite)
    except BaseException:
        shutil.rmtree(tmp_path, ignore_errors=True)
        raise
    return final_path


#: A temporary export directory this old was left by a killed export.
STALE_TEMPORARY_SECONDS = 3600


def _remove_stale_temporaries(export_dir):
    """Deletes `.tmp-*` directories left by exports killed more than an hour ago.

    Younger ones may belong to an export running in another process. (`.old-*`
    directories are kept: one holds a previous version if an overwrite was
    killed between its two renames.)
    """
    now = time.time()
    for name in os.listdir(export_dir):
        path = os.path.join(export_dir, name)
        if name.startswith(".tmp-") and os.path.isdir(path) and now - os.path.getmtime(path) > STALE_TEMPORARY_SECONDS:
            shutil.rmtree(path, ignore_errors=True)


def _move_into_place(tmp_path, final_path, overwrite):
    if not os.path.lexists(final_path):
        try:
            # os.rename, not os.replace: on Windows it refuses an existing
            # destination, and on POSIX neither replaces a non-empty directory,
            # so a version written concurrently by another process is never
            # clobbered.
            os.rename(tmp_path, final_path)
        except OSError as e:
            raise FileExistsError(
                f"Could not move the export into {final_path!r} ({e}); another "
                "process probably wrote this version concurrently. Export "
                "again with version=None."
            ) from e
        return
    if not overwrite:  # Appeared while we were writing.
        raise FileExistsError(
            f"{final_path!r} was created while exporting. Export again with version=None, or pass overwrite=True."
        )
    # There is no portable atomic swap of two directories: move the old
    # version aside (hidden name), move the new one in, then delete the old.
    # The aside name is hidden too, and unique because the temp dir's is.
    old_path = os.path.join(os.path.dirname(tmp_path), ".old" + os.path.basename(tmp_path)[len(".tmp") :])
    os.rename(final_path, old_path)
    try:
        os.rename(tmp_path, final_path)
    except BaseException:
        os.rename(old_path, final_path)  # Put the previous version back.
        raise
    if os.path.isdir(old_path) and not os.path.islink(old_path):
        shutil.rmtree(old_path, ignore_errors=True)
    else:
        os.remove(old_path)


# ------------------------------------------------------------- command line


def main(argv=None):
    """Command line entry point; returns the process exit code.

    Args:
        argv: list of str or None. Arguments without the program name.
            Defaults to None, meaning `sys.argv[1:]`.

    Returns:
        int. 0 on success, 2 on a usage or input error (message on stderr).
    """
    parser = argparse.ArgumentParser(
        prog="python -m keras_contrastive.export",
        description=(
            "Export keras_contrastive encoders for TF Serving. (`python -m keras_contrastive.inspect PATH` "
            "prints an export's signatures and metadata.)"
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_export = sub.add_parser("export", help="Export the encoder of a .keras file as a new version.")
    p_export.add_argument("--model", required=True, help="A .keras file (encoder or trainer).")
    p_export.add_argument("--export_dir", required=True, help="Base directory.")
    p_export.add_argument("--version", type=int, default=None, help="Defaults to the next free one.")
    p_export.add_argument("--overwrite", action="store_true", help="Replace an existing version.")
    args = parser.parse_args(argv)

    try:
        if not os.path.isfile(args.model):
            raise ValueError(
                f"--model {args.model!r} does not exist. Pass a file saved with `model.save('encoder.keras')`."
            )
        # compile=False: the optimizer/loss are irrelevant for inference
        # and may reference custom objects that are not importable here.
        model = keras.saving.load_model(args.model, compile=False)
        path = export_encoder(model, args.export_dir, args.version, overwrite=args.overwrite)
        print(path)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
