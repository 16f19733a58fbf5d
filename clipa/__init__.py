"""clipa: a budget-aware planner and trainer for CLIP models (CLIPA's inverse scaling law).

Sub-packages installed under this namespace from the repository's top-level folders:
``clipa.costmodels`` (costmodels/), ``clipa.planner`` (planner/), ``clipa.backends`` (backends/).
"""
__version__ = "0.1.0"
