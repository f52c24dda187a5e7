"""weightcheck's conformance properties and pytest plugin.

The public protocol types are importable from here::

    from conformance import Arch, Placement, Checkpoint, Capabilities
"""

from fixtures.checkpoint import Checkpoint
from reference_models.arch import Arch, Placement

from .protocol import FAMILIES, FEATURES, Capabilities

__all__ = ["Arch", "Capabilities", "Checkpoint", "FAMILIES", "FEATURES", "Placement"]
