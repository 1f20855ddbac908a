"""A test double of TF Serving's model server: `Predict` and REST predict, in process.

Not part of the library. The model server cannot run here (no binary for
every platform, no network in CI), but its protocol is plain protobuf and
JSON, so the tests check clients and exports against each other through this
stand-in, which follows the server's request handling:

- `predict(model_or_path, request)` does what the server's `Predict` does:
  finds the signature, checks the request's inputs against it (names, dtypes,
  shapes), runs it and returns a `PredictResponse`. Errors are `ValueError`s
  worded like the server's (`tensorflow_serving/servables/tensorflow/
  predict_util.cc`), plus what to change.
- `rest_predict(model_or_path, body)` does what `POST /v1/models/<name>:predict`
  does with a JSON body: row (`"instances"`) or columnar (`"inputs"`) format,
  `{"b64": ...}` for binary strings (`tensorflow_serving/g3doc/api_rest.md`,
  parsing rules from `tensorflow_serving/util/json_tensor.cc`).

The input checks are the library's own (`keras_contrastive.serving`, which
applies them to the warmup requests it writes); requests come from
`keras_contrastive.serving.predict_request`.

Example:

```python
from serving_double import predict, rest_predict

from keras_contrastive import export, serving

path = export.export_encoder(encoder, "/models/simclr")
response = predict(path, serving.predict_request(uint8_images, model_name="simclr"))
embeddings = tf.make_ndarray(response.outputs["embeddings"])  # [batch, dim]
rest_predict(path, {"instances": uint8_images.tolist()})  # {"predictions": [[...], ...]}
```
"""

import base64
import binascii
import json
import os

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from keras_contrastive import savedmodel
from keras_contrastive.serving import check_request
from keras_contrastive.serving import dtype_string

# TF Serving base64-encodes DT_STRING outputs whose name ends in this suffix
# in REST responses (json_tensor.cc, `IsNamedTensorBytes`).
_BYTES_SUFFIX = "_bytes"
_B64_KEY = "b64"


# ------------------------------------------------------------- signatures


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


# ------------------------------------------------------------- loading


def _load(model_or_path, requested_version=None):
    """Returns `(loaded SavedModel, version or None)`.

    A path is resolved like TF Serving resolves a model: a version directory
    as is; a base directory to `requested_version` if the request names one,
    else to its highest version (`savedmodel.resolve_version`).
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
    path = os.fspath(model_or_path)
    is_version_dir = os.path.isfile(os.path.join(path, savedmodel.SAVED_MODEL_FILE))
    if requested_version is not None and not is_version_dir:
        try:
            path = savedmodel.resolve_version(path, requested_version)
        except ValueError as e:
            raise ValueError(
                "Servable not found for request: Specific("
                f"{os.path.basename(os.path.normpath(path))}, "
                f"{requested_version}): {e} Clear model_spec.version to use "
                "the latest version."
            ) from None
    else:
        path = savedmodel.resolve_version(path)
    name = os.path.basename(os.path.normpath(path))
    version = int(name) if savedmodel.is_version_name(name) else None
    if requested_version is not None and version not in (None, requested_version):
        raise ValueError(
            f"The request asks for version {requested_version} but "
            f"{path!r} is version {version}. Pass the export's base "
            "directory to select versions by request, or clear "
            "model_spec.version."
        )
    return tf.saved_model.load(path), version


def _get_signature(loaded, signature_name):
    signature_name = signature_name or savedmodel.SERVING_SIGNATURE
    if signature_name not in loaded.signatures:
        raise ValueError(
            f'Serving signature key "{signature_name}" not found. The model '
            f"has {sorted(loaded.signatures)}; set model_spec.signature_name "
            '(gRPC) or "signature_name" (REST) to one of them.'
        )
    return signature_name, loaded.signatures[signature_name]


# ------------------------------------------------------------- Predict


def _parse_request(request):
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
    signature_name, signature = _get_signature(loaded, request.model_spec.signature_name)
    specs = _input_specs(signature)
    feeds = check_request(request, specs, signature_name)

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
            f"{dtype_string(dtype)}."
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
    """
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
    signature_name = body.get("signature_name", savedmodel.SERVING_SIGNATURE)
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
