"""Training backends behind one interface: ``clipa.backends.get(name).launch(...)``."""
from clipa.backends.base import Backend, LaunchOptions, get, names, register

__all__ = ["Backend", "LaunchOptions", "get", "names", "register"]
