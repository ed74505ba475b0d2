"""workbench: find the best way to deploy a trained model, one notebook per trial.

Submodules are imported lazily by their users: a trial whose artifact is cached must not pay for
importing TensorFlow, so nothing here imports the heavy libraries.
"""

__version__ = "0.1.0"
