"""Turning metric dicts into text a person reads."""
from __future__ import annotations

from typing import Any


def format_metrics(m: dict[str, Any]) -> str:
    lines = [
        f"mAP@[.5:.95] {m['map']:.4f}   mAP@0.5 {m['map_50']:.4f}   mAP@0.75 {m['map_75']:.4f}",
        f"at score >= {m.get('score_threshold', float('nan')):.2f}, IoU >= {m.get('iou_threshold', 0.5):.2f}: "
        f"precision {m['precision']:.4f}   recall {m['recall']:.4f}   F1 {m['f1']:.4f}",
        f"score (w_map * mAP@0.5 + w_f1 * F1): {m['score']:.4f}",
        "",
        f"{'class':<20} {'id':>4} {'boxes':>6} {'AP':>7} {'AP50':>7} {'prec':>7} {'recall':>7} {'F1':>7}",
    ]
    for name, c in m["per_class"].items():
        lines.append(f"{name:<20} {c['category_id']:>4} {c['num_gt']:>6} {c['ap']:>7.4f} {c['ap50']:>7.4f} "
                     f"{c['precision']:>7.4f} {c['recall']:>7.4f} {c['f1']:>7.4f}")
    return "\n".join(lines)
