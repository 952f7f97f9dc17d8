"""Sharing experiments: branches through a git remote, files through an object store."""
