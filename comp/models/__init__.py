"""Backbone registry, weight resolution and model construction."""
