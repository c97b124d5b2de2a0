"""A tiny hand-made (key, reference) frame pair with textured objects, for tests."""

from __future__ import annotations

import torch


def _object_texture(height: int, width: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(3, 1, 1, generator=g)
    stripes = (torch.arange(width).float() / (3 + seed)).sin().abs()
    return (0.5 * base + 0.5 * stripes.view(1, 1, -1).expand(3, height, width)).clamp(0, 1)


def make_frame(height: int, width: int, objects: list[tuple[int, int, int, int, int]]) -> tuple[torch.Tensor, dict]:
    """``objects``: (instance id, x, y, w, h). Returns an RGB image in [0, 1]
    and a training target with boxes, labels (all 1), masks and instance ids."""
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    image = 0.15 + 0.05 * ((xx // 8 + yy // 8) % 2).float().expand(3, height, width).clone()
    masks, boxes = [], []
    for instance_id, x, y, w, h in objects:
        # Ellipses, so masks differ from boxes and the mask head has work to do.
        inside = ((xx - (x + w / 2)) / (w / 2)) ** 2 + ((yy - (y + h / 2)) / (h / 2)) ** 2 <= 1
        texture = _object_texture(height, width, instance_id)
        image = torch.where(inside, texture, image)
        masks.append(inside.to(torch.uint8))
        ys, xs = torch.where(inside)
        boxes.append(torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32))
    target = {
        "boxes": torch.stack(boxes),
        "labels": torch.ones(len(objects), dtype=torch.int64),
        "masks": torch.stack(masks),
        "instance_ids": torch.tensor([o[0] for o in objects], dtype=torch.int64),
    }
    return image, target


def make_pair(height: int = 128, width: int = 192):
    key = make_frame(height, width, [(1, 20, 30, 50, 70), (2, 110, 20, 60, 60)])
    # Object 2 moved, object 1 moved a little, object 3 only in the reference.
    reference = make_frame(height, width, [(2, 100, 30, 60, 60), (1, 26, 34, 50, 70), (3, 140, 90, 30, 30)])
    return key, reference
