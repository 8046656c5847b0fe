"""The qualitative gallery: image, ground truth, and each method's mask and heat map, side by
side, for chosen samples and for the samples where two methods differ most (the kind of figure
"Attribute binding enhancement improvement for diffusion model based zero-shot image
segmentation" by Nanli Wu shows for its baseline and variants).

Outlines and masks are drawn in colours picked per image from a fixed palette, the ones farthest
from the image's own colours: a green outline on a green shape would be invisible.

Score maps are not stored (they would dwarf the store), so score-map methods are rerun on just
the gallery's samples, with the same per-sample seeds as the scored run; their masks are the
score maps at the reported threshold. The rerun is checked against the stored counts, so a
picture never silently shows something other than what was scored. Mask methods' masks come
from the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from refbench.candidates import candidate
from refbench.data.images import load_rgb
from refbench.data.masks import decode
from refbench.data.sample import Sample
from refbench.errors import UserError
from refbench.core import predict_maps
from refbench.plugins import PluginHost
from refbench.report.build import SplitReport
from refbench.report.spec import GalleryEntry, ReportSpec
from refbench.method import Prediction
from refbench.results.scoring import resize_map, score_batch
from refbench.store import Store

DISPLAY_SIDE = 320  # longest side of a gallery picture, in pixels
# anchors of a perceptually ordered dark-to-bright colour map (after matplotlib's "inferno")
_HEAT = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66],
                  [245, 125, 21], [250, 193, 39], [252, 255, 164]], dtype=np.float64)
# candidate colours for outlines and masks, by the name a caption gives them
PALETTE: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255), "black": (0, 0, 0), "yellow": (255, 230, 0), "cyan": (0, 230, 255),
    "magenta": (255, 0, 200), "orange": (255, 140, 0), "blue": (30, 80, 255),
    "lime": (120, 255, 0), "red": (230, 30, 30)}


def heat_gradient() -> str:
    """The heat map's colour scale as a CSS gradient, for the colour bar the pages show."""
    stops = ", ".join(f"rgb({r:.0f},{g:.0f},{b:.0f}) {100 * i / (len(_HEAT) - 1):.0f}%"
                      for i, (r, g, b) in enumerate(_HEAT))
    return f"linear-gradient(to right, {stops})"


def contrasting_colours(image: np.ndarray) -> tuple[str, str]:
    """Two palette colours that stand out from ``image``: one for the ground-truth outline, one
    for the masks, also apart from each other. A colour's distance from an image is that of the
    nearest 1 % of its pixels, so even a small patch of the same colour already counts against it."""
    pixels = image[::4, ::4].reshape(-1, 3).astype(np.float64)
    colours = {name: np.array(rgb, dtype=np.float64) for name, rgb in PALETTE.items()}
    away = {name: float(np.percentile(np.linalg.norm(pixels - c, axis=1), 1))
            for name, c in colours.items()}
    truth = max(colours, key=lambda name: (away[name], name))
    mask = max((n for n in colours if n != truth),
               key=lambda n: (min(away[n], float(np.linalg.norm(colours[n] - colours[truth]))), n))
    return truth, mask


@dataclass
class Tile:
    """One method's row of a sample: its mask and (for score-map methods) its heat map."""

    label: str
    iou: float  # a fraction; pages print it in percent
    threshold: str  # the reported threshold as a label ("0.30"), or "mask" for mask outputs
    mask: str  # picture paths, relative to the site root
    heat: str | None


@dataclass
class GalleryRow:
    sample: Sample
    image: str
    truth: str
    tiles: list[Tile]
    diff: float  # IoU of contrast[0] minus contrast[1]
    chosen: bool  # listed in the spec's include
    truth_colour: str = "white"  # palette names, for the captions
    mask_colour: str = "red"


@dataclass
class Gallery:
    entry: GalleryEntry
    rows: list[GalleryRow]
    notes: list[str] = field(default_factory=list)


def heat_colours(scores: np.ndarray) -> np.ndarray:
    """Scores in [0, 1] as RGB (float, 0-255)."""
    position = np.clip(scores, 0, 1) * (len(_HEAT) - 1)
    anchors = np.arange(len(_HEAT))
    return np.stack([np.interp(position, anchors, _HEAT[:, c]) for c in range(3)], axis=-1)


def heat_overlay(image: np.ndarray, scores: np.ndarray, opacity: float = 0.6) -> np.ndarray:
    return ((1 - opacity) * image + opacity * heat_colours(scores)).astype(np.uint8)


def _boundary(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels of ``mask`` within ``width`` pixels of its edge."""
    inner = mask.copy()
    for _ in range(width):
        padded = np.pad(inner, 1, constant_values=False)  # the image's edge counts as outside
        inner = (inner & padded[:-2, 1:-1] & padded[2:, 1:-1]
                 & padded[1:-1, :-2] & padded[1:-1, 2:])
    return mask & ~inner


def outline_overlay(image: np.ndarray, mask: np.ndarray, colour: str, width: int = 2) -> np.ndarray:
    """The image with the mask's outline drawn opaque: the region itself stays visible."""
    out = image.copy()
    out[_boundary(mask, width)] = PALETTE[colour]
    return out


def mask_overlay(image: np.ndarray, mask: np.ndarray, colour: str,
                 truth: np.ndarray | None = None, truth_colour: str | None = None) -> np.ndarray:
    """The mask filled translucently over a dimmed image, its outline drawn opaque; with
    ``truth``, the ground truth's outline on top, so a mask reads against its target."""
    fill = np.array(PALETTE[colour], dtype=np.float64)
    out = image.astype(np.float64) * 0.7
    out[mask] = 0.45 * out[mask] / 0.7 + 0.55 * fill
    out[_boundary(mask, 1)] = fill
    out = out.astype(np.uint8)
    if truth is not None and truth_colour is not None:
        out[_boundary(truth, 1)] = PALETTE[truth_colour]
    return out


def choose_samples(report: SplitReport, entry: GalleryEntry) -> list[tuple[Sample, float, bool]]:
    """The included samples, then those where the contrast pair's IoUs differ most."""
    a, b = (report.scored[label] for label in entry.contrast)
    diff = dict(zip((r.sample_id for r in a.rows.rows), a.rows.ious(a.k) - b.rows.ious(b.k)))
    by_id = {s.sample_id: s for s in report.samples}
    unknown = [i for i in entry.include if i not in by_id]
    if unknown:
        raise UserError(f"gallery.include: sample ids {unknown} are not among the evaluated samples "
                        f"of {report.dataset.name} {report.split} (a limit may have cut them)")
    picked = [(by_id[i], float(diff.get(i, 0.0)), True) for i in entry.include]
    ranked = sorted((i for i in diff if i not in entry.include), key=lambda i: (-abs(diff[i]), i))
    picked += [(by_id[i], float(diff[i]), False) for i in ranked[:entry.count]]
    return picked


def _save(array: np.ndarray, path: Path) -> None:
    image = Image.fromarray(array)
    image.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE), Image.Resampling.LANCZOS)
    image.save(path, quality=88)


def build_gallery(host: PluginHost, spec: ReportSpec, report: SplitReport, store: Store,
                  site: Path) -> Gallery:
    """Choose the samples, rerun score-map methods on them, and write the pictures under
    ``site/img/``."""
    entry = spec.gallery
    assert entry is not None
    chosen = choose_samples(report, entry)
    samples = [s for s, _, _ in chosen]
    folder = site / "img" / f"gallery-{report.slug}"
    folder.mkdir(parents=True, exist_ok=True)
    images = [load_rgb(s.image_path, (s.height, s.width), s.sample_id) for s in samples]
    rel = lambda name: f"img/{folder.name}/{name}"  # noqa: E731
    rows = []
    truths = [decode(s.gt) for s in samples]
    for sample, image, truth, (_, diff, included) in zip(samples, images, truths, chosen):
        stem = _file_stem(sample.sample_id)
        truth_colour, mask_colour = contrasting_colours(image)
        _save(image, folder / f"{stem}-image.jpg")
        _save(outline_overlay(image, truth, truth_colour, width=max(2, image.shape[0] // 120)),
              folder / f"{stem}-truth.jpg")
        rows.append(GalleryRow(sample, rel(f"{stem}-image.jpg"), rel(f"{stem}-truth.jpg"), [],
                               diff, included, truth_colour, mask_colour))
    notes = []
    for m, label in enumerate(entry.methods):
        scored = report.scored[label]
        threshold = scored.threshold
        maps = (_masks(store, scored.run_key, samples) if threshold.value is None
                else _rerun(host, spec, label, samples, images))
        stored = {r.sample_id: r for r in store.rows(scored.run_key,
                                                     sample_ids=[s.sample_id for s in samples])}
        ious = dict(zip((r.sample_id for r in scored.rows.rows), scored.rows.ious(scored.k)))
        for row, sample, image, truth, output in zip(rows, samples, images, truths, maps):
            stem = f"{_file_stem(sample.sample_id)}-m{m}"
            cut = 0.5 if threshold.value is None else threshold.value
            score_map = _at_image(output, image.shape[:2])
            _save(mask_overlay(image, score_map >= cut, row.mask_colour, truth, row.truth_colour),
                  folder / f"{stem}-mask.jpg")
            heat = None
            if threshold.value is not None:
                _save(heat_overlay(image, score_map), folder / f"{stem}-heat.jpg")
                heat = rel(f"{stem}-heat.jpg")
                # scored again exactly as the run scored it, protocol included
                (check,), _ = score_batch([sample], [Prediction(scores=output)], label,
                                          scored.rows.thresholds, None, spec.protocol)
                if not np.array_equal(check.inter, stored[sample.sample_id].inter):
                    notes.append(f"{label} on sample {sample.sample_id}: the rerun differs from the "
                                 f"scored run (the method is not deterministic given its seed)")
            row.tiles.append(Tile(label, float(ious[sample.sample_id]), threshold.label(),
                                  rel(f"{stem}-mask.jpg"), heat))
    return Gallery(entry, rows, notes)


def _at_image(output: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A method's output (or a stored mask) at the image's size, for display: the protocol may
    have scored it on a square."""
    return resize_map(output, shape, nearest=output.dtype == bool).astype(np.float32)


def _file_stem(sample_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in sample_id)


def _masks(store: Store, run_key: str, samples: list[Sample]) -> list[np.ndarray]:
    rows = {r.sample_id: r for r in store.rows(run_key, with_masks=True,
                                               sample_ids=[s.sample_id for s in samples])}
    return [decode(rows[s.sample_id].mask_rle) for s in samples]


def _rerun(host: PluginHost, spec: ReportSpec, label: str, samples: list[Sample],
           images: list[np.ndarray]) -> list[np.ndarray]:
    """Score maps of a method on the gallery's samples, seeded exactly as in the scored run."""
    entry = spec.method(label)
    return predict_maps(host, candidate(host, entry.name, entry.overrides, label),
                        samples, images, spec.seed, spec.batch_size, spec.protocol.output_size)
