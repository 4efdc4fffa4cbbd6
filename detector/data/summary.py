"""What `detector check-data` prints: image and box counts, box size and aspect-ratio distribution, problems."""
from __future__ import annotations

from typing import Any

import numpy as np

from .coco import CocoIndex
from .folds import photo_groups

PERCENTILES = (0, 5, 25, 50, 75, 95, 100)


def summarize(index: CocoIndex) -> dict[str, Any]:
    with_boxes = sum(1 for r in index.images if r.annotations)
    names = dict(zip(index.label_map.category_ids, index.label_map.names))
    per_class = {name: 0 for name in index.label_map.names}
    crowd = 0
    for rec in index.images:
        for a in rec.annotations:
            crowd += int(a["iscrowd"])
            if a["category_id"] in names and not a["iscrowd"]:
                per_class[names[a["category_id"]]] += 1
    boxes = np.concatenate([r.boxes for r in index.images]) if index.images else np.zeros((0, 4))
    wh = boxes[:, 2:] - boxes[:, :2] if len(boxes) else np.zeros((0, 2))
    errors = [str(p) for p in index.problems if p.severity == "error"]
    warnings = [str(p) for p in index.problems if p.severity == "warning"]
    return {
        "annotations": str(index.path),
        "images_dir": str(index.images_dir),
        "images": len(index.images),
        "images_with_boxes": with_boxes,
        "images_without_boxes": len(index.images) - with_boxes,
        "boxes": int(len(boxes)),
        "crowd_boxes": crowd,
        "boxes_per_class": per_class,
        "label_map": {name: cid for cid, name in names.items()},
        "dropped_categories": [c["name"] for c in index.categories if c["id"] not in names],
        "box_width": _distribution(wh[:, 0]),
        "box_height": _distribution(wh[:, 1]),
        "box_sqrt_area": _distribution(np.sqrt(wh.prod(1)) if len(wh) else wh[:, 0]),
        "aspect_ratio_h_over_w": _distribution(wh[:, 1] / np.maximum(wh[:, 0], 1e-9) if len(wh) else wh[:, 0]),
        "errors": errors,
        "warnings": warnings,
        "usable": not errors and len(index.images) > 0,
    }


def copies_within(index: CocoIndex, similarity: float) -> dict[str, Any]:
    """Photos with several images in one file: by Roboflow names, identical bytes or content."""
    groups = photo_groups(index, "roboflow", similarity)
    sizes: dict[str, int] = {}
    for key in groups.keys:
        sizes[key] = sizes.get(key, 0) + 1
    return {"photos": len(sizes), "photos_with_copies": groups.copied,
            "images_in_copies": sum(n for n in sizes.values() if n > 1),
            "joined_by_content": [list(pair) for pair in groups.joined_by_content]}


def _distribution(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {}
    return {f"p{p}": round(float(np.percentile(values, p)), 2) for p in PERCENTILES} | {
        "mean": round(float(values.mean()), 2)}


def format_summary(s: dict[str, Any], max_listed: int = 20) -> str:
    lines = [
        f"annotations: {s['annotations']}",
        f"images:      {s['images']} ({s['images_with_boxes']} with boxes, {s['images_without_boxes']} without)",
        f"boxes:       {s['boxes']} ({s['crowd_boxes']} crowd, excluded from training)",
        "per class:   " + ", ".join(f"{k} {v}" for k, v in s["boxes_per_class"].items()),
    ]
    if s["dropped_categories"]:
        lines.append("placeholder categories without a label: " + ", ".join(s["dropped_categories"]))
    header = "             " + " ".join(f"{k:>7}" for k in ("p0", "p5", "p25", "p50", "p75", "p95", "p100"))
    lines.append(header)
    for key, label in (("box_width", "width px"), ("box_height", "height px"), ("box_sqrt_area", "sqrt(area)"),
                       ("aspect_ratio_h_over_w", "h / w")):
        d = s[key]
        lines.append(f"  {label:<11}" + " ".join(f"{d.get(k, 0):>7.2f}" for k in
                                                 ("p0", "p5", "p25", "p50", "p75", "p95", "p100")))
    if "copies" in s:
        c = s["copies"]
        joined = c["joined_by_content"]
        lines.append(f"copies:      {c['photos']} photos; " + (
            f"{c['photos_with_copies']} have several images ({c['images_in_copies']} images: Roboflow copies, "
            "identical files or copies by content)" if c["photos_with_copies"] else "no two images show one photo"))
        if joined:
            lines.append(f"  by content only ({len(joined)}): " + ", ".join(" ~ ".join(p) for p in joined[:max_listed]))
    for kind in ("errors", "warnings"):
        items = s[kind]
        if items:
            lines.append(f"{kind} ({len(items)}):")
            lines += [f"  - {p}" for p in items[:max_listed]]
            if len(items) > max_listed:
                lines.append(f"  ... and {len(items) - max_listed} more (--json lists all)")
    lines.append("usable: yes" if s["usable"] else "usable: NO")
    return "\n".join(lines)


MIN_SHORT_SIDE = 32  # px: below this a feature map of stride 32 has no row (or column) left


def aspect_warning(index: CocoIndex, image_size: int) -> str | None:
    """A warning when resizing the longest side to `image_size` leaves an image's short side under
    MIN_SHORT_SIDE pixels (a 20000x100 strip becomes 384x2): its objects are gone before the model sees them."""
    thin = [r for r in index.images if min(r.width, r.height) * image_size / max(r.width, r.height) < MIN_SHORT_SIDE]
    if not thin:
        return None
    worst = min(thin, key=lambda r: min(r.width, r.height) / max(r.width, r.height))
    short = max(1, round(min(worst.width, worst.height) * image_size / max(worst.width, worst.height)))
    return (f"{index.path}: {len(thin)} image(s) are so elongated that at data.image_size {image_size} their "
            f"short side falls under {MIN_SHORT_SIDE} px (e.g. {worst.file_name}, {worst.width}x{worst.height} -> "
            f"short side {short} px); train and predict on tiles (data.augment.crop=N with ensemble.slice=auto), "
            "or raise data.image_size")


def crowding_warning(index: CocoIndex, max_detections: int) -> str | None:
    """A warning when images hold more boxes than the detector may return per image (model.max_detections;
    COCO's mAP also counts at most 100 detections per image): their recall can never reach 1."""
    cap = min(max_detections, 100)
    counts = [len(r.annotations) for r in index.images]
    crowded = sum(1 for n in counts if n > cap)
    if not crowded:
        return None
    return (f"{index.path}: {crowded} image(s) hold more than {cap} boxes (up to {max(counts)}), but at most "
            f"{max_detections} detections per image are kept (model.max_detections) and COCO mAP counts at most "
            "100: their recall and mAP are capped; raise model.max_detections, or train and predict on tiles "
            "(data.augment.crop=N with ensemble.slice=auto)")
