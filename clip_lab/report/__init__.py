"""Figures, tables and the report of a run, drawn from the files under results/."""
