"""fednode: one node program for federated learning over libp2p.

Public surface (kept small on purpose; everything else is importable but internal):
"""

from .config import NodeConfig, load_config
from .errors import ConfigError, FednodeError

__version__ = "0.1.0"
__all__ = ["ConfigError", "FednodeError", "NodeConfig", "__version__", "load_config"]
