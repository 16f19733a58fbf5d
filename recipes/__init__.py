"""Recipes shipped with clipa: the CPU demo and the published CLIPA recipes."""
