"""The volumetric loop of ``examples/train_volumes.py``, top to bottom: the embedded ``organs``
volumes, a small 3-D U-Net, evaluation, the BCP step (``bcp_loss``), the epoch, ``main``.

One step, as in BCP's self-training stage: the EMA teacher predicts two labeled and two unlabeled
half-batches; the mixer pastes unlabeled regions into labeled volumes and labeled regions into
unlabeled ones (EntropyMix picks, cell by cell, the view the teacher is less sure of; BCP's
CutMix form pastes one cuboid of 2/3 of every axis); the plans mix the labels and give BCP's
region masks; the student learns both mixed volumes, each region weighed as BCP weighs it, and
SPEEDLoss distils the teacher's logits and decoder features, mixed by the same plans.
"""

from __future__ import annotations

import copy
import gc
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_volumes import EXAMPLE  # noqa: E402

from entropymix import CutMix, EntropyMix, SPEEDLoss  # noqa: E402

CLASSES = ("background", "ball", "tube", "shell")


# --- data: the embedded `organs` volumes -----------------------------------------------------------

def make_organs(num: int, size: Tuple[int, int, int], seed: int, max_structures: int = 3) -> Tuple[Tensor, Tensor]:
    """``num`` volumes ``(1, X, Y, Z)`` in [0, 1] and labels ``(X, Y, Z)``, generated from ``seed``.

    One to ``max_structures`` structures per volume, later ones occluding earlier ones: a ball (an
    ellipsoid), a tube (a capped cylinder along a random axis) or a shell (a hollow ellipsoid).
    Every structure is brighter or darker than what lies behind it, by an amount and with a striped
    texture drawn from one range whatever its class, over smooth background noise: the class is the
    shape, not the intensity.
    """
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    axes = [torch.linspace(0, 1, n).view(*[-1 if d == a else 1 for d in range(3)]) for a, n in enumerate(size)]
    background = F.interpolate(r(num, 1, 4, 4, 3), size=size, mode="trilinear", align_corners=False)
    image = (0.15 + 0.45 * background).squeeze(1)
    label = torch.zeros(num, *size, dtype=torch.long)
    count = (r(num) * max_structures).long() + 1
    for k in range(max_structures):
        cls = (r(num) * 3).long() + 1
        centre = [0.25 + 0.5 * r(num, 1, 1, 1) for _ in range(3)]
        radius = [0.12 + 0.12 * r(num, 1, 1, 1) for _ in range(3)]
        d = [(ax - c) / rad for ax, c, rad in zip(axes, centre, radius)]
        ball = d[0] ** 2 + d[1] ** 2 + d[2] ** 2 <= 1
        shell = ball & (d[0] ** 2 + d[1] ** 2 + d[2] ** 2 >= 0.45)
        along = (r(num) * 3).long().view(-1, 1, 1, 1)
        thin = [(ax - c) / (0.4 * rad) for ax, c, rad in zip(axes, centre, radius)]
        tubes = [(thin[(a + 1) % 3] ** 2 + thin[(a + 2) % 3] ** 2 <= 1) & ((axes[a] - centre[a]).abs() <= 2 * radius[a])
                 for a in range(3)]
        tube = torch.where(along == 0, tubes[0], torch.where(along == 1, tubes[1], tubes[2]))
        mask = torch.where(cls.view(-1, 1, 1, 1) == 1, ball, torch.where(cls.view(-1, 1, 1, 1) == 2, tube, shell))
        mask &= (k < count).view(-1, 1, 1, 1)
        # brighter or darker than what lies behind, by an amount and a texture drawn alike for every class
        contrast = (0.2 + 0.2 * r(num, 1, 1, 1)) * torch.where(r(num, 1, 1, 1) < 0.5, -1.0, 1.0)
        freq, phase = 2 + 4 * r(num, 1, 1, 1), 6.3 * r(num, 1, 1, 1)
        stripes = 0.1 * torch.sin(freq * (axes[0] + axes[1] + axes[2]) * 6.3 + phase)
        image = torch.where(mask, image + contrast + stripes, image)
        label = torch.where(mask, cls.view(-1, 1, 1, 1), label)
    image = (image + 0.06 * torch.randn(image.shape, generator=g)).clamp(0, 1)
    return image.unsqueeze(1), label


def flip(x: Tensor, y: Optional[Tensor], g: torch.Generator) -> Tuple[Tensor, Optional[Tensor]]:
    """Weak augmentation, batched: each volume (and its label map, if given) flipped along each axis
    with probability 1/2; the same random draws with or without labels."""
    for axis in range(3):
        m = torch.rand(x.shape[0], generator=g) < 0.5
        x = torch.where(m.view(-1, 1, 1, 1, 1), x.flip(2 + axis), x)
        if y is not None:
            y = torch.where(m.view(-1, 1, 1, 1), y.flip(1 + axis), y)
    return x, y


# --- the model: a small 3-D U-Net returning (logits, decoder features) ---------------------------

def block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout), nn.ReLU(inplace=True),
                         nn.Conv3d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout), nn.ReLU(inplace=True))


class UNet3D(nn.Module):
    """``model(x) -> (logits, features)``: like BCP's V-Net, the decoder features at full
    resolution (``width`` channels) come out beside the logits, for SPEEDLoss."""

    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()
        w = width
        self.enc1, self.enc2, self.enc3 = block(1, w), block(w, 2 * w), block(2 * w, 4 * w)
        self.up2, self.dec2 = nn.ConvTranspose3d(4 * w, 2 * w, 2, 2), block(4 * w, 2 * w)
        self.up1, self.dec1 = nn.ConvTranspose3d(2 * w, w, 2, 2), block(2 * w, w)
        self.classifier = nn.Conv3d(w, num_classes, 1)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool3d(e1, 2, ceil_mode=True))
        e3 = self.enc3(F.max_pool3d(e2, 2, ceil_mode=True))
        d2 = self.dec2(torch.cat([self._to(self.up2(e3), e2), e2], 1))
        feats = self.dec1(torch.cat([self._to(self.up1(d2), e1), e1], 1))
        return self.classifier(feats), feats

    @staticmethod
    def _to(x: Tensor, ref: Tensor) -> Tensor:  # odd sizes: crop the upsampled map to the skip's size
        return x[..., :ref.shape[2], :ref.shape[3], :ref.shape[4]]


# --- losses and evaluation -------------------------------------------------------------------------

def region_loss(logits: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Cross-entropy + soft Dice (foreground classes) over the voxels where ``weight`` is 1."""
    w = weight.float()
    ce = (F.cross_entropy(logits, target, reduction="none") * w).sum() / w.sum().clamp_min(1)
    prob = logits.softmax(1)[:, 1:]
    onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 1)[:, 1:].float()
    inter = (prob * onehot * w[:, None]).sum((0, 2, 3, 4))
    total = ((prob + onehot) * w[:, None]).sum((0, 2, 3, 4))
    dice = 1 - ((2 * inter + 1e-5) / (total + 1e-5)).mean()
    return (ce + dice) / 2


def mix_loss(logits: Tensor, image_label: Tensor, patch_label: Tensor, image_region: Tensor, u_weight: float,
             unlabeled: bool) -> Tensor:
    """BCP's ``mix_loss``: the region each label came from, weighed 1 (labeled) or ``u_weight``."""
    wi, wp = (u_weight, 1.0) if unlabeled else (1.0, u_weight)
    return wi * region_loss(logits, image_label, image_region) + wp * region_loss(logits, patch_label, 1 - image_region)


@torch.no_grad()
def evaluate(model: nn.Module, images: Tensor, labels: Tensor, device, num_classes: int) -> Tuple[float, List]:
    """Mean Dice over the foreground classes (percent) and per-class Dice, summed over ranks."""
    model.eval()
    stats = torch.zeros(3, num_classes, device=device)  # intersection, predicted, true
    for x, y in zip(images.split(8), labels.split(8)):
        pred = model(x.to(device))[0].argmax(1)
        y = y.to(device)
        for c in range(num_classes):
            p, t = pred == c, y == c
            stats[:, c] += torch.stack([(p & t).sum(), p.sum(), t.sum()]).float()
    if dist.is_initialized():
        dist.all_reduce(stats)
    dice = (2 * stats[0] / (stats[1] + stats[2]).clamp_min(1)) * 100
    model.train()
    return float(dice[1:].mean()), dice.tolist()


# --- the BCP step ----------------------------------------------------------------------------------

def make_mixer(args):
    """``--mix entropymix``: EntropyMix on ``--grid`` cells; ``--mix cutmix``: BCP's own cuboid
    (:meth:`CutMix.bcp`: 2/3 of every axis, one cube shared by the batch, drawn as BCP's
    ``context_mask`` draws it, and used in both directions by ``bcp_loss``)."""
    if args.mix == "entropymix":  # --share: as much in each direction, placed by entropy
        return EntropyMix(tuple(args.grid), check_values=False, share=getattr(args, "share", None))
    return CutMix.bcp(2 / 3)


def bcp_loss(model, teacher, labeled, unlabeled, mixer, speed, args):
    """One self-training step's loss: BCP's bidirectional copy-paste, by ``mixer``'s plans."""
    (img_l, lab_l), img_u = labeled, unlabeled
    img_a, img_b = img_l.chunk(2)
    lab_a, lab_b = lab_l.chunk(2)
    unimg_a, unimg_b = img_u.chunk(2)
    with torch.no_grad():  # the EMA teacher, in eval mode, on all four halves: comparable entropies
        logits_t, feats_t = teacher(torch.cat([img_a, img_b, unimg_a, unimg_b]))
        t_a, t_b, t_ua, t_ub = logits_t.chunk(4)
        f_a, f_b, f_ua, f_ub = feats_t.chunk(4)
        plab_a, plab_b = t_ua.argmax(1), t_ub.argmax(1)
        mixl, plan_l = mixer([img_a, unimg_a], logits=[t_a, t_ua])   # unlabeled regions into labeled volumes
        if isinstance(mixer, CutMix):  # BCP pastes one cube both ways: the same plan, the views swapped
            mixu, plan_u = plan_l.apply([unimg_b, img_b]), plan_l
        else:                          # each direction placed by its own entropies
            mixu, plan_u = mixer([unimg_b, img_b], logits=[t_ub, t_b])  # labeled regions into unlabeled ones
        region_l, region_u = ((p.source_map() == 0).long() for p in (plan_l, plan_u))  # BCP's loss_mask
    out, feats = model(torch.cat([mixl, mixu]))
    out_l, out_u = out.chunk(2)
    loss_l = mix_loss(out_l, lab_a, plab_a, region_l, args.u_weight, unlabeled=False)
    loss_u = mix_loss(out_u, plab_b, lab_b, region_u, args.u_weight, unlabeled=True)
    loss_speed = torch.zeros((), device=out.device)
    if speed is not None:
        feats_l, feats_u = feats.chunk(2)
        loss_speed = (speed(out_l, plan_l.apply([t_a, t_ua]), feats_l, plan_l.apply([f_a, f_ua]))
                      + speed(out_u, plan_u.apply([t_ub, t_b]), feats_u, plan_u.apply([f_ub, f_b]))) / 2
    loss = loss_l + loss_u + args.speed_weight * loss_speed
    return loss, (loss_l, loss_u, loss_speed), (plan_l, plan_u), (mixl, plan_l.apply([lab_a, plab_a]))


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(decay).add_(s.detach(), alpha=1 - decay)
    for t, s in zip(teacher.buffers(), student.buffers()):
        t.copy_(s) if not t.is_floating_point() else t.mul_(decay).add_(s, alpha=1 - decay)


# --- the epoch ---------------------------------------------------------------------------------------

def _progress(it, enabled: bool, desc: str, total: int):
    if not enabled:
        return it
    from tqdm import tqdm
    return tqdm(it, desc=desc, total=total, leave=False, dynamic_ncols=True, mininterval=1.0)


def train_one_epoch(state: dict, epoch: int) -> dict:
    """One epoch (from 1): pre-training on labeled volumes (BCP's first stage) or the BCP step."""
    args, device, model, net = state["args"], state["device"], state["model"], state["net"]
    pretrain = epoch <= args.pretrain_epochs
    rank = dist.get_rank() if dist.is_initialized() else 0
    for k, loader in enumerate(state["loaders"]):
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)
        else:
            loader.sampler.generator.manual_seed((args.seed * 1009 + epoch) * 8 + 2 * rank + k)
    iters = min(len(state["loaders"][1]), args.iters_per_epoch or len(state["loaders"][1]))
    sums, share, t0 = torch.zeros(4, device=device), torch.zeros(2, device=device), time.time()
    batches = zip(*state["loaders"])  # the labeled loader samples with replacement: it never runs out
    for _, ((xl, yl), (xu, _)) in zip(range(iters), _progress(batches, state["progress"], f"epoch {epoch}", iters)):
        xl, yl = flip(xl, yl, state["aug_gen"])
        xu, _ = flip(xu, None, state["aug_gen"])
        xl, yl, xu = xl.to(device), yl.to(device), xu.to(device)
        if pretrain:
            loss = region_loss(model(xl)[0], yl, torch.ones_like(yl))
            parts = (loss.detach(), torch.zeros((), device=device), torch.zeros((), device=device))
        else:
            loss, parts, plans, _ = bcp_loss(model, state["teacher"], (xl, yl), xu, state["mixer"], state["speed"], args)
            share += torch.stack([p.fractions().mean(0)[1] for p in plans])
        state["optimizer"].zero_grad(set_to_none=True)
        loss.backward()
        state["optimizer"].step()
        if not pretrain:
            ema_update(state["teacher"], net, args.ema)
        sums += torch.stack([loss.detach(), *(p.detach() for p in parts)])
    if pretrain and epoch == args.pretrain_epochs:
        state["teacher"].load_state_dict(net.state_dict())  # the teacher starts from the pre-trained model
    world = dist.get_world_size() if dist.is_initialized() else 1
    if dist.is_initialized():
        dist.all_reduce(sums), dist.all_reduce(share)
    sums, share = sums / (iters * world), share / (iters * world)
    dice, per_class = evaluate(net, state["val"][0], state["val"][1], device, len(CLASSES))
    record = {"epoch": epoch, "stage": "pretrain" if pretrain else "bcp", "loss": sums[0].item(),
              "loss_l": sums[1].item(), "loss_u": sums[2].item(), "loss_speed": sums[3].item(), "dice": dice,
              "dice_per_class": dict(zip(CLASSES, per_class)), "seconds": time.time() - t0}
    if not pretrain:  # what the mixers did: the share of each mixed volume pasted from the other view
        record["pasted_share"] = {"labeled_into": share[0].item(), "unlabeled_into": share[1].item()}
    return record


# --- figures -----------------------------------------------------------------------------------------

def save_figures(state: dict, history: List[dict], out: Path) -> None:
    """``dice.png`` (the curve), ``volumes.png`` (middle slices of validation volumes, labels,
    predictions) and ``mixing.png`` (one step's copy-paste: both views, the mixed volume, the plan)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    device, net, args = state["device"], state["net"], state["args"]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([h["epoch"] for h in history], [h["dice"] for h in history], marker="o")
    ax.axvline(args.pretrain_epochs + 0.5, color="grey", ls=":", label="pre-training ends")
    ax.set(xlabel="epoch", ylabel="mean foreground Dice (%)")
    ax.legend(), ax.grid(alpha=0.3), fig.tight_layout(), fig.savefig(out / "dice.png", dpi=110), plt.close(fig)

    images, labels = state["val"][0][:4], state["val"][1][:4]
    net.eval()
    with torch.no_grad():
        pred = net(images.to(device))[0].argmax(1).cpu()
    net.train()
    z = images.shape[-1] // 2
    fig, axes = plt.subplots(3, len(images), figsize=(2.2 * len(images), 6.6), squeeze=False)
    for i in range(len(images)):
        for row, (what, img, kw) in enumerate([("volume", images[i, 0], {"cmap": "gray"}),
                                               ("label", labels[i], {"cmap": "tab10", "vmin": 0, "vmax": 9}),
                                               ("prediction", pred[i], {"cmap": "tab10", "vmin": 0, "vmax": 9})]):
            axes[row, i].imshow(img[..., z].T.numpy(), origin="lower", **kw)
            axes[row, i].set_axis_off()
            axes[row, 0].set_title(what, loc="left", fontsize=9)
    fig.suptitle(f"middle slices (z = {z}); classes: " + ", ".join(f"{c}={n}" for c, n in enumerate(CLASSES)), fontsize=9)
    fig.tight_layout(), fig.savefig(out / "volumes.png", dpi=110), plt.close(fig)

    (xl, yl), (xu, _) = next(iter(zip(*state["loaders"])))
    with torch.no_grad():
        *_, plans, (mixl, lab_mix) = bcp_loss(net, state["teacher"], (xl.to(device), yl.to(device)), xu.to(device),
                                              state["mixer"], None, args)
    plan = plans[0]
    src = plan.source_map().cpu()
    a, u = xl.chunk(2)[0], xu.chunk(2)[0]
    fig, axes = plt.subplots(1, 5, figsize=(11, 2.6))
    for axis, (title, img, kw) in zip(axes, [("labeled view", a[0, 0], {"cmap": "gray"}),
                                             ("unlabeled view", u[0, 0], {"cmap": "gray"}),
                                             ("mixed volume", mixl[0, 0].cpu(), {"cmap": "gray"}),
                                             ("source (white: unlabeled)", src[0].float(), {"cmap": "gray"}),
                                             ("mixed labels", lab_mix[0].cpu(), {"cmap": "tab10", "vmin": 0, "vmax": 9})]):
        axis.imshow(img[..., z].T.numpy(), origin="lower", **kw)
        axis.set_title(title, fontsize=9)
        axis.set_axis_off()
    fig.suptitle(f"{args.mix}: one labeled-into-unlabeled copy-paste, slice z = {z}", fontsize=9)
    fig.tight_layout(), fig.savefig(out / "mixing.png", dpi=110), plt.close(fig)


# --- main ----------------------------------------------------------------------------------------------

def main(args) -> dict:
    t_start, load_start = time.time(), os.getloadavg()
    distributed = "RANK" in os.environ
    if distributed:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    size = tuple(args.size)
    xl, yl = make_organs(args.num_labeled, size, seed=args.seed * 3 + 1)
    xu, yu = make_organs(args.num_unlabeled, size, seed=args.seed * 3 + 2)   # labels never read
    val = make_organs(args.num_val, size, seed=10_000)  # one validation set for every run
    if distributed:  # each rank evaluates its share; the Dice statistics are summed
        val = (val[0][rank::world], val[1][rank::world])

    # Unlabeled volumes: each once per epoch (split over the ranks). Labeled ones: drawn with
    # replacement, as many as the unlabeled ones, from each rank's own stream (few labels: BCP's case).
    per_rank = len(xu) // world
    unlabeled = DataLoader(TensorDataset(xu, yu), args.batch_size, drop_last=True, sampler=(
        DistributedSampler(TensorDataset(xu, yu), seed=args.seed + 1, drop_last=True) if distributed
        else RandomSampler(xu, generator=torch.Generator().manual_seed(args.seed + 1))))
    labeled = DataLoader(TensorDataset(xl, yl), args.batch_size, drop_last=True, sampler=RandomSampler(
        xl, replacement=True, num_samples=per_rank, generator=torch.Generator().manual_seed(args.seed * 31 + rank)))
    loaders = [labeled, unlabeled]
    net = UNet3D(len(CLASSES), args.width).to(device)
    teacher = copy.deepcopy(net).requires_grad_(False).eval()
    model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None) if distributed else net
    mixer = make_mixer(args)
    state = {"args": args, "device": device, "model": model, "net": net, "teacher": teacher, "mixer": mixer,
             "speed": SPEEDLoss(check_values=False) if args.speed else None, "loaders": loaders, "val": val,
             "optimizer": torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4),
             "aug_gen": torch.Generator().manual_seed(args.seed * 7 + rank), "progress": rank == 0 and not args.no_progress}
    out = Path(args.out_dir)
    ckpt_path = out / "latest.pth"
    history, start = [], 0
    if args.resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        net.load_state_dict(ckpt["model"]), teacher.load_state_dict(ckpt["teacher"])
        state["optimizer"].load_state_dict(ckpt["optimizer"])
        history, start = ckpt["history"], ckpt["epoch"]
        torch.set_rng_state(ckpt["rng"][rank][0]), state["aug_gen"].set_state(ckpt["rng"][rank][1])
        if rank == 0:
            print(f"resumed from {ckpt_path} after epoch {start}")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    total = args.pretrain_epochs + args.epochs
    last = total if args.stop_after is None else min(total, args.stop_after)
    for epoch in range(start + 1, last + 1):
        record = train_one_epoch(state, epoch)
        history.append(record)
        rng = [(torch.get_rng_state(), state["aug_gen"].get_state())] * world
        if distributed:
            dist.all_gather_object(rng, rng[0])
        if rank == 0:
            pasted = record.get("pasted_share")
            mix = f"  pasted {pasted['labeled_into']:.2f} / {pasted['unlabeled_into']:.2f}" if pasted else ""
            print(f"epoch {epoch:3d}/{total} ({record['stage']:8s})  loss {record['loss']:.4f}  "
                  f"speed {record['loss_speed']:.4f}  Dice {record['dice']:5.2f}  {record['seconds']:.0f}s{mix}", flush=True)
            torch.save({"model": net.state_dict(), "teacher": teacher.state_dict(), "epoch": epoch,
                        "optimizer": state["optimizer"].state_dict(), "history": history, "args": vars(args),
                        "rng": rng}, ckpt_path)
    result = {"args": vars(args), "world_size": world, "classes": list(CLASSES), "history": history,
              "final_dice": history[-1]["dice"] if history else None,
              "teacher_dice": evaluate(teacher, val[0], val[1], device, len(CLASSES))[0] if history else None,
              "wall_seconds": time.time() - t_start, "load_average": [load_start[0], os.getloadavg()[0]],
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    if rank == 0:
        (out / "results.json").write_text(json.dumps(result, indent=1))
        save_figures(state, history, out)
        print(f"final Dice {result['final_dice']:.2f} (EMA teacher {result['teacher_dice']:.2f})  -> {out}/results.json")
    if distributed:
        gc.collect()  # before the interpreter's final collection: see close_distributed in unimatch_loop.py
        dist.barrier()
        dist.destroy_process_group()
    return result
