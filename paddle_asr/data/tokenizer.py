"""Character units in PaddleSpeech's layout: one token per line, the line index is the id.

`<blank>` is 0, `<unk>` is 1, the training characters follow in code-point order (Python
`sorted`), and `<eos>` is last (sos = eos = vocab_size - 1, as PaddleSpeech's U2 hard-codes).
A space inside a transcript becomes `<space>`, as in PaddleSpeech's char featurizer.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from paddle_asr.artifacts import atomic_write_text
from paddle_asr.errors import AsrError

BLANK = "<blank>"
UNK = "<unk>"
EOS = "<eos>"
SPACE = "<space>"
SPECIALS = (BLANK, UNK, EOS)


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

    def encode(self, text: str) -> tuple[list[int], int]:
        """Token ids of `text` and how many characters were outside the units (mapped to <unk>)."""
        ids, unknown = [], 0
        for c in text:
            i = self.index.get(SPACE if c == " " else c)
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
