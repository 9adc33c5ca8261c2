"""Rollout engine: logit processing, shape buckets and the KV-cache sampler."""
