"""Contextual biasing ("hotwords"): the phrases of a context list as a graph over the model's units.

The graph is a trie of the phrases' unit sequences with Aho-Corasick failure arcs (WeNet's
``wenet/utils/context_graph.py`` and icefall's, after Aho and Corasick 1975). CTC prefix beam search
(`decode.search.CtcPrefixBeam`) carries one graph state per prefix and ranks prefixes by their CTC
score plus the bonus the graph gives them:

* each unit that extends a partial match earns `score` (a phrase of n units earns n x `score`);
* when the next unit breaks a partial match, the search backs off along the failure arc to the
  longest suffix that is still a partial match, and the bonus of the units that no longer match is
  taken back (the refund), so a prefix that only started a phrase gains nothing in the end;
* a completed phrase keeps its bonus for good; phrases that overlap or end inside one another
  (``ABC`` and ``BC``) each count, as the failure arcs find every phrase ending at a unit;
* at the end of the search `finish` takes back the bonus of a partial match still open.

Formally the bonus of a prefix is ``score x (units of the complete phrase occurrences in it)
+ score x (length of its open partial match)``; `step` returns its change. One difference from
WeNet's graph: a completed phrase that no longer phrase continues hands its state to its failure
arc at once, so its units are not counted twice (once as a completed phrase, once as a partial
match) until the next unit arrives. The automaton matches exactly as before: a state without
outgoing arcs moves exactly as its failure state does.

Phrases are tokenized by the model's own tokenizer (characters for Mandarin, sentencepiece pieces
for BPE units); a phrase with a unit the model lacks is an error naming the file, line and unit.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from pathlib import Path

from paddle_asr.config import DecodeConfig
from paddle_asr.data.tokenizer import UNK, CharTokenizer
from paddle_asr.errors import AsrError


class ContextState:
    """A node of the trie: the partial match of the units on the path from the root."""

    __slots__ = ("depth", "phrase_units", "next", "fail")

    def __init__(self, depth: int) -> None:
        self.depth = depth            # units matched: the open partial match's length
        self.phrase_units = 0         # units of every phrase ending here (this one's and its suffixes')
        self.next: dict[int, ContextState] = {}
        self.fail: ContextState | None = None  # the longest proper suffix that is a trie node


class ContextGraph:
    """The phrases (unit-id sequences) with a bonus of `score` per matched unit."""

    def __init__(self, phrases: Sequence[Sequence[int]], score: float) -> None:
        if not phrases or any(not p for p in phrases):
            raise ValueError("a context graph needs at least one phrase, and no empty phrase")
        self.score = float(score)
        self.root = ContextState(0)
        self.num_phrases = len({tuple(p) for p in phrases})
        for phrase in phrases:
            node = self.root
            for token in phrase:
                node = node.next.setdefault(int(token), ContextState(node.depth + 1))
            node.phrase_units = len(phrase)
        self._link_failures()

    def _link_failures(self) -> None:
        """Aho-Corasick failure arcs, breadth first; each node's `phrase_units` then adds those of its
        failure state, which already hold their own suffixes' (shallower nodes come first)."""
        self.root.fail = self.root
        queue = deque()
        for child in self.root.next.values():
            child.fail = self.root
            queue.append(child)
        while queue:
            node = queue.popleft()
            node.phrase_units += node.fail.phrase_units
            for token, child in node.next.items():
                child.fail = self._goto(node.fail, token)
                queue.append(child)

    def _goto(self, state: ContextState, token: int) -> ContextState:
        """The Aho-Corasick transition: the longest suffix of (state's units + token) in the trie."""
        while token not in state.next and state is not self.root:
            state = state.fail
        return state.next.get(token, self.root)

    def _settle(self, state: ContextState) -> ContextState:
        """A completed phrase with no arc onward moves as its failure state does: go there, so that the
        partial-match bonus counts only units a longer phrase could still use."""
        while not state.next and state is not self.root:
            state = state.fail
        return state

    def step(self, state: ContextState, token: int) -> tuple[float, ContextState]:
        """(bonus change, next state) when a prefix in `state` is extended by `token`: the units of
        every phrase it completes, plus the change of the open partial match (negative on back-off)."""
        reached = self._goto(state, token)
        settled = self._settle(reached)
        return self.score * (reached.phrase_units + settled.depth - state.depth), settled

    def finish(self, state: ContextState) -> float:
        """The bonus change at the end of a hypothesis: the open partial match is refunded."""
        return -self.score * state.depth


def read_context_list(path: Path, tokenizer: CharTokenizer) -> list[list[int]]:
    """The phrases of a context list file (UTF-8, one phrase a line, blank lines skipped) as unit ids."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise AsrError(f"cannot read the context list {path} ({e}); give a UTF-8 text file with one phrase "
                       "a line") from None
    phrases = []
    for lineno, line in enumerate(lines, 1):
        text = line.strip()
        if not text:
            continue
        ids = []
        for piece in tokenizer.pieces(text):
            i = tokenizer.index.get(piece)
            if i is None or piece == UNK:
                raise AsrError(f"{path}:{lineno}: the phrase '{text}' has the unit '{piece}', which the model does "
                               "not know; write the phrase as the model's transcripts are written (same script "
                               "and case) or drop it")
            ids.append(i)
        phrases.append(ids)
    if not phrases:
        raise AsrError(f"{path}: the context list has no phrase; write one phrase a line")
    return phrases


def load_context_graph(path: str | Path, tokenizer: CharTokenizer, score: float) -> ContextGraph:
    """The context graph of a context list file, tokenized with the model's `tokenizer`."""
    return ContextGraph(read_context_list(Path(path), tokenizer), score)


def context_graph_for(conf: DecodeConfig, tokenizer: CharTokenizer) -> ContextGraph | None:
    """The graph of a decode config's `context_list` with its `context_score`; None without a list."""
    if not conf.context_list:
        return None
    return load_context_graph(conf.context_list, tokenizer, conf.context_score)
