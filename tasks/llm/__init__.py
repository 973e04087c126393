"""Companion module for the LLM-side papers (shared prefixes, KV caches, shared weights)."""
