"""Difficulty classifiers: features, training, evaluation; imports nothing from router."""
