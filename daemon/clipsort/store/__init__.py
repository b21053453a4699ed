"""Store.

Every file-system mutation (the mover), the journal, crash recovery and undo; it knows nothing of
sorting.
"""
