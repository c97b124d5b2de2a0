"""Read a TensorFlow.js graph model (``model.json`` + weight shards) into numpy.

This module owns the TF.js *graph-model* file format, nothing else:

* :func:`read_tfjs_graph` parses ``model.json``, concatenates the weight
  shards named in its manifest and cuts them into one numpy array per weight
  name, dequantising where the manifest says the values were stored
  quantised (``float16``, or affine ``uint8`` / ``uint16`` with ``scale`` and
  ``min``), so every float weight comes back as ``float32`` exactly as the
  TF.js runtime sees it;
* :class:`TfjsGraph`: those arrays plus the graph's nodes (name, op, inputs,
  attributes) and signature, so that callers can trace the graph.

The format, as written by ``tensorflowjs_converter`` and read by
``tfjs-core/src/io/io_utils.ts`` (``decodeWeights``): the manifest is a list
of groups, each with ``paths`` (shard files, concatenated in order) and
``weights`` (``name``, ``shape``, ``dtype``, optional ``quantization``); the
weights lie back to back in that order, little-endian.

Standard library and numpy only: this module may not import torch or any
other project module, so it can be used from any environment.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Plain dtypes as stored: name -> (numpy dtype, bytes per element). TF.js
# writes little-endian; '<' makes that explicit on any host.
STORED_DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "int32": np.dtype("<i4"),
    "bool": np.dtype("u1"),  # one byte per element, 0 or 1
}
# Quantised storage: name -> numpy dtype of the stored integers / halves.
QUANTIZED_DTYPES: dict[str, np.dtype] = {
    "float16": np.dtype("<f2"),
    "uint8": np.dtype("u1"),
    "uint16": np.dtype("<u2"),
}


class TfjsFormatError(ValueError):
    """The model.json or its shards are not a TF.js graph model this reader understands."""


@dataclass(frozen=True)
class TfjsNode:
    """One node of the graph: ``name``, ``op`` (e.g. ``Conv2D``), ``inputs``
    (node names, ``name:k`` for the k-th output, ``^name`` for control
    dependencies) and raw ``attr`` dict as in the JSON."""

    name: str
    op: str
    inputs: tuple[str, ...]
    attr: dict[str, Any] = field(default_factory=dict)

    def attr_ints(self, key: str) -> tuple[int, ...]:
        """An integer-list attribute, e.g. ``strides`` -> ``(1, 2, 2, 1)``."""
        return tuple(int(v) for v in self.attr[key]["list"]["i"])

    def attr_float(self, key: str) -> float:
        return float(self.attr[key]["f"])

    def attr_bool(self, key: str) -> bool:
        return bool(self.attr[key].get("b", False))

    def attr_str(self, key: str) -> str:
        """A string attribute (base64 in the JSON), e.g. ``padding`` -> ``"VALID"``."""
        return base64.b64decode(self.attr[key]["s"]).decode()


@dataclass(frozen=True)
class TfjsGraph:
    """A loaded graph model.

    ``weights``: name -> numpy array (``float32`` for all float weights, after
    dequantisation; ``int32``; ``bool``), in manifest order.
    ``nodes``: name -> :class:`TfjsNode`, in the topology's order.
    ``signature``: the raw ``signature`` dict (input / output names and shapes).
    ``quantization``: name -> stored dtype, for the weights that were stored quantised.
    """

    weights: dict[str, np.ndarray]
    nodes: dict[str, TfjsNode]
    signature: dict[str, Any]
    quantization: dict[str, str]
    meta: dict[str, Any]

    def consumers(self, name: str) -> list[TfjsNode]:
        """Nodes that take ``name`` (any of its outputs) as a data input."""
        return [node for node in self.nodes.values()
                if any(i.split(":")[0] == name for i in node.inputs if not i.startswith("^"))]


def _dequantize(raw: bytes, spec: dict[str, Any], count: int) -> np.ndarray:
    """Stored values -> float32 (int32 for int32 weights), as tfjs-core's ``decodeWeights`` does."""
    quant = spec["quantization"]
    values = np.frombuffer(raw, dtype=QUANTIZED_DTYPES[quant["dtype"]], count=count)
    if quant["dtype"] == "float16":
        return values.astype(np.float32)
    # tfjs computes v * scale + min in JavaScript numbers (float64) and stores the result
    # in a Float32Array (int32 weights: Math.round first); doing the same gives identical bits
    real = values.astype(np.float64) * float(quant["scale"]) + float(quant["min"])
    if spec["dtype"] == "int32":
        return np.floor(real + 0.5).astype(np.int32)  # Math.round rounds halves up
    return real.astype(np.float32)


def _cut_weights(group: dict[str, Any], buffer: bytes, source: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    weights: dict[str, np.ndarray] = {}
    quantized: dict[str, str] = {}
    offset = 0
    for spec in group["weights"]:
        name, dtype, shape = spec["name"], spec["dtype"], tuple(int(s) for s in spec["shape"])
        count = int(np.prod(shape, dtype=np.int64))
        if "quantization" in spec:
            stored = QUANTIZED_DTYPES.get(spec["quantization"].get("dtype"))
            if stored is None:
                raise TfjsFormatError(f"{source}: weight {name!r} has unknown quantization "
                                      f"{spec['quantization']!r}")
        elif dtype in STORED_DTYPES:
            stored = STORED_DTYPES[dtype]
        else:
            raise TfjsFormatError(f"{source}: weight {name!r} has dtype {dtype!r}, which this reader "
                                  f"does not support (float32, int32, bool and quantised floats only)")
        size = count * stored.itemsize
        if offset + size > len(buffer):
            raise TfjsFormatError(f"{source}: weight {name!r} needs bytes {offset}..{offset + size} "
                                  f"but the shards hold only {len(buffer)}")
        if "quantization" in spec:
            array = _dequantize(buffer[offset:offset + size], spec, count)
        else:
            array = np.frombuffer(buffer, dtype=stored, count=count, offset=offset)
            array = array.astype(bool) if dtype == "bool" else array.astype(stored.newbyteorder("="))
        if name in weights:
            raise TfjsFormatError(f"{source}: weight {name!r} appears twice in the manifest")
        weights[name] = array.reshape(shape).copy()
        if "quantization" in spec:
            quantized[name] = spec["quantization"]["dtype"]
        offset += size
    if offset != len(buffer):
        raise TfjsFormatError(f"{source}: the manifest accounts for {offset} bytes but the shards "
                              f"{group['paths']} hold {len(buffer)}")
    return weights, quantized


def read_tfjs_graph(model_json: str | Path) -> TfjsGraph:
    """Load ``model_json`` and its weight shards (paths relative to it).

    Raises :class:`TfjsFormatError` naming the file when it is not a graph
    model, a shard is missing, or the byte counts do not add up.
    """
    model_json = Path(model_json)
    try:
        model = json.loads(model_json.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise TfjsFormatError(f"{model_json}: cannot read a TF.js model.json ({error})") from error
    if model.get("format") != "graph-model":
        raise TfjsFormatError(f"{model_json}: format is {model.get('format')!r}, not 'graph-model'")
    weights: dict[str, np.ndarray] = {}
    quantized: dict[str, str] = {}
    for group in model["weightsManifest"]:
        shards = []
        for rel in group["paths"]:
            shard = model_json.parent / rel
            if not shard.is_file():
                raise TfjsFormatError(f"{model_json}: weight shard {shard} is missing")
            shards.append(shard.read_bytes())
        group_weights, group_quantized = _cut_weights(group, b"".join(shards), model_json)
        duplicate = weights.keys() & group_weights.keys()
        if duplicate:
            raise TfjsFormatError(f"{model_json}: weights {sorted(duplicate)} appear in two groups")
        weights.update(group_weights)
        quantized.update(group_quantized)
    nodes = {}
    for raw in model["modelTopology"].get("node", []):
        node = TfjsNode(raw["name"], raw["op"], tuple(raw.get("input", ())), raw.get("attr", {}))
        nodes[node.name] = node
    meta = {k: v for k, v in model.items() if k not in ("modelTopology", "weightsManifest", "signature")}
    return TfjsGraph(weights, nodes, model.get("signature", {}), quantized, meta)
