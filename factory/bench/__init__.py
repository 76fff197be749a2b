"""`factory bench`: the strategy x target x quantization grid, measured on the user's own data.

grid.py runs the cells (training, conversion, measurement), baseline.py the plain recipe the
factory replaces, results.py derives the Pareto frontier, ratios and budget picks, report.py
writes the JSON, CSV, PNG plots and the HTML report.
"""
