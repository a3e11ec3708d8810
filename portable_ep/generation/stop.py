"""Stop strings of one request, matched as the text grows, at a cost per character that
does not depend on how many stop strings there are.

The engine's one thread serves every sequence of a model, so whatever a request makes
it do per token is added to each of its neighbours' steps. Scanning every stop string
at every token (``text.find`` for each, and again to know how much text to hold back)
made 20,000 stop strings in one request turn a neighbour's 0.22 s stream into 48 s.

:class:`StopMatcher` is an Aho–Corasick automaton over characters, built once per
request: feeding it a character follows one transition (plus failure links, amortised
O(1)), whatever the number of stop strings. Its state is also the longest end of the
text that begins some stop string, which is exactly the text a stream must hold back
(it could still become a stop string), so that costs nothing either.

Semantics (those of the scan it replaces): the text is cut at the stop string that
*starts* first; of two starting at the same place (one is then a prefix of the other),
the shorter, which ends first.
"""
from __future__ import annotations

from collections import deque
from typing import Dict, List, Optional, Sequence, Tuple


class StopMatcher:
    """Incremental matcher of a set of non-empty stop strings over a growing text."""

    __slots__ = ("stops", "_goto", "_fail", "_depth", "_longest", "_state", "_fed")

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(stops)
        goto: List[Dict[str, int]] = [{}]
        depth = [0]
        longest = [0]  # per node: length of the longest stop string ending here (0: none)
        for stop in self.stops:
            node = 0
            for char in stop:
                following = goto[node].get(char)
                if following is None:
                    following = len(goto)
                    goto[node][char] = following
                    goto.append({})
                    depth.append(depth[node] + 1)
                    longest.append(0)
                node = following
            longest[node] = len(stop)
        # Failure links, breadth first: a node's link is the longest proper suffix of its
        # text that is also in the trie; its longest match is its own stop or its link's.
        fail = [0] * len(goto)
        queue = deque(goto[0].values())  # the root's children link to the root (fail 0)
        while queue:
            node = queue.popleft()
            for char, child in goto[node].items():
                queue.append(child)
                link = fail[node]
                while link and char not in goto[link]:
                    link = fail[link]
                target = goto[link].get(char, 0)
                fail[child] = target
                if not longest[child]:
                    longest[child] = longest[target]
        self._goto, self._fail, self._depth, self._longest = goto, fail, depth, longest
        self._state = 0
        self._fed = 0  # characters fed so far: the absolute position of the next one

    def __bool__(self) -> bool:
        return bool(self.stops)

    @property
    def nodes(self) -> int:
        return len(self._goto)

    def feed(self, piece: str) -> Optional[Tuple[int, int]]:
        """Append ``piece`` to the text; ``(start, length)`` of the stop string to cut at, if one
        now ends in the text (the earliest start, then the shortest), else None.

        Positions count every character fed since the start. Once a stop string is found
        the caller ends the sequence; feeding more is allowed but reports later matches only.
        """
        goto, fail, longest = self._goto, self._fail, self._longest
        node, position = self._state, self._fed
        best: Optional[Tuple[int, int]] = None
        for char in piece:
            position += 1
            while node and char not in goto[node]:
                node = fail[node]
            node = goto[node].get(char, 0)
            length = longest[node]
            # The longest stop ending here starts earliest; a later end only wins by starting earlier.
            if length and (best is None or position - length < best[0]):
                best = (position - length, length)
        self._state, self._fed = node, position
        return best

    @property
    def held_back(self) -> int:
        """Characters at the end of the text that begin some stop string (not to be streamed yet).

        Meaningful while no stop string has been found: the state is then a proper
        prefix of a stop string and the longest end of the text that is one.
        """
        return self._depth[self._state]
