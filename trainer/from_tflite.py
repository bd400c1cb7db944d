"""Start a Keras network from the weights of an exported int8 TFLite model.

The shipped models come as int8 TFLite only. To fine-tune them (on more
synthetic data, or on a user's own plates) the trainer builds the same
architecture and fills it with the dequantized weights: each convolution gets
its int8 kernel times its per-channel scale, and the BatchNormalization after
it, which the converter folded into the kernel and bias, becomes the identity
plus that bias and is frozen (its moving statistics would otherwise be
re-estimated from batches and change the network). The Keras network then
computes what the int8 model computes, up to quantization error; ``check``
measures that.
"""
from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from edge.model import Model, interpreter_class

_CONV_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D"})


def _dequantized(interp, details: dict, index: int) -> np.ndarray:
    d = details[index]
    q = d["quantization_parameters"]
    data = interp.get_tensor(index).astype(np.float32)
    scales, zeros, axis = q["scales"], q["zero_points"], q["quantized_dimension"]
    if len(scales) == 0:
        return data
    shape = [1] * data.ndim
    shape[axis] = -1
    return (data - zeros.reshape(shape)) * scales.reshape(shape)


def _tflite_convs(interp) -> list[tuple[tuple, dict]]:
    """(signature, op) of each convolution.

    The signature: kind, kernel shape in Keras layout, convolutions on the longest path before it.
    """
    depth: dict[int, int] = {}
    out = []
    for op in interp._get_ops_details():
        d = max((depth.get(int(i), 0) for i in op["inputs"] if i >= 0), default=0)
        if op["op_name"] in _CONV_OPS:
            shape = tuple(interp.get_tensor(int(op["inputs"][1])).shape)
            out.append(((op["op_name"], (*shape[1:], shape[0]), d), op))
            d += 1
        for t in op["outputs"]:
            depth[int(t)] = d
    return out


def _keras_convs(model: keras.Model) -> list[tuple[tuple, keras.layers.Layer]]:
    """The same signatures for the model's convolution layers."""
    depth: dict[int, int] = {}
    out = []
    for layer in model.layers:
        inputs = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
        d = max((depth.get(id(t), 0) for t in inputs), default=0)
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            kind = "DEPTHWISE_CONV_2D" if isinstance(layer, keras.layers.DepthwiseConv2D) else "CONV_2D"
            out.append(((kind, tuple(layer.kernel.shape), d), layer))
            d += 1
        depth[id(layer.output)] = d
    return out


def _narrows(wide: tuple, narrow: tuple) -> bool:
    """Whether signature ``narrow`` is ``wide`` with fewer channels (same kind, kernel size and depth)."""
    return (wide[0] == narrow[0] and wide[2] == narrow[2] and wide[1][:2] == narrow[1][:2]
            and all(n <= w for n, w in zip(narrow[1][2:], wide[1][2:], strict=True)))


def int8_detector_fine(tflite_path: Path) -> int:
    """The stride-4 channels (``trainer.nets.build_detector``'s ``fine``) of an exported int8 detector:
    the input channels of its last convolution, the plate mask's."""
    interp = interpreter_class()(model_path=str(tflite_path), num_threads=1)
    interp.allocate_tensors()
    (_, kernel, _), _ = _tflite_convs(interp)[-1]
    return int(kernel[2])


def load_int8_weights(model: keras.Model, tflite_path: Path, narrow: bool = False) -> int:
    """Set every convolution of ``model`` from the int8 model at ``tflite_path``; return how many were set.

    The TFLite file must come from the same architecture (``trainer.nets``).
    Convolutions are paired by kind, kernel shape and how many convolutions
    lie before them (the converter may order parallel branches differently
    from Keras), then in order; a ``ValueError`` names the first that has no
    partner. ``narrow``: ``model`` may have fewer channels in some layers
    (a detector of a smaller ``fine``); a layer with no exact partner then
    takes the first channels of one that differs only in channels. Every
    narrowed layer keeps the same first channels, so the channels one layer
    keeps are those the next one reads, and residual adds stay aligned.
    """
    interp = interpreter_class()(model_path=str(tflite_path), num_threads=1)
    interp.allocate_tensors()
    details = {d["index"]: d for d in interp.get_tensor_details()}
    ops = _tflite_convs(interp)
    convs = _keras_convs(model)
    if len(ops) != len(convs):
        raise ValueError(f"{tflite_path}: {len(ops)} convolutions, the Keras '{model.name}' has {len(convs)}: "
                         "not the same architecture")
    free = list(ops)
    batchnorm_after = {id(layer.input): layer for layer in model.layers
                       if isinstance(layer, keras.layers.BatchNormalization)}
    exact = {id(layer) for signature, layer in convs if any(sig == signature for sig, _ in ops)}
    # Exact partners first, so that a narrowed layer cannot take the partner of a layer that kept its width.
    for signature, layer in sorted(convs, key=lambda c: id(c[1]) not in exact):
        k = next((i for i, (sig, _) in enumerate(free) if sig == signature), None)
        if k is None and narrow:
            k = next((i for i, (sig, _) in enumerate(free) if _narrows(sig, signature)), None)
        if k is None:
            raise ValueError(f"{tflite_path}: no convolution fits the Keras layer '{layer.name}' "
                             f"({signature[0]}, kernel {signature[1]}, after {signature[2]} convolutions)")
        _, op = free.pop(k)
        kernel = _dequantized(interp, details, int(op["inputs"][1])).transpose(1, 2, 3, 0)
        bias = _dequantized(interp, details, int(op["inputs"][2]))
        if kernel.shape != tuple(signature[1]):  # narrowed: the first channels in and out
            kernel = kernel[:, :, : signature[1][2], : signature[1][3]]
            bias = bias[: kernel.shape[2] * kernel.shape[3] if signature[0] == "DEPTHWISE_CONV_2D"
                        else kernel.shape[3]]
        if layer.use_bias:
            layer.set_weights([kernel, bias])
            continue
        bn = batchnorm_after.get(id(layer.output))
        if bn is None:
            raise ValueError(f"Keras layer '{layer.name}' has no bias and no BatchNormalization after it")
        layer.set_weights([kernel])
        channels = bias.shape[0]
        # gamma / sqrt(var + eps) == 1 and mean == 0: the layer adds the folded bias and nothing else.
        bn.set_weights([np.full(channels, np.sqrt(1.0 + bn.epsilon), np.float32), bias.astype(np.float32),
                        np.zeros(channels, np.float32), np.ones(channels, np.float32)])
        bn.trainable = False
    return len(convs)


def check(model: keras.Model, tflite_path: Path, kind: str, x: np.ndarray) -> dict:
    """How closely the Keras model follows the int8 model on uint8 inputs ``x`` (N, H, W[, C])."""
    edge_model = Model(Path(tflite_path), kind, num_threads=1)
    ref = np.stack([edge_model.run_pixels(xi) for xi in x])
    keras_x = x.astype(np.float32)[..., None] / 255.0 if x.ndim == 3 else x.astype(np.float32) / 255.0
    out = np.asarray(model.predict(keras_x, verbose=0)).reshape(ref.shape)
    diff = np.abs(out - ref)
    return {"mean_abs_diff": float(diff.mean()), "max_abs_diff": float(diff.max()),
            "argmax_agree": float(np.mean(out.argmax(-1) == ref.argmax(-1)))}
