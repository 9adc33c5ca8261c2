"""Flax NNX model definitions (decoders, encoders) and weight import/export."""
