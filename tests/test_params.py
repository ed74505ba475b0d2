"""Trial parameters arrive as strings or numpy scalars (papermill, Optuna) and are cast once."""

import numpy as np
import pytest

from workbench.config.params import TrialParams
from workbench.core.errors import ConfigError


def test_strings_and_numpy_scalars_become_builtins():
    p = TrialParams.parse({"bits": "8", "batch_size": np.int64(32), "sparsity": np.float32(0.5),
                           "per_channel": "True", "threads": "2", "min_seconds": "0.5"})
    assert (p.bits, p.batch_size, p.per_channel, p.threads) == (8, 32, True, 2)
    assert type(p.batch_size) is int and type(p.sparsity) is float
    assert p.sparsity == pytest.approx(0.5)


def test_bad_parameter_is_named():
    with pytest.raises(ConfigError, match="trial parameter bits"):
        TrialParams.parse({"bits": 7})
    with pytest.raises(ConfigError, match="trial parameter colour"):
        TrialParams.parse({"colour": "red"})


def test_label():
    assert TrialParams.parse({"bits": 8, "int8_mode": "dynamic", "batch_size": 4}).describe() == \
        "onnxruntime int8-dynamic b4 t1"
