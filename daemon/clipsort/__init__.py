"""clipsort: sort images into class folders by what they show, with a CLIP model."""

from clipsort.errors import (
    ClipsortError,
    ConfigError,
    DatasetError,
    ImageIncomplete,
    ImageRejected,
    ModelLoadError,
    NoClassesError,
    TrainingError,
    UnknownDatasetError,
)

__version__ = "0.1.0"

__all__ = [
    "ClipsortError",
    "ConfigError",
    "DatasetError",
    "ImageIncomplete",
    "ImageRejected",
    "ModelLoadError",
    "NoClassesError",
    "TrainingError",
    "UnknownDatasetError",
    "__version__",
]
