"""The review page (``clipsort web``): see what clipsort decided and why, and fix it with one key.

``app`` (routes), ``views`` (what the pages show, from the journal, status
and folders), ``actions`` (filing and undo, through the mover and the
journal), ``thumbnails`` (decoded under the daemon's limits, cached),
``security`` (bind, token, Origin and CSRF). It never loads the model.
"""
