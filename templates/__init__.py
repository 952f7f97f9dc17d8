"""Projects that ``expman init --template NAME`` copies: one directory per template.

Installed as the package ``expman.templates`` (see pyproject.toml).
"""
