"""Checks that consume the pipeline: coordinate checks, LR-transfer sweeps, their data, targets and plots.

``fxparam.coord_check`` and ``fxparam.testing`` are the public entry points; the modules here
hold the machinery (``coord``, ``coord_plot``, ``transfer``, ``data``, ``targets``).
"""
