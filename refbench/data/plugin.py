"""The built-in datasets, registered as an ordinary plugin (entry point ``datasets``)."""

from __future__ import annotations

from refbench import hookimpl
from refbench.specs import DatasetSpec

_REFER = "refbench.data.refer:ReferDataset"
_COCO = "refbench.data.coco:CocoSemanticDataset"
_REFER_HOWTO = ("get refs(<splitBy>).p and instances.json from the REFER release and COCO "
                "train2014 images")


@hookimpl
def refbench_datasets() -> list[DatasetSpec]:
    return [
        DatasetSpec("refcoco", _REFER, f"RefCOCO (unc, google): {_REFER_HOWTO}", "refer",
                    {"name": "refcoco", "default_split_by": "unc"}),
        DatasetSpec("refcoco+", _REFER, f"RefCOCO+ (unc): {_REFER_HOWTO}", "refer",
                    {"name": "refcoco+", "default_split_by": "unc"}),
        DatasetSpec("refcocog", _REFER, f"RefCOCOg (umd, google): {_REFER_HOWTO}", "refer",
                    {"name": "refcocog", "default_split_by": "umd"}),
        DatasetSpec("coco", _COCO, "COCO semantic segmentation from an instances file: get "
                    "annotations/instances_<split>.json and the <split> images", "coco",
                    {"name": "coco"}),
        DatasetSpec("refshapes", _REFER, "synthetic referring shapes in the RefCOCO layout "
                    "(generated on first use)", "refshapes", {"name": "refshapes"},
                    generator="refbench.data.shapes:make"),
        DatasetSpec("refshapes-attribute", _REFER, "RefShapes' attribute-distractor expressions "
                    "only ('the red circle' beside another circle): the attribute-binding study",
                    "refshapes", {"name": "refshapes", "kinds": ["attribute"]},
                    generator="refbench.data.shapes:make"),
        DatasetSpec("refshapes-semantic", _COCO, "RefShapes scenes as COCO semantic "
                    "segmentation (generated on first use)", "refshapes",
                    {"name": "refshapes-semantic", "image_subdir": "images/train2014"},
                    generator="refbench.data.shapes:make"),
    ]
