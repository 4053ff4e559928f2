"""Character units in PaddleSpeech's layout and the encode/decode round trip."""

import numpy as np
import pytest

from paddle_asr.data.tokenizer import CharTokenizer, build_char_units, write_units
from paddle_asr.decode.search import ctc_greedy_search
from paddle_asr.errors import AsrError


def test_units_layout_blank_unk_sorted_characters_eos(tmp_path):
    units = build_char_units(["广州市", "市场 B"])
    assert units == ["<blank>", "<unk>", "<space>", "B", "场", "州", "市", "广", "<eos>"]
    write_units(units, tmp_path / "vocab.txt")
    tok = CharTokenizer.from_file(tmp_path / "vocab.txt")
    assert tok.vocab_size == 9 and tok.units[-1] == "<eos>"
    ids, unknown = tok.encode("广州 东站")
    assert unknown == 2 and ids[3:5] == [1, 1]  # 东, 站 are not units: <unk>, counted
    assert tok.decode(tok.encode("市场 B")[0]) == "市场 B"


def test_units_file_without_specials_is_rejected(tmp_path):
    (tmp_path / "vocab.txt").write_text("a\nb\nc\n")
    with pytest.raises(AsrError, match="must start with <blank>"):
        CharTokenizer.from_file(tmp_path / "vocab.txt")


def test_ctc_greedy_merges_repeats_and_drops_blanks():
    # frames: a a _ a b b _ (pad) -> "a a b" with the repeat split by a blank kept
    v = 4
    frames = [1, 1, 0, 1, 2, 2, 0, 3]
    lp = np.full((1, len(frames), v), -10.0, dtype=np.float32)
    for t, k in enumerate(frames):
        lp[0, t, k] = 0.0
    assert ctc_greedy_search(lp, np.array([7])) == [[1, 1, 2]]  # the 8th frame is padding
