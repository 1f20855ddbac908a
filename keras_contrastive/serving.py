"""TF Serving's Predict, emulated in process, and warmup requests for exports.

TF Serving's model server cannot run everywhere (no binary for every platform,
no network in CI), but its protocol is plain protobuf and JSON. This module
speaks it with the official protos (`tensorflow_serving.apis`) so that a client
and an export can be checked against each other without a server:

- `predict_request(images, ...)` builds the `PredictRequest` a gRPC client
  sends: uint8 `images` `[batch, H, W, C]`, or encoded JPEG/PNG `image_bytes`
  `[batch]` for the `serving_bytes` signature.
- `predict(model_or_path, request)` does what the server's `Predict` does:
  finds the signature, checks the request's inputs against it (names, dtypes,
  shapes), runs it and returns a `PredictResponse`. Errors are `ValueError`s
  worded like the server's (`tensorflow_serving/servables/tensorflow/
  predict_util.cc`), plus what to change.
- `rest_predict(model_or_path, body)` does what `POST /v1/models/<name>:predict`
  does with a JSON body: row (`"instances"`) or columnar (`"inputs"`) format,
  `{"b64": ...}` for binary strings (`tensorflow_serving/g3doc/api_rest.md`,
  parsing rules from `tensorflow_serving/util/json_tensor.cc`).
- `write_warmup_requests(version_path)` writes
  `assets.extra/tf_serving_warmup_requests`, the TFRecord of `PredictionLog`s
  the server replays when it loads a version, so the first real request does
  not pay for lazy initialization. `export.export_encoder` calls it.

The protos come from an optional dependency that imports TensorFlow's protos
but must not replace TensorFlow itself:

```
pip install --no-deps tensorflow-serving-api
```

Example:

```python
from keras_contrastive import export, serving

path = export.export_encoder(encoder, "/models/simclr")  # writes the warmup file
request = serving.predict_request(uint8_images, model_name="simclr")
response = serving.predict(path, request)
embeddings = tf.make_ndarray(response.outputs["embeddings"])  # [batch, dim]
serving.rest_predict(path, {"instances": uint8_images.tolist()})
# {"predictions": [[...], ...]}
```
"""

import base64
import binascii
import json
import os
import warnings

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2

from keras_contrastive import export

# TF Serving reads this exact name under assets.extra/ and replays at most
# 1000 records (tensorflow/serving `g3doc/saved_model_warmup.md`).
WARMUP_FILE = "tf_serving_warmup_requests"
METADATA_WARMUP = f"{export.METADATA_DIR}/{WARMUP_FILE}"
PIP_COMMAND = "pip install --no-deps tensorflow-serving-api"
# TF Serving base64-encodes DT_STRING outputs whose name ends in this suffix
# in REST responses (json_tensor.cc, `IsNamedTensorBytes`).
_BYTES_SUFFIX = "_bytes"
_B64_KEY = "b64"

_warned_missing_apis = False


def _serving_apis():
    """Imports `predict_pb2` and `prediction_log_pb2` or says how to install them."""
    try:
        from tensorflow_serving.apis import predict_pb2
        from tensorflow_serving.apis import prediction_log_pb2
    except ImportError as e:
        raise ImportError(
            "keras_contrastive.serving needs the TF Serving API protos "
            f"(`tensorflow_serving.apis`), which cannot be imported ({e}). "
            f"Install them with `{PIP_COMMAND}` (--no-deps keeps pip from "
            "reinstalling TensorFlow; the protos only need protobuf, which "
            "TensorFlow already installs)."
        ) from e
    return predict_pb2, prediction_log_pb2


# ------------------------------------------------------------- signatures


def _dtype_string(dtype):
    # TensorFlow's own DataTypeString ("float", "uint8", "string"), which is
    # what TF Serving's errors print.
    return types_pb2.DataType.Name(dtype.as_datatype_enum)[len("DT_") :].lower()


def _shape_string(shape):
    shape = tf.TensorShape(shape)
    if shape.rank is None:
        return "<unknown rank>"
    return "[" + ", ".join(str(d) for d in shape.as_list()) + "]"


def _describe(specs):
    return ", ".join(f"{name}: {specs[name].dtype.name} {_shape_string(specs[name].shape)}" for name in sorted(specs))


def _input_specs(signature):
    """`{input name: tf.TensorSpec}` of a loaded signature (a ConcreteFunction)."""
    args, kwargs = signature.structured_input_signature
    if args:
        raise ValueError(
            f"Signature takes positional inputs {args}; SavedModel signatures "
            "served by TF Serving take named inputs only. Re-export the model "
            "with `keras_contrastive.export.export_encoder`."
        )
    return dict(kwargs)


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
            f"Expects arg[{index}] to be {_dtype_string(spec.dtype)} but "
            f"{_dtype_string(dtype)} is provided: input {name!r} of signature "
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


# ------------------------------------------------------------- loading


def _load(model_or_path, requested_version=None):
    """Returns `(loaded SavedModel, version or None)`.

    A path is resolved like TF Serving resolves a model: a version directory
    as is; a base directory to `requested_version` if the request names one,
    else to its highest version.
    """
    if hasattr(model_or_path, "signatures"):
        return model_or_path, None
    if not isinstance(model_or_path, (str, os.PathLike)):
        raise ValueError(
            "`model_or_path` must be a SavedModel loaded with "
            "`tf.saved_model.load`, or the str / os.PathLike path of an "
            f"export, got {model_or_path!r} of type "
            f"{type(model_or_path).__name__}."
        )
    from keras_contrastive import downstream  # Lazy: downstream imports Keras layers.

    path = os.fspath(model_or_path)
    is_version_dir = os.path.isfile(os.path.join(path, "saved_model.pb"))
    if requested_version is not None and not is_version_dir:
        path = os.path.join(path, str(requested_version))
        if not os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise ValueError(
                "Servable not found for request: Specific("
                f"{os.path.basename(os.fspath(model_or_path))}, "
                f"{requested_version}): {path!r} holds no SavedModel. Clear "
                "model_spec.version to use the latest version."
            )
    else:
        path = downstream.resolve_version(path)
    name = os.path.basename(os.path.normpath(path))
    version = int(name) if export._is_version_name(name) else None
    if requested_version is not None and version not in (None, requested_version):
        raise ValueError(
            f"The request asks for version {requested_version} but "
            f"{path!r} is version {version}. Pass the export's base "
            "directory to select versions by request, or clear "
            "model_spec.version."
        )
    return tf.saved_model.load(path), version


def _get_signature(loaded, signature_name):
    signature_name = signature_name or export.SERVING_SIGNATURE
    if signature_name not in loaded.signatures:
        raise ValueError(
            f'Serving signature key "{signature_name}" not found. The model '
            f"has {sorted(loaded.signatures)}; set model_spec.signature_name "
            '(gRPC) or "signature_name" (REST) to one of them.'
        )
    return signature_name, loaded.signatures[signature_name]


# ------------------------------------------------------------- Predict


def predict_request(images, signature_name=export.SERVING_SIGNATURE, model_name=None, *, input_name=None):
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
        if signature_name in (export.SERVING_SIGNATURE, export.NORMALIZED_SIGNATURE):
            raise ValueError(
                f"Signature {signature_name!r} takes uint8 pixel arrays, got "
                f"encoded bytes. Use signature_name={export.BYTES_SIGNATURE!r} "
                "for JPEG/PNG bytes, or decode them first."
            )
        value = np.array(images, dtype=object)
        tensor = tf.make_tensor_proto(value, dtype=tf.string)
        input_name = input_name or export.BYTES_INPUT_NAME
    else:
        value = np.asarray(images)
        if signature_name == export.BYTES_SIGNATURE:
            raise ValueError(
                f"Signature {export.BYTES_SIGNATURE!r} takes a list of encoded "
                f"JPEG/PNG bytes, got an array of shape {value.shape}. Use "
                f"signature_name={export.SERVING_SIGNATURE!r} for uint8 arrays."
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
        input_name = input_name or export.INPUT_NAME
    request = predict_pb2.PredictRequest()
    request.model_spec.signature_name = signature_name
    if model_name:
        request.model_spec.name = model_name
    request.inputs[input_name].CopyFrom(tensor)
    return request


def _parse_request(request):
    predict_pb2, _ = _serving_apis()
    if isinstance(request, (bytes, bytearray, memoryview)):
        parsed = predict_pb2.PredictRequest()
        try:
            parsed.ParseFromString(bytes(request))
        except Exception as e:  # protobuf's DecodeError has no stable base.
            raise ValueError(
                f"`request` bytes do not parse as a PredictRequest ({e}). "
                "Pass `request.SerializeToString()` or the message itself."
            ) from None
        return parsed
    if not isinstance(request, predict_pb2.PredictRequest):
        raise ValueError(
            "`request` must be a tensorflow_serving PredictRequest or its "
            f"serialized bytes, got {type(request).__name__}. Build one with "
            "`keras_contrastive.serving.predict_request(images)`."
        )
    return request


def _run(loaded, version, request):
    """Validates `request` against `loaded` and runs it; returns a PredictResponse."""
    predict_pb2, _ = _serving_apis()
    signature_name, signature = _get_signature(loaded, request.model_spec.signature_name)
    specs = _input_specs(signature)
    _check_input_names(signature_name, specs, request.inputs.keys())
    feeds = {}
    for name in sorted(specs):
        value, dtype = _tensor_from_proto(signature_name, name, request.inputs[name])
        _check_input(signature_name, specs, name, dtype, tf.TensorShape(value.shape))
        feeds[name] = tf.constant(value, dtype=dtype)

    outputs = list(signature.structured_outputs)
    # Output filter as in PreProcessPrediction (predict_util.cc).
    if request.output_filter:
        seen = set()
        for alias in request.output_filter:
            if alias not in outputs:
                raise ValueError(
                    f"output tensor alias not found in signature: {alias} "
                    f"Outputs expected to be in the set {{{','.join(sorted(outputs))}}}."
                )
            if alias in seen:
                raise ValueError(f"duplicate output tensor alias: {alias}")
            seen.add(alias)
        outputs = list(request.output_filter)

    try:
        results = signature(**feeds)
    except tf.errors.InvalidArgumentError as e:
        # E.g. bytes that are not an image: the server answers INVALID_ARGUMENT
        # with TensorFlow's message.
        raise ValueError(f"Signature {signature_name!r} failed on the request's inputs: {e.message}") from None

    response = predict_pb2.PredictResponse()
    response.model_spec.name = request.model_spec.name
    response.model_spec.signature_name = signature_name
    if version is not None:
        response.model_spec.version.value = version
    for alias in outputs:
        response.outputs[alias].CopyFrom(tf.make_tensor_proto(results[alias].numpy()))
    return response


def predict(model_or_path, request):
    """Answers a `PredictRequest` as TF Serving's `Predict` would.

    Steps, as in the server (`predict_util.cc`): find the signature
    (`model_spec.signature_name`, empty meaning "serving_default"); check the
    request's inputs are exactly the signature's (no extra, none missing),
    each of the signature's dtype and of a compatible shape; run it; return
    every output (or those in `output_filter`).

    Args:
        model_or_path: A SavedModel loaded with `tf.saved_model.load` (pass
            one when predicting repeatedly: loading takes seconds), or a path:
            a version directory, or an export base directory, whose version
            `model_spec.version` selects if set, else the highest.
        request: `PredictRequest` or its serialized bytes (what goes over the
            wire), e.g. from `predict_request(images)`.

    Returns:
        `tensorflow_serving.apis.predict_pb2.PredictResponse` whose
        `model_spec` echoes the name, the signature used and (for paths) the
        version, and whose `outputs` map output names to TensorProtos, e.g.
        `embeddings` DT_FLOAT `[batch, dim]`; read them with
        `tf.make_ndarray(response.outputs["embeddings"])`.

    Raises:
        ValueError: unknown signature; extra, missing, wrong-dtype or
            wrong-shape inputs (each message names the input, the expected
            and the received); an unknown `output_filter` alias; or a
            TensorFlow INVALID_ARGUMENT while running (e.g. undecodable bytes).
        ImportError: `tensorflow_serving` is not installed.
    """
    request = _parse_request(request)
    requested = request.model_spec.version.value if request.model_spec.HasField("version") else None
    loaded, version = _load(model_or_path, requested)
    return _run(loaded, version, request)


# ------------------------------------------------------------- REST


def _is_b64(value):
    # json_tensor.cc IsValBase64Object: an object with exactly one key "b64"
    # whose value is a string.
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(_B64_KEY), str)


def _json_scalar(value, dtype, where):
    """One JSON leaf as a value of `dtype` (json_tensor.cc AddValueToTensor)."""

    def type_error():
        return ValueError(
            f"{where}: JSON value {json.dumps(value)[:80]} of type "
            f"{type(value).__name__} is not of expected type: "
            f"{_dtype_string(dtype)}."
        )

    if dtype == tf.string:
        if isinstance(value, str):
            return value.encode("utf-8")
        if isinstance(value, dict):
            if not _is_b64(value):
                raise ValueError(
                    f"{where}: JSON value {json.dumps(value)[:80]} not "
                    'formatted correctly for base64 data: expected {"b64": '
                    '"<base64 string>"} with no other key.'
                )
            try:
                return base64.b64decode(value[_B64_KEY], validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(
                    f"{where}: Unable to base64 decode "
                    f"{value[_B64_KEY][:40]!r}. Encode with "
                    "`base64.b64encode(data).decode('ascii')`."
                ) from None
        raise type_error()
    if dtype == tf.bool:
        if not isinstance(value, bool):
            raise type_error()
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise type_error()
    if dtype.is_integer:
        if not isinstance(value, int):
            raise type_error()
        # TF Serving does not range-check here (it stores int_val and casts);
        # refusing beats feeding a wrapped-around pixel.
        if not dtype.min <= value <= dtype.max:
            raise ValueError(f"{where}: {value} is out of range for {dtype.name} [{dtype.min}, {dtype.max}].")
        return value
    if dtype.is_floating:
        return value
    raise ValueError(f"{where}: conversion of JSON values to {dtype.name} is not supported.")


def _json_to_array(value, dtype, where):
    """A nested JSON list as a dense numpy array of `dtype`.

    The shape is read along the first elements, then every list must have
    that length and every leaf sit at that depth (json_tensor.cc
    FillTensorProto), so ragged lists are refused.
    """
    shape = []
    probe = value
    while isinstance(probe, list):
        shape.append(len(probe))
        if not probe:
            break
        probe = probe[0]
    flat = []

    def fill(node, level, index):
        if isinstance(node, list):
            if level >= len(shape) or len(node) != shape[level]:
                expected = f"a value at depth {level}" if level >= len(shape) else f"a list of {shape[level]}"
                raise ValueError(
                    f"{where}: ragged nested list: got a list of {len(node)} "
                    f"at index {index}, expected {expected} (the first "
                    f"elements give shape {shape}). Tensors must be "
                    "rectangular."
                )
            for i, child in enumerate(node):
                fill(child, level + 1, index + [i])
        else:
            if level != len(shape):
                raise ValueError(
                    f"{where}: ragged nested list: got a value at index "
                    f"{index}, expected a list of {shape[level]} (the first "
                    f"elements give shape {shape}). Tensors must be "
                    "rectangular."
                )
            flat.append(_json_scalar(node, dtype, f"{where} at index {index}"))

    fill(value, 0, [])
    np_dtype = object if dtype == tf.string else dtype.as_numpy_dtype
    array = np.empty(len(flat), dtype=np_dtype)
    array[:] = flat
    return array.reshape(shape)


def _instances_to_arrays(instances, specs):
    """Row format: one entry per example, stacked along a new batch axis."""
    if not isinstance(instances, list):
        raise ValueError(f"'instances' must be a list with one entry per example, got {type(instances).__name__}.")
    if not instances:
        raise ValueError("No values in 'instances' array; send at least one.")
    named = isinstance(instances[0], dict) and not _is_b64(instances[0])
    if not named and len(specs) > 1:
        raise ValueError(
            "'instances' is a plain list, but the signature has several inputs "
            f"({sorted(specs)}): send a list of objects with one key per input."
        )
    columns = {name: [] for name in specs}
    for i, item in enumerate(instances):
        item_is_object = isinstance(item, dict) and not _is_b64(item)
        if named:
            if not item_is_object:
                raise ValueError(
                    f"Expecting object but got {type(item).__name__} at item "
                    f"{i} of 'instances' (item 0 is an object, so all must be)."
                )
            if set(item) != set(specs):
                raise ValueError(
                    f"Failed to process element: {i} of 'instances' list. "
                    f"JSON object keys {sorted(item)} must be equal to the "
                    f"signature's inputs {sorted(specs)}."
                )
        elif item_is_object:
            raise ValueError(
                f"Expecting value/list but got object at item {i} of "
                "'instances' (item 0 is not an object, so none may be)."
            )
        values = item if named else {next(iter(specs)): item}
        for name, value in values.items():
            where = f"'instances' element {i}, input {name!r}"
            array = _json_to_array(value, specs[name].dtype, where)
            column = columns[name]
            if column and array.shape != column[0].shape:
                raise ValueError(
                    f"{where}: expecting shape {list(column[0].shape)} (that "
                    f"of element 0) but got {list(array.shape)}. All instances "
                    "must have the same shape; resize them to the export's "
                    "H, W, C."
                )
            column.append(array)
    return {name: np.stack(column) for name, column in columns.items()}


def _inputs_to_arrays(inputs, specs):
    """Columnar format: the whole tensor per input, batch dimension included."""
    if not isinstance(inputs, dict) or _is_b64(inputs):
        if len(specs) > 1:
            raise ValueError(
                "'inputs' is a plain value/list, but the signature has several "
                f"inputs ({sorted(specs)}): send an object with one key per input."
            )
        name = next(iter(specs))
        return {name: _json_to_array(inputs, specs[name].dtype, f"'inputs' ({name!r})")}
    arrays = {}
    for name, spec in specs.items():
        if name not in inputs:
            raise ValueError(
                f"Missing named input: {name} in 'inputs' object (it has "
                f"{sorted(inputs)}; the signature takes {sorted(specs)})."
            )
        # Keys the signature does not take are ignored, as TF Serving does.
        arrays[name] = _json_to_array(inputs[name], spec.dtype, f"'inputs' ({name!r})")
    return arrays


def _to_json(array, name):
    if array.dtype == object:
        as_b64 = name.endswith(_BYTES_SUFFIX)

        def convert(node):
            if isinstance(node, list):
                return [convert(x) for x in node]
            if as_b64:
                return {_B64_KEY: base64.b64encode(node).decode("ascii")}
            return node.decode("utf-8", errors="replace")

        return convert(array.tolist())
    return array.tolist()


def rest_predict(model_or_path, body):
    """Answers a REST predict body as `POST /v1/models/<name>:predict` would.

    Request formats (TF Serving `g3doc/api_rest.md`):

    - Row: `{"signature_name": ..., "instances": [...]}` with one entry per
      example: the input's value (e.g. an `[H, W, C]` nested list of pixels)
      when the signature has one input, or an object `{input name: value}`.
      Entries are stacked into the batch. Response `{"predictions": [...]}`:
      one entry per example, the output's value, or an object per example
      when there are several outputs.
    - Columnar: `{"inputs": value}` or `{"inputs": {input name: value}}`
      with the batch dimension inside each value. Response
      `{"outputs": value}` (an object when there are several outputs).

    `"signature_name"` defaults to "serving_default". DT_STRING values are
    JSON strings, or `{"b64": "<base64>"}` for binary data such as encoded
    images (decoded here, as the server does); DT_STRING outputs named
    `*_bytes` come back as `{"b64": ...}`. Integer inputs must be JSON
    integers, float inputs any JSON number.

    Example:

    ```python
    rest_predict(path, {"instances": images.tolist()})  # uint8 [n, H, W, C]
    rest_predict(path, {"signature_name": "serving_bytes",
                        "instances": [{"b64": base64.b64encode(png).decode()}]})
    ```

    Args:
        model_or_path: As in `predict`: a loaded SavedModel, a version
            directory or an export base directory (highest version).
        body: str, bytes or dict. The JSON request body.

    Returns:
        dict. `{"predictions": ...}` (row format) or `{"outputs": ...}`
        (columnar), e.g. `embeddings` as a `[batch][dim]` list of floats.

    Raises:
        ValueError: a body that is not a JSON object, has both or neither of
            "instances" and "inputs", ragged lists, values of the wrong JSON
            type, an unknown signature, or inputs the signature refuses
            (see `predict`).
        ImportError: `tensorflow_serving` is not installed.
    """
    predict_pb2, _ = _serving_apis()
    if isinstance(body, (str, bytes, bytearray)):
        try:
            # Python's json accepts NaN / Infinity, as TF Serving's parser does
            # (kParseNanAndInfFlag).
            body = json.loads(body)
        except ValueError as e:
            raise ValueError(f"JSON Parse error: {e}") from None
    if not isinstance(body, dict):
        raise ValueError(
            f"The request body must be a JSON object, got {type(body).__name__} "
            f"{json.dumps(body)[:80] if body is not None else 'null'}. Send "
            '{"instances": [...]} or {"inputs": ...}.'
        )
    signature_name = body.get("signature_name", export.SERVING_SIGNATURE)
    if not isinstance(signature_name, str):
        raise ValueError(f"'signature_name' key must be a string value, got {signature_name!r}.")
    has_instances, has_inputs = "instances" in body, "inputs" in body
    if has_instances and has_inputs:
        raise ValueError(
            "Not formatted correctly: expecting only one of 'inputs' or "
            "'instances' keys to exist, got both. Use 'instances' (row format, "
            "one entry per example) or 'inputs' (columnar, whole tensors)."
        )
    if not has_instances and not has_inputs:
        raise ValueError(
            f"Missing 'inputs' or 'instances' key (the body has keys "
            f'{sorted(body)}). Send e.g. {{"instances": images.tolist()}}.'
        )

    loaded, version = _load(model_or_path)
    signature_name, signature = _get_signature(loaded, signature_name)
    specs = _input_specs(signature)
    if has_instances:
        arrays = _instances_to_arrays(body["instances"], specs)
    else:
        arrays = _inputs_to_arrays(body["inputs"], specs)

    request = predict_pb2.PredictRequest()
    request.model_spec.signature_name = signature_name
    for name, array in arrays.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(array, dtype=specs[name].dtype))
    response = _run(loaded, version, request)
    outputs = {name: tf.make_ndarray(tensor) for name, tensor in sorted(response.outputs.items())}

    if has_inputs:
        if len(outputs) == 1:
            ((name, array),) = outputs.items()
            return {"outputs": _to_json(array, name)}
        return {"outputs": {name: _to_json(a, name) for name, a in outputs.items()}}
    batch = {name: (a.shape[0] if a.ndim else None) for name, a in outputs.items()}
    if None in batch.values() or len(set(batch.values())) != 1:
        raise ValueError(
            f"Cannot write outputs in row format: their batch sizes {batch} "
            "differ or are missing. Send the request in columnar format "
            "('inputs')."
        )
    rows = {name: _to_json(a, name) for name, a in outputs.items()}
    if len(rows) == 1:
        return {"predictions": next(iter(rows.values()))}
    n = next(iter(batch.values()))
    return {"predictions": [{name: rows[name][i] for name in rows} for i in range(n)]}


# ------------------------------------------------------------- warmup


def _warmup_requests(signature_defs, model_name):
    """The warmup `PredictRequest`s for an export's signatures.

    One batch of 1 and one of 2 for `serving_default` (graph functions are
    traced per signature, and the batch dimension is dynamic, so two sizes
    exercise it), 1 for `embed_normalized`, and one PNG for `serving_bytes`.
    The pixels are seeded noise: warmup needs the code paths, not realism.
    """
    specs = _input_specs_from_signature_def(signature_defs[export.SERVING_SIGNATURE])
    height, width, channels = specs[export.INPUT_NAME].shape.as_list()[1:]
    images = np.random.default_rng(0).integers(0, 256, size=(2, height, width, channels), dtype=np.uint8)
    requests = [
        predict_request(images[:1], export.SERVING_SIGNATURE, model_name),
        predict_request(images, export.SERVING_SIGNATURE, model_name),
    ]
    if export.NORMALIZED_SIGNATURE in signature_defs:
        requests.append(predict_request(images[:1], export.NORMALIZED_SIGNATURE, model_name))
    # encode_png takes 1, 3 or 4 channels (as decode_image does).
    if export.BYTES_SIGNATURE in signature_defs and channels in (1, 3, 4):
        png = tf.io.encode_png(images[0]).numpy()
        requests.append(predict_request([png], export.BYTES_SIGNATURE, model_name))
    return requests


def write_warmup_requests(version_path, model_name=None, *, missing_ok=False):
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
        missing_ok: bool. If True and `tensorflow_serving` cannot be imported,
            warn (once per process) and return None instead of raising.
            Defaults to False.

    Returns:
        str or None. The path written, or None (only with `missing_ok=True`).
    """
    global _warned_missing_apis
    try:
        _, prediction_log_pb2 = _serving_apis()
    except ImportError as e:
        if not missing_ok:
            raise
        if not _warned_missing_apis:
            _warned_missing_apis = True
            warnings.warn(
                f"Exporting without {METADATA_WARMUP} (TF Serving still "
                f"serves the export, but warms nothing up at load time): {e}",
                stacklevel=2,
            )
        return None
    version_path = os.fspath(version_path)
    if model_name is None:
        model_name = os.path.basename(os.path.dirname(os.path.abspath(version_path)))
    signature_defs = export._read_signature_defs(version_path)
    if export.SERVING_SIGNATURE not in signature_defs:
        raise ValueError(
            f"{version_path!r} has no {export.SERVING_SIGNATURE!r} signature "
            f"(it has {sorted(signature_defs)}); export it with "
            "`keras_contrastive.export.export_encoder`."
        )
    requests = _warmup_requests(signature_defs, model_name)
    # Checked against what the server will read, so a bad record fails the
    # export instead of the server's load.
    for request in requests:
        name = request.model_spec.signature_name
        specs = _input_specs_from_signature_def(signature_defs[name])
        _check_input_names(name, specs, request.inputs.keys())
        for input_name, proto in request.inputs.items():
            value, dtype = _tensor_from_proto(name, input_name, proto)
            _check_input(name, specs, input_name, dtype, tf.TensorShape(value.shape))

    directory = os.path.join(version_path, export.METADATA_DIR)
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
        replay one with `predict(version_path, log.predict_log.request)`.
    """
    _, prediction_log_pb2 = _serving_apis()
    path = os.path.join(os.fspath(version_path), export.METADATA_DIR, WARMUP_FILE)
    if not os.path.isfile(path):
        raise ValueError(
            f"No warmup file at {path!r}. Write one with "
            "`keras_contrastive.serving.write_warmup_requests(version_path)` "
            f"(needs `{PIP_COMMAND}`)."
        )
    return [prediction_log_pb2.PredictionLog.FromString(record.numpy()) for record in tf.data.TFRecordDataset(path)]
