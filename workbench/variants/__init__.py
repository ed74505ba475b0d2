"""One deployment configuration -> one artifact, by a chain of registered transforms.

A transform is one class (in its own module, listed in ``TRANSFORM_MODULES`` or in the
``WORKBENCH_PLUGINS`` environment variable) that declares its ``name``, the ``parameters`` it
reads (with their values, defaults and when they apply: the sweep does not sample a parameter
that does not apply), whether it applies to the current state, and ``apply``. :func:`build`
walks the registered transforms in order; each one that applies turns the state (the source
model, a derived model, or an artifact) into the next, caching its result by content hash under
its own recipe. The chain ends at an artifact in a format the trial's runtime reads.

A parameter declared ``must_apply`` (``bits``, ``sparsity``) with a value other than its default
that no applied transform reads prunes the trial with the reason: asking for int8 and measuring
fp32 would be a lie.
"""

from workbench.variants.base import (
                                     FORMAT_NAMES,
                                     TRANSFORM_MODULES,
                                     Artifact,
                                     State,
                                     Transform,
                                     artifact_for,
                                     build,
                                     register,
                                     registered,
)

__all__ = ["FORMAT_NAMES", "TRANSFORM_MODULES", "Artifact", "State", "Transform", "artifact_for", "build",
           "register", "registered"]
