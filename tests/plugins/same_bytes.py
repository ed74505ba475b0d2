"""A transform whose parameter leaves the artifact as it is: two trials that differ only in it
time the same bytes with the same run options, and a sweep must measure them once
(``decide.measurement_key``). Conditions keep the shipped parameters from doing that; a
plug-in's parameter is where it can still happen."""

from workbench.core.parameter import Parameter
from workbench.variants import Artifact, Transform, register


class Label(Transform):
    name = "label-only"
    parameters = (Parameter("label_only", 0, int, ge=0, help="a label that changes no byte"),)

    def applies(self, state, params, formats):
        return isinstance(state, Artifact) and params.label_only > 0

    def apply(self, state, data, params, calibration_samples):
        return state


TRANSFORM = register(Label())
