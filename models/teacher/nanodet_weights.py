"""Weights of the NanoDet-g teacher: the TF.js graph -> our modules, and our own checkpoint file.

This module owns the mapping from the graph of ``nanodet.json`` (TF.js,
converted from ONNX by onnx-tf) onto :class:`models.teacher.nanodet.NanoDet`,
and the checkpoint format the conversion saves. The mapping is strict:

* every ``Conv2D`` node is matched, by its number (``convolution_N`` is the
  N-th conv the ONNX export ran), to the module named in :func:`graph_conv_order`;
  its kernel shape, stride, explicit padding and whether a ``LeakyRelu``
  (alpha 0.1) follows must equal the module's;
* the kernel (HWIO) becomes the conv weight (OIHW), and the constant of the
  ``Add`` that consumes the conv its bias (BatchNorm was folded into it);
* every float weight of the file must be used (the one non-parameter float,
  the ``-inf`` pad value of the max pool, is checked against it), every
  parameter and buffer of the model must be set, and the graph may hold no op
  outside :data:`KNOWN_OPS`: otherwise :class:`TfjsMappingError` lists what.

int32 constants of the file are graph structure (permutations, paddings,
shapes, split sizes), not weights. This module may import torch, the
teacher's ``tfjs_graph`` and ``nanodet_io``; not ``nanodet`` itself (the
model is handed in), nothing from ``service`` or ``export``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .tfjs_graph import TfjsGraph, TfjsNode

CHECKPOINT_FORMAT = "cellwatch.nanodet-g/1"
# Every op the onnx-tf graph of NanoDet-g uses; anything else (a depthwise or fused conv,
# a BatchNorm) would carry weights or semantics this port does not map.
KNOWN_OPS = frozenset({
    "Placeholder", "Const", "Identity", "Conv2D", "Add", "AddV2", "Transpose", "Pad", "PadV2",
    "LeakyRelu", "MaxPool", "ConcatV2", "ResizeBilinear", "SplitV", "Sigmoid", "Reshape", "SparseToDense",
})
_CONV_NUMBER = re.compile(r"(?:^|/)convolution(?:_(\d+))?$")


class TfjsMappingError(ValueError):
    """The TF.js graph does not fit the PyTorch modules (names what does not)."""


def graph_conv_order(model: nn.Module) -> list[str]:
    """Names of the model's convs in the order the ONNX export ran them (= ``convolution_N``):
    the trunk front to back, the neck's laterals, then per level the head's 3x3 conv and predictor."""
    trunk = [name for name, module in model.backbone.named_modules() if isinstance(module, nn.Conv2d)]
    laterals = [f"neck.lateral_convs.{i}" for i in range(len(model.neck.lateral_convs))]
    head = []
    for level in range(len(model.head.predictors)):
        head += [f"head.level_convs.{level}.0", f"head.predictors.{level}"]
    return [f"backbone.{name}" for name in trunk] + laterals + head


def _producer(graph: TfjsGraph, name: str) -> TfjsNode:
    return graph.nodes[name.split(":")[0]]


def _explicit_padding(graph: TfjsGraph, conv: TfjsNode) -> int:
    """The symmetric spatial padding a ``Pad`` node (before the NHWC transpose) adds, or 0."""
    node = _producer(graph, conv.inputs[0])
    if node.op == "Transpose":
        node = _producer(graph, node.inputs[0])
    if node.op != "Pad":
        return 0
    pads = graph.weights[node.inputs[1]]
    top, bottom, left, right = (int(v) for v in pads[2:].flatten())
    if pads[:2].any() or len({top, bottom, left, right}) != 1:
        raise TfjsMappingError(f"{conv.name}: asymmetric or channel padding {pads.tolist()}")
    return top


def _activation(graph: TfjsGraph, add: TfjsNode) -> float | None:
    """The LeakyRelu slope after a conv's bias add (through at most one Transpose), or None."""
    frontier = [add]
    for _ in range(2):
        frontier = [c for node in frontier for c in graph.consumers(node.name)]
        for node in frontier:
            if node.op == "LeakyRelu":
                return node.attr_float("alpha")
        frontier = [node for node in frontier if node.op == "Transpose"]
    return None


def _numbered_convs(graph: TfjsGraph, count: int) -> dict[int, TfjsNode]:
    """The graph's Conv2D nodes by their number N (``convolution_N``); exactly 0..count-1."""
    unknown = sorted({node.op for node in graph.nodes.values()} - KNOWN_OPS)
    if unknown:
        raise TfjsMappingError(f"the graph uses ops this port does not handle: {unknown}")
    convs: dict[int, TfjsNode] = {}
    for node in graph.nodes.values():
        if node.op == "Conv2D":
            match = _CONV_NUMBER.search(node.name)
            if match is None:
                raise TfjsMappingError(f"Conv2D node {node.name!r} is not named convolution[_N]")
            convs[int(match.group(1) or 0)] = node
    if sorted(convs) != list(range(count)):
        raise TfjsMappingError(f"the graph has convs {sorted(convs)}, the model {count} (0..{count - 1})")
    return convs


def _module_slope(modules: dict[str, nn.Module], name: str) -> float | None:
    """The LeakyReLU slope after conv ``name`` in our model (a ``ConvAct``'s ``[1]``), or None."""
    parent = modules.get(name.rpartition(".")[0]) if name.endswith(".0") else None
    if isinstance(parent, nn.Sequential) and len(parent) > 1 and isinstance(parent[1], nn.LeakyReLU):
        return parent[1].negative_slope
    return None


def _map_conv(graph: TfjsGraph, node: TfjsNode, name: str, conv: nn.Conv2d,
              slope_wanted: float | None) -> tuple[str, np.ndarray, str, np.ndarray]:
    """``(kernel name, OIHW kernel, bias name, bias)`` of one graph conv, after checking that its
    kernel shape, stride, padding and following activation are the module's."""
    kernel_name = node.inputs[1]
    kernel = graph.weights[kernel_name].transpose(3, 2, 0, 1)  # HWIO -> OIHW
    adds = [c for c in graph.consumers(node.name) if c.op in ("Add", "AddV2", "BiasAdd")]
    if len(adds) != 1 or adds[0].inputs[1] not in graph.weights:
        raise TfjsMappingError(f"{node.name} ({name}): expected one bias Add after it, found {adds}")
    bias_name = adds[0].inputs[1]
    bias = graph.weights[bias_name]
    padding = _explicit_padding(graph, node)
    slope = _activation(graph, adds[0])
    found = (tuple(kernel.shape), node.attr_ints("strides")[1:3], (padding, padding), node.attr_str("padding"))
    wanted = (tuple(conv.weight.shape), conv.stride, conv.padding, "VALID")
    same_activation = (slope is None and slope_wanted is None) or (
        slope is not None and slope_wanted is not None and np.isclose(slope, slope_wanted))
    if found != wanted or not same_activation:
        raise TfjsMappingError(f"{node.name} -> {name}: graph has (kernel, stride, pad, mode) {found} and "
                               f"slope {slope}, the module {wanted} and slope {slope_wanted}")
    if bias.shape != (conv.out_channels,) or conv.bias is None:
        raise TfjsMappingError(f"{node.name} -> {name}: bias {bias.shape} for {conv.out_channels} outputs")
    return kernel_name, kernel, bias_name, bias


def map_tfjs_weights(model: nn.Module, graph: TfjsGraph) -> dict[str, torch.Tensor]:
    """The model's ``state_dict`` filled from ``graph``; raises :class:`TfjsMappingError` on any gap."""
    order = graph_conv_order(model)
    convs = _numbered_convs(graph, len(order))
    modules = dict(model.named_modules())
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for number, name in enumerate(order):
        kernel_name, kernel, bias_name, bias = _map_conv(graph, convs[number], name, modules[name],
                                                         _module_slope(modules, name))
        state[f"{name}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel, dtype=np.float32))
        state[f"{name}.bias"] = torch.from_numpy(bias.astype(np.float32))
        used.update((kernel_name, bias_name))

    for node in graph.nodes.values():  # the max pool's padding value: -inf, as nn.MaxPool2d pads
        if node.op == "PadV2":
            value = graph.weights[node.inputs[2]]
            if not np.all(np.isneginf(value)):
                raise TfjsMappingError(f"{node.name}: max-pool padding value {value}, expected -inf")
            used.add(node.inputs[2])

    floats = {name for name, array in graph.weights.items() if array.dtype == np.float32}
    target = model.state_dict()
    problems = []
    if floats - used:
        problems.append(f"float weights of the file not used: {sorted(floats - used)}")
    if target.keys() - state.keys():
        problems.append(f"model tensors not set: {sorted(target.keys() - state.keys())}")
    if state.keys() - target.keys():
        problems.append(f"mapped names the model lacks: {sorted(state.keys() - target.keys())}")
    problems += [f"{key}: file {tuple(state[key].shape)} vs model {tuple(target[key].shape)}"
                 for key in state.keys() & target.keys() if state[key].shape != target[key].shape]
    if problems:
        raise TfjsMappingError("; ".join(problems))
    return state


def load_tfjs_weights(model: nn.Module, graph: TfjsGraph) -> None:
    """Map ``graph`` onto ``model`` in place (strict; see :func:`map_tfjs_weights`)."""
    model.load_state_dict(map_tfjs_weights(model, graph), strict=True)


def save_checkpoint(model: nn.Module, path: str | Path, source: dict[str, str]) -> None:
    """``{"format", "source", "state_dict"}`` to ``path``; ``source`` says where the weights came from."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": CHECKPOINT_FORMAT, "source": dict(source), "state_dict": model.state_dict()}, path)


def load_checkpoint(model: nn.Module, path: str | Path) -> dict[str, str]:
    """Load a :func:`save_checkpoint` file into ``model`` (strict); returns its ``source``."""
    payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise TfjsMappingError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint (make nanodet writes one)")
    model.load_state_dict(payload["state_dict"], strict=True)
    return payload["source"]
