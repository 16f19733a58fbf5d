"""Cost models: FLOPs, memory, hardware and prices, throughput, and the accuracy law.

Imports neither torch nor jax: planning must start fast.
"""
