"""comicnb: a Jupyter research workbook that learns what comic panels mean.

Stage 3 turns each panel (image crop, text, place on the page) into one embedding; Stage 4 reads panels in
sequence and learns narrative tasks. The notebooks in ``notebooks/`` call this package; ``python -m comicnb``
runs them headless.
"""

__version__ = "0.1.0"
