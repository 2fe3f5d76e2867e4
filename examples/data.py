"""Datasets for the examples.

- ``shapes``: the embedded default. Textured shapes on textured backgrounds, generated
  deterministically from a seed (nothing to download). The class is the shape (disk, square,
  triangle, ring, cross); colours and textures are drawn independently of it, so only shape
  tells classes apart, and a handful of labels is not enough to learn that.
- ``streets``: the second embedded dataset, driving scenes of Cityscapes' structure: large
  "stuff" regions in spatial context (sky, buildings and trees along a horizon, a road and its
  sidewalks) and small, rare "things" (cars, people, poles, signs); see :func:`make_streets`.
- ``pascal`` / ``cityscapes``: UniMatch's directory layout and split files. A split line is
  ``IMAGE_PATH MASK_PATH`` relative to the data root (e.g. ``JPEGImages/2007_000032.jpg
  SegmentationClass/2007_000032.png``) or a bare PASCAL id. Masks hold class indices with 255
  for ignore (Cityscapes: ``*_labelTrainIds.png``). Every listed file is checked up front, and
  a mask value outside the classes is an error naming the file; unlabeled masks are never read.

Every training sample gets UniMatch's weak augmentation (random rescale, crop with ignore
padding, horizontal flip); the strong photometric views are made on-device, batched, by the
training loop.
"""

from __future__ import annotations

import math
import os
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

IGNORE = 255
SHAPE_CLASSES = ("background", "disk", "square", "triangle", "ring", "cross")
NUM_CLASSES = {"shapes": len(SHAPE_CLASSES), "streets": 9, "pascal": 21, "cityscapes": 19}


# --- the embedded default dataset ---------------------------------------------------------------

def _texture(g: torch.Generator, n: int, size: int, striped: float = 0.5,
             bright: Tuple[float, float] = (0.0, 1.0)) -> Tensor:
    """``(n, 3, size, size)`` random two-colour stripes (a ``striped`` share) or colour noise.

    Colours are uniform in ``bright`` per channel: the class never depends on them."""
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    lo, hi = bright
    c1 = lo + (hi - lo) * torch.rand(n, 3, 1, 1, generator=g)
    c2 = lo + (hi - lo) * torch.rand(n, 3, 1, 1, generator=g)
    theta = torch.rand(n, 1, 1, generator=g) * math.pi
    freq = 0.2 + torch.rand(n, 1, 1, generator=g) * 0.9
    phase = torch.rand(n, 1, 1, generator=g) * 2 * math.pi
    stripes = (torch.sin(freq * (xx * torch.cos(theta) + yy * torch.sin(theta)) + phase) > 0).float()[:, None]
    sharp = torch.rand(n, 1, 1, 1, generator=g) < striped  # the others are flat-ish colour noise
    stripes = torch.where(sharp, stripes, torch.full_like(stripes, 0.5))
    noise = F.interpolate(torch.rand(n, 1, size // 8 + 1, size // 8 + 1, generator=g), size=(size, size),
                          mode="bilinear", align_corners=False)
    return (c1 * stripes + c2 * (1 - stripes) + 0.3 * (noise - 0.5)).clamp(0, 1)


def _shape_masks(g: torch.Generator, n: int, size: int, classes: Tensor) -> Tensor:
    """``(n, size, size)`` bool masks of one shape per image, of the given classes (1..5)."""
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    r = size * (0.16 + 0.14 * torch.rand(n, 1, 1, generator=g))
    cy = r + (size - 2 * r) * torch.rand(n, 1, 1, generator=g)
    cx = r + (size - 2 * r) * torch.rand(n, 1, 1, generator=g)
    a = torch.rand(n, 1, 1, generator=g) * 2 * math.pi
    dy, dx = yy - cy, xx - cx
    u, v = dx * torch.cos(a) + dy * torch.sin(a), -dx * torch.sin(a) + dy * torch.cos(a)
    dist = torch.sqrt(u * u + v * v)
    tri = torch.stack([u * math.cos(t) + v * math.sin(t) for t in (math.pi / 2, math.pi * 7 / 6, math.pi * 11 / 6)])
    shapes = torch.stack([
        dist <= r,                                                                  # 1 disk
        torch.maximum(u.abs(), v.abs()) <= 0.8 * r,                                 # 2 square
        tri.amax(0) <= 0.55 * r,                                                    # 3 triangle
        (dist <= r) & (dist >= 0.55 * r),                                           # 4 ring
        ((u.abs() <= 0.3 * r) & (v.abs() <= r)) | ((v.abs() <= 0.3 * r) & (u.abs() <= r)),  # 5 cross
    ])
    return shapes.gather(0, (classes - 1).view(1, n, 1, 1).expand(1, n, size, size))[0]


def make_shapes(num: int, size: int = 64, seed: int = 0, max_shapes: int = 3) -> Tuple[Tensor, Tensor]:
    """``num`` images ``(num, 3, size, size)`` float in [0, 1] and labels ``(num, size, size)`` int64."""
    g = torch.Generator().manual_seed(seed)
    # Backgrounds are darker and calmer than shapes: where a shape is is easy, which shape it is is not.
    images = _texture(g, num, size, striped=0.3, bright=(0.0, 0.55))
    labels = torch.zeros(num, size, size, dtype=torch.long)
    count = torch.randint(1, max_shapes + 1, (num,), generator=g)
    for s in range(max_shapes):  # shapes are painted in turn, later ones occluding earlier ones
        cls = torch.randint(1, len(SHAPE_CLASSES), (num,), generator=g)
        mask = _shape_masks(g, num, size, cls) & (s < count).view(-1, 1, 1)
        images = torch.where(mask[:, None], _texture(g, num, size, striped=0.15, bright=(0.35, 1.0)), images)
        labels = torch.where(mask, cls.view(-1, 1, 1), labels)
    images = (images + 0.06 * torch.randn(images.shape, generator=g)).clamp(0, 1)
    return images, labels


# --- the second embedded dataset: driving scenes ------------------------------------------------------

STREET_CLASSES = ("road", "sidewalk", "building", "vegetation", "sky", "pole", "sign", "car", "person")
THINGS = ("pole", "sign", "car", "person")  # small and rare, as Cityscapes' things are


def _colour(g: torch.Generator, n: int, mean, jitter: float) -> Tensor:
    """``(n, 3, 1, 1)`` colours around ``mean``, each channel jittered by up to ``jitter``."""
    return (torch.tensor(mean).view(1, 3, 1, 1) + jitter * (2 * torch.rand(n, 3, 1, 1, generator=g) - 1)).clamp(0, 1)


def make_streets(num: int, size: int = 96, seed: int = 0) -> Tuple[Tensor, Tensor]:
    """``num`` driving scenes ``(num, 3, size, size)`` in [0, 1] and labels ``(num, size, size)``.

    The structure of Cityscapes, generated from ``seed``: sky above a horizon, a road narrowing
    towards a vanishing point, sidewalks along it, buildings and trees along the horizon (their
    skyline a row of blocks of random heights), and small, rare things painted over them in
    perspective (smaller near the horizon): cars on the road, people on the sidewalks, poles with a
    sign on some. No cue alone gives the class away: building, road, sidewalk and pole colours
    overlap (greys and beiges), cars and people take any colour, and each image has its own
    illumination and tint. Texture (window grids, paving, foliage, smooth sky), shape and position
    carry the rest.
    """
    g = torch.Generator().manual_seed(seed)
    n, S = num, size
    r = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    yy = torch.arange(S, dtype=torch.float32).view(1, S, 1)
    xx = torch.arange(S, dtype=torch.float32).view(1, 1, S)
    noise = lambda cells, amount: amount * (F.interpolate(r(n, 1, cells, cells), size=(S, S), mode="bilinear",  # noqa: E731
                                                          align_corners=False) - 0.5)
    c = {k: i for i, k in enumerate(STREET_CLASSES)}
    horizon = S * (0.38 + 0.12 * r(n, 1, 1))
    # skyline: blocks of random width and height along the horizon, a share of them trees
    blocks = 12
    width = S / blocks * (0.6 + 0.8 * r(n, 1, 1))
    block = (xx / width).long().clamp(max=blocks - 1).expand(n, 1, S)
    heights = S * (0.08 + 0.3 * r(n, blocks))
    tree = r(n, blocks) < 0.3
    top = horizon - heights.gather(1, block.view(n, S)).view(n, 1, S)
    is_tree = tree.gather(1, block.view(n, S)).view(n, 1, S)
    wobble = 2.5 * torch.sin(xx * (0.5 + r(n, 1, 1)) + 6.3 * r(n, 1, 1))   # tree crowns are not flat
    top = torch.where(is_tree, top + wobble, top)
    # road and sidewalks: wedges from the vanishing point to the bottom edge
    vx = S * (0.35 + 0.3 * r(n, 1, 1))
    depth = (yy - horizon).clamp_min(0)
    half_road, half_walk = depth * (0.45 + 0.5 * r(n, 1, 1)), depth * (0.9 + 0.5 * r(n, 1, 1))
    below = yy >= horizon
    label = torch.full((n, S, S), c["building"], dtype=torch.long)
    label = torch.where(yy < top, c["sky"], torch.where(is_tree & (yy < horizon + 2), c["vegetation"], label))
    label = torch.where(below & ((xx - vx).abs() <= half_walk), c["sidewalk"], label)
    label = torch.where(below & ((xx - vx).abs() <= half_road), c["road"], label)
    label = torch.where(below & (label == c["building"]) & (r(n, 1, 1) < 0.5), c["vegetation"], label)  # verges

    greys = lambda: _colour(g, n, (0.5, 0.5, 0.5), 0.25)  # noqa: E731  (shared by several classes)
    window = ((xx % (3 + (4 * r(n, 1, 1)).round())) < 1.5) | ((yy % (4 + (4 * r(n, 1, 1)).round())) < 1.5)
    paving = ((xx + 2 * yy) % 6 < 1) | ((xx - 2 * yy) % 6 < 1)
    layers = {
        "road": greys() * 0.8 + noise(24, 0.08),
        "sidewalk": greys() + 0.08 * paving[:, None] + noise(12, 0.06),
        "building": _colour(g, n, (0.55, 0.5, 0.45), 0.3) * (1 - 0.35 * window[:, None]) + noise(8, 0.1),
        "vegetation": _colour(g, n, (0.3, 0.45, 0.2), 0.2) + noise(32, 0.3),
        "sky": _colour(g, n, (0.6, 0.7, 0.85), 0.2) + 0.25 * (yy / S - 0.3)[:, None],
    }
    image = torch.zeros(n, 3, S, S)
    for name, layer in layers.items():
        image = torch.where((label == c[name])[:, None], layer.expand(n, 3, S, S), image)

    def paint(mask, cls, colour):
        nonlocal image, label
        image = torch.where(mask[:, None], colour.expand(n, 3, S, S), image)
        label = torch.where(mask, c[cls], label)
    # things, far ones first (nearer ones occlude them); sizes follow the perspective
    for k in range(2):  # poles, some carrying a sign
        px = vx + (2 * (r(n, 1, 1) < 0.5).float() - 1) * S * (0.3 + 0.25 * r(n, 1, 1))
        foot = horizon + (S - horizon) * (0.15 + 0.5 * r(n, 1, 1))
        scale = (foot - horizon) / S
        tall = S * (0.5 + 0.3 * r(n, 1, 1)) * scale + 6
        present = r(n, 1, 1) < 0.7
        pole = present & ((xx - px).abs() <= 0.6 + 1.5 * scale) & (yy <= foot) & (yy >= foot - tall)
        paint(pole, "pole", greys() * 0.7)
        side = 2 + 6 * scale
        sign = present & (r(n, 1, 1) < 0.6) & ((xx - px).abs() <= side) & ((yy - (foot - tall)).abs() <= side)
        paint(sign, "sign", _colour(g, n, (0.5, 0.5, 0.5), 0.5))
    for k in range(3):  # cars on the road
        foot = horizon + (S - horizon) * (0.2 + 0.8 * r(n, 1, 1))
        scale = (foot - horizon) / S
        cx = vx + (2 * r(n, 1, 1) - 1) * (foot - horizon) * 0.4
        w, h = S * 0.35 * scale + 2, S * 0.16 * scale + 1.5
        body = ((xx - cx).abs() <= w / 2) & (yy <= foot) & (yy >= foot - h)
        cabin = ((xx - cx).abs() <= w / 3) & (yy < foot - h) & (yy >= foot - 1.7 * h)
        paint((body | cabin) & (r(n, 1, 1) < 0.75), "car", _colour(g, n, (0.5, 0.5, 0.5), 0.5))
    for k in range(2):  # people on the sidewalks
        foot = horizon + (S - horizon) * (0.2 + 0.7 * r(n, 1, 1))
        scale = (foot - horizon) / S
        px = vx + (2 * (r(n, 1, 1) < 0.5).float() - 1) * (foot - horizon) * (0.55 + 0.35 * r(n, 1, 1))
        h = S * 0.3 * scale + 3
        bodyw = 0.12 * h + 0.6
        torso = (((xx - px) / bodyw) ** 2 + ((yy - (foot - 0.45 * h)) / (0.45 * h)) ** 2) <= 1
        head = ((xx - px) ** 2 + (yy - (foot - 0.95 * h)) ** 2) <= (0.13 * h + 0.5) ** 2
        paint((torso | head) & (r(n, 1, 1) < 0.6), "person", _colour(g, n, (0.5, 0.5, 0.5), 0.5))
    light = 0.6 + 0.6 * r(n, 1, 1, 1)                    # per-image illumination and tint
    tint = 1 + 0.15 * (2 * r(n, 3, 1, 1) - 1)
    image = (image * light * tint + 0.03 * torch.randn(image.shape, generator=g)).clamp(0, 1)
    return image, label


# --- weak augmentation (UniMatch: resize, crop, flip) ---------------------------------------------

def weak_augment(img: Tensor, mask: Tensor, crop: int, g: torch.Generator,
                 scale: Tuple[float, float] = (0.5, 2.0)) -> Tuple[Tensor, Tensor]:
    """Random rescale, crop to ``crop`` x ``crop`` (padding: image 0, mask 255), random h-flip."""
    h, w = mask.shape
    s = scale[0] + (scale[1] - scale[0]) * torch.rand((), generator=g).item()
    nh, nw = max(1, int(h * s + 0.5)), max(1, int(w * s + 0.5))
    img = F.interpolate(img[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
    mask = F.interpolate(mask[None, None].float(), size=(nh, nw), mode="nearest")[0, 0].long()
    ph, pw = max(0, crop - nh), max(0, crop - nw)
    img = F.pad(img, (0, pw, 0, ph), value=0.0)
    mask = F.pad(mask, (0, pw, 0, ph), value=IGNORE)
    y = torch.randint(0, mask.shape[0] - crop + 1, (), generator=g).item()
    x = torch.randint(0, mask.shape[1] - crop + 1, (), generator=g).item()
    img, mask = img[:, y:y + crop, x:x + crop], mask[y:y + crop, x:x + crop]
    if torch.rand((), generator=g).item() < 0.5:
        img, mask = img.flip(-1), mask.flip(-1)
    return img.contiguous(), mask.contiguous()


# --- datasets -----------------------------------------------------------------------------------

class SemiDataset(Dataset):
    """Samples for one role of a semi-supervised run.

    ``mode="labeled"`` -> ``(image, mask)``; ``"unlabeled"`` -> ``(image, ignore_mask)`` with 255
    on padding (labels are never read); ``"val"`` -> ``(image, mask)`` without augmentation.
    ``nsample`` repeats the list to that length (UniMatch repeats the labeled set to match the
    unlabeled one). Augmentation randomness comes from ``seed``, the epoch and the index, so a
    run is reproducible and resumable with any number of workers or processes.
    """

    def __init__(self, images, masks, mode: str, crop: int, seed: int = 0, nsample: Optional[int] = None,
                 loader=None, scale: Tuple[float, float] = (0.5, 2.0)) -> None:
        self.images, self.masks, self.mode, self.crop, self.seed = images, masks, mode, crop, seed
        self.scale = scale
        self.loader = loader
        self.n = len(images)
        self.length = max(self.n, nsample or 0)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def _load(self, i: int) -> Tuple[Tensor, Tensor]:
        if self.loader is None:
            return self.images[i], self.masks[i]
        return self.loader(self.images[i], self.masks[i])

    def __getitem__(self, index: int):
        img, mask = self._load(index % self.n)
        if self.mode == "val":
            return img, mask
        key = ((self.seed * 1_000_003 + self.epoch) * 3 + (self.mode == "unlabeled")) * 10_000_019 + index
        g = torch.Generator().manual_seed(key % (2**63 - 1))
        if self.mode == "unlabeled":
            mask = torch.zeros_like(mask)  # labels are never read: only the padding of the crop is ignored
        return weak_augment(img, mask, self.crop, g, self.scale)


EMBEDDED = ("shapes", "streets")


def shapes_splits(num_labeled: int, num_unlabeled: int, num_val: int, size: int, seed: int):
    """Deterministic labeled / unlabeled / validation tensors of the embedded ``shapes`` dataset.

    The data seed is fixed (the dataset is the same for every run); ``seed`` picks which images
    are labeled, as a split file would.
    """
    return embedded_splits("shapes", num_labeled, num_unlabeled, num_val, size, seed)


def embedded_splits(dataset: str, num_labeled: int, num_unlabeled: int, num_val: int, size: int, seed: int):
    """:func:`shapes_splits` for either embedded dataset (``"shapes"`` or ``"streets"``)."""
    make = make_shapes if dataset == "shapes" else make_streets
    images, labels = make(num_labeled + num_unlabeled, size, seed=1234)
    val_images, val_labels = make(num_val, size, seed=4321)
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    lab, unl = perm[:num_labeled], perm[num_labeled:]
    return (images[lab], labels[lab]), (images[unl], labels[unl]), (val_images, val_labels)


# --- real layouts -------------------------------------------------------------------------------

class DataError(ValueError):
    """A dataset problem found before (or while) reading: the message names the file."""


def read_split(path: str, flag: str = "split file") -> List[Tuple[str, str]]:
    """Lines ``IMAGE MASK`` (UniMatch) or a bare PASCAL id -> ``[(image_rel, mask_rel)]``."""
    if not os.path.isfile(path):
        raise DataError(f"{flag} {path} does not exist")
    pairs = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if not parts:
                continue
            if len(parts) == 1:
                parts = [f"JPEGImages/{parts[0]}.jpg", f"SegmentationClass/{parts[0]}.png"]
            pairs.append((parts[0], parts[1]))
    if not pairs:
        raise DataError(f"{flag} {path} lists no samples")
    return pairs


def check_files(root: str, splits) -> None:
    """Every listed image (and the masks of labeled and validation samples) exists under ``root``.

    ``splits``: ``[(flag, pairs, needs_masks)]``. Raises :class:`DataError` with the count and
    the first missing paths, before anything is built.
    """
    if not os.path.isdir(root):
        raise DataError(f"--data-root {root} is not a directory")
    missing = []
    for flag, pairs, needs_masks in splits:
        for image, mask in pairs:
            for rel in (image, mask) if needs_masks else (image,):
                if not os.path.isfile(os.path.join(root, rel)):
                    missing.append(f"{rel} ({flag})")
    if missing:
        raise DataError(f"{len(missing)} file(s) listed in the split files are missing under {root}, e.g.\n  "
                        + "\n  ".join(missing[:5]))


class _ImageLoader:
    """Reads ``(image float [0, 1] (3, H, W), mask int64 (H, W))`` with Pillow; picklable for workers.

    ``mask_rel=None`` (unlabeled samples) reads no mask. A mask with a value outside
    ``0..num_classes-1`` and 255 is an error that names the file and the values.
    """

    def __init__(self, root: str, dataset: str, num_classes: int) -> None:
        self.root, self.dataset, self.num_classes = root, dataset, num_classes

    def __call__(self, image_rel: str, mask_rel: Optional[str]) -> Tuple[Tensor, Tensor]:
        from PIL import Image  # examples extra

        img = np.asarray(Image.open(os.path.join(self.root, image_rel)).convert("RGB"), dtype=np.uint8)
        image = torch.from_numpy(img.copy()).permute(2, 0, 1).float() / 255
        if mask_rel is None:
            return image, torch.zeros(img.shape[:2], dtype=torch.long)
        mask_path = os.path.join(self.root, mask_rel)
        # PASCAL masks are palette PNGs: the palette index is the class, 255 the boundary.
        mask = torch.from_numpy(np.array(Image.open(mask_path), dtype=np.int64))
        if mask.shape != image.shape[1:]:
            raise DataError(f"{mask_path}: mask is {tuple(mask.shape)} but image {image_rel} is {tuple(image.shape[1:])}")
        bad = mask[(mask != IGNORE) & ((mask < 0) | (mask >= self.num_classes))]
        if bad.numel():
            values = bad.unique()
            hint = (" (Cityscapes needs labelTrainIds masks, not labelIds)" if self.dataset == "cityscapes" else "")
            raise DataError(f"{mask_path}: label values {values[:10].tolist()} outside 0..{self.num_classes - 1} "
                            f"and {IGNORE}{hint}")
        return image, mask


def real_splits(dataset: str, root: str, labeled_ids: str, unlabeled_ids: str, val_ids: str):
    """Lists and loader of a PASCAL / Cityscapes layout, every file checked before training starts."""
    lab = read_split(labeled_ids, "--labeled-ids")
    unl = read_split(unlabeled_ids, "--unlabeled-ids")
    val = read_split(val_ids, "--val-ids")
    check_files(root, [("--labeled-ids", lab, True), ("--unlabeled-ids", unl, False), ("--val-ids", val, True)])

    def cols(pairs, masks=True):
        return [p[0] for p in pairs], [p[1] if masks else None for p in pairs]
    return cols(lab), cols(unl, masks=False), cols(val), _ImageLoader(root, dataset, NUM_CLASSES[dataset])


def save_samples_figure(dataset: str, path: str, n: int = 6, size: int = 96) -> None:
    """A figure of ``n`` samples of an embedded dataset with their labels and each class's pixel share."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    names = STREET_CLASSES if dataset == "streets" else SHAPE_CLASSES
    images, labels = (make_streets if dataset == "streets" else make_shapes)(200, size, seed=1234)
    share = torch.bincount(labels.flatten(), minlength=len(names)).double() / labels.numel()
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(2, n, figsize=(2 * n, 4.6))
    for i in range(n):
        axes[0, i].imshow(images[i].permute(1, 2, 0).numpy())
        axes[1, i].imshow(labels[i].numpy(), cmap=cmap, vmin=0, vmax=9, interpolation="nearest")
        axes[0, i].set_axis_off(), axes[1, i].set_axis_off()
    fig.legend(handles=[Patch(color=cmap(c), label=f"{name} {100 * share[c]:.1f}%") for c, name in enumerate(names)],
               loc="lower center", ncol=min(len(names), 5), fontsize=8, frameon=False)
    fig.suptitle(f"embedded `{dataset}` dataset: samples, labels, and each class's share of the pixels (200 images)",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    import argparse
    cli = argparse.ArgumentParser(description="Save a figure of an embedded dataset's samples and labels.")
    cli.add_argument("dataset", choices=["shapes", "streets"])
    cli.add_argument("path")
    a = cli.parse_args()
    save_samples_figure(a.dataset, a.path)
