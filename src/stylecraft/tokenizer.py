"""Build a CLIP BPE tokenizer from a word list, with no model hub.

CLIP's tokenizer is byte-level BPE over lower-cased words that end in ``</w>``. Every byte character (alone and
with ``</w>``) is in the vocabulary, so any text tokenizes; each listed word also gets a chain of merges that
builds it, so it becomes one token. The files are the ones ``CLIPTokenizer.from_pretrained``
reads: ``vocab.json``, ``merges.txt`` (its first line must be the ``#version`` header) and
``tokenizer_config.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"


def _bytes_to_unicode() -> list[str]:
    # GPT-2's reversible byte -> printable unicode map, the alphabet CLIP's BPE works in.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs, strict=True))]


def _bpe(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair encoding of one word: repeatedly merge the adjacent pair with the lowest rank."""
    while len(pieces) > 1:
        adjacent = zip(pieces[:-1], pieces[1:], strict=True)
        pairs = [(ranks.get(pair, len(ranks)), i) for i, pair in enumerate(adjacent)]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        pieces = pieces[:i] + [pieces[i] + pieces[i + 1]] + pieces[i + 2 :]
    return pieces


def write_clip_tokenizer(folder: str | Path, words: list[str], model_max_length: int = 77) -> Path:
    """Write a CLIP tokenizer whose vocabulary holds the byte alphabet plus ``words``; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    for token in alphabet + [c + "</w>" for c in alphabet]:
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in sorted({w.lower() for w in words if w.strip()}):
        # Tokenize the word with the merges so far, then add merges joining its pieces left to right. New merges
        # rank after all earlier ones, so every earlier word still becomes its single token.
        pieces = _bpe(list(word[:-1]) + [word[-1] + "</w>"], ranks)
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            vocab.setdefault(pieces[0] + pieces[1], len(vocab))
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return folder


# Words of the built-in random-weight models' tokenizer (the byte alphabet covers everything else).
DEFAULT_WORDS = (
    "a an the in of on with and style painting watercolor oil sketch drawing photo house cat dog fox city car tree "
    "flower bird boat mountain red green blue yellow purple orange black white small large"
).split()


def default_tokenizer(words: list[str] | None = None):
    """A CLIPTokenizer over ``words`` (default: a small English list), built in a temporary folder."""
    import tempfile

    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as folder:
        write_clip_tokenizer(folder, list(words or DEFAULT_WORDS))
        return CLIPTokenizer.from_pretrained(folder, local_files_only=True)
