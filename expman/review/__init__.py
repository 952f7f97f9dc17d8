"""Reviewing experiments side by side: the comparison, and its HTML report."""
