"""Pruning of Keras 3 models, written natively with the Keras 3 API.

tensorflow-model-optimization only supports Keras 2, so neither of its wrappers is used here.
Both transforms return a *plain* Keras model (no wrapper layers, no extra variables, not
compiled), so the result exports to ONNX exactly like the original and nothing downstream has
to know it was pruned.

- :func:`prune_unstructured` zeroes individual Conv2D/Dense kernel weights (magnitude pruning
  with the gradual Zhu & Gupta schedule). The architecture is unchanged, so it only helps a
  runtime or a compressor that exploits zeros; :func:`kernel_sparsity` and
  :func:`onnx_sparsity` say how many zeros really reached the Keras model and the ONNX file.
- :func:`prune_channels` removes whole filters/units and rebuilds a smaller model, which is
  faster on any runtime but costs more accuracy per removed parameter.

TensorFlow/Keras are imported inside the functions so importing this module stays cheap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.core.errors import TrialPruned
from workbench.data.inputs import rows

if TYPE_CHECKING:  # pragma: no cover
    import keras

MAX_SPARSITY = 0.95
SCOPES = ("global", "layer")
FINETUNE_LR = 1e-3
BATCH_SIZE = 32
# The fine-tune loss per task: a regression model recovers on its own objective (MSE), never
# on a classification loss that would be meaningless for real-valued targets.
LOSSES = {"classification": "sparse_categorical_crossentropy", "regression": "mean_squared_error"}
LOSS = LOSSES["classification"]


# ---------------------------------------------------------------------------------------------
# shared helpers


def _kernel_layers(model) -> list:
    """Every Conv2D/Dense layer, nested models included, in model order.

    Exact types on purpose: Conv2DTranspose, DepthwiseConv2D or a user subclass keep their
    kernels in a different layout or meaning, so they are left alone rather than mis-pruned.
    """
    import keras

    found = []
    for layer in model.layers:
        if type(layer) in (keras.layers.Conv2D, keras.layers.Dense):
            found.append(layer)
        elif hasattr(layer, "layers"):  # a nested Sequential/functional model
            found.extend(_kernel_layers(layer))
    return found


def _plain_copy(model) -> "keras.Model":
    """Same architecture and weights, fresh (uncompiled, no optimizer state) object.

    Returned instead of the model that was fine-tuned so that saving it does not drag the
    optimizer along and so that callers never share layers with our training run.
    """
    # Not keras.models.clone_model: it re-applies the source's compile config.
    try:
        copy = type(model).from_config(model.get_config())
    except Exception as err:  # subclassed models without get_config/from_config
        raise TrialPruned(f"cannot copy model {model.name!r} for pruning: {err}") from None
    copy.set_weights(model.get_weights())
    return copy


def _check_train_split(x_train, y_train, finetune_epochs: int) -> None:
    """Fine-tune needs labelled training data; a user .npz may have none."""
    if finetune_epochs < 0:
        raise ValueError(f"finetune_epochs must be >= 0 (got {finetune_epochs})")
    if finetune_epochs and (x_train is None or y_train is None or rows(x_train) == 0):
        raise TrialPruned("pruning fine-tune needs a train split (x_train/y_train) in the data set")


def _finetune(model, x_train, y_train, epochs: int, callbacks: list | None = None,
              loss: str = LOSS) -> None:
    """Short recovery training; deterministic because the caller seeded Keras beforehand."""
    import keras

    model.compile(optimizer=keras.optimizers.Adam(FINETUNE_LR), loss=loss)
    model.fit(x_train, y_train, epochs=epochs, batch_size=BATCH_SIZE, shuffle=True, verbose=0,
              callbacks=callbacks or [])


# ---------------------------------------------------------------------------------------------
# unstructured magnitude pruning


def _polynomial_sparsity(s_final: float, step: int, total: int) -> float:
    """Zhu & Gupta (2017): prune fast while there is much redundancy, slowly near the end."""
    if total <= 0:
        return s_final
    t = min(step, total) / total
    return s_final * (1.0 - (1.0 - t) ** 3)


def _smallest_mask(magnitudes: np.ndarray, sparsity: float) -> np.ndarray:
    """Boolean keep-mask zeroing exactly round(sparsity * n) smallest entries of a flat array.

    A stable sort (not a threshold) so ties at zero cannot push the count past the target and
    the same weights are chosen on every run.
    """
    n_prune = int(round(sparsity * magnitudes.size))
    keep = np.ones(magnitudes.size, dtype=bool)
    if n_prune > 0:
        keep[np.argsort(magnitudes, kind="stable")[:n_prune]] = False
    return keep


def _masks(kernels: list[np.ndarray], sparsity: float, scope: str) -> list[np.ndarray]:
    """Keep-masks (shaped like the kernels) for the current weights at ``sparsity``."""
    if scope == "layer":
        return [_smallest_mask(np.abs(k).ravel(), sparsity).reshape(k.shape) for k in kernels]
    flat = np.concatenate([np.abs(k).ravel() for k in kernels])
    keep = _smallest_mask(flat, sparsity)
    out, start = [], 0
    for k in kernels:
        out.append(keep[start:start + k.size].reshape(k.shape))
        start += k.size
    return out


def _apply_masks(layers: list, sparsity: float, scope: str) -> None:
    """Recompute masks from the current magnitudes and write the masked kernels back."""
    import keras

    kernels = [keras.ops.convert_to_numpy(layer.kernel) for layer in layers]
    for layer, kernel, keep in zip(layers, kernels, _masks(kernels, sparsity, scope)):
        layer.kernel.assign(np.where(keep, kernel, 0).astype(kernel.dtype))


def prune_unstructured(model, x_train, y_train, sparsity: float, finetune_epochs: int = 2,
                       scope: str = "global", seed: int = 0, loss: str = LOSS) -> "keras.Model":
    """Magnitude pruning of Conv2D/Dense kernels (not biases) to `sparsity` (0..0.95).
    Sparsity is reached gradually over the fine-tune steps with the polynomial schedule
    s_t = s_final * (1 - (1 - t/T)^3) (Zhu & Gupta 2017), masks recomputed at each step from
    the current weight magnitudes and re-applied after every optimizer step (so pruned weights
    stay zero during fine-tune), then the final mask is baked into plain dense weights.
    scope "global" ranks all prunable kernel weights together; "layer" prunes each kernel to
    `sparsity` separately. Returns a new compiled-free plain Keras model (same architecture, no
    wrapper layers), so it exports to ONNX like the original.

    Why gradual: removing 80% of the weights at once destroys the function the fine-tune has to
    recover from; growing the mask while training lets the remaining weights compensate step by
    step. With ``finetune_epochs=0`` this is one-shot magnitude pruning (no training at all).
    Biases are left dense: they are few and zeroing them shifts activations for nothing.
    The input ``model`` is never modified.
    """
    import keras

    if not 0.0 <= sparsity <= MAX_SPARSITY:
        raise ValueError(f"sparsity must be in [0, {MAX_SPARSITY}] (got {sparsity})")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES} (got {scope!r})")
    _check_train_split(x_train, y_train, finetune_epochs)

    keras.utils.set_random_seed(seed)
    work = _plain_copy(model)
    if sparsity == 0.0:
        return work
    layers = _kernel_layers(work)
    if not layers:
        raise TrialPruned(f"model {model.name!r} has no Conv2D/Dense kernel to prune")

    if finetune_epochs:
        total = finetune_epochs * math.ceil(rows(x_train) / BATCH_SIZE)

        class _Mask(keras.callbacks.Callback):
            """Advance the schedule and re-apply the mask after every optimizer step."""

            def __init__(self) -> None:
                super().__init__()
                self.step = 0

            def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
                self.step += 1
                _apply_masks(layers, _polynomial_sparsity(sparsity, self.step, total), scope)

        _finetune(work, x_train, y_train, finetune_epochs, [_Mask()], loss=loss)
    # Bake the final mask (at t = T the schedule is already at `sparsity`; this also covers
    # the one-shot case) and hand back a fresh, uncompiled copy.
    _apply_masks(layers, sparsity, scope)
    return _plain_copy(work)


def kernel_sparsity(model) -> float:
    """Fraction of exactly-zero weights over all Conv2D/Dense kernels (what was reached)."""
    import keras

    zeros = total = 0
    for layer in _kernel_layers(model):
        k = keras.ops.convert_to_numpy(layer.kernel)
        zeros += int(np.count_nonzero(k == 0))
        total += k.size
    return zeros / total if total else 0.0


def onnx_sparsity(path) -> float:
    """Fraction of exactly-zero values over the float initializers with >= 2 dims of an ONNX
    file (Conv weights / MatMul weights), measured on the exported artifact.

    Measured on the file because the converter may fold, transpose or duplicate weights; this
    is the sparsity a runtime or a compressor actually sees. 1-D tensors (biases, BN vectors)
    and integer tensors (shapes, indices) are excluded; weights stored as ``Constant`` nodes
    instead of initializers are counted too.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(Path(path)))
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            tensors.extend(a.t for a in node.attribute if a.name == "value" and a.HasField("t"))
    zeros = total = 0
    for tensor in tensors:
        if len(tensor.dims) < 2:
            continue
        arr = numpy_helper.to_array(tensor)
        if not np.issubdtype(arr.dtype, np.floating):
            continue
        zeros += int(np.count_nonzero(arr == 0))
        total += arr.size
    return zeros / total if total else 0.0


# ---------------------------------------------------------------------------------------------
# structured (channel) pruning


@dataclass
class _Step:
    """How one layer of the chain is rebuilt: new config, sliced weights, kept outputs."""

    layer: Any
    config: dict
    weights: list[np.ndarray]
    kept: np.ndarray | None = None  # kept output channels (pruned Conv2D/Dense only)


def _unsupported(layer) -> TrialPruned:
    return TrialPruned(f"channel pruning does not support layer {layer.name} ({type(layer).__name__})")


def _chain(model) -> list:
    """The model's layers as a single input-to-output chain, or TrialPruned.

    Sequential models are chains by construction; a functional model qualifies only if every
    operation is a supported layer and each one consumes exactly the previous one's output
    (no branches, no shared layers, one input, one output).
    """
    import keras

    supported = _supported_types()
    if isinstance(model, keras.Sequential):
        layers = list(model.layers)
        for layer in layers:
            if type(layer) not in supported:
                raise _unsupported(layer)
        return layers
    operations = getattr(model, "operations", None)
    if operations is None or not hasattr(model, "outputs"):
        raise TrialPruned(f"channel pruning supports Sequential or functional models, not "
                          f"{model.name} ({type(model).__name__})")
    ops = [op for op in operations if not isinstance(op, keras.layers.InputLayer)]
    for op in ops:  # catches Add/Concatenate and raw keras.ops calls in the graph
        if type(op) not in supported:
            raise _unsupported(op)
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise TrialPruned(f"channel pruning needs one input and one output (model {model.name})")
    chain, tensor = [], model.outputs[0]
    while True:
        op, node_index, _ = tensor._keras_history
        if op is None or isinstance(op, keras.layers.InputLayer):
            break
        parents = op._inbound_nodes[node_index].arguments.keras_tensors
        if len(parents) != 1:
            raise TrialPruned(f"channel pruning needs a single chain of layers; {op.name} has "
                              f"{len(parents)} inputs")
        chain.append(op)
        tensor = parents[0]
    chain.reverse()
    if chain != ops:
        raise TrialPruned(f"channel pruning needs a single chain of layers (model {model.name} "
                          "branches or shares layers)")
    return chain


def _supported_types() -> tuple:
    import keras

    L = keras.layers
    return (L.Conv2D, L.Dense, L.MaxPooling2D, L.AveragePooling2D, L.Flatten,
            L.GlobalAveragePooling2D, L.Dropout, L.ReLU, L.Activation, L.BatchNormalization)


def _n_keep(n: int, fraction: float) -> int:
    """Round half up (not banker's rounding), at least one, at most all."""
    return max(1, min(n, int(math.floor((1.0 - fraction) * n + 0.5))))


def _require_channels_last(layer) -> None:
    fmt = getattr(layer, "data_format", "channels_last")
    if fmt != "channels_last":
        raise TrialPruned(f"channel pruning supports only channels_last; layer {layer.name} is {fmt}")


def _plan(model, fraction: float) -> tuple[tuple[int, ...], list[_Step]]:
    """Decide what every layer of the chain becomes; no Keras objects are created here.

    ``keep`` follows the surviving indices along the last axis of the current tensor: a pruned
    Conv2D/Dense narrows it, BatchNormalization is sliced by it, the next Conv2D/Dense keeps
    only those input rows, and Flatten expands it to the (h, w, c) positions it produces.
    Filters are ranked by the L1 norm of their kernel after the input slice (the weights that
    will actually remain), ties broken by index so the choice is deterministic.
    """
    import keras

    layers = _chain(model)
    if not model.inputs:
        raise TrialPruned(f"model {model.name} is not built (no input shape)")
    input_shape = tuple(model.inputs[0].shape)
    kernel_idx = [i for i, layer in enumerate(layers)
                  if type(layer) in (keras.layers.Conv2D, keras.layers.Dense)]
    if not kernel_idx:
        raise TrialPruned(f"model {model.name} has no Conv2D/Dense layer to prune")
    output_layer = kernel_idx[-1]  # its outputs are the model's outputs: never pruned

    shape = input_shape
    keep = np.arange(shape[-1])
    steps: list[_Step] = []
    for i, layer in enumerate(layers):
        config = layer.get_config()
        weights = layer.get_weights()
        kept = None
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            if isinstance(layer, keras.layers.Conv2D):
                _require_channels_last(layer)
                if layer.groups != 1:
                    raise TrialPruned(f"channel pruning does not support grouped Conv2D {layer.name}")
                kernel = weights[0][:, :, keep, :]
            else:
                kernel = weights[0][keep, :]
            n_out = kernel.shape[-1]
            if i == output_layer:
                kept_out = np.arange(n_out)
            else:
                l1 = np.abs(kernel).reshape(-1, n_out).sum(axis=0)
                order = np.lexsort((np.arange(n_out), -l1))  # largest L1 first, then index
                kept_out = np.sort(order[:_n_keep(n_out, fraction)])
                kept = kept_out
                config["filters" if isinstance(layer, keras.layers.Conv2D) else "units"] = len(kept_out)
            weights = [kernel[..., kept_out]] + ([weights[1][kept_out]] if layer.use_bias else [])
            keep = kept_out
        elif isinstance(layer, keras.layers.BatchNormalization):
            if layer.axis not in (-1, len(shape) - 1):
                raise TrialPruned(f"channel pruning needs BatchNormalization on the last axis "
                                  f"({layer.name} has axis {layer.axis})")
            weights = [w[keep] for w in weights]
        elif isinstance(layer, keras.layers.Flatten):
            _require_channels_last(layer)
            positions = int(np.prod(shape[1:-1])) if len(shape) > 2 else 1
            keep = (np.arange(positions)[:, None] * shape[-1] + keep[None, :]).ravel()
        elif isinstance(layer, (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D,
                                keras.layers.GlobalAveragePooling2D)):
            _require_channels_last(layer)
        # Dropout, ReLU, Activation: elementwise, channels pass through unchanged.
        steps.append(_Step(layer, config, weights, kept))
        shape = tuple(layer.compute_output_shape(shape))
    return input_shape, steps


def _kept_channels(model, fraction: float) -> dict[str, np.ndarray]:
    """Layer name -> indices of the filters/units :func:`prune_channels` keeps (for checks)."""
    return {s.layer.name: s.kept for s in _plan(model, fraction)[1] if s.kept is not None}


def _rebuild(model, input_shape: tuple[int, ...], steps: list[_Step]) -> "keras.Model":
    """A Sequential model with the planned (smaller) layers and the sliced weights."""
    import keras

    new_layers = [type(s.layer).from_config(s.config) for s in steps]
    rebuilt = keras.Sequential([keras.Input(shape=input_shape[1:], dtype=model.inputs[0].dtype),
                                *new_layers], name=model.name)
    for layer, step in zip(new_layers, steps):
        if step.weights:
            layer.set_weights(step.weights)
    return rebuilt


def prune_channels(model, x_train, y_train, fraction: float, finetune_epochs: int = 2,
                   seed: int = 0, loss: str = LOSS) -> "keras.Model":
    """Structured pruning: remove `fraction` of the filters of every Conv2D and of the units of
    every hidden Dense layer (never the output layer), choosing those with the smallest L1 norm,
    then rebuild a smaller functional/Sequential Keras model with consistent shapes downstream
    (the next Conv2D's input channels, the Dense after Flatten — careful: Flatten of an HxWxC map
    orders features as (h, w, c), so removing channel c removes every (h, w, c) row of the next
    Dense kernel), copy the surviving weights, and fine-tune. Supports Sequential models made of
    Conv2D, Dense, MaxPooling2D, AveragePooling2D, Flatten, GlobalAveragePooling2D, Dropout,
    ReLU/Activation layers, BatchNormalization (slice its gamma/beta/mean/var). Anything else:
    raise workbench.core.errors.TrialPruned(f"channel pruning does not support layer {name} ({type})").
    At least one filter/unit is kept per layer.

    Why: unlike zeroed weights, removed channels make every runtime faster and the file
    smaller. Kept counts are round-half-up of ``(1 - fraction) * n``. The "output layer" is the
    last Conv2D/Dense of the chain. A functional model is accepted when it is a single chain of
    the supported layers; the result is always a Sequential model with the original layer
    names, uncompiled. With ``finetune_epochs=0`` the result computes exactly what the
    original computes with the removed filters' kernels and biases set to zero (for
    activations with f(0) = 0, e.g. ReLU, and no BatchNormalization after a pruned layer).
    """
    import keras

    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1) (got {fraction})")
    _check_train_split(x_train, y_train, finetune_epochs)

    keras.utils.set_random_seed(seed)
    input_shape, steps = _plan(model, fraction)
    rebuilt = _rebuild(model, input_shape, steps)
    if finetune_epochs:
        _finetune(rebuilt, x_train, y_train, finetune_epochs, loss=loss)
        rebuilt = _plain_copy(rebuilt)
    return rebuilt
