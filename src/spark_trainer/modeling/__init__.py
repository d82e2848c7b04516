"""Tokenizers and causal LMs: built from configs, or loaded from a local path or hub id."""
