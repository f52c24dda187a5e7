"""The oracle: expected runtime state and tracked set, independent of any loader."""

from .expected import Expected, ExpectedParam, dequantize, expected_state, source_view
from ..families.rules import Piece, Source

__all__ = [
    "Expected",
    "ExpectedParam",
    "Piece",
    "Source",
    "dequantize",
    "expected_state",
    "source_view",
]
