"""Evaluation: retrieval metrics and the one scoring path, test examples, search indexes."""
