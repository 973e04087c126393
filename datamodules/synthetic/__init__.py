"""Synthetic stand-in datasets written in the real on-disk formats (tests, demos), one module per layout.

Every writer labels the folders it writes with ``SYNTHETIC.md`` (:data:`MARKER`), writes only into a folder that is
absent, empty or already so labelled, and never overwrites a file (:class:`SyntheticDataError` otherwise, nothing
written). The datamodules read these folders like the real data and log that they are synthetic.

- :mod:`.reid`: Market-1501 / DukeMTMC-reID / MSMT17 / Occluded-Duke (:func:`write_reid_dataset`, the demo set)
- :mod:`.inpainting`: CelebA-HQ / Places2 layouts from scikit-image's photographs (:func:`write_skimage_photos`)
- :mod:`.geometry`: ray-cast scenes with exact ground truth; NYUv2 .mat, ScanNet, DSINE, pair-list writers
- :mod:`.signal`: WFDB records (:func:`write_wfdb_record`, :func:`paired_signal`)
- :mod:`.fmri`: several synthetic subjects (random voxel mappings of one latent) in the OpenfMRI layout
  (:func:`write_openfmri_subjects`)
- :mod:`.scenes`: the compositional scene set (coloured shapes; t2i / edit / VQA JSONL with exact targets)
  (:func:`write_scene_dataset`)
"""
from ._owned import MARKER, SyntheticDataError, claim, fresh, is_synthetic, owned_or_empty
from .geometry import (
    intrinsics,
    look_at,
    nyu_mask_holes,
    nyu_raw_holes,
    pair_sample,
    random_cameras,
    random_scene,
    render,
    render_views,
    write_dsine,
    write_nyuv2_labeled,
    write_pair_list,
    write_scannet_scene,
)
from .fmri import write_openfmri_subjects
from .inpainting import write_skimage_photos
from .scenes import write_scene_dataset
from .reid import (
    DEMO_PHOTO_REID,
    DEMO_REID,
    PHOTO_SPLIT,
    PHOTOS,
    ensure_demo_reid,
    load_photo,
    person_image,
    photo_view,
    write_photo_reid_dataset,
    write_reid_dataset,
)
from .signal import paired_signal, write_wfdb_record

__all__ = [
    "DEMO_PHOTO_REID", "PHOTO_SPLIT", "PHOTOS", "load_photo", "photo_view", "write_photo_reid_dataset",
    "DEMO_REID", "MARKER", "SyntheticDataError", "claim", "ensure_demo_reid", "fresh", "intrinsics", "is_synthetic",
    "look_at", "nyu_mask_holes", "nyu_raw_holes", "owned_or_empty", "pair_sample", "paired_signal", "person_image",
    "random_cameras", "random_scene", "render", "render_views", "write_dsine", "write_nyuv2_labeled",
    "write_openfmri_subjects", "write_pair_list", "write_reid_dataset", "write_scannet_scene", "write_scene_dataset",
    "write_skimage_photos", "write_wfdb_record",
]
