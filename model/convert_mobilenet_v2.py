"""Convert the 8-bit TFLite MobileNetV2 (google-coral/test_data, Apache-2.0) into
imgsearch.model.mobilenet_v2.MobileNetV2 weights.

    python -m imgsearch.model.convert_mobilenet_v2 mobilenet_v2_1.0_224_quant.tflite out.safetensors

The operators are walked in graph order and checked against the torch module
(op kind, data flow, strides, SAME padding, fused activation, kernel and channel
counts, residual adds, global average pool); any mismatch raises ConversionError.
Weights are dequantized as (q - zero_point) * scale, per tensor or per channel as the
file says; int32 biases with their own scale. TFLite layouts become torch layouts:
conv OHWI --> OIHW, depthwise 1HWC --> (C, 1, H, W).

Needs the `tflite` package (flatbuffer reader), imported only when converting:
`pip install tflite==2.18.0`. The converted weights keep the model's Apache-2.0 license:
see shared/models/mobilenet_v2_imagenet/README.md and LICENSE.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch

from imgsearch.ground.durable import replace_durably
from imgsearch.ground.errors import ConversionError
from imgsearch.model.mobilenet_v2 import MobileNetV2

__all__ = ["convert", "load_labels", "main"]

log = logging.getLogger(__name__)

SOURCE = "google-coral/test_data mobilenet_v2_1.0_224_quant.tflite (Apache-2.0)"


def _import_tflite():
    try:
        import tflite
    except ImportError as exc:
        raise ImportError("reading .tflite files needs the `tflite` package: pip install tflite==2.18.0") from exc
    return tflite


@dataclass(frozen=True)
class _Step:
    """One expected TFLite operator: its kind, the torch conv it fills, its fused activation."""

    kind: str
    key: str | None = None  # state-dict prefix of the conv, e.g. "blocks.3.depthwise"
    activation: str = "NONE"
    block: int | None = None  # inverted residual block index, for the residual ADD's check


def _plan(net: MobileNetV2) -> list[_Step]:
    steps = [_Step("CONV_2D", "stem", "RELU6")]
    for i, block in enumerate(net.blocks):
        if block.expand is not None:
            steps.append(_Step("CONV_2D", f"blocks.{i}.expand", "RELU6", i))
        steps.append(_Step("DEPTHWISE_CONV_2D", f"blocks.{i}.depthwise", "RELU6", i))
        steps.append(_Step("CONV_2D", f"blocks.{i}.project", "NONE", i))
        if block.residual:
            steps.append(_Step("ADD", None, "NONE", i))
    steps += [
        _Step("CONV_2D", "head", "RELU6"),
        _Step("AVERAGE_POOL_2D"),
        _Step("CONV_2D", "classifier", "NONE"),
        _Step("RESHAPE"),
        _Step("SOFTMAX"),
    ]
    return steps


def _enum_names(enum_class) -> dict[int, str]:
    return {v: k for k, v in vars(enum_class).items() if not k.startswith("_") and isinstance(v, int)}


class _Graph:
    """Thin reader over the flatbuffer: op kinds, options, tensors, dequantized constants."""

    def __init__(self, tflite, data: bytes) -> None:
        self.tflite = tflite
        self.data = data
        if data[4:8] != b"TFL3":  # the flatbuffer file identifier of the TFLite schema
            raise ConversionError("not a TFLite model file (no TFL3 identifier)")
        self.model = tflite.Model.GetRootAsModel(data, 0)
        if self.model.SubgraphsLength() != 1:
            raise ConversionError(f"expected 1 subgraph, found {self.model.SubgraphsLength()}")
        self.graph = self.model.Subgraphs(0)
        self.op_names = _enum_names(tflite.BuiltinOperator)
        self.act_names = _enum_names(tflite.ActivationFunctionType)
        self.type_names = _enum_names(tflite.TensorType)

    def ops(self):
        return [self.graph.Operators(i) for i in range(self.graph.OperatorsLength())]

    def kind(self, op) -> str:
        code = self.model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        return self.op_names.get(builtin, f"builtin {builtin}")

    def options(self, op, cls):
        table = op.BuiltinOptions()
        options = cls()
        options.Init(table.Bytes, table.Pos)
        return options

    def name(self, index: int) -> str:
        return self.graph.Tensors(index).Name().decode()

    def shape(self, index: int) -> tuple[int, ...]:
        return tuple(int(d) for d in self.graph.Tensors(index).ShapeAsNumpy())

    def quantization(self, index: int) -> tuple[np.ndarray, np.ndarray, int] | None:
        q = self.graph.Tensors(index).Quantization()
        if q is None or q.ScaleLength() == 0:
            return None
        zero = q.ZeroPointAsNumpy() if q.ZeroPointLength() else np.zeros(q.ScaleLength(), np.int64)
        return q.ScaleAsNumpy().astype(np.float64), zero.astype(np.float64), q.QuantizedDimension()

    def constant(self, index: int) -> np.ndarray:
        """A constant tensor in float32, dequantized when the file stores it quantized."""
        tensor = self.graph.Tensors(index)
        buffer = self.model.Buffers(tensor.Buffer())
        if buffer.Offset() > 1:  # stored after the flatbuffer (large models)
            raw = np.frombuffer(self.data, np.uint8, buffer.Size(), buffer.Offset())
        else:
            raw = buffer.DataAsNumpy()
        if isinstance(raw, int) or raw.size == 0:
            raise ConversionError(f"tensor {self.name(index)!r} is not a constant (no data)")
        type_name = self.type_names.get(tensor.Type(), str(tensor.Type()))
        dtypes = {"UINT8": np.uint8, "INT8": np.int8, "INT32": np.int32, "FLOAT32": np.float32}
        if type_name not in dtypes:
            raise ConversionError(f"tensor {self.name(index)!r} has unsupported type {type_name}")
        values = raw.view(dtypes[type_name]).reshape(self.shape(index)).astype(np.float64)
        quant = self.quantization(index)
        if type_name == "FLOAT32" or quant is None:
            if type_name != "FLOAT32":
                raise ConversionError(f"{type_name} tensor {self.name(index)!r} has no quantization scale")
            return values.astype(np.float32)
        scale, zero, axis = quant
        if scale.size > 1:  # per channel along `axis`
            if scale.size != values.shape[axis]:
                raise ConversionError(f"tensor {self.name(index)!r}: {scale.size} scales for axis {axis}")
            shape = [1] * values.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        return ((values - zero) * scale).astype(np.float32)


def _fail(k: int, step: _Step, message: str) -> None:
    raise ConversionError(f"operator {k} ({step.kind} for {step.key or 'graph'}): {message}")


def _check_input(g: _Graph) -> int:
    inputs = list(g.graph.InputsAsNumpy())
    if len(inputs) != 1:
        raise ConversionError(f"expected one graph input, found {len(inputs)}")
    (index,) = inputs
    shape = g.shape(index)
    if len(shape) != 4 or shape[3] != 3 or shape[1] % 32 or shape[1] != shape[2]:
        raise ConversionError(f"graph input is {shape}; expected (1, S, S, 3) with S divisible by 32")
    quant = g.quantization(index)
    if quant is not None:  # the module takes (q - 128) / 128
        scale, zero, _ = quant
        if not (np.allclose(scale, 1 / 128) and np.all(zero == 128)):
            raise ConversionError(f"graph input scale {scale} zero point {zero}; expected 1/128 and 128")
    return index


def convert(tflite_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read the TFLite MobileNetV2 and return MobileNetV2().state_dict()-shaped float32 tensors."""
    tflite = _import_tflite()
    g = _Graph(tflite, Path(tflite_path).read_bytes())
    net = MobileNetV2()
    template = net.state_dict()
    steps, ops = _plan(net), g.ops()
    if len(ops) != len(steps):
        kinds = [g.kind(op) for op in ops]
        raise ConversionError(f"graph has {len(ops)} operators, MobileNetV2 needs {len(steps)}: {kinds}")

    state: dict[str, torch.Tensor] = {}
    current = _check_input(g)  # the tensor the next operator must read
    block_inputs: dict[int, int] = {}
    for k, (op, step) in enumerate(zip(ops, steps)):
        kind, inputs, outputs = g.kind(op), list(op.InputsAsNumpy()), list(op.OutputsAsNumpy())
        if kind != step.kind:
            _fail(k, step, f"found {kind}")
        if step.block is not None:
            block_inputs.setdefault(step.block, current)
        if step.kind == "ADD":
            assert step.block is not None  # an ADD closes a block
            if sorted(inputs) != sorted([current, block_inputs[step.block]]):
                _fail(k, step, "does not add the block's input to its projection")
            if g.act_names[g.options(op, tflite.AddOptions).FusedActivationFunction()] != "NONE":
                _fail(k, step, "residual add has a fused activation")
        elif inputs[0] != current:
            _fail(k, step, f"reads {g.name(inputs[0])!r}, not the previous operator's output")
        if step.key is not None:
            state.update(_convert_conv(g, k, step, op, cast(torch.nn.Conv2d, net.get_submodule(step.key))))
        elif step.kind == "AVERAGE_POOL_2D":
            options = g.options(op, tflite.Pool2DOptions)
            _, h, w, _ = g.shape(inputs[0])
            if (options.FilterHeight(), options.FilterWidth()) != (h, w) or g.shape(outputs[0])[1:3] != (1, 1):
                _fail(k, step, "is not a global average pool")
        current = outputs[0]

    if set(state) != set(template):
        raise ConversionError(f"converted keys differ from the module's: {sorted(set(template) ^ set(state))}")
    return {key: state[key] for key in template}


def _convert_conv(g: _Graph, k: int, step: _Step, op, conv: torch.nn.Conv2d) -> dict[str, torch.Tensor]:
    tflite = g.tflite
    depthwise = step.kind == "DEPTHWISE_CONV_2D"
    options = g.options(op, tflite.DepthwiseConv2DOptions if depthwise else tflite.Conv2DOptions)
    if options.Padding() != tflite.Padding.SAME:
        _fail(k, step, "padding is not SAME")
    if (options.StrideH(), options.StrideW()) != conv.stride:
        _fail(k, step, f"stride {(options.StrideH(), options.StrideW())}, module has {conv.stride}")
    if (options.DilationHFactor(), options.DilationWFactor()) != (1, 1):
        _fail(k, step, "dilated convolution")
    activation = g.act_names.get(options.FusedActivationFunction())
    if activation != step.activation:
        _fail(k, step, f"fused activation {activation}, expected {step.activation}")
    inputs = list(op.InputsAsNumpy())
    if len(inputs) != 3 or inputs[2] < 0:
        _fail(k, step, "has no bias")
    in_channels = g.shape(inputs[0])[-1]
    if in_channels != conv.in_channels:
        _fail(k, step, f"input has {in_channels} channels, module expects {conv.in_channels}")
    kh, kw = conv.kernel_size
    weight, bias = g.constant(inputs[1]), g.constant(inputs[2])
    if depthwise:
        if options.DepthMultiplier() != 1 or conv.groups != conv.in_channels:
            _fail(k, step, f"depth multiplier {options.DepthMultiplier()}, module groups {conv.groups}")
        expected = (1, kh, kw, conv.out_channels)
        torch_weight = weight.transpose(3, 0, 1, 2)  # (1, H, W, C) --> (C, 1, H, W)
    else:
        if conv.groups != 1:
            _fail(k, step, f"plain conv in the file, grouped conv ({conv.groups}) in the module")
        expected = (conv.out_channels, kh, kw, conv.in_channels)
        torch_weight = weight.transpose(0, 3, 1, 2)  # (O, H, W, I) --> (O, I, H, W)
    if weight.shape != expected or bias.shape != (conv.out_channels,):
        _fail(k, step, f"weight {weight.shape} bias {bias.shape}, expected {expected} and ({conv.out_channels},)")
    return {
        f"{step.key}.weight": torch.from_numpy(np.ascontiguousarray(torch_weight)),
        f"{step.key}.bias": torch.from_numpy(np.ascontiguousarray(bias)),
    }


def load_labels(path: str | os.PathLike) -> list[str]:
    """imagenet_labels.txt: one class name a line, line 0 "background" (1,001 lines)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return [line.strip() for line in lines]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m imgsearch.model.convert_mobilenet_v2",
        description="Convert the 8-bit TFLite MobileNetV2 into float32 safetensors for imgsearch.model.mobilenet_v2.",
    )
    parser.add_argument("tflite", type=Path, help="mobilenet_v2_1.0_224_quant.tflite")
    parser.add_argument("out", type=Path, help="output .safetensors file")
    args = parser.parse_args(argv)
    from safetensors.torch import save_file

    try:
        state = convert(args.tflite)
    except (ConversionError, ImportError, OSError) as exc:
        log.error("Error: %s", exc)
        return 1
    metadata = {
        "format": "pt",
        "source": SOURCE,
        "license": "Apache-2.0",
        "tflite_sha256": hashlib.sha256(args.tflite.read_bytes()).hexdigest(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=args.out.name + ".", suffix=".tmp", dir=args.out.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600
        save_file(state, tmp, metadata=metadata)
        replace_durably(tmp, args.out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    print(f"wrote {len(state)} tensors to {args.out}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(format="%(message)s")  # errors on stderr as `Error: ...`
    sys.exit(main())
