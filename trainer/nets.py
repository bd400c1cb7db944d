"""Keras definitions of the plate detector and the plate reader.

Only layers whose TFLite ops the Edge TPU compiler maps are used: Conv2D,
DepthwiseConv2D, ReLU, Add, Concatenate, Resizing(nearest), Reshape, Softmax
and Sigmoid (logistic). CTC decoding runs on the CPU in ``edge.recognize``. BatchNorm folds into the
convolutions at export. Inputs are floats in [0, 1] (pixel / 255), matching ``edge.model``.
"""
from __future__ import annotations

import keras
from keras import layers

from edge.plates import READER_CLASSES
from trainer.data import READER_INPUT


def _conv(x, filters: int, kernel=3, strides=1, padding: str = "same"):
    x = layers.Conv2D(filters, kernel, strides=strides, padding=padding, use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    return layers.ReLU()(x)


def _sep(x, filters: int, strides=1):
    """Depthwise-separable block; a residual add where shapes allow it."""
    y = layers.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False)(x)
    y = layers.BatchNormalization()(y)
    y = layers.ReLU()(y)
    y = layers.Conv2D(filters, 1, use_bias=False)(y)
    y = layers.BatchNormalization()(y)
    y = layers.ReLU()(y)
    if strides in (1, (1, 1)) and x.shape[-1] == filters:
        y = layers.Add()([x, y])
    return y


def _up(x, size: tuple[int, int]):
    # Resizing(nearest) converts to one RESIZE_NEAREST_NEIGHBOR op; UpSampling2D would give TILE+RESHAPE.
    return layers.Resizing(size[0], size[1], interpolation="nearest")(x)


#: Channels of the detector's stride-4 layers, the shipped detector's. They see 16 times the cells of the
#: stride-16 ones, so their width sets much of a pass's cost: 32 costs 0.161 GMAC at 512x384, 24 costs 0.138
#: and 16 costs 0.120 (``train --fine-channels``; the model card has what narrowing cost in accuracy).
DETECTOR_FINE = 32


def build_detector(height: int, width: int, batch: int | None = None, fine: int = DETECTOR_FINE) -> keras.Model:
    """Plate-mask network: (H, W, 3) in [0,1] -> (H/4, W/4, 1) plate probability.

    A small feature pyramid (strides 4..32) so that the stride-4 mask sees
    enough context to tell a plate from other text. ``fine``: the channels
    of the stride-4 layers (``detector_fine`` reads it back).
    """
    if height % 32 or width % 32:
        raise ValueError(f"detector input {height}x{width} must be a multiple of 32")
    if fine < 1:
        raise ValueError(f"detector fine channels {fine}: must be at least 1")
    inp = keras.Input((height, width, 3), batch_size=batch, name="image")
    c1 = _conv(inp, 16, strides=2)
    c2 = _sep(_sep(c1, fine, strides=2), fine)
    c3 = _sep(_sep(c2, 64, strides=2), 64)
    c4 = _sep(_sep(_sep(c3, 96, strides=2), 96), 96)
    c5 = _sep(_sep(_sep(c4, 128, strides=2), 128), 128)
    p = _conv(c5, 64, 1)
    p = layers.Add()([_conv(c4, 64, 1), _up(p, (height // 16, width // 16))])
    p = _sep(p, 64)
    p = _conv(p, 48, 1)
    p = layers.Add()([_conv(c3, 48, 1), _up(p, (height // 8, width // 8))])
    p = _sep(p, 48)
    p = _conv(p, fine, 1)
    p = layers.Add()([_conv(c2, fine, 1), _up(p, (height // 4, width // 4))])
    p = _sep(p, fine)
    out = layers.Conv2D(1, 1, activation="sigmoid", name="plate_mask")(p)
    return keras.Model(inp, out, name="plate_detector")


def detector_fine(model: keras.Model) -> int:
    """The ``fine`` channels a detector built by ``build_detector`` was built with."""
    return int(model.get_layer("plate_mask").input.shape[-1])


def build_reader(
    height: int = READER_INPUT[0], width: int = READER_INPUT[1], batch: int | None = None
) -> keras.Model:
    """CTC reader: (H, W, 1) grayscale crop -> (2 * W/4, classes) per-column softmax.

    The backbone keeps a column every 4 pixels. Two heads each collapse the
    whole height into one sequence of columns — one learns the top row, the
    other the bottom row — and the two sequences are joined end to end, so a
    two-row plate reads top row then bottom row and a one-row plate reads in
    either. The last class is the CTC blank. ``batch=1`` builds the export
    form: a dynamic batch turns Reshape into ops the Edge TPU rejects.
    """
    n_classes = len(READER_CLASSES)
    inp = keras.Input((height, width, 1), batch_size=batch, name="crop")
    x = _conv(inp, 32, strides=2)  # H/2, W/2
    x = _sep(x, 64)
    x = _sep(x, 96, strides=2)  # H/4, W/4
    x = _sep(_sep(x, 96), 96)
    x = _sep(x, 128, strides=(2, 1))  # H/8, W/4: columns stay
    x = _sep(_sep(x, 128), 128)
    rows = [_conv(x, 96, kernel=(height // 8, 1), padding="valid") for _ in range(2)]  # (1, W/4, 96) each
    seq = layers.Concatenate(axis=2)(rows)  # (1, 2 * W/4, 96)
    seq = _sep(seq, 96)
    logits = layers.Conv2D(n_classes, 1)(seq)
    logits = layers.Reshape((2 * (width // 4), n_classes))(logits)
    out = layers.Softmax(name="columns")(logits)
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
