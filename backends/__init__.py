"""Training backends behind one interface: ``clipa.backends.get(name).launch(...)``."""
from clipa.backends.base import LAUNCH_FLAGS, Backend, LaunchOptions, get, names, register

__all__ = ["LAUNCH_FLAGS", "Backend", "LaunchOptions", "get", "names", "register"]
