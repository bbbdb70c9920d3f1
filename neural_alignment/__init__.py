"""neural-alignment: deep learning without weight symmetry (Kunin et al., ICML 2020)."""

from importlib import metadata as _metadata

from neural_alignment.registry.markers import hookimpl

try:
    __version__ = _metadata.version("neural-alignment")
except _metadata.PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"
