"""Where a model comes from, answered without loading the model stack.

A model is a local folder or a Hugging Face hub name. Whether a hub name can
be had (in the local cache, or downloadable now) is asked here with the hub
client alone, so a command can refuse a model it cannot get in a fraction of
a second, before torch and transformers load (seconds), and a run that
cannot start says so before it imports them.
"""

from __future__ import annotations

import os
import socket
import urllib.parse
from pathlib import Path

import huggingface_hub

from clipsort.errors import ModelLoadError

DEMO_HINT = "`clipsort demo-model DIR` makes a small demonstration model for Data/example offline"
HUB_PROBE_SECONDS = 3.0
# sentence-transformers finds a bare name such as clip-ViT-B-32 under its own organisation.
ST_ORGANISATION = "sentence-transformers"
MARKERS = ("modules.json", "config.json")  # a cached snapshot holds at least one of them


def looks_like_path(name: str) -> bool:
    """A model given as a folder rather than a hub name."""
    return Path(name).expanduser().exists() or name.startswith(("/", ".", "~"))


def hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be reached (None when it can, or a proxy is in the way).

    huggingface_hub retries a refused connection with back-off, so without a
    network a download fails only after about 86 s of "Retrying in Ns" lines
    (transformers' loaders: two minutes); one direct TCP connect answers in at
    most a few seconds. Behind a proxy the direct connect proves nothing, so
    the hub client is left to try.
    """
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    endpoint = urllib.parse.urlsplit(huggingface_hub.constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname or "", port), timeout=HUB_PROBE_SECONDS).close()
    except OSError as exc:
        return f"{endpoint.hostname}:{port}: {exc.strerror or exc}"
    return None


def in_cache(name: str) -> bool:
    """Whether hub model ``name`` was downloaded before (so it loads without the network)."""
    repos = [name] if "/" in name else [name, f"{ST_ORGANISATION}/{name}"]
    return any(
        isinstance(huggingface_hub.try_to_load_from_cache(repo, marker), str)
        for repo in repos
        for marker in MARKERS
    )


def require_available(name: str, what: str = "model", flag: str = "--model") -> None:
    """ModelLoadError unless model ``name`` can be loaded now: a folder, a cached or a reachable hub name."""
    if looks_like_path(name):
        if not Path(name).expanduser().is_dir():
            raise ModelLoadError(f"{what} path {name!r} does not exist or is not a folder")
        return
    if in_cache(name):
        return
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise ModelLoadError(
            f"hub {what} {name!r} is not in the local cache and HF_HUB_OFFLINE is set; "
            f"give a local {what} folder with {flag} ({DEMO_HINT})"
        )
    unreachable = hub_unreachable()
    if unreachable is not None:
        raise ModelLoadError(
            f"cannot download hub {what} {name!r}: the hub is unreachable ({unreachable}); "
            f"on an offline machine give a local {what} folder with {flag} ({DEMO_HINT})"
        )
