"""What a command checks before it loads the model stack: the user's mistakes, found in a second.

Importing torch and transformers and loading a model takes 5-25 s on a small
machine; a wrong ``--root``, a daemon already serving the root or a model
that cannot be had is the user's to fix, and is said in one line and exit 2
before any of that (the light modules only: settings, folders, the hub
client). The commands that load a model call these first.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from daemon.config import Settings, needs_clip
from daemon.encode.hub import require_available
from daemon.errors import ConfigError, DatasetError
from daemon.layout import CLASSES_DIR, INBOX_DIR
from daemon.store.instance import holder


def data_root(root: Path) -> None:
    """DatasetError unless ``root`` is an existing folder that is not itself a dataset.

    A root that does not exist would otherwise be created (its state folder inside), and one that
    is a dataset would hold no dataset: either way the daemon would idle for good, sorting nothing.
    """
    if not root.is_dir():
        raise DatasetError(
            f"data root {str(root)!r} does not exist or is not a folder: pass --root with the folder "
            f"that holds your datasets (each with {CLASSES_DIR}/ and {INBOX_DIR}/), or set root in the config"
        )
    inside = [name for name in (CLASSES_DIR, INBOX_DIR) if (root / name).is_dir()]
    if inside:
        raise DatasetError(
            f"{str(root)!r} is a dataset (it holds {inside[0]}/), not the data root: "
            f"use --root {str(root.parent)!r}, the folder that holds it"
        )


def not_served(settings: Settings) -> None:
    """ConfigError when a daemon already serves the state folder (only one may)."""
    pid = holder(settings.state_path)
    if pid is not None:
        raise ConfigError(
            f"a clipsort daemon (pid {pid or 'starting'}) already serves {str(settings.root)!r} "
            f"(state folder {str(settings.state_path)!r}); stop it first, or `clipsort status` shows it"
        )


def models(settings: Settings, datasets: Iterable[str] | None = None) -> None:
    """ModelLoadError unless every model the datasets need can be loaded now (see daemon.encode.hub)."""
    if not needs_clip(settings, datasets):
        return
    require_available(settings.model)
    if settings.text_model is not None:
        require_available(settings.text_model, "text model", "text_model in the config")
