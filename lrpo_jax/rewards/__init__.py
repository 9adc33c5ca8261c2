"""Rewards: similarity, calibration, language-ID gate, verifiable answers, and their combination."""
