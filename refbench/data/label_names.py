"""Class lists of the zero-shot semantic benchmarks, and the words methods are prompted with.

A label map stores class indices; the index is the position in these tuples (0 is background,
255 is ignored). The first name is the data set's own (mmsegmentation's class tuples, which keep
VOC's run-together names such as ``pottedplant``); a text-driven segmenter is prompted with words,
so each class also has a prompt name, from one of three presets:

``readable`` (default)
    the data set's name as words: ``pottedplant`` -> "potted plant", ``diningtable`` -> "dining
    table", ``tvmonitor`` -> "tv monitor"; every other name unchanged.
``groupvit``
    the names GroupViT's evaluation prompts with (NVlabs/GroupViT, segmentation/datasets/*.py):
    VOC "table", "plant", "monitor"; Context "airplane", "plant", "monitor".
``diffsegmenter``
    the words DiffSegmenter's released evaluation prompts with (VCG-team/DiffSegmenter,
    open_vocabulary/voc12/evaluation_voc12.py and voc10/ptp_stable_voc10.py, the ``embs``
    lists): VOC "plane", "table", "people", "plant", "monitor"; Context as GroupViT. Its COCO
    list was not checked: COCO-Object keeps COCO's own names, which are words already.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from refbench.errors import did_you_mean

PRESETS = ("readable", "groupvit", "diffsegmenter")
_READABLE = {"pottedplant": "potted plant", "diningtable": "dining table", "tvmonitor": "tv monitor"}


@dataclass(frozen=True)
class LabelSet:
    """A benchmark's classes by label value, with per-preset prompt names.

    ``benchmarks`` names the two open-vocabulary protocols as the papers' tables do: with the
    background class counted (VOC21, Context60) and without it (VOC20, PC59), where background
    pixels are ignored and every other pixel takes one of the classes. A label set whose data has
    no background class (ADE20K-150, Cityscapes-19: value 0 is "other" or ignored) has only the
    second; ``has_background`` is then False."""

    name: str
    classes: tuple[str, ...]  # index = label value; classes[0] is the background
    renames: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # preset -> {class: word}
    benchmarks: tuple[str | None, str] = ("", "")  # (with background, without background)
    has_background: bool = True

    def benchmark(self, background: bool) -> str:
        """The table name of this label set under a protocol: VOC21 / VOC20, ..."""
        return (self.benchmarks[0] if background else self.benchmarks[1]) or self.name

    @property
    def last_label(self) -> int:
        return len(self.classes) - 1

    def prompts(self, preset: str = "readable") -> dict[int, str]:
        """Label value -> the text a method is prompted with (background excluded)."""
        if preset not in PRESETS:
            raise did_you_mean(preset, PRESETS, f"prompt_names preset for {self.name}")
        renames = {**_READABLE, **self.renames.get(preset, {})}
        return {i: renames.get(c, c) for i, c in enumerate(self.classes) if i > 0}


VOC = LabelSet("voc", (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor"), {
    "groupvit": {"diningtable": "table", "pottedplant": "plant", "tvmonitor": "monitor"},
    "diffsegmenter": {"aeroplane": "plane", "diningtable": "table", "person": "people",
                      "pottedplant": "plant", "tvmonitor": "monitor"},
}, benchmarks=("VOC21", "VOC20"))

_CONTEXT_WORDS = {"aeroplane": "airplane", "pottedplant": "plant", "tvmonitor": "monitor"}
CONTEXT = LabelSet("context", (
    "background", "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat",
    "book", "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth",
    "computer", "cow", "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass",
    "ground", "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate",
    "platform", "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky",
    "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water",
    "window", "wood"), {"groupvit": _CONTEXT_WORDS, "diffsegmenter": _CONTEXT_WORDS},
    benchmarks=("Context60", "PC59"))

COCO_OBJECT = LabelSet("coco-object", (
    "background", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck",
    "boat", "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush"), benchmarks=("COCO-Object81", "COCO-Object80"))

# ADE20K's SceneParsing 150 classes (mmsegmentation's ADE20KDataset.METAINFO, in label order):
# annotation value 0 is "other" and is ignored (mmsegmentation's reduce_zero_label), 1..150 the
# classes, so a label value is already refbench's class index.
ADE20K = LabelSet("ade20k", (
    "other", "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror",
    "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop",
    "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine",
    "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight",
    "booth", "television receiver", "airplane", "dirt track", "apparel", "pole", "land",
    "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship",
    "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food",
    "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher",
    "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower",
    "radiator", "glass", "clock", "flag"), benchmarks=(None, "ADE20K-150"), has_background=False)

# Cityscapes' 19 evaluation classes by trainId (mmsegmentation's CityscapesDataset): the
# *_gtFine_labelTrainIds.png files store trainIds 0..18 and 255; the reader shifts them by one
# (``label_offset``) so that 0 is free for the (absent) background.
CITYSCAPES = LabelSet("cityscapes", (
    "other", "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus",
    "train", "motorcycle", "bicycle"), benchmarks=(None, "Cityscapes-19"), has_background=False)

LABEL_SETS = {s.name: s for s in (VOC, CONTEXT, COCO_OBJECT, ADE20K, CITYSCAPES)}


def label_set(name: str) -> LabelSet:
    try:
        return LABEL_SETS[name]
    except KeyError:
        raise did_you_mean(name, LABEL_SETS, "label set") from None

