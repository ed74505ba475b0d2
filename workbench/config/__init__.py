"""What a user configures: the experiment file (``experiment``), the parameters every plug-in
declares (``parameters``) and the parameters of one trial (``params``)."""

from workbench.config.experiment import Experiment, Measurement, Range, SearchSpace, load, parse
from workbench.config.params import TrialParams

__all__ = ["Experiment", "Measurement", "Range", "SearchSpace", "TrialParams", "load", "parse"]
