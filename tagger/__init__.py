"""genretag: tag a whole music library with genres.

``from tagger import Tagger, tag_folder`` — imported lazily, so ``genretag --help`` never loads torch.
"""
__version__ = "0.1.0"
__all__ = ["Tagger", "tag_folder", "ScanSettings", "__version__"]


def __getattr__(name):
    if name in ("Tagger", "tag_folder"):
        from . import pipeline

        return getattr(pipeline, name)
    if name == "ScanSettings":
        from .settings import ScanSettings

        return ScanSettings
    raise AttributeError(name)
