"""RefCOCO at full size: start-up, a full split and a rerun from the store, end to end.

    python benchmarks/refcoco_scale.py                      # layout in /tmp/refbench-refcoco-scale
    python benchmarks/refcoco_scale.py /data/scale --images 200 --train

Writes, once (reused when present), a synthetic layout the size of RefCOCO (UNC) in REFER's
layout: 19,994 images, 50,000 refs, 142,210 sentences, 196,771 annotations (polygons, so
instances.json is about 120 MB), the split sizes of UNC (train 42,404 refs / 120,624 sentences
on 16,994 images, val 3,811 / 10,834 on 1,500, testA 1,975 / 5,657 on 750, testB 1,810 / 5,095
on 750). Writing 19,994 real-sized JPEGs takes minutes and gigabytes, so ``--images K`` writes K
distinct ~640x480 JPEGs and hard-links them under every image's file name (each image record
has its file's size): the reader, the header checks and a decoder see 19,994 files.

Then times, each in a fresh ``refbench run`` subprocess (wall time; peak RSS from
``getrusage(RUSAGE_CHILDREN)`` of a wrapper process that runs only that command), with a cache
folder of its own (``REFBENCH_CACHE``, empty at first): start-up (``--methods gt_box --limit
1``) on the first run, which checks the files and stores their index, and again, the full val split with gt_box and full_image into a
new store, the rerun of that from the store, and with ``--train`` the train split with gt_box
(and its rerun). Prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks._common import print_table  # noqa: E402

IMAGES = 19_994
ANNOTATIONS = 196_771
# split: (images, refs, sentences), REFER's UNC split of RefCOCO
SPLITS = {"train": (16_994, 42_404, 120_624), "val": (1_500, 3_811, 10_834),
          "testA": (750, 1_975, 5_657), "testB": (750, 1_810, 5_095)}
SIZES = [(480, 640), (640, 480), (427, 640), (640, 427), (480, 640), (425, 640), (512, 640)]
WORDS = "man woman left right red shirt blue car dog near far the on in with small big".split()


def _jpeg(path: Path, height: int, width: int, rng: np.random.Generator) -> None:
    """A photo-like JPEG (smooth colour plus grain: about the bytes of a COCO image)."""
    from PIL import Image

    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([np.sin(xx / rng.uniform(20, 80) + c) * np.cos(yy / rng.uniform(20, 80))
                     for c in range(3)], axis=-1) * 90 + 128
    pixels = np.clip(base + rng.normal(0, 18, base.shape), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def _polygon(rng: np.random.Generator, height: int, width: int) -> tuple[list[float], list[float]]:
    """A star-shaped polygon inside the image, and its box."""
    points = int(rng.integers(17, 41))
    cx, cy = rng.uniform(0.15, 0.85) * width, rng.uniform(0.15, 0.85) * height
    radius = rng.uniform(0.04, 0.14) * min(height, width)
    angles = np.sort(rng.uniform(0, 2 * np.pi, points))
    r = radius * rng.uniform(0.6, 1.0, points)
    xs = np.clip(cx + r * np.cos(angles), 0, width - 1).round(2)
    ys = np.clip(cy + r * np.sin(angles), 0, height - 1).round(2)
    flat = np.empty(2 * points)
    flat[0::2], flat[1::2] = xs, ys
    box = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min()), float(ys.max() - ys.min())]
    return flat.tolist(), [round(v, 2) for v in box]


def _spread(total: int, parts: int, rng: np.random.Generator, least: int = 1) -> np.ndarray:
    """``total`` split into ``parts`` counts of at least ``least``."""
    counts = np.full(parts, least)
    extra = rng.multinomial(total - least * parts, np.full(parts, 1 / parts))
    return counts + extra


def write_layout(root: Path, distinct: int, seed: int = 0) -> None:
    """The synthetic layout at ``root`` (written to a staging folder, then renamed)."""
    rng = np.random.default_rng(seed)
    staging = root.with_name(f".{root.name}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    images_dir = staging / "images" / "train2014"
    images_dir.mkdir(parents=True)
    (staging / "refcoco").mkdir()
    print(f"writing the layout to {root} ({distinct} distinct JPEGs)...", file=sys.stderr, flush=True)
    sources = []
    for k in range(distinct):
        height, width = SIZES[k % len(SIZES)]
        path = staging / f"source{k}.jpg"
        _jpeg(path, height, width, rng)
        sources.append((path, height, width))
    image_ids = rng.choice(np.arange(1, 600_000), IMAGES, replace=False)
    images = []
    for k, image_id in enumerate(image_ids.tolist()):
        path, height, width = sources[k % distinct]
        name = f"COCO_train2014_{image_id:012d}.jpg"
        os.link(path, images_dir / name)
        images.append({"license": 1, "file_name": name, "coco_url": "", "height": height,
                       "width": width, "date_captured": "2013-11-14 11:18:45", "flickr_url": "",
                       "id": image_id})
    categories = [{"supercategory": "thing", "id": c, "name": f"category {c}"} for c in range(1, 91)]
    per_image = _spread(ANNOTATIONS, IMAGES, rng)
    annotations, anns_of = [], []
    ann_id = 0
    for image, count in zip(images, per_image.tolist()):
        mine = []
        for _ in range(count):
            ann_id += int(rng.integers(1, 4))
            flat, box = _polygon(rng, image["height"], image["width"])
            annotations.append({"segmentation": [flat], "area": round(box[2] * box[3] * 0.7, 2),
                                "iscrowd": 0, "image_id": image["id"], "bbox": box,
                                "category_id": int(rng.integers(1, 91)), "id": ann_id})
            mine.append((ann_id, annotations[-1]["category_id"]))
        anns_of.append(mine)
    with open(staging / "refcoco" / "instances.json", "w") as handle:
        json.dump({"info": {}, "images": images, "licenses": [], "annotations": annotations,
                   "categories": categories}, handle)
    del annotations

    order = rng.permutation(IMAGES)
    refs, ref_id, sent_id, start = [], 0, 0, 0
    for split, (n_images, n_refs, n_sents) in SPLITS.items():
        picked = order[start:start + n_images]
        start += n_images
        refs_per_image = _spread(n_refs, n_images, rng)
        sents_per_ref = _spread(n_sents, n_refs, rng)
        r = 0
        for index, n in zip(picked.tolist(), refs_per_image.tolist()):
            objects = anns_of[index]
            for a in rng.choice(len(objects), min(n, len(objects)), replace=False).tolist() + \
                    [int(rng.integers(len(objects))) for _ in range(n - len(objects))]:
                chosen, category = objects[a]
                sentences = []
                for _ in range(int(sents_per_ref[r])):
                    words = [WORDS[i] for i in rng.integers(0, len(WORDS), int(rng.integers(2, 7)))]
                    sentences.append({"tokens": words, "raw": " ".join(words), "sent_id": sent_id,
                                      "sent": " ".join(words)})
                    sent_id += 1
                refs.append({"sent_ids": [s["sent_id"] for s in sentences],
                             "file_name": f"{images[index]['file_name'][:-4]}_{chosen}.jpg",
                             "ann_id": chosen, "ref_id": ref_id, "image_id": images[index]["id"],
                             "split": split, "sentences": sentences, "category_id": category})
                ref_id += 1
                r += 1
    refs.sort(key=lambda ref: ref["image_id"])  # REFER's file lists refs image by image
    with open(staging / "refcoco" / "refs(unc).p", "wb") as handle:
        pickle.dump(refs, handle, protocol=2)
    for path, _, _ in sources:
        path.unlink()
    staging.rename(root)


def measure(command: list[str], cwd: Path) -> tuple[float, float, str]:
    """Wall seconds and peak RSS (MiB) of ``command``, run alone under a fresh wrapper."""
    wrapper = ("import json, resource, subprocess, sys, time\n"
               "t = time.perf_counter()\n"
               "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
               "wall = time.perf_counter() - t\n"
               "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
               "print(json.dumps([wall, rss, p.returncode, p.stderr[-2000:]]))\n")
    out = subprocess.run([sys.executable, "-c", wrapper, *command], cwd=cwd, capture_output=True,
                         text=True, check=True)
    wall, rss, code, stderr = json.loads(out.stdout)
    if code:
        raise SystemExit(f"{' '.join(command)} failed ({code}):\n{stderr}")
    return wall, rss, stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", type=Path,
                        default=Path(tempfile.gettempdir()) / "refbench-refcoco-scale")
    parser.add_argument("--images", type=int, default=100,
                        help="distinct JPEG files, hard-linked under all 19,994 names")
    parser.add_argument("--train", action="store_true", help="also the train split (minutes)")
    args = parser.parse_args()
    if not args.root.exists():
        write_layout(args.root, args.images)
    os.environ["PYTHONPATH"] = str(REPO)
    base = [sys.executable, "-m", "refbench", "run", "--dataset", "refcoco",
            "--data-root", str(args.root), "--no-progress"]
    sizes = {split: sents for split, (_, _, sents) in SPLITS.items()}
    rows = []
    with tempfile.TemporaryDirectory(prefix="refbench-scale-") as work:
        def row(what: str, split: str, extra: list[str], samples: int, out: str) -> None:
            wall, rss, stderr = measure([*base, "--split", split, "--out", f"{work}/{out}",
                                         *extra], REPO)
            lines = [line for line in stderr.splitlines() if line.startswith("refbench: reading")]
            rows.append([what, samples, round(wall, 2), round(rss), round(samples / wall),
                         "yes" if lines else "no"])
            print(f"  {what}: {wall:.2f} s, {rss:.0f} MiB", file=sys.stderr, flush=True)

        os.environ["REFBENCH_CACHE"] = f"{work}/cache"  # the stored index: none at first
        row("start-up, first run (gt_box, --limit 1)", "val",
            ["--methods", "gt_box", "--limit", "1"], 1, "first")
        row("start-up (gt_box, --limit 1)", "val", ["--methods", "gt_box", "--limit", "1"], 1,
            "limit")
        row("val, gt_box + full_image", "val", ["--methods", "gt_box,full_image"],
            2 * sizes["val"], "val")
        row("val rerun from the store", "val", ["--methods", "gt_box,full_image"],
            2 * sizes["val"], "val")
        row("val, gt_box alone", "val", ["--methods", "gt_box"], sizes["val"], "val-box")
        if args.train:
            calibration = ["--methods", "gt_box", "--calibration-split", "none"]
            row("train, gt_box", "train", calibration, sizes["train"], "train")
            row("train rerun from the store", "train", calibration, sizes["train"], "train")
    print_table(["what", "samples", "wall s", "peak MiB", "samples/s", "progress line"], rows)


if __name__ == "__main__":
    main()
