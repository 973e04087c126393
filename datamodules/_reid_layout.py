"""The ReID on-disk layouts (folder names, splits, where each dataset comes from) and ``find_dataset_dir``.

Below both :mod:`datamodules.reid` (which reads the layouts) and :mod:`datamodules.synthetic.reid` (which writes
stand-ins in them), so neither imports the other's module for them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ._layout import layout_error

#: folder names the official releases / common mirrors use, per layout (first = what our writers create)
LAYOUTS: dict[str, dict[str, Any]] = {
    "market1501": {
        "dirs": ("market1501", "Market-1501-v15.09.15", "Market-1501", "Market1501"),
        "splits": ("bounding_box_train", "query", "bounding_box_test"),
        "source": "Market-1501 (Zheng et al., ICCV 2015): http://zheng-lab.cecs.anu.edu.au/Project/project_reid.html "
                  "(Market-1501-v15.09.15.zip; unzip and rename or keep the folder name)",
        "example": "0002_c1s1_000451_03.jpg",
    },
    "dukemtmc": {
        "dirs": ("dukemtmc", "DukeMTMC-reID", "dukemtmcreid", "DukeMTMC"),
        "splits": ("bounding_box_train", "query", "bounding_box_test"),
        "source": "DukeMTMC-reID (Zheng et al., ICCV 2017; https://github.com/layumi/DukeMTMC-reID_evaluation). The "
                  "DukeMTMC data were withdrawn by their creators in 2019: use an existing copy only if your "
                  "licence allows it.",
        "example": "0001_c2_f0046182.jpg",
    },
    "occluded_duke": {
        "dirs": ("Occluded_Duke", "occluded_duke", "Occluded-DukeMTMC"),
        "splits": ("bounding_box_train", "query", "bounding_box_test"),
        "source": "Occluded-DukeMTMC (Miao et al., ICCV 2019): https://github.com/lightas/Occluded-DukeMTMC-Dataset "
                  "(built from DukeMTMC-reID with the script there)",
        "example": "0001_c2_f0046182.jpg",
    },
    "msmt17": {
        "dirs": ("msmt17", "MSMT17", "MSMT17_V1", "MSMT17_V2"),
        "splits": ("train", "test"),
        "lists": ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt"),
        "source": "MSMT17 (Wei et al., CVPR 2018): http://www.pkuvmc.com/dataset.html (request access, sign the "
                  "licence agreement; V1 has train/ and test/, V2 mask_train_v2/ and mask_test_v2/)",
        "example": "0000/0000_000_01_0303morning_0015_0.jpg",
    },
}



def _expected_tree(layout: str) -> str:
    spec = LAYOUTS[layout]
    name = spec["dirs"][0]
    lines = [f"<root>/{name}/"]
    for s in spec["splits"]:
        lines.append(f"    {s}/{spec['example']} ...")
    for f in spec.get("lists", ()):
        lines.append(f"    {f}   (lines: '<relative path> <pid>')")
    return "\n".join(lines)


def find_dataset_dir(root: str | Path, layout: str) -> Path:
    """The dataset folder for ``layout`` under ``root`` (or ``root`` itself). Raises a descriptive error if absent."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown ReID layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    root = Path(root).expanduser()
    spec = LAYOUTS[layout]
    candidates = [root] + [root / d for d in spec["dirs"]]
    for c in candidates:
        if layout == "msmt17":
            ok = all((c / f).is_file() for f in spec["lists"]) and (
                ((c / "train").is_dir() and (c / "test").is_dir())
                or ((c / "mask_train_v2").is_dir() and (c / "mask_test_v2").is_dir()))
        else:
            ok = all((c / s).is_dir() for s in spec["splits"])
        if ok:
            return c
    raise layout_error(
        f"no dataset found under {root} (the dataset folder may also be passed as root).", name=layout,
        tree=_expected_tree(layout), source=f"{spec['source']}. It is never downloaded automatically.", root=root,
        notes=f"for a synthetic stand-in in the same layout use datamodules.synthetic.write_reid_dataset(<an empty "
              f"folder>, '{layout}').")
