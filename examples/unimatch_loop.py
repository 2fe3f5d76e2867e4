"""The UniMatch-style training loop of ``examples/train.py``, top to bottom: distributed set-up,
data, evaluation, the step (``training_loss``), the epoch, ``main``.

One iteration, as in UniMatch's ``unimatch.py``: the model predicts the weak view of the
unlabeled batch (plus a feature-perturbed copy); those predictions are the pseudo-labels; two
strong photometric views are mixed with a second unlabeled batch (EntropyMix picks patches by
the teacher's entropy, CutMix pastes a random box); the model learns the mixed pseudo-labels
from the mixed strong views, and SPEEDLoss distils the weak view's logits and feature
relations, mixed with the same plan, into the strong streams.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import EMBEDDED, IGNORE, NUM_CLASSES, SHAPE_CLASSES, STREET_CLASSES, SemiDataset, embedded_splits, real_splits
from model import DeepLabV3Plus
from options import EXAMPLE, parse_args

from entropymix import ClassMix, CutMix, EntropyMix, SPEEDLoss
from entropymix.functional import set_compile


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


def close_distributed() -> None:
    """End a distributed run on every rank: collect, wait for every rank, destroy the process group."""
    if not dist.is_initialized():
        return
    # Collect reference cycles (DDP's hooks, autograd graphs) while the interpreter is fully alive.
    # Left to the interpreter's final collection, they can free a finished collective's tensors on a
    # gloo worker thread during shutdown, which aborts the process ("terminate called without an
    # active exception", torch 2.13 on CPU): a loaded 2-rank reproduction aborted in 9 of 60 runs
    # without a collection here and in none of 90 with one.
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def all_reduce(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


# --- data ---------------------------------------------------------------------------------------

def build_data(args, world: int):
    """Loaders: labeled, unlabeled, ``views - 1`` unlabeled passes in other orders (the images mixed
    in), validation."""
    if args.dataset in EMBEDDED:
        (xl, yl), (xu, yu), (xv, yv) = embedded_splits(args.dataset, args.num_labeled, args.num_unlabeled,
                                                       args.num_val, args.crop_size, args.seed)
        loader = None
    else:
        (xl, yl), (xu, yu), (xv, yv), loader = real_splits(args.dataset, args.data_root, args.labeled_ids,
                                                           args.unlabeled_ids, args.val_ids)
    # UniMatch's rescale range; milder on the small synthetic images
    kw = dict(crop=args.crop_size, seed=args.seed, loader=loader,
              scale=(0.75, 1.5) if args.dataset in EMBEDDED else (0.5, 2.0))
    unlabeled = SemiDataset(xu, yu, "unlabeled", **kw)
    mixed_in = [SemiDataset(xu, yu, "unlabeled", **{**kw, "seed": args.seed + 7 * v}) for v in range(1, args.views)]
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
    train = [loader_for(labeled, True, args.seed, bs), loader_for(unlabeled, True, args.seed + 1, bs)]
    train += [loader_for(ds, True, args.seed + 1 + v, bs) for v, ds in enumerate(mixed_in, 1)]
    return train, loader_for(val, False, 0, 25 if args.dataset in EMBEDDED else 1, drop_last=False)


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
        pred = model(img).logits.argmax(1)
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


# --- the step ------------------------------------------------------------------------------------

def amp(device: torch.device, dtype: torch.dtype, enabled: bool):
    """Autocast for a whole step. Its weight-cast cache is off: the step runs teacher forwards under
    ``no_grad`` inside the region, and before torch 2.10 a cast cached there has no autograd
    history, so the student's forward that reuses it silently loses the weights' gradients
    (pytorch/pytorch#112583). Casting the weights again costs little next to the activations."""
    return torch.autocast(device.type, dtype=dtype, enabled=enabled, cache_enabled=False)


def masked_ce(logits, target, confident, valid):
    """UniMatch's unlabeled loss: CE on confident valid pixels, divided by the valid pixel count."""
    loss = F.cross_entropy(logits, target, reduction="none")
    return (loss * (confident & valid)).sum() / valid.sum().clamp_min(1)


def build_mixers(args):
    """Two mixers, one per strong stream (UniMatch's CutMix draws a box per stream)."""
    if args.mix == "entropymix":
        share = getattr(args, "share", None)  # None: as many cells as the selection picks
        return (EntropyMix(args.grid, select=args.first_select, check_values=False, share=share),
                EntropyMix(args.grid, select=args.second_select, check_values=False, share=share))
    if args.mix == "classmix":
        return ClassMix(), ClassMix()
    return CutMix(p=0.5), CutMix(p=0.5)


def _uses_entropy(mixer) -> bool:
    return isinstance(mixer, EntropyMix) and mixer.select != "random"


def training_loss(model, batch, args, mixers, speed, strong, mix_gen):
    """One iteration's loss, UniMatch's recipe with the mixer and SPEEDLoss swapped in.

    ``batch`` is ``(img_x, mask_x, img_u_w, ignore, mixed_in)``: labeled images and masks, the
    weak view of the unlabeled batch with its ignore mask (255 on padding), and a list of
    ``(img_m_w, ignore_m)`` unlabeled batches whose images are mixed in (one for 2 views).
    Returns the loss, its parts ``(supervised, strong streams, feature perturbation, SPEED)``
    and the plans of the strong streams.
    """
    img_x, mask_x, img_u_w, ignore, mixed_in = batch
    zero = torch.zeros((), device=img_x.device)
    if args.method == "supervised":
        loss_x = F.cross_entropy(model(img_x).logits, mask_x, ignore_index=IGNORE)
        return loss_x, (loss_x, zero, zero, zero), []
    img_m_w = [img for img, _ in mixed_in]
    ignores = [ignore] + [ign for _, ign in mixed_in]
    n_m = len(img_m_w)
    classifier = (model.module if hasattr(model, "module") else model).classifier
    # The teacher on the batches mixed in, in eval mode (UniMatch). An entropy-picking mixer
    # compares the views' entropies, so it also gets the weak view's in that same mode: entropies
    # of a train-mode and an eval-mode forward are not comparable (one view would win every cell).
    # It reads them at the model's output stride (the classifier on the decoder features), 16x
    # fewer pixels than the upsampled logits and the same information.
    # With --entropy-scale below 1 the weak view stays out of that forward: a second, smaller one
    # (all views, downscaled) gives the entropies instead, cheaper and still comparable.
    same_mode = any(_uses_entropy(m) for m in mixers)
    probe = same_mode and getattr(args, "entropy_scale", 1.0) < 1
    full = same_mode and not probe  # the weak view joins UniMatch's eval forward
    with torch.no_grad():
        model.eval()
        teacher_eval = model(torch.cat(([img_u_w] if full else []) + img_m_w))
        n = n_m + full
        logits_m, feats_m = teacher_eval.logits.chunk(n)[full:], teacher_eval.features.chunk(n)[full:]
        select_native = list(classifier(teacher_eval.features).chunk(n)) if full else None
        if probe:
            small = F.interpolate(torch.cat([img_u_w] + img_m_w), scale_factor=args.entropy_scale, mode="bilinear",
                                  align_corners=False)
            select_native = list(classifier(model(small).features).chunk(n_m + 1))
        model.train()

    fp = args.method == "unimatch"
    n_streams = 2 if fp else 1
    img_u_s = [strong(img_u_w) for _ in range(n_streams)]
    img_m_s = [[strong(img) for img in img_m_w] for _ in range(n_streams)]
    num_lb = img_x.shape[0]
    joint = model(torch.cat([img_x, img_u_w]), need_fp=fp)
    pred_x, pred_u_w = joint.logits.split([num_lb, img_u_w.shape[0]])
    pred_u_w, feats_u_w = pred_u_w.detach(), joint.features[num_lb:].detach()
    # Teacher outputs of every view: logits, features, pseudo-labels, confidences (UniMatch's).
    logits_t = [pred_u_w, *logits_m]
    feats_t = [feats_u_w, *feats_m]
    conf_t, label_t = zip(*(z.softmax(1).max(1) for z in logits_t))
    select_logits = select_native if same_mode else logits_t

    # Mix each strong stream with the other batches; replay the plan on everything else.
    streams = [mixers[s]([img_u_s[s], *img_m_s[s]], logits=select_logits, valid=ignores, generator=mix_gen)
               for s in range(n_streams)]
    student = model(torch.cat([mixed for mixed, _ in streams]))
    preds_s, feats_s = student.logits.chunk(n_streams), student.features.chunk(n_streams)

    # SPEEDLoss distils at the model's output stride (1/4): the classifier is a 1 x 1 conv on the
    # decoder features, so these are exactly the logits before upsampling, 16x fewer pixels than
    # the upsampled ones and the same information.
    with torch.no_grad():
        logits_t_native = None
        if speed is not None:  # the mixed-in views' output-stride logits already exist when a mixer read them
            logits_t_native = [classifier(feats_u_w), *(select_native[1:] if full else map(classifier, feats_m))]
    loss_x = F.cross_entropy(pred_x, mask_x, ignore_index=IGNORE)
    loss_s, loss_speed = [], []
    for (mixed, plan), pred_s, feat_s in zip(streams, preds_s, feats_s):
        target, conf = plan.apply(list(label_t)), plan.apply(list(conf_t))
        valid = plan.apply(ignores) != IGNORE
        loss_s.append(masked_ce(pred_s, target, conf >= args.conf_thresh, valid))
        if speed is not None:
            loss_speed.append(speed(classifier(feat_s), plan.apply(logits_t_native), feat_s, plan.apply(feats_t),
                                    valid=valid))
    if fp:
        loss_fp = masked_ce(joint.logits_fp[num_lb:], label_t[0], conf_t[0] >= args.conf_thresh, ignore != IGNORE)
        loss = (loss_x + 0.25 * loss_s[0] + 0.25 * loss_s[1] + 0.5 * loss_fp) / 2
    else:
        loss_fp = zero
        loss = (loss_x + loss_s[0]) / 2
    loss_sp = torch.stack(loss_speed).mean() if loss_speed else zero
    loss = loss + args.speed_weight * loss_sp
    return loss, (loss_x, torch.stack(loss_s).mean(), loss_fp, loss_sp), [plan for _, plan in streams]


# --- the epoch ------------------------------------------------------------------------------------

@dataclass
class Run:
    """Everything an epoch needs, built once by :func:`main`."""

    args: argparse.Namespace
    model: torch.nn.Module          # what the step calls (DDP-wrapped when distributed)
    net: torch.nn.Module            # the model itself (what is evaluated and saved)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype
    strong: torch.nn.Module
    mixers: tuple
    speed: Optional[SPEEDLoss]
    mix_gen: torch.Generator
    loaders: List[DataLoader]
    loader_val: DataLoader
    num_classes: int
    device: torch.device
    rank: int = 0
    world: int = 1
    iters: int = field(init=False)

    def __post_init__(self) -> None:
        self.iters = min(len(self.loaders[1]), self.args.iters_per_epoch or len(self.loaders[1]))

    @property
    def progress(self) -> bool:
        return self.rank == 0 and not self.args.no_progress


def train_one_epoch(run: Run, epoch: int) -> dict:
    """One epoch (``epoch`` counts from 1) and its evaluation; returns the epoch's record, with what
    each stream's mixer did (mean share of each view, share of samples taken whole from one view)."""
    args, device = run.args, run.device
    set_epoch(run.loaders, epoch - 1)
    run.model.train()
    t0 = time.time()
    total_iters = run.iters * args.epochs
    sums = torch.zeros(5, device=device)  # loss, loss_x, loss_s, loss_fp, loss_speed
    mix_share, mix_whole = None, None
    batches = _progress(zip(*run.loaders), run.progress, f"epoch {epoch}/{args.epochs}", run.iters)
    for i, ((img_x, mask_x), (img_u_w, ignore), *mixed_in) in enumerate(batches):
        if i >= run.iters:
            break
        lr = args.lr * (1 - ((epoch - 1) * run.iters + i) / total_iters) ** 0.9
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        img_x, mask_x, img_u_w, ignore = (t.to(device) for t in (img_x, mask_x, img_u_w, ignore))
        mixed_in = [(img.to(device), ign.to(device)) for img, ign in mixed_in]
        with amp(device, run.amp_dtype, args.amp):
            loss, parts, plans = training_loss(run.model, (img_x, mask_x, img_u_w, ignore, mixed_in), args,
                                               run.mixers, run.speed, run.strong, run.mix_gen)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        sums += torch.stack([loss.detach(), *(p.detach() for p in parts)]).float()
        if plans:  # summaries stay on the device: no synchronisation in the loop
            stats = [p.summary() for p in plans]
            share, whole = torch.stack([s["share"] for s in stats]), torch.stack([s["whole"] for s in stats])
            mix_share = share if mix_share is None else mix_share + share
            mix_whole = whole if mix_whole is None else mix_whole + whole
    sums = all_reduce(sums) / (run.iters * run.world)
    with amp(device, run.amp_dtype, args.amp):
        miou, ious = evaluate(run.net, run.loader_val, run.num_classes, device, run.progress)
    record = {"epoch": epoch, "loss": sums[0].item(), "loss_x": sums[1].item(), "loss_s": sums[2].item(),
              "loss_fp": sums[3].item(), "loss_speed": sums[4].item(), "miou": miou, "iou": ious,
              "lr": lr, "seconds": time.time() - t0}
    if mix_share is not None:
        share, whole = all_reduce(mix_share) / (run.iters * run.world), all_reduce(mix_whole) / (run.iters * run.world)
        record["mixing"] = [{"view_share": s.tolist(), "whole_sample_share": float(w)} for s, w in zip(share, whole)]
    return record


# --- main -----------------------------------------------------------------------------------------

def ddp_wrap(model, device):
    if device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # Buffers (BatchNorm statistics) stay rank-local during training, as in UniMatch; torch 2.13
    # renamed the switch and warns about the old name.
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None, **sync)


def main(argv=None, args=None) -> dict:
    args = args if args is not None else parse_args(argv)
    rank, world, device = setup_distributed()
    torch.manual_seed(args.seed + rank)
    set_compile(args.compile_entropy)
    out = Path(args.out_dir)
    num_classes = NUM_CLASSES[args.dataset]
    loaders, loader_val = build_data(args, world)  # checks every data file before anything is built
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    net = DeepLabV3Plus(num_classes, width=args.width).to(device)
    model = ddp_wrap(net, device) if world > 1 else net
    net = model.module if world > 1 else net
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    speed = None
    if args.speed and args.method != "supervised":
        speed = SPEEDLoss(feature_weight=float(args.speed_terms != "logit"),
                          logit_weight=float(args.speed_terms != "relation"), check_values=False)
    run = Run(args=args, model=model, net=net, optimizer=optimizer,
              scaler=torch.amp.GradScaler(device.type, enabled=args.amp and amp_dtype == torch.float16),
              amp_dtype=amp_dtype, strong=strong_augmentation(args.crop_size).to(device), mixers=build_mixers(args),
              speed=speed, mix_gen=torch.Generator().manual_seed(args.seed * 100 + rank), loaders=loaders,
              loader_val=loader_val, num_classes=num_classes, device=device, rank=rank, world=world)

    start_epoch, history, best = 0, [], 0.0  # start_epoch: epochs already done
    ckpt_path = out / "latest.pth"
    if args.resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        run.scaler.load_state_dict(ckpt.get("scaler", {}))
        start_epoch, history, best = ckpt["epoch"], ckpt["history"], ckpt["best"]
        rng, mix_rng = ckpt["rng"][rank]  # every rank continues its own random streams
        torch.set_rng_state(rng)
        run.mix_gen.set_state(mix_rng)
        if rank == 0:
            print(f"resumed from {ckpt_path} after epoch {start_epoch}/{args.epochs}")

    last = args.epochs if args.stop_after is None else min(args.epochs, args.stop_after)
    epoch = start_epoch
    try:
        for epoch in range(start_epoch + 1, last + 1):  # epochs count from 1 everywhere
            record = train_one_epoch(run, epoch)
            history.append(record)
            best = max(best, record["miou"])
            rng = [(torch.get_rng_state(), run.mix_gen.get_state())] * world
            if world > 1:
                dist.all_gather_object(rng, rng[0])
            if rank == 0:
                mixing = "".join(f"  mix{s + 1} {' '.join(f'{v:.2f}' for v in m['view_share'])} "
                                 f"whole {m['whole_sample_share']:.2f}" for s, m in enumerate(record.get("mixing", [])))
                print(f"epoch {epoch:3d}/{args.epochs}  loss {record['loss']:.4f}  (x {record['loss_x']:.3f}  "
                      f"s {record['loss_s']:.3f}  fp {record['loss_fp']:.3f}  speed {record['loss_speed']:.4f})  "
                      f"mIoU {record['miou']:5.2f}  best {best:5.2f}  {record['seconds']:.0f}s{mixing}", flush=True)
                torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                            "scaler": run.scaler.state_dict(), "epoch": epoch, "history": history, "best": best,
                            "args": vars(args), "rng": rng}, ckpt_path)
    except KeyboardInterrupt:
        if rank == 0:
            done = f"after epoch {epoch - 1}" if epoch > start_epoch else "before the first epoch ended"
            saved = f"{ckpt_path} holds epoch {len(history)}" if history else "no checkpoint was saved"
            argv_resume = " ".join(a for a in sys.argv[1:] if a not in ("--resume", "--overwrite"))
            print(f"\ninterrupted in epoch {epoch} ({done}; {saved}); continue with:\n"
                  f"  {EXAMPLE} {argv_resume} --resume".replace("  --resume", " --resume"), file=sys.stderr)
        raise SystemExit(130)
    result = {"args": vars(args), "world_size": world, "history": history, "best_miou": best,
              "final_miou": history[-1]["miou"] if history else None,
              "classes": {"shapes": list(SHAPE_CLASSES), "streets": list(STREET_CLASSES)}.get(args.dataset)}
    if rank == 0:
        (out / "results.json").write_text(json.dumps(result, indent=1))
        save_figures(net, loader_val, history, out, device, result["classes"] or [str(c) for c in range(num_classes)])
        if args.method != "supervised":
            save_mixing_figure(run, out)
        print(f"final mIoU {result['final_miou']:.2f}  best {best:.2f}  -> {out}/results.json")
    close_distributed()
    return result


# --- figures --------------------------------------------------------------------------------------

def save_figures(model, loader, history, out: Path, device, classes) -> None:
    """``miou.png`` (mIoU per epoch) and ``predictions.png`` (validation images, labels, predictions)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([h["epoch"] for h in history], [h["miou"] for h in history], marker="o")
    ax.set(xlabel="epoch", ylabel="val mIoU (%)", title=out.name)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "miou.png", dpi=100)
    plt.close(fig)

    img, mask = next(iter(loader))
    model.eval()
    with torch.no_grad():
        pred = model(img[:4].to(device)).logits.argmax(1).cpu()
    n = min(4, img.shape[0])
    cmap = plt.get_cmap("tab20", max(len(classes), 2))
    fig, axes = plt.subplots(3, n, figsize=(2.2 * n, 7.2), squeeze=False)
    for j in range(n):
        m = mask[j].float().masked_fill(mask[j] == IGNORE, float("nan"))
        panels = (("image", img[j].permute(1, 2, 0)), ("label", m), ("prediction", pred[j].float()))
        for row, (title, data) in enumerate(panels):
            style = {} if row == 0 else {"cmap": cmap, "vmin": -0.5, "vmax": cmap.N - 0.5, "interpolation": "nearest"}
            axes[row, j].imshow(data.numpy(), **style)
            axes[row, j].set_axis_off()
            axes[row, j].set_title(title, fontsize=8)
    shown = sorted(set(pred[:n].unique().tolist()) | set(mask[:n][mask[:n] != IGNORE].unique().tolist()))
    fig.legend(handles=[Patch(color=cmap(c), label=classes[c]) for c in shown], loc="lower center",
               ncol=min(len(shown), 6), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(out / "predictions.png", dpi=100)
    plt.close(fig)


def save_mixing_figure(run: Run, out: Path, samples: int = 3) -> None:
    """``mixing.png``: what the first stream's mixer made of a few unlabeled samples. Per sample: the
    two views, each view's teacher entropy (cell means for a grid mixer, per pixel otherwise),
    and the mixed image with the border of every region drawn in its source view's colour."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from entropymix import functional as EF
    (_, _), (img_u, ignore), (img_m, ignore_m), *_ = next(iter(zip(*run.loaders)))
    n = min(samples, img_u.shape[0])
    views = [img_u[:n].to(run.device), img_m[:n].to(run.device)]
    ignores = [ignore[:n].to(run.device), ignore_m[:n].to(run.device)]
    run.net.eval()
    with torch.no_grad():
        teacher = run.net(torch.cat(views))  # both views in eval mode; entropy mixers read the output stride
        native = _uses_entropy(run.mixers[0])
        logits = list((run.net.classifier(teacher.features) if native else teacher.logits).chunk(2))
        mixed, plan = run.mixers[0](views, logits=logits, valid=ignores, generator=torch.Generator().manual_seed(0))
    run.net.train()
    size = tuple(views[0].shape[-2:])
    ent = [EF.entropy_from_logits(z.float()) for z in logits]
    if isinstance(run.mixers[0], EntropyMix):  # what the mixer compared: each cell's mean entropy
        ent = [EF.patch_entropy(e, run.mixers[0].grid, ign) for e, ign in zip(ent, ignores)]
    ent = [EF.resize_nearest(e, size) for e in ent]
    src = plan.source_map(size)
    edge = torch.zeros_like(src, dtype=torch.bool)
    edge[:, 1:, :] |= src[:, 1:, :] != src[:, :-1, :]
    edge[:, :, 1:] |= src[:, :, 1:] != src[:, :, :-1]
    colours = torch.tensor([[1.0, 0.2, 0.2], [0.2, 0.5, 1.0]], device=src.device)
    framed = mixed.clone().permute(0, 2, 3, 1)
    framed[edge] = colours[src[edge]]
    vmax = float(torch.stack(ent).max())
    fig, axes = plt.subplots(n, 5, figsize=(11, 2.3 * n), squeeze=False)
    for j in range(n):
        panels = [("view 0 (red)", views[0][j].permute(1, 2, 0), {}), ("view 1 (blue)", views[1][j].permute(1, 2, 0), {}),
                  ("entropy, view 0", ent[0][j], {"cmap": "magma", "vmin": 0, "vmax": vmax}),
                  ("entropy, view 1", ent[1][j], {"cmap": "magma", "vmin": 0, "vmax": vmax}),
                  (f"mixed: {100 * float((src[j] == 1).float().mean()):.0f}% from view 1", framed[j], {})]
        for k, (title, data, style) in enumerate(panels):
            axes[j, k].imshow(data.float().clamp(0, None if style else 1).cpu().numpy(), **style)
            axes[j, k].set_axis_off()
            axes[j, k].set_title(title, fontsize=8)
    fig.suptitle(f"{type(run.mixers[0]).__name__}: {run.mixers[0].extra_repr()}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "mixing.png", dpi=100)
    plt.close(fig)
