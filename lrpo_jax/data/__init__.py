"""Data: validated rows (schema), sources and converters, resumable iteration, policy prompts."""
