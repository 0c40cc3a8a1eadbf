"""The seed's import path for the panel encoder: ``from comicnb.model import PanelFeatureExtractor``.

The model lives in ``comicnb.stage3.model``; this module only re-exports it, so the seed's inference example runs
with its import line changed and nothing else.
"""

from comicnb.stage3.model import PanelFeatureExtractor, model_from_checkpoint

__all__ = ["PanelFeatureExtractor", "model_from_checkpoint"]
