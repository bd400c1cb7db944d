"""Keras definitions of the plate detector and the plate reader.

Only layers whose TFLite ops the Edge TPU compiler maps are used: Conv2D,
DepthwiseConv2D, ReLU, Add, Resizing(nearest), Dense, Reshape, Softmax and
Sigmoid (logistic). BatchNorm folds into the convolutions at export.
Inputs are floats in [0, 1] (pixel / 255), matching ``edge.model``.
"""
from __future__ import annotations

import keras
from keras import layers

from edge.plates import MAX_SLOTS, READER_CLASSES
from trainer.data import DETECTOR_INPUT, DETECTOR_STRIDE, READER_INPUT


def _conv(x, filters: int, kernel: int = 3, strides: int = 1, name: str | None = None):
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False, name=name)(x)
    x = layers.BatchNormalization()(x)
    return layers.ReLU()(x)


def _sep(x, filters: int, strides: int = 1):
    """Depthwise-separable block; a residual add where shapes allow it."""
    y = layers.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False)(x)
    y = layers.BatchNormalization()(y)
    y = layers.ReLU()(y)
    y = layers.Conv2D(filters, 1, use_bias=False)(y)
    y = layers.BatchNormalization()(y)
    y = layers.ReLU()(y)
    if strides == 1 and x.shape[-1] == filters:
        y = layers.Add()([x, y])
    return y


def _up(x, size: tuple[int, int]):
    # Resizing(nearest) converts to one RESIZE_NEAREST_NEIGHBOR op; UpSampling2D would give TILE+RESHAPE.
    return layers.Resizing(size[0], size[1], interpolation="nearest")(x)


def build_detector(height: int, width: int, batch: int | None = None) -> keras.Model:
    """Plate-mask network: (H, W, 3) in [0,1] -> (H/4, W/4, 1) plate probability.

    A small feature pyramid (strides 4..32) so that the stride-4 mask sees
    enough context to tell a plate from other text.
    """
    if height % 32 or width % 32:
        raise ValueError(f"detector input {height}x{width} must be a multiple of 32")
    inp = keras.Input((height, width, 3), batch_size=batch, name="image")
    c1 = _conv(inp, 16, strides=2)
    c2 = _sep(_sep(c1, 32, strides=2), 32)
    c3 = _sep(_sep(c2, 64, strides=2), 64)
    c4 = _sep(_sep(_sep(c3, 96, strides=2), 96), 96)
    c5 = _sep(_sep(_sep(c4, 128, strides=2), 128), 128)
    p = _conv(c5, 64, 1)
    p = layers.Add()([_conv(c4, 64, 1), _up(p, (height // 16, width // 16))])
    p = _sep(p, 64)
    p = _conv(p, 48, 1)
    p = layers.Add()([_conv(c3, 48, 1), _up(p, (height // 8, width // 8))])
    p = _sep(p, 48)
    p = _conv(p, 32, 1)
    p = layers.Add()([_conv(c2, 32, 1), _up(p, (height // 4, width // 4))])
    p = _sep(p, 32)
    out = layers.Conv2D(1, 1, activation="sigmoid", name="plate_mask")(p)
    return keras.Model(inp, out, name="plate_detector")


def build_reader(
    height: int = READER_INPUT[0], width: int = READER_INPUT[1], slots: int = MAX_SLOTS, batch: int | None = None
) -> keras.Model:
    """Slot reader: (H, W, 1) grayscale crop -> (slots, classes) softmax.

    ``batch=1`` builds the export form: a dynamic batch turns Reshape into ops
    the Edge TPU rejects. Fixed slots (text left-aligned, then pads) read any length up to ``slots``
    and two-row plates alike, and stay Edge TPU friendly (no CTC in the graph).
    """
    n_classes = len(READER_CLASSES)
    inp = keras.Input((height, width, 1), batch_size=batch, name="crop")
    x = _conv(inp, 32, strides=2)
    x = _sep(x, 64)
    x = _sep(x, 96, strides=2)
    x = _sep(_sep(x, 96), 96)
    x = _sep(x, 128, strides=2)
    x = _sep(_sep(x, 128), 128)
    x = _conv(x, 32, 1)
    x = layers.Flatten()(x)
    x = layers.Dense(256, activation="relu")(x)
    x = layers.Dropout(0.2)(x)
    x = layers.Dense(slots * n_classes)(x)
    x = layers.Reshape((slots, n_classes))(x)
    out = layers.Softmax(name="slots")(x)
    return keras.Model(inp, out, name="plate_reader")


def count_macs(model: keras.Model) -> int:
    """Multiply-accumulates of one forward pass (conv, depthwise, dense)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.DepthwiseConv2D):
            _, h, w, c = layer.output.shape
            k = layer.kernel_size[0] * layer.kernel_size[1]
            total += h * w * c * k
        elif isinstance(layer, layers.Conv2D):
            _, h, w, c = layer.output.shape
            k = layer.kernel_size[0] * layer.kernel_size[1]
            total += h * w * c * k * layer.input.shape[-1]
        elif isinstance(layer, layers.Dense):
            total += layer.input.shape[-1] * layer.units
    return int(total)
