"""Whole-fundus photographs: find the optic disc, crop the kit's ROI, map masks back, draw overlays."""
from .box import ROI_SIDE_PER_DISC, RoiBox, centre_box, roi_box
from .localise import (CONFIDENCE_THRESHOLD, DiscLocation, DiscNotFoundWarning, count_dark_corners, cue_maps,
                       field_of_view, locate_disc)

__all__ = ["ROI_SIDE_PER_DISC", "RoiBox", "roi_box", "centre_box", "CONFIDENCE_THRESHOLD", "DiscLocation",
           "DiscNotFoundWarning", "locate_disc", "field_of_view", "count_dark_corners", "cue_maps"]
