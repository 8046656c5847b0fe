"""iSeg's class words: what its open-vocabulary script puts in the prompt for each class, and
which of the word's tokens it reads.

Each entry is ``[words, tokens, read]`` exactly as iSeg's tables give it (``data/voc/
voc_name20.py``, ``data/voc_context/context_name59.py``, ``data/coco14/coco_name80.py``): the
words, their token count under CLIP's BPE (which the script adds up to find where each class
starts in the prompt) and the offsets of the tokens read within the class. The tables are keyed
here by the canonical class names refbench's readers give (``Sample.meta["category"]``), and
ordered as iSeg orders its classes (its label indices), which is the order the classes are put
in the prompt. The method never learns which data set it runs on: ``word_table`` picks a table,
``class_words`` adds or replaces entries.
"""

from __future__ import annotations

from typing import Any

# data/voc/voc_name20.py (VOC12_NAME), keyed by VOC's class names, in VOC's label order
VOC = {
    "aeroplane": ["plane", 1, [0]], "bicycle": ["bicycle", 1, [0]], "bird": ["bird", 1, [0]],
    "boat": ["boat", 1, [0]], "bottle": ["bottle", 1, [0]], "bus": ["bus", 1, [0]],
    "car": ["car", 1, [0]], "cat": ["cat", 1, [0]], "chair": ["chair", 1, [0]],
    "cow": ["cow", 1, [0]], "diningtable": ["dining table", 2, [0, 1]], "dog": ["dog", 1, [0]],
    "horse": ["horse", 1, [0]], "motorbike": ["motorbike", 1, [0]], "person": ["person", 1, [0]],
    "pottedplant": ["potted plant", 2, [1]], "sheep": ["sheep", 1, [0]], "sofa": ["sofa", 1, [0]],
    "train": ["train", 1, [0]], "tvmonitor": ["tv monitor", 2, [1]],
}

# data/voc_context/context_name59.py (VOC_CONTEXT_NAME, whose order is iSeg's own Context label
# order: ORI_CONTEXT_NAME), keyed by the Pascal Context names of refbench's reader
# (mmsegmentation's), where they differ: airplane -> aeroplane, plant -> pottedplant,
# monitor -> tvmonitor; iSeg's words "laptop" (for computer) and "bedding" (for bedclothes)
_CONTEXT_ORDER = (
    ("aeroplane", "plane"), ("bicycle", None), ("bird", None), ("boat", None), ("bottle", None),
    ("bus", None), ("car", None), ("cat", None), ("chair", None), ("cow", None), ("table", None),
    ("dog", None), ("horse", None), ("motorbike", None), ("person", None), ("pottedplant", "plant"),
    ("sheep", None), ("sofa", None), ("train", None), ("tvmonitor", "monitor"), ("bag", None),
    ("bed", None), ("bench", None), ("book", None), ("building", None), ("cabinet", None),
    ("ceiling", None), ("cloth", None), ("computer", "laptop"), ("cup", None), ("door", None),
    ("fence", None), ("floor", None), ("flower", None), ("food", None), ("grass", None),
    ("ground", None), ("keyboard", None), ("light", None), ("mountain", None), ("mouse", None),
    ("curtain", None), ("platform", None), ("sign", None), ("plate", None), ("road", None),
    ("rock", None), ("shelves", None), ("sidewalk", None), ("sky", None), ("snow", None),
    ("bedclothes", "bedding"), ("track", None), ("tree", None), ("truck", None), ("wall", None),
    ("water", None), ("window", None), ("wood", None))
CONTEXT = {name: [word or name, 1, [0]] for name, word in _CONTEXT_ORDER}

# data/coco14/coco_name80.py (COCO14_NAME), keyed by COCO's names (refbench's COCO-Object
# reader), in COCO's label order. "fire hydrant" is 3 CLIP tokens (fire, hydr, ant), not the 2
# the table says: the script then reads "hydr" for it and mis-places every later class of the
# image by one token (``token_positions=table`` reproduces that; ``aligned`` does not).
_COCO_WORDS = {
    "person": "people", "motorcycle": "motorbike", "airplane": "plane", "couch": "sofa",
    "tv": "tv monitor"}
_COCO_READ = {
    "traffic light": (2, [1]), "fire hydrant": (2, [1]), "stop sign": (2, [0, 1]),
    "parking meter": (2, [0, 1]), "sports ball": (2, [0, 1]), "baseball bat": (2, [1]),
    "baseball glove": (2, [1]), "surfboard": (2, [0, 1]), "tennis racket": (2, [1]),
    "wine glass": (2, [1]), "hot dog": (2, [0, 1]), "potted plant": (2, [1]),
    "dining table": (2, [0, 1]), "tv": (2, [1]), "cell phone": (2, [0, 1]),
    "teddy bear": (2, [0, 1]), "hair drier": (2, [0, 1])}
_COCO_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush")
COCO = {name: [_COCO_WORDS.get(name, name), *_COCO_READ.get(name, (1, [0]))] for name in _COCO_NAMES}

TABLES: dict[str, dict[str, list[Any]]] = {"voc": VOC, "context": CONTEXT, "coco": COCO, "none": {}}

# The background words of the open-vocabulary script (ovs/diff_for_openvocabulary.py, with
# wsss/iSeg.py's prepare_data_name): each is written as a string statement followed by further
# string statements on their own lines, so only the first line is assigned; the rest is lost.
BACKGROUND_AS_RUN = {
    "voc": "ground, land, grass, tree, building, wall, sky, lake, water",
    "context": "",
    "coco": "ground, land, grass, tree, building, wall, sky, lake, water, river, sea, railway, ",
}
BACKGROUND_INTENDED = {
    "voc": ("ground, land, grass, tree, building, wall, sky, lake, water, river, sea, railway, "
            "railroad, keyboard, helmet, cloud, house, mountain, ocean, road, rock, street, "
            "valley, bridge, sign"),
    "coco": ("ground, land, grass, tree, building, wall, sky, lake, water, river, sea, railway, "
             "railroad, helmet, cloud, house, mountain, ocean, road, rock, street, valley, bridge"),
}


def check_entry(category: str, entry: Any) -> list[Any]:
    """One table entry as ``[words, tokens, read]``; a bare string is its words, every token read
    (``tokens`` 0: counted by the backbone's tokenizer). Raises ValueError naming the problem."""
    if isinstance(entry, str):
        entry = [entry, 0, []]
    if (not isinstance(entry, (list, tuple)) or len(entry) != 3 or not isinstance(entry[0], str)
            or not entry[0].strip() or not isinstance(entry[1], int) or isinstance(entry[1], bool)
            or entry[1] < 0 or not isinstance(entry[2], (list, tuple))
            or any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in entry[2])):
        raise ValueError(f"class_words[{category!r}] must be \"words\" or [\"words\", tokens, "
                         f"[read offsets]] (as iSeg's tables: [\"potted plant\", 2, [1]]), got {entry!r}")
    words, tokens, read = " ".join(entry[0].split()), entry[1], list(entry[2])
    if tokens and any(i >= tokens for i in read):
        raise ValueError(f"class_words[{category!r}]: read offsets {read} must be below its "
                         f"token count {tokens}")
    if tokens and not read:
        raise ValueError(f"class_words[{category!r}]: name at least one token to read")
    return [words, tokens, read]
