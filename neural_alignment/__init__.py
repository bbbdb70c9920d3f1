"""neural-alignment: deep learning without weight symmetry (Kunin et al., ICML 2020).

Each aligned layer has a forward kernel W and a backward kernel B; a learning rule decides
how B learns. See README.md for a tour and DESIGN for the math.
"""

from importlib import metadata as _metadata

from neural_alignment.api import (
    AlignedConv1d,
    AlignedConv2d,
    AlignedConv3d,
    AlignedConvTranspose1d,
    AlignedConvTranspose2d,
    AlignedConvTranspose3d,
    AlignedLinear,
    AlignedMultiheadAttention,
    Conversion,
    ConversionWarning,
    add_weight_gradients,
    aligned_layers,
    alignment_loss,
    conversion_of,
    convert,
    get_rule,
    gradient_angle,
    layer_metrics,
    list_rules,
    make_rule,
    set_epoch,
)
from neural_alignment.registry.markers import hookimpl

try:
    __version__ = _metadata.version("neural-alignment")
except _metadata.PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "AlignedConv1d",
    "AlignedConv2d",
    "AlignedConv3d",
    "AlignedConvTranspose1d",
    "AlignedConvTranspose2d",
    "AlignedConvTranspose3d",
    "AlignedLinear",
    "AlignedMultiheadAttention",
    "Conversion",
    "ConversionWarning",
    "__version__",
    "add_weight_gradients",
    "aligned_layers",
    "alignment_loss",
    "conversion_of",
    "convert",
    "get_rule",
    "gradient_angle",
    "hookimpl",
    "layer_metrics",
    "list_rules",
    "make_rule",
    "set_epoch",
]
