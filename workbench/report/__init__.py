"""Render a run directory: tables, plots and pages (``build``); renders only, never decides or times."""

from workbench.report.render import build

__all__ = ["build"]
