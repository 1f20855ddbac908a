"""TF Serving requests for exports: gRPC `PredictRequest`s and the warmup file.

TF Serving's protocol is plain protobuf; this module builds its messages with
the official protos (`tensorflow_serving.apis`, from `tensorflow-serving-api`,
a dependency of this package):

- `predict_request(images, ...)` builds the `PredictRequest` a gRPC client
  sends: uint8 `images` `[batch, H, W, C]`, or encoded JPEG/PNG `image_bytes`
  `[batch]` for the `serving_bytes` signature.
- `write_warmup_requests(version_path)` writes
  `assets.extra/tf_serving_warmup_requests`, the TFRecord of `PredictionLog`s
  the server replays when it loads a version, so the first real request does
  not pay for lazy initialization. `export.export_encoder` calls it for every
  export; `read_warmup_requests` reads it back.

The warmup requests are checked against the export's signatures (input names,
dtypes, shapes) before they are written, so a bad record fails the export,
not the server's load; errors are worded like the server's
(`tensorflow_serving/servables/tensorflow/predict_util.cc`), plus what to
change.

Example:

```python
from keras_contrastive import export, serving

path = export.export_encoder(encoder, "/models/simclr")  # writes the warmup file
request = serving.predict_request(uint8_images, model_name="simclr")
# Send it to the model server's gRPC port, e.g. with
# tensorflow_serving.apis.prediction_service_pb2_grpc.PredictionServiceStub.
[log.predict_log.request.model_spec.signature_name for log in serving.read_warmup_requests(path)]
# ['serving_default', 'serving_default', 'embed_normalized', 'serving_bytes']
```
"""

import os

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2

from keras_contrastive import savedmodel

# Kept under their earlier names: `serving.WARMUP_FILE`, `serving.METADATA_WARMUP`.
WARMUP_FILE = savedmodel.WARMUP_FILE
METADATA_WARMUP = savedmodel.WARMUP_PATH
PIP_COMMAND = "pip install tensorflow-serving-api"


def _serving_apis():
    """Imports `predict_pb2` and `prediction_log_pb2` or says how to install them."""
    try:
        from tensorflow_serving.apis import predict_pb2
        from tensorflow_serving.apis import prediction_log_pb2
    except ImportError as e:
        raise ImportError(
            "keras_contrastive needs the TF Serving API protos "
            f"(`tensorflow_serving.apis`), which cannot be imported ({e}). "
            "They come with `tensorflow-serving-api`, a dependency of "
            f"keras_contrastive: install it with `{PIP_COMMAND}` (its 2.21 "
            "release requires tensorflow>=2.21,<3, so pip keeps such a TensorFlow)."
        ) from e
    return predict_pb2, prediction_log_pb2


# ------------------------------------------------------------- request checks
# Used on the warmup requests before they are written, and by the tests'
# in-process server double (tests/serving_double.py).


def dtype_string(dtype):
    """TensorFlow's own name of a dtype (`"float"`, `"uint8"`, `"string"`), as TF Serving's errors print it."""
    return types_pb2.DataType.Name(dtype.as_datatype_enum)[len("DT_") :].lower()


def _shape_string(shape):
    shape = tf.TensorShape(shape)
    if shape.rank is None:
        return "<unknown rank>"
    return "[" + ", ".join(str(d) for d in shape.as_list()) + "]"


def _describe(specs):
    return ", ".join(f"{name}: {specs[name].dtype.name} {_shape_string(specs[name].shape)}" for name in sorted(specs))


def _input_specs_from_signature_def(signature_def):
    """`{input name: tf.TensorSpec}` of a `SignatureDef` read from saved_model.pb."""
    return {
        name: tf.TensorSpec(tf.TensorShape(info.tensor_shape), tf.as_dtype(info.dtype))
        for name, info in signature_def.inputs.items()
    }


def _check_input_names(signature_name, specs, names):
    # Worded like TF Serving's VerifyRequestInputsSize (predict_util.cc).
    sent, expected = set(names), set(specs)
    if sent == expected:
        return
    extra, missing = sorted(sent - expected), sorted(expected - sent)
    head = (
        f"input size does not match signature: {len(sent)}!={len(expected)}"
        if len(sent) != len(expected)
        else "input names do not match signature"
    )
    raise ValueError(
        f"{head} len({{{','.join(sorted(sent))}}}) != "
        f"len({{{','.join(sorted(expected))}}}). "
        f"Sent extra: {{{','.join(extra)}}}. "
        f"Missing but required: {{{','.join(missing)}}}. "
        f"Signature {signature_name!r} takes exactly: {_describe(specs)}. "
        "Send exactly these inputs (e.g. build the request with "
        "`keras_contrastive.serving.predict_request`)."
    )


def _check_input(signature_name, specs, name, dtype, shape):
    """Raises ValueError if `dtype`/`shape` do not fit `specs[name]`."""
    spec = specs[name]
    if dtype != spec.dtype:
        # TensorFlow's executor error, which TF Serving returns as is; arg[i]
        # counts the signature's inputs in sorted order (feeds are sorted).
        index = sorted(specs).index(name)
        hint = {
            tf.uint8: "Send raw pixels 0-255 as uint8; the /255 scaling runs inside the graph.",
            tf.string: "Send encoded JPEG/PNG images as bytes.",
        }.get(spec.dtype, f"Convert the input to {spec.dtype.name}.")
        raise ValueError(
            f"Expects arg[{index}] to be {dtype_string(spec.dtype)} but "
            f"{dtype_string(dtype)} is provided: input {name!r} of signature "
            f"{signature_name!r} expects {spec.dtype.name} "
            f"{_shape_string(spec.shape)}, got {dtype.name} "
            f"{_shape_string(shape)}. {hint}"
        )
    if not spec.shape.is_compatible_with(shape):
        hint = ""
        if spec.shape.rank is not None and shape.rank == spec.shape.rank - 1:
            hint = " A single example needs a batch dimension (`x[None]`)."
        raise ValueError(
            f"input {name!r} of signature {signature_name!r} has shape "
            f"{_shape_string(shape)}, expected {_shape_string(spec.shape)} "
            f"(rank {spec.shape.rank}; None matches any size).{hint} Send a "
            "tensor of the expected shape (resize images to the export's "
            "H, W, C)."
        )


def _tensor_from_proto(signature_name, name, proto):
    """Parses a request's TensorProto into `(numpy array, tf.DType)`."""
    try:
        dtype = tf.as_dtype(proto.dtype)
        if proto.tensor_shape.unknown_rank:
            raise ValueError("its tensor_shape has unknown rank")
        value = tf.make_ndarray(proto)
    except (TypeError, ValueError, OverflowError) as e:
        raise ValueError(
            f"input {name!r} of the request for signature {signature_name!r} "
            f"is not a valid TensorProto ({e}). Build it with "
            "`tf.make_tensor_proto(numpy_array)`."
        ) from None
    return value, dtype


# ------------------------------------------------------------- requests


def check_request(request, specs, signature_name=savedmodel.SERVING_SIGNATURE):
    """Checks a PredictRequest's inputs as TF Serving does before it runs one.

    The checks, and their wording, follow TF Serving's predict path: exactly
    the signature's input names, each tensor parseable, of the signature's
    dtype and of a compatible shape. Used on the warmup requests before they
    are written (a bad record would fail the server's load), and by the tests'
    in-process server double.

    Args:
        request: a `tensorflow_serving.apis.predict_pb2.PredictRequest`.
        specs: `{input name: tf.TensorSpec}` of the signature it targets.
        signature_name: str. Named in the error messages. Defaults to
            `serving_default`.

    Returns:
        `{input name: tf.Tensor}`, the parsed inputs.

    Raises:
        ValueError: a missing or extra input, an unparseable tensor, or a
            wrong dtype or shape; the message says what to send instead.
    """
    _check_input_names(signature_name, specs, request.inputs.keys())
    feeds = {}
    for name in sorted(specs):
        value, dtype = _tensor_from_proto(signature_name, name, request.inputs[name])
        _check_input(signature_name, specs, name, dtype, tf.TensorShape(value.shape))
        feeds[name] = tf.constant(value, dtype=dtype)
    return feeds


def predict_request(images, signature_name=savedmodel.SERVING_SIGNATURE, model_name=None, *, input_name=None):
    """Builds the `PredictRequest` a TF Serving gRPC client sends.

    Args:
        images: For `serving_default` / `embed_normalized`: an integer array
            `[batch, H, W, C]` of pixels 0-255 (uint8, or any integer dtype
            whose values fit; floats are refused, as the server would). For
            `serving_bytes`: a list of encoded JPEG/PNG `bytes`, one per image.
        signature_name: str. Sets `model_spec.signature_name`. Defaults to
            "serving_default".
        model_name: str or None. Sets `model_spec.name`, the name the server
            routes on (its `--model_name`; `export_encoder` uses the export
            base directory's name). Defaults to None (left empty, fine for
            `predict`; a real server needs it).
        input_name: str or None. The input's name. Defaults to None, meaning
            "image_bytes" for bytes and "images" for arrays.

    Returns:
        `tensorflow_serving.apis.predict_pb2.PredictRequest` with one input:
        `images` DT_UINT8 `[batch, H, W, C]` or `image_bytes` DT_STRING
        `[batch]`.
    """
    predict_pb2, _ = _serving_apis()
    if not isinstance(signature_name, str) or not signature_name:
        raise ValueError(f"`signature_name` must be a non-empty str, got {signature_name!r}.")
    if model_name is not None and not isinstance(model_name, str):
        raise ValueError(f"`model_name` must be a str or None, got {model_name!r}.")
    if isinstance(images, np.ndarray) and images.dtype.kind in "SO" and images.ndim == 1:
        images = list(images)  # e.g. tf.make_ndarray of a DT_STRING tensor
    is_bytes = isinstance(images, (list, tuple)) and all(isinstance(x, bytes) for x in images)
    if isinstance(images, (bytes, str)):
        raise ValueError(
            "`images` must be a list of encoded images (one bytes per image) "
            f"or an array, got a single {type(images).__name__}. Wrap it: "
            "`[image_bytes]`."
        )
    if is_bytes:
        if not images:
            raise ValueError("`images` is an empty list; pass at least one image.")
        if signature_name in (savedmodel.SERVING_SIGNATURE, savedmodel.NORMALIZED_SIGNATURE):
            raise ValueError(
                f"Signature {signature_name!r} takes uint8 pixel arrays, got "
                f"encoded bytes. Use signature_name={savedmodel.BYTES_SIGNATURE!r} "
                "for JPEG/PNG bytes, or decode them first."
            )
        value = np.array(images, dtype=object)
        tensor = tf.make_tensor_proto(value, dtype=tf.string)
        input_name = input_name or savedmodel.BYTES_INPUT_NAME
    else:
        value = np.asarray(images)
        if signature_name == savedmodel.BYTES_SIGNATURE:
            raise ValueError(
                f"Signature {savedmodel.BYTES_SIGNATURE!r} takes a list of encoded "
                f"JPEG/PNG bytes, got an array of shape {value.shape}. Use "
                f"signature_name={savedmodel.SERVING_SIGNATURE!r} for uint8 arrays."
            )
        if value.dtype.kind not in "iu":
            raise ValueError(
                "`images` must hold integer pixels 0-255 (uint8), got dtype "
                f"{value.dtype}. The export scales by 1/255 in its graph; "
                "send e.g. `np.clip(np.round(x * 255), 0, 255).astype('uint8')` "
                "for images in [0, 1]."
            )
        if value.size and (value.min() < 0 or value.max() > 255):
            raise ValueError(f"`images` values must be in [0, 255], got [{value.min()}, {value.max()}].")
        if value.ndim != 4:
            raise ValueError(
                f"`images` must be [batch, H, W, C], got shape {value.shape}."
                + (" Add a batch dimension: `image[None]`." if value.ndim == 3 else "")
            )
        tensor = tf.make_tensor_proto(value.astype(np.uint8))
        input_name = input_name or savedmodel.INPUT_NAME
    request = predict_pb2.PredictRequest()
    request.model_spec.signature_name = signature_name
    if model_name:
        request.model_spec.name = model_name
    request.inputs[input_name].CopyFrom(tensor)
    return request


# ------------------------------------------------------------- warmup


def _warmup_requests(signature_defs, model_name):
    """The warmup `PredictRequest`s for an export's signatures.

    One batch of 1 and one of 2 for `serving_default` (graph functions are
    traced per signature, and the batch dimension is dynamic, so two sizes
    exercise it), 1 for `embed_normalized`, and one PNG for `serving_bytes`.
    The pixels are seeded noise: warmup needs the code paths, not realism.
    """
    specs = _input_specs_from_signature_def(signature_defs[savedmodel.SERVING_SIGNATURE])
    height, width, channels = specs[savedmodel.INPUT_NAME].shape.as_list()[1:]
    images = np.random.default_rng(0).integers(0, 256, size=(2, height, width, channels), dtype=np.uint8)
    requests = [
        predict_request(images[:1], savedmodel.SERVING_SIGNATURE, model_name),
        predict_request(images, savedmodel.SERVING_SIGNATURE, model_name),
    ]
    if savedmodel.NORMALIZED_SIGNATURE in signature_defs:
        requests.append(predict_request(images[:1], savedmodel.NORMALIZED_SIGNATURE, model_name))
    # encode_png takes 1, 3 or 4 channels (as decode_image does).
    if savedmodel.BYTES_SIGNATURE in signature_defs and channels in (1, 3, 4):
        png = tf.io.encode_png(images[0]).numpy()
        requests.append(predict_request([png], savedmodel.BYTES_SIGNATURE, model_name))
    return requests


def write_warmup_requests(version_path, model_name=None):
    """Writes `assets.extra/tf_serving_warmup_requests` into an export version.

    A TFRecord of `PredictionLog`s, each holding a `PredictRequest` that
    matches one of the export's signatures exactly (input names, dtypes and
    `[batch, H, W, C]` from the SavedModel): TF Serving replays them when it
    loads the version, before it reports the version available.

    Args:
        version_path: str or os.PathLike. A version directory written by
            `export.export_encoder` (holding `saved_model.pb`).
        model_name: str or None. `model_spec.name` of the requests. Defaults
            to None, meaning the base directory's name (the parent of
            `version_path`), the name TF Serving is usually started with.

    Returns:
        str. The path written.

    Raises:
        ImportError: `tensorflow_serving` cannot be imported (the message
            names the pip command).
    """
    _, prediction_log_pb2 = _serving_apis()
    version_path = os.fspath(version_path)
    if model_name is None:
        model_name = os.path.basename(os.path.dirname(os.path.abspath(version_path)))
    signature_defs = savedmodel.read_signature_defs(version_path)
    if savedmodel.SERVING_SIGNATURE not in signature_defs:
        raise ValueError(
            f"{version_path!r} has no {savedmodel.SERVING_SIGNATURE!r} signature "
            f"(it has {sorted(signature_defs)}); export it with "
            "`keras_contrastive.export.export_encoder`."
        )
    requests = _warmup_requests(signature_defs, model_name)
    # Checked against what the server will read, so a bad record fails the
    # export instead of the server's load.
    for request in requests:
        name = request.model_spec.signature_name
        check_request(request, _input_specs_from_signature_def(signature_defs[name]), name)

    directory = os.path.join(version_path, savedmodel.METADATA_DIR)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, WARMUP_FILE)
    with tf.io.TFRecordWriter(path) as writer:
        for request in requests:
            log = prediction_log_pb2.PredictionLog()
            log.predict_log.request.CopyFrom(request)
            writer.write(log.SerializeToString())
    return path


def read_warmup_requests(version_path):
    """Reads an export's warmup file back as a list of `PredictionLog`s.

    Args:
        version_path: str or os.PathLike. A version directory.

    Returns:
        list of `tensorflow_serving.apis.prediction_log_pb2.PredictionLog`;
        `log.predict_log.request` is a `PredictRequest` a server answers.
    """
    _, prediction_log_pb2 = _serving_apis()
    path = os.path.join(os.fspath(version_path), savedmodel.METADATA_DIR, WARMUP_FILE)
    if not os.path.isfile(path):
        raise ValueError(
            f"No warmup file at {path!r}. Write one with "
            "`keras_contrastive.serving.write_warmup_requests(version_path)`, "
            "or re-export with `keras_contrastive.export.export_encoder`."
        )
    return [prediction_log_pb2.PredictionLog.FromString(record.numpy()) for record in tf.data.TFRecordDataset(path)]
