"""The built-in datasets, registered as an ordinary plugin (entry point ``datasets``)."""

from __future__ import annotations

from refbench import hookimpl
from refbench.specs import DatasetSpec

_REFER = "refbench.data.refer:ReferDataset"
_COCO = "refbench.data.coco:CocoSemanticDataset"
_LABEL_MAPS = "refbench.data.label_maps:LabelMapDataset"
_PARQUET = "refbench.data.refer_parquet:"
_PARQUET_HOWTO = "a folder of its parquet files, or --data-root hf://"
_VOC = {"name": "voc", "labels": "voc", "image_subdir": "JPEGImages",
        "label_subdir": "SegmentationClass", "split_list": "ImageSets/Segmentation/{split}.txt"}
_CONTEXT = {"name": "context", "labels": "context", "image_subdir": "JPEGImages",
            "label_subdir": "SegmentationClassContext",
            "split_list": "ImageSets/SegmentationContext/{split}.txt"}
_COCO_OBJECT = {"name": "coco-object", "labels": "coco-object", "image_subdir": "images/{split}",
                "label_subdir": "annotations/{split}", "label_suffix": "_instanceTrainIds.png"}
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
        DatasetSpec("refcoco-benchmark", _PARQUET + "BenchmarkParquetDataset", "RefCOCO, RefCOCO+ "
                    "and RefCOCOg evaluation splits (refcoco_unc_val, refcoco_plus_unc_testA, "
                    f"refcocog_umd_test, ...): {_PARQUET_HOWTO}jxu124/refcoco-benchmark",
                    "refcoco-benchmark", {"name": "refcoco-benchmark"}),
        DatasetSpec("refcoco-parquet", _PARQUET + "ReferRowsParquetDataset", "RefCOCO (unc) as "
                    f"REFER rows in parquet: {_PARQUET_HOWTO}jxu124/refcoco (option name: refcoco+ "
                    "or refcocog for jxu124/refcocoplus or jxu124/refcocog)", "refcoco-parquet",
                    {"name": "refcoco"}),
        DatasetSpec("refcoco-lmms", _PARQUET + "LmmsParquetDataset", "RefCOCO as lmms-lab packs it "
                    "(images inside; testA/testB are UNC's, val/test are not): "
                    f"{_PARQUET_HOWTO}lmms-lab/RefCOCO", "refcoco-lmms", {"name": "refcoco"}),
        DatasetSpec("voc", _LABEL_MAPS, "PASCAL VOC 2012 semantic segmentation (20 classes + "
                    "background, one sample per class present; option background=false: VOC20): VOCdevkit/VOC2012 with JPEGImages, "
                    "SegmentationClass, ImageSets/Segmentation", "VOCdevkit/VOC2012",
                    _VOC),
        DatasetSpec("context", _LABEL_MAPS, "PASCAL Context (59 classes + background, one sample "
                    "per class present; option background=false: PC59) in mmsegmentation's layout: VOCdevkit/VOC2010 with "
                    "JPEGImages, SegmentationClassContext, ImageSets/SegmentationContext",
                    "VOCdevkit/VOC2010",
                    _CONTEXT),
        DatasetSpec("coco-object", _LABEL_MAPS, "COCO-Object (80 objects + background, one sample "
                    "per class present; option background=false: COCO-Object80) as GroupViT converts it: images/<split>/*.jpg and "
                    "annotations/<split>/*_instanceTrainIds.png", "coco",
                    _COCO_OBJECT),
        # the without-background protocol under the names the papers' tables use
        DatasetSpec("voc20", _LABEL_MAPS, "PASCAL VOC 2012 without background (VOC20: background "
                    "pixels ignored, every other pixel one of the classes present): the voc layout",
                    "VOCdevkit/VOC2012", {**_VOC, "name": "voc20", "background": False}),
        DatasetSpec("pc59", _LABEL_MAPS, "PASCAL Context without background (PC59): the context "
                    "layout", "VOCdevkit/VOC2010", {**_CONTEXT, "name": "pc59", "background": False}),
        DatasetSpec("coco-object80", _LABEL_MAPS, "COCO-Object without background (80 objects): "
                    "the coco-object layout", "coco", {**_COCO_OBJECT, "name": "coco-object80", "background": False}),
        DatasetSpec("ade20k", _LABEL_MAPS, "ADE20K SceneParsing, 150 classes, no background "
                    "(value 0 'other' ignored; one sample per class present) in mmsegmentation's "
                    "layout: ADEChallengeData2016/images/<split>/*.jpg and annotations/<split>/*.png "
                    "(splits training, validation)", "ADEChallengeData2016",
                    {"name": "ade20k", "labels": "ade20k", "image_subdir": "images/{split}",
                     "label_subdir": "annotations/{split}", "background": False}),
        DatasetSpec("cityscapes", _LABEL_MAPS, "Cityscapes, 19 classes, no background (one "
                    "sample per class present) in mmsegmentation's layout: "
                    "leftImg8bit/<split>/<city>/*_leftImg8bit.png and "
                    "gtFine/<split>/<city>/*_gtFine_labelTrainIds.png (cityscapesscripts' "
                    "createTrainIdLabelImgs)", "cityscapes",
                    {"name": "cityscapes", "labels": "cityscapes", "image_subdir": "leftImg8bit/{split}",
                     "label_subdir": "gtFine/{split}", "image_suffix": "_leftImg8bit.png",
                     "label_suffix": "_gtFine_labelTrainIds.png", "label_offset": 1,
                     "background": False}),
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
