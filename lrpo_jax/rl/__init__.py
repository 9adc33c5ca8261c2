"""GRPO math (advantages, PPO-clip, KL, aggregation), log-probs and the jitted update step."""
