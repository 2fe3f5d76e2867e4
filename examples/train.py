"""UniMatch-style semi-supervised segmentation with EntropyMix and SPEEDLoss.

Runs out of the box on the embedded ``shapes`` dataset (generated, nothing to download):

    python examples/train.py                                   # UniMatch + EntropyMix + SPEEDLoss
    python examples/train.py --method supervised               # the labeled images alone
    python examples/train.py --mix cutmix --no-speed           # plain UniMatch
    torchrun --nproc_per_node=2 examples/train.py              # DDP (gloo on CPU, nccl on GPU)

and on UniMatch's PASCAL VOC / Cityscapes layouts:

    python examples/train.py --dataset pascal --data-root VOC2012 \\
        --labeled-ids splits/pascal/92/labeled.txt --unlabeled-ids splits/pascal/92/unlabeled.txt \\
        --val-ids splits/pascal/val.txt --crop-size 321 --batch-size 8

One iteration, as in UniMatch's ``unimatch.py``: the model predicts the weak view of the
unlabeled batch (plus a feature-perturbed copy); those predictions are the pseudo-labels; two
strong photometric views are mixed with a second unlabeled batch (EntropyMix picks patches by
the teacher's entropy, CutMix pastes a random box); the model learns the mixed pseudo-labels
from the mixed strong views, and SPEEDLoss distils the weak view's logits and feature
relations, mixed with the same plan, into the strong streams.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import IGNORE, NUM_CLASSES, SHAPE_CLASSES, SemiDataset, real_splits, shapes_splits  # noqa: E402
from model import DeepLabV3Plus  # noqa: E402

from entropymix import CutMix, EntropyMix, SPEEDLoss  # noqa: E402
from entropymix.functional import set_compile  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=["supervised", "fixmatch", "unimatch"], default="unimatch")
    p.add_argument("--mix", choices=["cutmix", "entropymix"], default="entropymix")
    p.add_argument("--speed", action=argparse.BooleanOptionalAction, default=True, help="add SPEEDLoss")
    p.add_argument("--speed-weight", type=float, default=0.5, help="weight of SPEEDLoss in the total loss")
    p.add_argument("--grid", type=int, default=4, help="EntropyMix grid (G x G)")
    p.add_argument("--second-select", default="sample", choices=["max", "min", "sample", "random"],
                   help="EntropyMix selection of the second strong stream (the first uses 'max')")
    p.add_argument("--conf-thresh", type=float, default=None,
                   help="pseudo-label confidence threshold (default: UniMatch's 0.95 on real data, 0.8 on shapes, "
                        "where the model starts from scratch)")
    p.add_argument("--dataset", choices=["shapes", "pascal", "cityscapes"], default="shapes")
    p.add_argument("--data-root", default=None)
    p.add_argument("--labeled-ids", default=None)
    p.add_argument("--unlabeled-ids", default=None)
    p.add_argument("--val-ids", default=None)
    p.add_argument("--num-labeled", type=int, default=64, help="shapes: labeled images")
    p.add_argument("--num-unlabeled", type=int, default=768, help="shapes: unlabeled images")
    p.add_argument("--num-val", type=int, default=200, help="shapes: validation images")
    p.add_argument("--crop-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--iters-per-epoch", type=int, default=None, help="cap iterations per epoch (smoke runs)")
    p.add_argument("--batch-size", type=int, default=8, help="per process, for labeled and unlabeled batches")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--width", type=int, default=32, help="model width")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default=None, help="default: runs/<dataset>-<method>-<mix>[-speed]-s<seed>")
    p.add_argument("--resume", action="store_true", help="continue from <out-dir>/latest.pth if present")
    p.add_argument("--stop-after", type=int, default=None,
                   help="exit after this many epochs of the --epochs schedule (continue later with --resume)")
    p.add_argument("--compile-entropy", action=argparse.BooleanOptionalAction, default=False,
                   help="EntropyMix's torch.compile fast path (pays off on large probability maps)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.dataset != "shapes" and not all([args.data_root, args.labeled_ids, args.unlabeled_ids, args.val_ids]):
        p.error(f"--dataset {args.dataset} needs --data-root, --labeled-ids, --unlabeled-ids and --val-ids")
    if args.conf_thresh is None:
        args.conf_thresh = 0.8 if args.dataset == "shapes" else 0.95
    if args.out_dir is None:
        tag = "" if args.method == "supervised" else f"-{args.mix}{'-speed' if args.speed else ''}"
        args.out_dir = f"runs/{args.dataset}-{args.method}{tag}-s{args.seed}"
    return args


# --- distributed --------------------------------------------------------------------------------

def setup_distributed():
    if "RANK" not in os.environ:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return rank, world, device


def all_reduce(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


# --- data ---------------------------------------------------------------------------------------

def build_data(args, world: int):
    if args.dataset == "shapes":
        (xl, yl), (xu, yu), (xv, yv) = shapes_splits(args.num_labeled, args.num_unlabeled, args.num_val,
                                                     args.crop_size, args.seed)
        loader = None
    else:
        (xl, yl), (xu, yu), (xv, yv), loader = real_splits(args.dataset, args.data_root, args.labeled_ids,
                                                           args.unlabeled_ids, args.val_ids)
    # UniMatch's rescale range; milder on the small synthetic images
    kw = dict(crop=args.crop_size, seed=args.seed, loader=loader,
              scale=(0.75, 1.5) if args.dataset == "shapes" else (0.5, 2.0))
    unlabeled = SemiDataset(xu, yu, "unlabeled", **kw)
    # A second pass over the unlabeled set in another order supplies the images mixed in.
    unlabeled_mix = SemiDataset(xu, yu, "unlabeled", **{**kw, "seed": args.seed + 7})
    labeled = SemiDataset(xl, yl, "labeled", nsample=len(unlabeled), **kw)
    val = SemiDataset(xv, yv, "val", **kw)

    def loader_for(ds, shuffle, seed, batch_size, drop_last=True):
        if world > 1:
            sampler = DistributedSampler(ds, shuffle=shuffle, seed=seed, drop_last=drop_last)
        elif shuffle:
            sampler = RandomSampler(ds, generator=torch.Generator().manual_seed(seed))
        else:
            sampler = SequentialSampler(ds)
        return DataLoader(ds, batch_size, sampler=sampler, num_workers=args.workers, drop_last=drop_last,
                          pin_memory=torch.cuda.is_available())
    bs = args.batch_size
    return (loader_for(labeled, True, args.seed, bs), loader_for(unlabeled, True, args.seed + 1, bs),
            loader_for(unlabeled_mix, True, args.seed + 2, bs),
            loader_for(val, False, 0, 1 if args.dataset != "shapes" else 25, drop_last=False))


def set_epoch(loaders, epoch: int) -> None:
    for ld in loaders:
        ld.dataset.set_epoch(epoch)
        if isinstance(ld.sampler, DistributedSampler):
            ld.sampler.set_epoch(epoch)
        elif isinstance(ld.sampler, RandomSampler):
            ld.sampler.generator.manual_seed(ld.dataset.seed * 100_003 + epoch)


def strong_augmentation(crop_size: int):
    """UniMatch's strong view, made on-device for the whole batch with kornia.

    UniMatch blurs 321-pixel crops with sigma up to 2; the blur scales with the crop here.
    """
    import kornia.augmentation as K
    sigma = 2.0 * min(1.0, crop_size / 321)
    k = max(3, int(4 * sigma) | 1)
    return torch.nn.Sequential(K.ColorJitter(0.5, 0.5, 0.5, 0.25, p=0.8), K.RandomGrayscale(p=0.2),
                               K.RandomGaussianBlur((k, k), (0.1, max(0.1, sigma)), p=0.5))


# --- evaluation ---------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(model, loader, num_classes: int, device, progress: bool):
    """mIoU and per-class IoU; the confusion matrix is accumulated on the device and summed over ranks."""
    model.eval()
    conf = torch.zeros(num_classes * num_classes, dtype=torch.long, device=device)
    for img, mask in _progress(loader, progress, "eval"):
        img, mask = img.to(device), mask.to(device)
        pred = model(img)[0].argmax(1)
        keep = mask != IGNORE
        conf += torch.bincount(mask[keep] * num_classes + pred[keep], minlength=num_classes**2)
    conf = all_reduce(conf).view(num_classes, num_classes).double()
    inter = conf.diag()
    union = conf.sum(0) + conf.sum(1) - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.nan)
    model.train()
    return float(iou.nanmean()) * 100, [None if math.isnan(v) else v * 100 for v in iou.tolist()]


def _progress(it, enabled: bool, desc: str, total=None):
    if not enabled:
        return it
    from tqdm import tqdm
    return tqdm(it, desc=desc, total=total, leave=False, dynamic_ncols=True, mininterval=1.0)


# --- training -----------------------------------------------------------------------------------

def masked_ce(logits, target, confident, valid):
    """UniMatch's unlabeled loss: CE on confident valid pixels, divided by the valid pixel count."""
    loss = F.cross_entropy(logits, target, reduction="none")
    return (loss * (confident & valid)).sum() / valid.sum().clamp_min(1)


def training_loss(model, batch, args, mixers, speed, strong, mix_gen):
    """One iteration's loss, UniMatch's recipe with the mixer and SPEEDLoss swapped in.

    ``batch`` is ``(img_x, mask_x, img_u_w, ignore, img_m_w, ignore_m)``: labeled images and
    masks, the weak view of the unlabeled batch and its ignore mask (255 on padding), and the
    second unlabeled batch whose images are mixed in. Returns the loss and its parts
    ``(supervised, strong streams, feature perturbation, SPEED)``.
    """
    img_x, mask_x, img_u_w, ignore, img_m_w, ignore_m = batch
    zero = torch.zeros((), device=img_x.device)
    if args.method == "supervised":
        loss_x = F.cross_entropy(model(img_x)[0], mask_x, ignore_index=IGNORE)
        return loss_x, (loss_x, zero, zero, zero)
    with torch.no_grad():  # the teacher's view of the images mixed in (UniMatch: eval mode)
        model.eval()
        logits_m, feats_m = model(img_m_w)
        model.train()
    img_u_s = [strong(img_u_w), strong(img_u_w)]
    img_m_s = [strong(img_m_w), strong(img_m_w)]
    num_lb = img_x.shape[0]
    fp = args.method == "unimatch"
    outs = model(torch.cat([img_x, img_u_w]), need_fp=fp)
    pred_x, pred_u_w = outs[0].split([num_lb, img_u_w.shape[0]])
    feats_u_w = outs[1][num_lb:].detach()
    pred_u_w = pred_u_w.detach()
    probs_u, probs_m = pred_u_w.softmax(1), logits_m.softmax(1)
    conf_u, mask_u = probs_u.max(1)
    conf_m, mask_m = probs_m.max(1)

    # Mix each strong stream with the second batch; replay the plan on everything else.
    streams = []
    for s, mixer in enumerate(mixers[: 2 if fp else 1]):
        mixed, plan = mixer([img_u_s[s], img_m_s[s]], probs=[probs_u, probs_m],
                            valid=[ignore != IGNORE, ignore_m != IGNORE], generator=mix_gen)
        streams.append((mixed, plan))
    preds_s, feats_s = model(torch.cat([m for m, _ in streams]))
    preds_s, feats_s = preds_s.chunk(len(streams)), feats_s.chunk(len(streams))

    loss_x = F.cross_entropy(pred_x, mask_x, ignore_index=IGNORE)
    loss_s, loss_speed = [], []
    for (mixed, plan), pred_s, feat_s in zip(streams, preds_s, feats_s):
        target = plan.apply([mask_u, mask_m])
        conf = plan.apply([conf_u, conf_m])
        ign = plan.apply([ignore, ignore_m])
        valid = ign != IGNORE
        loss_s.append(masked_ce(pred_s, target, conf >= args.conf_thresh, valid))
        if speed is not None:
            loss_speed.append(speed(pred_s, plan.apply([pred_u_w, logits_m]),
                                    feat_s, plan.apply([feats_u_w, feats_m]), valid=valid))
    if fp:
        loss_fp = masked_ce(outs[2][num_lb:], mask_u, conf_u >= args.conf_thresh, ignore != IGNORE)
        loss = (loss_x + 0.25 * loss_s[0] + 0.25 * loss_s[1] + 0.5 * loss_fp) / 2
    else:
        loss_fp = zero
        loss = (loss_x + loss_s[0]) / 2
    loss_sp = torch.stack(loss_speed).mean() if loss_speed else zero
    loss = loss + args.speed_weight * loss_sp
    return loss, (loss_x, torch.stack(loss_s).mean(), loss_fp, loss_sp)


def main(argv=None) -> dict:
    args = parse_args(argv)
    rank, world, device = setup_distributed()
    torch.manual_seed(args.seed + rank)
    set_compile(args.compile_entropy)
    out = Path(args.out_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    num_classes = NUM_CLASSES[args.dataset]
    loader_l, loader_u, loader_mix, loader_val = build_data(args, world)
    model = DeepLabV3Plus(num_classes, width=args.width).to(device)
    if world > 1:
        if device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                        broadcast_buffers=False)
    net = model.module if world > 1 else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    strong = strong_augmentation(args.crop_size).to(device)
    if args.mix == "entropymix":
        mixers = (EntropyMix(args.grid, select="max", check_values=False),
                  EntropyMix(args.grid, select=args.second_select, check_values=False))
    else:
        mixers = (CutMix(p=0.5), CutMix(p=0.5))
    speed = SPEEDLoss(check_values=False) if args.speed and args.method != "supervised" else None
    mix_gen = torch.Generator().manual_seed(args.seed * 100 + rank)

    iters = min(len(loader_u), args.iters_per_epoch or len(loader_u))
    total_iters = iters * args.epochs
    start_epoch, history, best = 0, [], 0.0
    ckpt_path = out / "latest.pth"
    if args.resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_epoch, history, best = ckpt["epoch"] + 1, ckpt["history"], ckpt["best"]
        rng, mix_rng = ckpt["rng"][rank]  # every rank continues its own random streams
        torch.set_rng_state(rng)
        mix_gen.set_state(mix_rng)
        if rank == 0:
            print(f"resumed from {ckpt_path} at epoch {start_epoch}")
    progress = rank == 0 and not args.no_progress

    last = args.epochs if args.stop_after is None else min(args.epochs, args.stop_after)
    for epoch in range(start_epoch, last):
        set_epoch([loader_l, loader_u, loader_mix], epoch)
        model.train()
        t0 = time.time()
        sums = torch.zeros(5, device=device)  # loss, loss_x, loss_s, loss_fp, loss_speed
        batches = zip(loader_l, loader_u, loader_mix)
        for i, ((img_x, mask_x), (img_u_w, ignore), (img_m_w, ignore_m)) in enumerate(
                _progress(batches, progress, f"epoch {epoch + 1}/{args.epochs}", iters)):
            if i >= iters:
                break
            it = epoch * iters + i
            lr = args.lr * (1 - it / total_iters) ** 0.9
            for group in optimizer.param_groups:
                group["lr"] = lr
            img_x, mask_x = img_x.to(device), mask_x.to(device)
            img_u_w, ignore, img_m_w, ignore_m = (t.to(device) for t in (img_u_w, ignore, img_m_w, ignore_m))

            loss, parts = training_loss(model, (img_x, mask_x, img_u_w, ignore, img_m_w, ignore_m), args,
                                        mixers, speed, strong, mix_gen)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums += torch.stack([loss.detach(), *(p.detach() for p in parts)])

        sums = all_reduce(sums) / (iters * world)
        miou, ious = evaluate(net, loader_val, num_classes, device, progress)
        best = max(best, miou)
        record = {"epoch": epoch + 1, "loss": sums[0].item(), "loss_x": sums[1].item(), "loss_s": sums[2].item(),
                  "loss_fp": sums[3].item(), "loss_speed": sums[4].item(), "miou": miou, "iou": ious,
                  "lr": lr, "seconds": time.time() - t0}
        history.append(record)
        rng = [(torch.get_rng_state(), mix_gen.get_state())] * world
        if world > 1:
            dist.all_gather_object(rng, rng[0])
        if rank == 0:
            print(f"epoch {epoch + 1:3d}/{args.epochs}  loss {record['loss']:.4f}  (x {record['loss_x']:.3f}  "
                  f"s {record['loss_s']:.3f}  fp {record['loss_fp']:.3f}  speed {record['loss_speed']:.4f})  "
                  f"mIoU {miou:5.2f}  best {best:5.2f}  {record['seconds']:.0f}s", flush=True)
            torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                        "history": history, "best": best, "args": vars(args), "rng": rng}, ckpt_path)
    result = {"args": vars(args), "world_size": world, "history": history, "best_miou": best,
              "final_miou": history[-1]["miou"] if history else None,
              "classes": list(SHAPE_CLASSES) if args.dataset == "shapes" else None}
    if rank == 0:
        (out / "results.json").write_text(json.dumps(result, indent=1))
        save_figures(net, loader_val, history, out, device)
        print(f"final mIoU {result['final_miou']:.2f}  best {best:.2f}  -> {out}/results.json")
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return result


def save_figures(model, loader, history, out: Path, device) -> None:
    """``miou.png`` (mIoU per epoch) and ``predictions.png`` (validation images, labels, predictions)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([h["epoch"] for h in history], [h["miou"] for h in history], marker="o")
    ax.set(xlabel="epoch", ylabel="val mIoU (%)", title=out.name)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "miou.png", dpi=100)
    plt.close(fig)

    img, mask = next(iter(loader))
    model.eval()
    with torch.no_grad():
        pred = model(img[:4].to(device))[0].argmax(1).cpu()
    n = min(4, img.shape[0])
    fig, axes = plt.subplots(3, n, figsize=(2.2 * n, 6.6), squeeze=False)
    vmax = max(int(pred.max()), int(mask.masked_fill(mask == IGNORE, 0).max()), 1)
    for j in range(n):
        m = mask[j].float().masked_fill(mask[j] == IGNORE, float("nan"))
        panels = (("image", img[j].permute(1, 2, 0)), ("label", m), ("prediction", pred[j]))
        for row, (title, data) in enumerate(panels):
            axes[row, j].imshow(data.numpy(), **({} if row == 0 else {"cmap": "tab20", "vmin": 0, "vmax": vmax,
                                                                "interpolation": "nearest"}))
            axes[row, j].set_axis_off()
            axes[row, j].set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "predictions.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
