"""How long a text is, as the text tasks compare lengths (``comicnb.stage4.tasks``) and as the corpus generator plans
the replies its long-range probes offer (``comicnb.corpus.synth.story``): one definition for both.

Text tasks show the answer panel with its balloons empty, and a balloon's size says how much text it held: every
candidate text's length (log of 1 + characters) lies in the answer's cell of a fixed grid of width
``TEXT_LENGTH_TOLERANCE`` (a window centred on the answer would make it the candidates' median length).
"""

from __future__ import annotations

import numpy as np

TEXT_LENGTH_TOLERANCE = 0.2


def log_length(text: str) -> float:
    """log(1 + characters) of a text, spacing folded: the length the text tasks match within TEXT_LENGTH_TOLERANCE."""
    return float(np.log1p(len(" ".join(str(text).split()))))


def length_cell(text: str) -> int:
    """The cell of a fixed grid of width TEXT_LENGTH_TOLERANCE that a text's length (``log_length``) falls in: the text
    tasks' negatives share the answer's."""
    return int(np.floor(log_length(text) / TEXT_LENGTH_TOLERANCE))
