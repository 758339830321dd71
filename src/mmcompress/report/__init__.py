"""Markdown + self-contained HTML report with matplotlib plots."""
