"""The oracle: expected runtime state and tracked set, independent of any loader."""

from .expected import Expected, ExpectedParam, expected_state, source_view
from .rules import Piece, Source

__all__ = ["Expected", "ExpectedParam", "Piece", "Source", "expected_state", "source_view"]
