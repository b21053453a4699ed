"""A model's vocabulary as words: what the unknown gate's negative labels are chosen from (no torch)."""

from __future__ import annotations

from collections.abc import Iterable


def whole_words(tokens: Iterable[str]) -> tuple[str, ...]:
    """Tokens that are whole words of three letters or more, lower-cased and sorted.

    CLIP's BPE marks a word's end with ``</w>``; WordPiece marks a word's
    continuation with ``##`` and SentencePiece a word's start with ``▁``.
    """
    tokens = list(tokens)
    # In a BPE vocabulary only word ends are words; "gree" is a piece of "green".
    ends = any(token.endswith("</w>") for token in tokens)
    words = set()
    for token in tokens:
        if token.startswith("##") or (ends and not token.endswith("</w>")):
            continue
        word = token.removesuffix("</w>").removeprefix("\u2581")
        if len(word) >= 3 and word.isalpha():
            words.add(word.lower())
    return tuple(sorted(words))
