"""The one exception hierarchy of clipsort.

Everything clipsort raises on purpose derives from :class:`ClipsortError`;
lower-level errors (pydantic, tomllib, OSError, Hugging Face) are mapped to
one of these at the boundary where they happen, so callers catch one family::

    ClipsortError
    ├── ConfigError          bad config file, environment or flag value
    ├── DatasetError         the data root or a dataset is unusable
    │   ├── UnknownDatasetError
    │   └── NoClassesError
    ├── ModelLoadError       the CLIP model cannot be loaded
    ├── TrainingError        a dataset cannot be fine-tuned as asked
    ├── JournalError         the journal cannot be read or has nothing to undo
    ├── ActionError          a review-page action cannot be carried out
    │   └── GoneError        its entry, dataset or file is not there any more
    ├── ImageRejected        one file cannot be read as an image (quarantined)
    │   └── ImageIncomplete  empty or truncated: maybe still arriving
    │       └── DecoderKilled   its decoding process was killed from outside: tried again, never rejected
    ├── UnsafeDestination    a folder on the way is a symlink, or a path leaves its dataset
    └── FileReplaced         the file under a name changed after it was read (put back, classified again)

The CLI turns every ClipsortError except ImageRejected into exit code 2 and
a one-line message; ImageRejected never escapes: the file goes to Rejected/. The review page maps
ActionError to its HTTP statuses itself (:func:`clipsort.web.actions.http_status`).
"""

from __future__ import annotations


class ClipsortError(Exception):
    """Base of every error clipsort raises on purpose."""


class ConfigError(ClipsortError):
    """The configuration (file, environment or flags) is invalid."""


class DatasetError(ClipsortError):
    """The data root or a dataset cannot be used as asked."""


class UnknownDatasetError(DatasetError):
    """A dataset was named that does not exist under the data root."""


class NoClassesError(DatasetError):
    """A dataset has no usable class folders (or no references where needed)."""


class ModelLoadError(ClipsortError):
    """The CLIP model could not be loaded from its name or path."""


class TrainingError(ClipsortError):
    """A dataset cannot be fine-tuned as asked (too few images, a base model that will not load)."""


class JournalError(ClipsortError):
    """The journal cannot be opened, or a history or undo request matches nothing it can do."""


class ImageRejected(ClipsortError):
    """One file cannot be classified as an image; the reason is the message."""


class ImageIncomplete(ImageRejected):
    """Empty or truncated: the daemon waits for more bytes before quarantining it."""


class DecoderKilled(ImageIncomplete):
    """The decoding process was killed from outside (SIGKILL) again and again: not the file's fault."""


class ActionError(ClipsortError):
    """A review-page request that cannot be carried out; nothing was moved."""


class GoneError(ActionError):
    """What a review-page request names (entry, dataset, file) is not there any more."""


class UnsafeDestination(ClipsortError):
    """A destination that is a symlink, or lies outside the folder it must stay in."""


class FileReplaced(ClipsortError):
    """The file under a name was replaced by another after it was read; it was not filed."""
