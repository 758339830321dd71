"""Recipes: a YAML list of registered passes, validated and run stage by stage."""
