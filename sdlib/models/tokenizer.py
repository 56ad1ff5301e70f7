"""The scale model's tokenizer: a byte-fallback BPE of the same kind as the real pair's Llama tokenizer.

EventGPT and Video-LLaVA share Llama's SentencePiece BPE (32,000 pieces): a word boundary is a ``▁`` glued to the
start of the next piece, frequent words are one piece, rarer words split into sub-word pieces, and a character the
vocabulary lacks falls back to its UTF-8 bytes (``<0x0A>`` for a newline), so no text ever becomes ``<unk>``. The
scale model gets the same kind, trained here on the train split's text only:

- **pieces**: text is cut at spaces (every word starts with ``▁``; the text's first word gets one prepended, as
  Llama's ``add_dummy_prefix`` does), around newlines and around punctuation marks; merges never cross a piece;
- **alphabet**: the printable characters of the corpus; anything else (newlines, characters never seen) is spelled
  by the 256 byte tokens ``<0x00>`` .. ``<0xFF>``, which are in every vocabulary;
- **merges**: the classic BPE rule, written out here so that the table is a documented function of the corpus:
  repeatedly merge the adjacent pair with the highest count (weighted by piece frequency), ties broken by the pair's
  spelling, until the vocabulary reaches ``vocab_size``. The result depends only on the multiset of pieces, never on
  corpus order, process or library version (a tie-break rule is not part of any trainer's documented contract).

The default size leaves the rarer words of the world's answers split into pieces, as Llama splits uncommon words;
:func:`tokens_per_word` measures it (the 01_models page prints it).

Ids ``0..6`` are the special tokens ``<pad> <unk> <s> </s> <image> <video> <event>``; then the 256 byte tokens; then
the alphabet by decreasing count (ties by spelling); then the merges in order. Encoding prepends ``<s>``; an answer's
end is ``</s>``, which the training data appends. ``decode(encode(text))`` returns ``text`` for any text without
leading, doubled or trailing spaces.
"""
from __future__ import annotations

import collections
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

if TYPE_CHECKING:  # transformers is imported lazily: building a vocabulary needs only `tokenizers`
    from transformers import PreTrainedTokenizerFast

PAD, UNK, BOS, EOS, IMAGE, VIDEO, EVENT = "<pad>", "<unk>", "<s>", "</s>", "<image>", "<video>", "<event>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, BOS, EOS, IMAGE, VIDEO, EVENT)  # ids 0..6, in this order
SPACE = "\u2581"  # ▁, SentencePiece's word-boundary mark
BYTE_TOKENS: tuple[str, ...] = tuple(f"<0x{b:02X}>" for b in range(256))  # ids 7..262
DEFAULT_VOCAB_SIZE = 768  # ~1.3 tokens per word on the world's text, about Llama's rate on English
_SPECIAL_RE = re.compile("|".join(re.escape(s) for s in SPECIAL_TOKENS))


def _pre_tokenizer(prepend_scheme: str = "first") -> pre_tokenizers.PreTokenizer:
    """Newlines stand alone; spaces become ``▁`` glued to the next piece (and one is prepended to the text);
    punctuation marks stand alone (SentencePiece does not merge across Unicode scripts: ``▁cars`` ``,``)."""
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\n"), behavior="isolated"),
        pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme=prepend_scheme, split=True),
        pre_tokenizers.Split(Regex(rf"[^A-Za-z0-9{SPACE}]"), behavior="isolated"),
    ])


_PRE_FIRST, _PRE_LATER = _pre_tokenizer("first"), _pre_tokenizer("never")


def pieces(text: str) -> list[str]:
    """``text`` cut into the pieces BPE works within (special tokens removed), exactly as encoding cuts it: only
    the text's first chunk gets the prepended ``▁``, not the chunks after a special token."""
    out: list[str] = []
    for i, chunk in enumerate(_SPECIAL_RE.split(text)):
        if chunk:
            out.extend(p for p, _ in (_PRE_LATER if i else _PRE_FIRST).pre_tokenize_str(chunk))
    return out


def _printable(ch: str) -> bool:
    return ch == SPACE or ch.isprintable()


def learn_bpe(corpus: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) of a byte-fallback BPE for ``corpus`` with at most ``vocab_size`` entries (rules above)."""
    counts: collections.Counter[str] = collections.Counter()
    n_texts = 0
    for text in corpus:
        if not isinstance(text, str):
            raise TypeError(f"corpus item {n_texts}: expected str, got {type(text).__name__}")
        counts.update(pieces(text))
        n_texts += 1
    if not counts:
        raise ValueError(f"corpus of {n_texts} texts holds no text: cannot learn a vocabulary")
    char_counts: collections.Counter[str] = collections.Counter()
    for piece, c in counts.items():
        for ch in piece:
            if _printable(ch):
                char_counts[ch] += c
    alphabet = sorted(char_counts, key=lambda ch: (-char_counts[ch], ch))
    base = len(SPECIAL_TOKENS) + len(BYTE_TOKENS)
    if vocab_size < base + len(alphabet):
        raise ValueError(f"vocab_size={vocab_size}: needs at least {base + len(alphabet)} entries (specials, 256 "
                         f"bytes and the corpus's {len(alphabet)} characters)")
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + BYTE_TOKENS)}
    for ch in alphabet:
        vocab[ch] = len(vocab)
    # each distinct piece as a list of symbols; unprintable characters are bytes and never merge
    words = [([ch for ch in piece], c) for piece, c in sorted(counts.items())]
    merges: list[tuple[str, str]] = []
    while len(vocab) < vocab_size:
        pairs: collections.Counter[tuple[str, str]] = collections.Counter()
        for symbols, c in words:
            for a, b in zip(symbols, symbols[1:]):
                if a in vocab and b in vocab:
                    pairs[(a, b)] += c
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merged = best[0] + best[1]
        merges.append(best)
        vocab[merged] = len(vocab)
        for symbols, _ in words:
            i = 0
            while i < len(symbols) - 1:
                if symbols[i] == best[0] and symbols[i + 1] == best[1]:
                    symbols[i:i + 2] = [merged]
                i += 1
    return vocab, merges


def build_backend(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` for a byte-fallback BPE (``<s>`` prepended, specials never split)."""
    missing = [s for i, s in enumerate(SPECIAL_TOKENS) if vocab.get(s) != i]
    if missing:
        raise ValueError(f"vocab: special tokens {missing} must have ids {[SPECIAL_TOKENS.index(s) for s in missing]}")
    absent = [b for b in BYTE_TOKENS if b not in vocab]
    if absent:
        raise ValueError(f"vocab: byte fallback needs all 256 byte tokens; missing {absent[:3]}...")
    tok = Tokenizer(models.BPE(vocab=dict(vocab), merges=list(merges), unk_token=UNK, byte_fallback=True,
                               fuse_unk=True))
    tok.pre_tokenizer = _pre_tokenizer()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIAL_TOKENS])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    # as Llama's: ▁ back to spaces, bytes back to characters, and the first piece's prepended space dropped
    tok.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
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


def train_tokenizer(corpus: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> "PreTrainedTokenizerFast":
    """Learn the byte-fallback BPE of ``corpus`` (see the module docstring for the rules)."""
    return wrap(build_backend(*learn_bpe(corpus, vocab_size)))


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


def unk_count(tokenizer: "PreTrainedTokenizerFast", texts: Iterable[str]) -> int:
    """How many ``<unk>`` tokens encoding ``texts`` produces (0 for a byte-fallback tokenizer)."""
    return sum(tokenizer(t, add_special_tokens=False)["input_ids"].count(tokenizer.unk_token_id) for t in texts)


def tokens_per_word(tokenizer: "PreTrainedTokenizerFast", texts: Iterable[str]) -> float:
    """Mean number of tokens per space-separated word of ``texts`` (1.0 = every word one token)."""
    n_tokens = n_words = 0
    for t in texts:
        n_tokens += len(tokenizer(t, add_special_tokens=False)["input_ids"])
        n_words += len(t.split())
    return n_tokens / n_words if n_words else float("nan")


def vocab_summary(tokenizer: "PreTrainedTokenizerFast") -> dict[str, int]:
    """Sizes of the vocabulary's parts (specials, bytes, the rest) from the saved model."""
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    return {"size": len(tokenizer), "special": len(SPECIAL_TOKENS), "bytes": len(BYTE_TOKENS),
            "pieces": len(model["vocab"]) - len(SPECIAL_TOKENS) - len(BYTE_TOKENS), "merges": len(model["merges"])}
