"""Curation: translation (EN->AR and back), the translation gate and its metrics."""
