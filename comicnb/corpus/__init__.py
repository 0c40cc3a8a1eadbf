"""Reading a corpus (pages and problems tables, boxes, crops, composition, splits) and the embedded generator.

The names most notebooks need are importable from here: ``from comicnb.corpus import load_corpus``; the synthetic
corpus is ``comicnb.corpus.synth``.
"""

from comicnb.corpus.boxes import BBOX_FORMATS, repair_box
from comicnb.corpus.checks import bbox_fit, check_bbox_format, checked_run_pages, missed_injected_problems
from comicnb.corpus.composition import COMPOSITION_FEATURES, composition_features, composition_table
from comicnb.corpus.crops import crop_panels, to_rgb
from comicnb.corpus.location import SYNTHESIZE, embedded_corpus_home, prepare_data_root
from comicnb.corpus.reader import (
    PAGE_COLUMNS,
    PROBLEM_COLUMNS,
    TEXT_FREE,
    Corpus,
    clean_text,
    label_report,
    load_corpus,
    read_labels,
    text_free_name,
)
from comicnb.corpus.splits import SPLITS, split_books, split_counts
from comicnb.corpus.tables import corpus_record, load_pages, load_run_pages, save_corpus, save_pages

__all__ = [
    "BBOX_FORMATS",
    "COMPOSITION_FEATURES",
    "PAGE_COLUMNS",
    "PROBLEM_COLUMNS",
    "SPLITS",
    "SYNTHESIZE",
    "TEXT_FREE",
    "Corpus",
    "bbox_fit",
    "check_bbox_format",
    "checked_run_pages",
    "clean_text",
    "corpus_record",
    "composition_features",
    "composition_table",
    "crop_panels",
    "embedded_corpus_home",
    "label_report",
    "load_corpus",
    "load_pages",
    "load_run_pages",
    "missed_injected_problems",
    "prepare_data_root",
    "read_labels",
    "repair_box",
    "save_corpus",
    "save_pages",
    "split_books",
    "split_counts",
    "text_free_name",
    "to_rgb",
]
