"""Sweeps, reports, figures and reproductions of the report's tables."""
