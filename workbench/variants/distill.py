"""Knowledge distillation: a smaller student trained on the teacher's soft targets.

The third compression technique next to pruning and quantization. A trial with
``distill_width < 1`` replaces the model by a student and then exports, prunes, quantizes and
runs it like any model (the student's cache key holds the distillation recipe).

- The student is the teacher's architecture with every Conv filter count, Dense unit count,
  Embedding width and attention key width scaled by ``distill_width`` (the output layer keeps
  its size), rebuilt with ``keras.models.clone_model`` - so functional and Sequential models of
  standard Keras layers work, and anything else (a custom or Lambda layer) prunes the trial
  with the reason. Or it is the user's untrained ``distill_student`` ``.keras`` file; then
  every trial with ``distill_width < 1`` uses that student (the width is only the switch).
- Training uses Keras 3's own ``keras.distillation.Distiller`` (Keras >= 3.15) on ``x_train``:
  classification: KL divergence between the softened (``distill_temperature``) teacher and
  student logits plus cross-entropy to the labels; regression: MSE to the teacher's outputs
  plus MSE to the targets. ``distill_alpha`` weighs the teacher term (the labels get
  ``1 - alpha``). A teacher that outputs probabilities is distilled through their logarithm
  (softmax(log p / T) is p softened), and the student is trained on logits and saved with its
  softmax head back, so it is a drop-in replacement of the teacher.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from workbench.core import cache
from workbench.core.cache import file_hash
from workbench.core.errors import TrialPruned, first_line
from workbench.core.parameter import Parameter
from workbench.data import Dataset
from workbench.models.modeldir import ModelRef, save
from workbench.variants import Transform, register

PACKAGES = ("tensorflow", "keras")
BATCH_SIZE = 32
LEARNING_RATE = 1e-3
RECIPE = 1  # bump when how a student is built or trained changes
# Layer attributes scaled by the width (the layer types are the standard ones carrying them).
_WIDTH_KEYS = {"Conv1D": "filters", "Conv2D": "filters", "Conv3D": "filters",
               "SeparableConv2D": "filters", "Dense": "units", "Embedding": "output_dim",
               "MultiHeadAttention": "key_dim", "LSTM": "units", "GRU": "units", "SimpleRNN": "units"}


def applies(params) -> bool:
    """Whether this trial distils (width 1.0 means: the teacher itself)."""
    return getattr(params, "distill_width", 1.0) < 1.0


def label(params) -> str:
    return "distill:student" if params.distill_student else f"distill:{params.distill_width:g}"


def recipe(params) -> dict[str, Any]:
    """Everything that determines the student (part of its cache key)."""
    student = params.distill_student
    return {"width": None if student else params.distill_width,
            "student": file_hash(Path(student)) if student else None,
            "temperature": params.distill_temperature, "alpha": params.distill_alpha,
            "epochs": params.distill_epochs, "seed": params.seed, "recipe": RECIPE}


def _is_standard(layer) -> bool:
    import keras

    module = type(layer).__module__
    return (module.startswith(("keras.src.layers", "keras.src.ops", "keras.src.models"))
            and not isinstance(layer, keras.layers.Lambda))


def _output_layers(model) -> set[str]:
    """Names of the layers whose outputs are the model's outputs (never scaled)."""
    return {t._keras_history[0].name for t in model.outputs}


def scaled_clone(model, width: float, head: str | None = None):
    """``model``'s architecture (fresh weights) with widths scaled by ``width``; the output
    layer keeps its size and, when ``head`` is given, gets that activation instead."""
    import keras

    for layer in model.layers:
        if not _is_standard(layer):
            raise TrialPruned(f"distillation cannot scale {model.name}: layer {layer.name} "
                              f"({type(layer).__name__}) is not a standard Keras layer "
                              "(give distill_student: an untrained student .keras file)")
    outputs = _output_layers(model)

    def clone(layer):
        config = layer.get_config()
        if layer.name in outputs:
            if head is not None and "activation" in config:
                config["activation"] = head
        else:
            key = _WIDTH_KEYS.get(type(layer).__name__)
            if key and isinstance(config.get(key), int):
                config[key] = max(1, int(round(config[key] * width)))
        return type(layer).from_config(config)

    try:
        return keras.models.clone_model(model, clone_function=clone)
    except TrialPruned:
        raise
    except Exception as err:
        line = first_line(err, 200)
        raise TrialPruned(f"distillation cannot rebuild {model.name} at width {width:g} ({line})") from None


def _with_head(model, activation: str):
    """The same model (same weights) with the output layer's activation set to ``activation``."""
    import keras

    outputs = _output_layers(model)

    def clone(layer):
        config = layer.get_config()
        if layer.name in outputs and "activation" in config:
            config["activation"] = activation
        return type(layer).from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def _head_activation(model) -> str | None:
    layer = next(iter(model.layers[i] for i in range(len(model.layers))
                      if model.layers[i].name in _output_layers(model)), None)
    act = layer.get_config().get("activation") if layer is not None else None
    return act if isinstance(act, str) else None


def _student(teacher, params, trust: bool):
    """The untrained student with a linear (logits) head, and the activation to put back."""
    import keras

    head = _head_activation(teacher)
    if params.distill_student:
        path = Path(params.distill_student)
        if not path.is_file() or path.suffix != ".keras":
            raise TrialPruned(f"distill_student: {path} is not a .keras file")
        try:
            user = keras.saving.load_model(path, safe_mode=not trust, compile=False)
        except Exception as err:
            line = first_line(err, 200)
            raise TrialPruned(f"distill_student: cannot load {path} ({line})") from None
        if [tuple(t.shape[1:]) for t in user.inputs] != [tuple(t.shape[1:]) for t in teacher.inputs] \
                or tuple(user.outputs[0].shape[1:]) != tuple(teacher.outputs[0].shape[1:]):
            raise TrialPruned(f"distill_student: {path.name} must take the teacher's inputs and give "
                              "its output shape")
        head = _head_activation(user)
        return scaled_clone(user, 1.0, "linear" if head == "softmax" else None), head
    return scaled_clone(teacher, params.distill_width, "linear" if head == "softmax" else None), head


def _teacher_logits(teacher, reference: np.ndarray):
    """The teacher as a logits model: probabilities go through log (softmax(log p) = p)."""
    import keras

    probabilities = reference.ndim == 2 and reference.min() >= 0 and \
        np.allclose(reference.sum(-1), 1.0, atol=1e-3)
    if not probabilities:
        return teacher
    out = keras.ops.log(keras.ops.clip(teacher.outputs[0], 1e-7, 1.0))
    return keras.Model(teacher.inputs, out, name=f"{teacher.name}_logits")


def train(teacher, student, data: Dataset, params, reference: np.ndarray):
    """Train ``student`` (logits head) against ``teacher`` with keras.distillation.Distiller."""
    import keras
    from keras.distillation import Distiller, LogitsDistillation

    regression = data.task == "regression"
    if regression:
        loss = LogitsDistillation(temperature=1.0, loss="mean_squared_error")
        student_loss = "mean_squared_error"
        source = teacher
    else:
        loss = LogitsDistillation(temperature=params.distill_temperature)
        student_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        source = _teacher_logits(teacher, reference)
    distiller = Distiller(teacher=source, student=student, distillation_losses=loss,
                          student_loss_weight=1.0 - params.distill_alpha)
    distiller.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE), loss=student_loss)
    distiller.fit(data.x_train, data.y_train, epochs=params.distill_epochs, batch_size=BATCH_SIZE,
                  shuffle=True, verbose=0)
    return distiller.student


def train_from_scratch(student, data: Dataset, epochs: int, seed: int = 0):
    """The same student on the labels alone (what distillation is compared against)."""
    import keras

    keras.utils.set_random_seed(seed)
    regression = data.task == "regression"
    student.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE),
                    loss="mean_squared_error" if regression else
                    keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    student.fit(data.x_train, data.y_train, epochs=epochs, batch_size=BATCH_SIZE, shuffle=True, verbose=0)
    return student


def distilled(model: ModelRef, data: Dataset, params) -> ModelRef:
    """The trained student of ``model`` for this trial's distillation parameters (cached)."""
    if model.format != "keras":
        raise TrialPruned(f"distillation needs a Keras teacher; {model.name} is {model.format}")
    if data.x_train is None or data.y_train is None:
        raise TrialPruned("distillation needs x_train/y_train in the data set")
    if params.distill_epochs < 1:
        raise TrialPruned("distillation needs distill_epochs >= 1")
    r = recipe(params)
    k = cache.key("distilled", model.key, r, cache.versions(*PACKAGES))

    def build(out: Path) -> None:
        import keras

        keras.utils.set_random_seed(params.seed)
        teacher = model.load_keras()
        student, head = _student(teacher, params, params.trust_model_code)
        student = train(teacher, student, data, params, model.reference())
        if head == "softmax":
            student = _with_head(student, "softmax")
        save(student, data, out, teacher_params=int(teacher.count_params()), distillation=r)

    d = cache.entry("models", k, build)
    meta = json.loads((d / "meta.json").read_text())
    meta["transforms"] = [*model.meta.get("transforms", []), label(params)]  # in memory only
    return ModelRef(f"{model.name}+{label(params)}", k, d, meta)


def _on(p) -> bool:
    return float(p.get("distill_width", 1.0)) < 1.0


class Distill(Transform):
    """Teacher -> trained student (a Keras model), before pruning, export and quantization."""

    name = "distill"
    parameters = (
        Parameter("distill_width", 1.0, float, ge=0.01, le=1.0, must_apply=True,
                  help="student width relative to the teacher (1.0: no distillation)"),
        Parameter("distill_temperature", 3.0, float, ge=0.01, applies=_on),
        Parameter("distill_alpha", 0.5, float, ge=0.0, le=1.0, applies=_on),
        Parameter("distill_epochs", 5, int, ge=1, applies=_on),
    )

    def applies(self, state, params, formats) -> bool:
        return applies(params) and isinstance(state, ModelRef)

    def apply(self, state, data, params, calibration_samples) -> ModelRef:
        return distilled(state, data, params)


TRANSFORM = register(Distill())
