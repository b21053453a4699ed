"""What a command checks before it loads the model stack: the user's mistakes, found in a second.

Importing torch and transformers and loading a model takes 5-25 s on a small
machine; a wrong ``--root``, a daemon already serving the root or a model
that cannot be had is the user's to fix, and is said in one line and exit 2
before any of that (the light modules only: settings, folders, the hub
client). The commands that load a model call these first.
"""

from __future__ import annotations

from collections.abc import Iterable

from clipsort.classify.modes import needs_clip
from clipsort.config import Settings
from clipsort.encode.hub import require_available
from clipsort.errors import ConfigError
from clipsort.store.instance import holder


def not_served(settings: Settings) -> None:
    """ConfigError when a daemon already serves the state folder (only one may)."""
    pid = holder(settings.state_path)
    if pid is not None:
        raise ConfigError(
            f"a clipsort daemon (pid {pid or 'starting'}) serves {str(settings.root)!r} already "
            f"(state folder {str(settings.state_path)!r}); stop it first, or `clipsort status` shows it"
        )


def models(settings: Settings, datasets: Iterable[str] | None = None) -> None:
    """ModelLoadError unless every model the datasets need can be loaded now (see clipsort.encode.hub)."""
    if not needs_clip(settings, datasets):
        return
    require_available(settings.model)
    if settings.text_model is not None:
        require_available(settings.text_model, "text model", "text_model in the config")
