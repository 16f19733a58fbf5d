"""The price kinds a recipe can be costed at (``hardware.pricing``, ``clipa-plan --pricing``).

The cost models (``costmodels/data/hardware.yaml``) hold a price per kind where a source gives one:
on-demand; spot (preemptible); committed-1y and committed-3y (1- and 3-year committed-use discounts).
A module of its own, so that the recipe schema and the cost models share it without importing each other.
"""
PRICING = ("on-demand", "spot", "committed-1y", "committed-3y")
