"""clipa-report's internals: read run directories, compare predicted with achieved, draw, calibrate.

load.py (run dirs -> Run) -> tables.py (rows, rich tables) / figures.py + plots.py (PNGs) -> html.py;
calibrate.py fits costmodels.calibration to finished runs.
"""
