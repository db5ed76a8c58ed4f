"""Optimization passes over the IR graph."""
