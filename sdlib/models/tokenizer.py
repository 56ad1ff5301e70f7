"""The scale model's tokenizer: a word-level vocabulary built from a text corpus, wrapped for transformers.

Why word-level and not a small BPE
----------------------------------
The scale model's text comes from the procedural world: ten fixed questions and answers written from a closed set of
templates (a few hundred distinct words). On such a corpus

- one token per word (or punctuation mark) makes an answer's length in tokens equal to the word count the world
  already uses for its 30-80-token answers (the split rule below is the one of ``sdlib.world.qa.tokenize``), so the
  lengths and per-position acceptance statistics read in words;
- the vocabulary is fully determined by a counting rule written here (count, then sort by frequency and spelling), so
  the same corpus always gives the same ids, independently of corpus order, process or library version; a BPE merge
  table depends on the trainer's tie-breaking, which is not part of its documented contract;
- nothing is lost by not splitting words: the closed vocabulary leaves no rare words for subwords to cover, and an
  unseen word maps to ``<unk>`` (its rate is what :func:`unk_rate` measures).

The real pair uses the LLaMA tokenizer shipped with the checkpoints; nothing here is used for it.

Token ids ``0..6`` are the special tokens ``<pad> <unk> <s> </s> <image> <video> <event>`` in that order, then the
corpus words by decreasing count (ties by spelling). Encoding prepends ``<s>``; the answer's end is ``</s>``, which
the training data must append. Decoding joins words with spaces and removes the spaces ordinary text does not have
(before ``. , ; : ? ! ) ] %``, after ``( [``, around newlines, ``-`` and ``/``), so ``decode(encode(text))`` equals
``text`` for ordinary single-spaced sentences (not for e.g. ``"a - b"`` or quoted speech).
"""
from __future__ import annotations

import collections
import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

if TYPE_CHECKING:  # transformers is imported lazily: building a vocabulary needs only `tokenizers`
    from transformers import PreTrainedTokenizerFast

PAD, UNK, BOS, EOS, IMAGE, VIDEO, EVENT = "<pad>", "<unk>", "<s>", "</s>", "<image>", "<video>", "<event>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, BOS, EOS, IMAGE, VIDEO, EVENT)  # ids 0..6, in this order

# A token is a newline, a word (letters/digits, with an optional "'s"-style suffix) or one other non-space character.
# Without the newline alternative this is the rule of sdlib.world.qa.tokenize; the newline is kept because the
# Video-LLaVA prompt "USER: <video>\n{question} ASSISTANT:" has one.
WORD_PATTERN = r"\n|[A-Za-z0-9]+(?:'[a-z]+)?|[^\sA-Za-z0-9]"
_WORD_RE = re.compile(WORD_PATTERN)
_SPECIAL_RE = re.compile("|".join(re.escape(s) for s in SPECIAL_TOKENS))
# Decoding joins tokens with spaces, then applies these replacements in order: no space before closing marks, after
# opening brackets, around newlines, hyphens and slashes.
_DETOKENIZE: tuple[tuple[str, str], ...] = (
    *((" " + mark, mark) for mark in ".,;:?!)]%"),
    *((mark + " ", mark) for mark in "(["),
    (" \n", "\n"),
    ("\n ", "\n"),
    (" - ", "-"),
    (" / ", "/"),
)


def split_words(text: str) -> list[str]:
    """The pre-tokenization rule: ``text`` cut into the pieces that become word-level tokens (specials removed)."""
    return _WORD_RE.findall(_SPECIAL_RE.sub(" ", text))


def build_vocab(corpus: Iterable[str], min_frequency: int = 1, max_size: int | None = None) -> dict[str, int]:
    """Word -> id for ``corpus``: the special tokens first (ids 0..6), then words by (-count, word).

    ``min_frequency`` drops words seen fewer times; ``max_size`` caps the total size (specials included).
    The result depends only on the multiset of words in the corpus, never on its order.
    """
    if min_frequency < 1:
        raise ValueError(f"min_frequency={min_frequency}: expected >= 1")
    if max_size is not None and max_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"max_size={max_size}: expected more than the {len(SPECIAL_TOKENS)} special tokens")
    counts: collections.Counter[str] = collections.Counter()
    n_texts = 0
    for text in corpus:
        if not isinstance(text, str):
            raise TypeError(f"corpus item {n_texts}: expected str, got {type(text).__name__}")
        counts.update(split_words(text))
        n_texts += 1
    if not counts:
        raise ValueError(f"corpus of {n_texts} texts holds no words: cannot build a vocabulary")
    words = sorted((w for w, c in counts.items() if c >= min_frequency), key=lambda w: (-counts[w], w))
    if max_size is not None:
        words = words[: max_size - len(SPECIAL_TOKENS)]
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in words:
        vocab[w] = len(vocab)
    return vocab


def build_backend(vocab: dict[str, int]) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` for ``vocab`` (word level, ``<s>`` prepended, specials never split)."""
    missing = [s for i, s in enumerate(SPECIAL_TOKENS) if vocab.get(s) != i]
    if missing:
        raise ValueError(f"vocab: special tokens {missing} must have ids {[SPECIAL_TOKENS.index(s) for s in missing]}")
    tok = Tokenizer(models.WordLevel(vocab=dict(vocab), unk_token=UNK))
    # keep only the matches of WORD_PATTERN (spaces are dropped), exactly as split_words does
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="removed", invert=True)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIAL_TOKENS])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    # join with spaces (no "##" tokens exist), then drop the spaces the text did not have
    tok.decoder = decoders.Sequence(
        [decoders.WordPiece(prefix="##", cleanup=False), decoders.Fuse()]
        + [decoders.Replace(old, new) for old, new in _DETOKENIZE]
    )
    return tok


def wrap(backend: Tokenizer) -> "PreTrainedTokenizerFast":
    """Wrap a backend from :func:`build_backend` as a transformers tokenizer with named special tokens
    (``image_token``, ``video_token``, ``event_token`` attributes, which ``VideoLlavaProcessor`` reads)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        extra_special_tokens={"image_token": IMAGE, "video_token": VIDEO, "event_token": EVENT},
        model_max_length=1 << 20,
    )


def train_tokenizer(
    corpus: Iterable[str], min_frequency: int = 1, max_size: int | None = None
) -> "PreTrainedTokenizerFast":
    """Build the word-level tokenizer of ``corpus`` (see the module docstring for the rules)."""
    return wrap(build_backend(build_vocab(corpus, min_frequency=min_frequency, max_size=max_size)))


def save_tokenizer(tokenizer: "PreTrainedTokenizerFast", directory: str | Path) -> Path:
    """``save_pretrained`` into ``directory`` (created if needed); returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(directory))
    return directory


def load_tokenizer(directory: str | Path) -> "PreTrainedTokenizerFast":
    """Load a tokenizer saved by :func:`save_tokenizer` from a local directory (never from a hub)."""
    from transformers import PreTrainedTokenizerFast

    directory = Path(directory)
    if not (directory / "tokenizer.json").is_file():
        raise FileNotFoundError(f"tokenizer directory {directory}: no tokenizer.json (save it with save_tokenizer)")
    return PreTrainedTokenizerFast.from_pretrained(str(directory), local_files_only=True)


def unk_rate(tokenizer: "PreTrainedTokenizerFast", texts: Iterable[str]) -> float:
    """Fraction of the word tokens of ``texts`` that the tokenizer maps to ``<unk>`` (0 when there are none)."""
    n = n_unk = 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        n += len(ids)
        n_unk += sum(i == tokenizer.unk_token_id for i in ids)
    return n_unk / n if n else 0.0
