"""From page images to the workbook's input: panels, their reading order and their text (``comicnb detect``).

- ``sources``: the pages of a folder or of CBZ/ZIP archives, in natural order, and a row for every other file;
- ``panels``: panel boxes by classical computer vision (OpenCV; no weights);
- ``order``: the reading order of a page's boxes (tiers, then columns, in the book's direction);
- ``text``: OCR lines (RapidOCR, weights inside its package) grouped into text boxes and assigned to panels;
- ``run``: the resumable, multi-process command that writes a data root notebook 01 reads unchanged;
- ``quality``: detection scored against a corpus's own JSON (box precision and recall, order, character errors).

The package imports nothing itself, so that `comicnb --help` does not load OpenCV.
"""
