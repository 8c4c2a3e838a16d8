"""Version of DanLing."""

__version__ = "0.1.0"
