"""Fused kernels, each with a pure-PyTorch reference that is its spec and CPU fallback.

Per-example-gradient-norm LayerNorm / RMSNorm: :func:`layer_norm_per_example`,
:func:`rms_norm_per_example`, :class:`PerExampleLayerNorm`, :class:`PerExampleRMSNorm`.
"""

from fxparam.kernels.norms import (
    Backend,
    LayerNormPerExampleTriton,
    NormKind,
    PerExampleLayerNorm,
    PerExampleNormMixin,
    PerExampleRMSNorm,
    RMSNormPerExampleTriton,
    SqNormAccumulator,
    layer_norm_per_example,
    per_example_class,
    rms_norm_per_example,
)
from fxparam.kernels.reference import LayerNormPerExampleRef, NormGrads, RMSNormPerExampleRef

__all__ = [
    "Backend",
    "LayerNormPerExampleRef",
    "LayerNormPerExampleTriton",
    "NormGrads",
    "NormKind",
    "PerExampleLayerNorm",
    "PerExampleNormMixin",
    "PerExampleRMSNorm",
    "RMSNormPerExampleRef",
    "RMSNormPerExampleTriton",
    "SqNormAccumulator",
    "layer_norm_per_example",
    "per_example_class",
    "rms_norm_per_example",
]
