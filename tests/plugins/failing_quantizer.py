"""A quantizer that raises, deterministically, for one value of its parameter: a sweep must
run that configuration once, remember the failure and never run it again (issue 19)."""

from workbench.core.parameter import Parameter
from workbench.variants import Artifact, Transform, register


class Failing(Transform):
    name = "failing-quantizer"
    parameters = (Parameter("failing_quant", 0, int, choices=(0, 1), help="1: the quantizer raises"),)

    def applies(self, state, params, formats):
        return isinstance(state, Artifact) and params.failing_quant > 0

    def apply(self, state, data, params, calibration_samples):
        raise RuntimeError("failing-quantizer 1.0 quantize failed: deliberate")


TRANSFORM = register(Failing())
