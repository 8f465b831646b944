"""Evaluation tooling: what the scores are worth and what they cost. Nothing in the runtime imports it."""
