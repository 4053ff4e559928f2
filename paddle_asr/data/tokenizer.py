"""Units in PaddleSpeech's layout: one token per line, the line index is the id.

`<blank>` is 0, `<unk>` is 1, the training units follow in code-point order (Python `sorted`),
and `<eos>` is last (sos = eos = vocab_size - 1, as PaddleSpeech's U2 hard-codes).

- characters (AISHELL): a space inside a transcript becomes `<space>`, as in PaddleSpeech's char
  featurizer;
- sentencepiece pieces (LibriSpeech): the pieces seen when encoding the training text, as
  PaddleSpeech's build_vocab does; the sentencepiece model sits beside the units file as
  `bpe.model` (BPE_MODEL) and turns text into pieces and pieces back into words (`▁` = word start).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from paddle_asr.artifacts import atomic_output_file, atomic_write_text
from paddle_asr.errors import AsrError

BLANK = "<blank>"
UNK = "<unk>"
EOS = "<eos>"
SPACE = "<space>"
SPECIALS = (BLANK, UNK, EOS)
BPE_MODEL = "bpe.model"  # the sentencepiece model of BPE units, beside the units file
WORD_START = "\u2581"  # sentencepiece's "▁": the piece starts a word


def build_char_units(texts: Iterable[str]) -> list[str]:
    chars = set()
    for text in texts:
        chars.update(SPACE if c == " " else c for c in text)
    chars.difference_update(SPECIALS)
    return [BLANK, UNK, *sorted(chars), EOS]


def write_units(units: list[str], path: Path) -> None:
    atomic_write_text(Path(path), "".join(f"{u}\n" for u in units))


class CharTokenizer:
    def __init__(self, units: list[str]) -> None:
        if len(units) < 3 or units[0] != BLANK or units[1] != UNK or units[-1] != EOS:
            raise AsrError(
                f"a units file must start with {BLANK}, {UNK} and end with {EOS}; got {units[:2]}...{units[-1:]}"
            )
        self.units = units
        self.index = {u: i for i, u in enumerate(units)}
        if len(self.index) != len(units):
            raise AsrError("the units file lists a token twice; rebuild it with stage 0")

    @classmethod
    def from_file(cls, path: Path) -> CharTokenizer:
        path = Path(path)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise AsrError(f"cannot read units file {path} ({e}); re-run stage 0 to build it") from None
        units = []
        for lineno, line in enumerate(lines, 1):
            token = line.strip().split(" ")[0] if line.strip() else ""
            if not token:
                raise AsrError(f"{path}:{lineno}: empty line in the units file")
            units.append(token)
        return cls(units)

    @property
    def vocab_size(self) -> int:
        return len(self.units)

    @property
    def blank_id(self) -> int:
        return 0

    @property
    def unk_id(self) -> int:
        return 1

    def pieces(self, text: str) -> list[str]:
        """The unit strings `text` is written in: its characters, a space as `<space>`."""
        return [SPACE if c == " " else c for c in text]

    def encode(self, text: str) -> tuple[list[int], int]:
        """Token ids of `text` and how many of its pieces were outside the units (mapped to <unk>)."""
        ids, unknown = [], 0
        for piece in self.pieces(text):
            i = self.index.get(piece)
            if i is None:
                i, unknown = self.unk_id, unknown + 1
            ids.append(i)
        return ids, unknown

    def decode(self, ids: Iterable[int]) -> str:
        out = []
        for i in ids:
            token = self.units[int(i)]
            if token in (BLANK, EOS):
                continue
            out.append(" " if token == SPACE else token)
        return "".join(out)


def _load_sentencepiece(path: Path):
    import sentencepiece as spm  # lazy: only BPE recipes need it

    try:
        return spm.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as e:
        raise AsrError(f"cannot load the sentencepiece model {path} ({e}); re-run stage 0 to build it") from None


def train_sentencepiece(texts: Iterable[str], model_path: Path, vocab_size: int) -> None:
    """Train a unigram sentencepiece model on `texts` (the training transcripts) into `model_path`.

    The options of WeNet's and PaddleSpeech's LibriSpeech recipes: unigram, character coverage
    0.9995, `input_sentence_size` 1e8 (all of train_960), unk 0 / bos 1 / eos 2. One thread, so
    that the same text always gives the same model.
    """
    import io

    import sentencepiece as spm

    lines = [t for t in texts if t.strip()]
    if not lines:
        raise AsrError("no training text to build sentencepiece units from")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size, model_type="unigram",
            character_coverage=0.9995, input_sentence_size=100_000_000, unk_id=0, bos_id=1, eos_id=2,
            num_threads=1, minloglevel=2)
    except RuntimeError as e:
        # Typically "Vocabulary size too high (N). Please set it to a value <= M." on a small corpus.
        raise AsrError(f"sentencepiece cannot build {vocab_size} units from {len(lines)} training transcripts: {e}; "
                       "lower data.bpe_size in the config") from None
    with atomic_output_file(Path(model_path)) as tmp:
        tmp.write_bytes(model.getvalue())


def build_bpe_units(texts: Iterable[str], model_path: Path) -> list[str]:
    """Units of a BPE tokenizer: the pieces `model_path` uses on the training text, sorted."""
    sp = _load_sentencepiece(Path(model_path))
    pieces: set[str] = set()
    for text in texts:
        pieces.update(sp.encode(text, out_type=str))
    pieces.difference_update(SPECIALS)
    return [BLANK, UNK, *sorted(pieces), EOS]


class BpeTokenizer(CharTokenizer):
    """Sentencepiece pieces as units: text -> pieces -> ids, and ids -> pieces -> words."""

    def __init__(self, units: list[str], model_path: Path) -> None:
        super().__init__(units)
        self.model_path = Path(model_path)
        self.sp = _load_sentencepiece(self.model_path)

    def pieces(self, text: str) -> list[str]:
        return self.sp.encode(text, out_type=str)

    def decode(self, ids: Iterable[int]) -> str:
        pieces = [self.units[int(i)] for i in ids]
        text = "".join(p for p in pieces if p not in (BLANK, EOS))
        return " ".join(text.replace(WORD_START, " ").split())


def load_tokenizer(units_path: Path, kind: str = "char") -> CharTokenizer:
    """The tokenizer of a units file: `char`, or `bpe` with `bpe.model` beside the units file."""
    units_path = Path(units_path)
    model = units_path.with_name(BPE_MODEL)
    if kind == "char":
        if model.exists():
            raise AsrError(f"{units_path} has a sentencepiece model beside it ({model}) but the config says "
                           "data.units: char; set data.units: bpe, or re-run stage 0 with this config")
        return CharTokenizer.from_file(units_path)
    if kind == "bpe":
        if not model.is_file():
            raise AsrError(f"data.units is bpe but {model} is missing; re-run stage 0 with this config")
        return BpeTokenizer(CharTokenizer.from_file(units_path).units, model)
    raise AsrError(f"unknown unit type '{kind}'; choose char or bpe")
