"""Data sets: the builtin ``digits`` (scikit-learn, offline) and user ``.npz`` files.

A data set has a train split (for training and pruning fine-tune), a calibration split (for
static quantization, never used for accuracy) and an eval split (accuracy is measured on all of
it). The builtin split is fixed by a seed and cached as ``.npz`` so trials do not import
scikit-learn.

A user ``.npz`` holds ``x_eval`` and ``y_eval``, optionally ``x_calib`` (default: the first
fifth of ``x_eval``, which is then *not* used for accuracy) and ``x_train``/``y_train`` (only
pruning fine-tune and distillation need them).

Several inputs: instead of ``x_eval`` the archive holds one array per model input, named
``x_eval.<input name>`` (for example ``x_eval.tokens`` and ``x_eval.mask``), and the same for
``x_calib.<name>`` and ``x_train.<name>``. The split is then a dict ``{input name: array}``;
:class:`Dataset` and :mod:`workbench.data.inputs` handle both forms. Inputs may be float32 (float64
is cast), float16, int32, int64 or bool; they are checked against the model's own inputs at
preflight. Its cache key is the hash of the file's content, so a copied or
re-generated identical file reuses every cached artifact and a changed one never does.
"""

from workbench.data.datasets import TASKS, TEXT_VOCAB, Dataset, load

__all__ = ["TASKS", "TEXT_VOCAB", "Dataset", "load"]
