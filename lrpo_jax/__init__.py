"""lrpo_jax: Language-Routed Policy Optimization in JAX/Flax."""

__version__ = "0.1.0"
