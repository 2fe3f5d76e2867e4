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
import sys
from pathlib import Path

EXAMPLE = f"python {Path(__file__).name}"


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


LAYOUTS = """data layouts (UniMatch's split files: one 'IMAGE MASK' line per sample, paths relative to --data-root):
  pascal      JPEGImages/*.jpg and SegmentationClass/*.png (or SegmentationClassAug/*.png): palette PNGs whose
              index is the class 0..20, 255 on boundaries. A bare id per line means JPEGImages/<id>.jpg and
              SegmentationClass/<id>.png.
  cityscapes  leftImg8bit/{train,val}/<city>/*_leftImg8bit.png and gtFine/{train,val}/<city>/*_gtFine_labelTrainIds.png:
              masks must be labelTrainIds (0..18, 255 ignore), made by cityscapesscripts' createTrainIdLabelImgs;
              the raw labelIds masks (0..33) are refused with the file named.
  Unlabeled entries need no mask file. Every listed file is checked before training starts."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, epilog=LAYOUTS, formatter_class=_Formatter)
    p.add_argument("--method", choices=["supervised", "fixmatch", "unimatch"], default="unimatch",
                   help="training recipe (supervised: the labeled images alone)")
    p.add_argument("--mix", choices=["cutmix", "entropymix", "classmix"], default="entropymix",
                   help="how strong views are mixed with a second unlabeled batch")
    p.add_argument("--speed", action=argparse.BooleanOptionalAction, default=True, help="add SPEEDLoss")
    p.add_argument("--speed-weight", type=float, default=0.5, help="weight of SPEEDLoss in the total loss")
    p.add_argument("--speed-terms", choices=["both", "relation", "logit"], default="both",
                   help="SPEEDLoss terms: feature relations, entropy-weighted logit KL, or both")
    p.add_argument("--grid", type=int, default=4, help="EntropyMix grid (G x G)")
    p.add_argument("--second-select", default="sample", choices=["max", "min", "sample", "random"],
                   help="EntropyMix selection of the second strong stream")
    p.add_argument("--first-select", default="max", choices=["max", "min", "sample", "random"],
                   help="EntropyMix selection of the first strong stream (random: grid patches, entropy ignored)")
    p.add_argument("--views", type=int, default=2, help="EntropyMix views per mixed image (3: a second mixed-in batch)")
    p.add_argument("--conf-thresh", type=float, default=None,
                   help="pseudo-label confidence threshold (default: UniMatch's 0.95 on real data, 0.8 on shapes, "
                        "where the model starts from scratch)")
    p.add_argument("--dataset", choices=["shapes", "pascal", "cityscapes"], default="shapes",
                   help="shapes is embedded (generated); the others read the layouts below")
    p.add_argument("--data-root", default=None, help="dataset root (pascal / cityscapes)")
    p.add_argument("--labeled-ids", default=None, help="split file of labeled samples")
    p.add_argument("--unlabeled-ids", default=None, help="split file of unlabeled samples")
    p.add_argument("--val-ids", default=None, help="split file of validation samples")
    p.add_argument("--num-labeled", type=int, default=64, help="shapes: labeled images")
    p.add_argument("--num-unlabeled", type=int, default=768, help="shapes: unlabeled images")
    p.add_argument("--num-val", type=int, default=200, help="shapes: validation images")
    p.add_argument("--crop-size", type=int, default=64, help="training crop (UniMatch: 321 / 513 on VOC, 801 on Cityscapes)")
    p.add_argument("--epochs", type=int, default=20, help="length of the schedule")
    p.add_argument("--iters-per-epoch", type=int, default=None, help="cap iterations per epoch (smoke runs)")
    p.add_argument("--batch-size", type=int, default=8, help="per process, for labeled and unlabeled batches")
    p.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate (poly decay)")
    p.add_argument("--width", type=int, default=32, help="model width")
    p.add_argument("--workers", type=int, default=0, help="data loader workers")
    p.add_argument("--seed", type=int, default=0, help="picks the labeled set, the data order and every random draw")
    p.add_argument("--amp", action="store_true",
                   help="mixed precision: bfloat16 autocast on CPU, float16 autocast with a GradScaler on CUDA")
    p.add_argument("--out-dir", default=None, help="default: runs/<dataset>-<method>-<mix>[-speed]-s<seed>")
    p.add_argument("--resume", action="store_true", help="continue from <out-dir>/latest.pth")
    p.add_argument("--overwrite", action="store_true", help="start again even if <out-dir> holds an earlier run")
    p.add_argument("--stop-after", type=int, default=None,
                   help="exit after this many epochs of the --epochs schedule (continue later with --resume)")
    p.add_argument("--compile-entropy", action=argparse.BooleanOptionalAction, default=False,
                   help="EntropyMix's torch.compile fast path (pays off on large probability maps)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.dataset != "shapes":
        missing = [f"--{k.replace('_', '-')}" for k in ("data_root", "labeled_ids", "unlabeled_ids", "val_ids")
                   if not getattr(args, k)]
        if missing:
            p.error(f"--dataset {args.dataset} needs {', '.join(missing)}")
    if args.views < 2 or (args.views > 2 and args.mix != "entropymix"):
        p.error(f"--views {args.views}: at least 2, and more than 2 only with --mix entropymix")
    if args.conf_thresh is None:
        args.conf_thresh = 0.8 if args.dataset == "shapes" else 0.95
    if args.out_dir is None:
        tag = "" if args.method == "supervised" else f"-{args.mix}{'-speed' if args.speed else ''}"
        args.out_dir = f"runs/{args.dataset}-{args.method}{tag}-s{args.seed}"
    ckpt = Path(args.out_dir) / "latest.pth"
    if ckpt.exists() and not (args.resume or args.overwrite):
        p.error(f"{args.out_dir} already holds a run ({ckpt}); pass --resume to continue it, "
                f"or --overwrite to start again and replace it")
    return args


if __name__ == "__main__":
    ARGS = parse_args()  # before importing torch: --help and argument errors answer at once

import inspect  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import IGNORE, NUM_CLASSES, SHAPE_CLASSES, DataError, SemiDataset, real_splits, shapes_splits  # noqa: E402
from model import DeepLabV3Plus  # noqa: E402

from entropymix import ClassMix, CutMix, EntropyMix, SPEEDLoss  # noqa: E402
from entropymix.functional import set_compile  # noqa: E402


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
    """Loaders: labeled, unlabeled, ``views - 1`` unlabeled passes in other orders (the images mixed
    in), validation."""
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
    return train, loader_for(val, False, 0, 1 if args.dataset != "shapes" else 25, drop_last=False)


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


def build_mixers(args):
    """Two mixers, one per strong stream (UniMatch's CutMix draws a box per stream)."""
    if args.mix == "entropymix":
        return (EntropyMix(args.grid, select=args.first_select, check_values=False),
                EntropyMix(args.grid, select=args.second_select, check_values=False))
    if args.mix == "classmix":
        return ClassMix(), ClassMix()
    return CutMix(p=0.5), CutMix(p=0.5)


def training_loss(model, batch, args, mixers, speed, strong, mix_gen):
    """One iteration's loss, UniMatch's recipe with the mixer and SPEEDLoss swapped in.

    ``batch`` is ``(img_x, mask_x, img_u_w, ignore, mixed_in)``: labeled images and masks, the
    weak view of the unlabeled batch with its ignore mask (255 on padding), and a list of
    ``(img_m_w, ignore_m)`` unlabeled batches whose images are mixed in (one for 2 views).
    Returns the loss and its parts ``(supervised, strong streams, feature perturbation, SPEED)``.
    """
    img_x, mask_x, img_u_w, ignore, mixed_in = batch
    zero = torch.zeros((), device=img_x.device)
    if args.method == "supervised":
        loss_x = F.cross_entropy(model(img_x)[0], mask_x, ignore_index=IGNORE)
        return loss_x, (loss_x, zero, zero, zero)
    img_m_w = [img for img, _ in mixed_in]
    ignores = [ignore] + [ign for _, ign in mixed_in]
    with torch.no_grad():  # the teacher's view of the images mixed in (UniMatch: eval mode)
        model.eval()
        logits_m, feats_m = model(torch.cat(img_m_w))[:2]
        logits_m, feats_m = logits_m.chunk(len(img_m_w)), feats_m.chunk(len(img_m_w))
        model.train()
    fp = args.method == "unimatch"
    n_streams = 2 if fp else 1
    img_u_s = [strong(img_u_w) for _ in range(n_streams)]
    img_m_s = [[strong(img) for img in img_m_w] for _ in range(n_streams)]
    num_lb = img_x.shape[0]
    outs = model(torch.cat([img_x, img_u_w]), need_fp=fp)
    pred_x, pred_u_w = outs[0].split([num_lb, img_u_w.shape[0]])
    feats_u_w = outs[1][num_lb:].detach()
    pred_u_w = pred_u_w.detach()
    # Teacher outputs of every view: logits, features, pseudo-labels, confidences.
    logits_t = [pred_u_w, *logits_m]
    feats_t = [feats_u_w, *feats_m]
    conf_t, label_t = zip(*(z.softmax(1).max(1) for z in logits_t))

    # Mix each strong stream with the other batches; replay the plan on everything else.
    streams = []
    for s in range(n_streams):
        mixed, plan = mixers[s]([img_u_s[s], *img_m_s[s]], logits=logits_t, valid=ignores, generator=mix_gen)
        streams.append((mixed, plan))
    preds_s, feats_s = model(torch.cat([m for m, _ in streams]))
    preds_s, feats_s = preds_s.chunk(n_streams), feats_s.chunk(n_streams)

    # SPEEDLoss distils at the model's output stride (1/4): the classifier is a 1 x 1 conv on the
    # decoder features, so these are exactly the logits before upsampling, 16x fewer pixels than
    # the upsampled ones and the same information.
    classifier = (model.module if hasattr(model, "module") else model).classifier
    with torch.no_grad():
        logits_t_native = [classifier(f) for f in feats_t] if speed is not None else None
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
        loss_fp = masked_ce(outs[2][num_lb:], label_t[0], conf_t[0] >= args.conf_thresh, ignore != IGNORE)
        loss = (loss_x + 0.25 * loss_s[0] + 0.25 * loss_s[1] + 0.5 * loss_fp) / 2
    else:
        loss_fp = zero
        loss = (loss_x + loss_s[0]) / 2
    loss_sp = torch.stack(loss_speed).mean() if loss_speed else zero
    loss = loss + args.speed_weight * loss_sp
    return loss, (loss_x, torch.stack(loss_s).mean(), loss_fp, loss_sp)


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
    train_loaders, loader_val = build_data(args, world)  # checks every data file before anything is built
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    model = DeepLabV3Plus(num_classes, width=args.width).to(device)
    if world > 1:
        model = ddp_wrap(model, device)
    net = model.module if world > 1 else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp and amp_dtype == torch.float16)
    strong = strong_augmentation(args.crop_size).to(device)
    mixers = build_mixers(args)
    speed = None
    if args.speed and args.method != "supervised":
        speed = SPEEDLoss(feature_weight=float(args.speed_terms != "logit"),
                          logit_weight=float(args.speed_terms != "relation"), check_values=False)
    mix_gen = torch.Generator().manual_seed(args.seed * 100 + rank)

    iters = min(len(train_loaders[1]), args.iters_per_epoch or len(train_loaders[1]))
    total_iters = iters * args.epochs
    start_epoch, history, best = 0, [], 0.0  # start_epoch: epochs already done
    ckpt_path = out / "latest.pth"
    if args.resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt.get("scaler", {}))
        start_epoch, history, best = ckpt["epoch"], ckpt["history"], ckpt["best"]
        rng, mix_rng = ckpt["rng"][rank]  # every rank continues its own random streams
        torch.set_rng_state(rng)
        mix_gen.set_state(mix_rng)
        if rank == 0:
            print(f"resumed from {ckpt_path} after epoch {start_epoch}/{args.epochs}")
    progress = rank == 0 and not args.no_progress

    last = args.epochs if args.stop_after is None else min(args.epochs, args.stop_after)
    epoch = start_epoch
    try:
        for epoch in range(start_epoch + 1, last + 1):  # epochs count from 1 everywhere
            record = train_one_epoch(model, net, train_loaders, loader_val, optimizer, scaler, amp_dtype, args,
                                     mixers, speed, strong, mix_gen, epoch, iters, total_iters, num_classes,
                                     device, progress, world)
            history.append(record)
            best = max(best, record["miou"])
            rng = [(torch.get_rng_state(), mix_gen.get_state())] * world
            if world > 1:
                dist.all_gather_object(rng, rng[0])
            if rank == 0:
                print(f"epoch {epoch:3d}/{args.epochs}  loss {record['loss']:.4f}  (x {record['loss_x']:.3f}  "
                      f"s {record['loss_s']:.3f}  fp {record['loss_fp']:.3f}  speed {record['loss_speed']:.4f})  "
                      f"mIoU {record['miou']:5.2f}  best {best:5.2f}  {record['seconds']:.0f}s", flush=True)
                torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                            "scaler": scaler.state_dict(), "epoch": epoch, "history": history, "best": best,
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
              "classes": list(SHAPE_CLASSES) if args.dataset == "shapes" else None}
    if rank == 0:
        (out / "results.json").write_text(json.dumps(result, indent=1))
        save_figures(net, loader_val, history, out, device, result["classes"] or [str(c) for c in range(num_classes)])
        print(f"final mIoU {result['final_miou']:.2f}  best {best:.2f}  -> {out}/results.json")
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return result


def train_one_epoch(model, net, train_loaders, loader_val, optimizer, scaler, amp_dtype, args, mixers, speed,
                    strong, mix_gen, epoch, iters, total_iters, num_classes, device, progress, world) -> dict:
    """One epoch (``epoch`` counts from 1) and its evaluation; returns the epoch's record."""
    set_epoch(train_loaders, epoch - 1)
    model.train()
    t0 = time.time()
    sums = torch.zeros(5, device=device)  # loss, loss_x, loss_s, loss_fp, loss_speed
    batches = _progress(zip(*train_loaders), progress, f"epoch {epoch}/{args.epochs}", iters)
    for i, ((img_x, mask_x), (img_u_w, ignore), *mixed_in) in enumerate(batches):
        if i >= iters:
            break
        it = (epoch - 1) * iters + i
        lr = args.lr * (1 - it / total_iters) ** 0.9
        for group in optimizer.param_groups:
            group["lr"] = lr
        img_x, mask_x, img_u_w, ignore = (t.to(device) for t in (img_x, mask_x, img_u_w, ignore))
        mixed_in = [(img.to(device), ign.to(device)) for img, ign in mixed_in]
        with torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp):
            loss, parts = training_loss(model, (img_x, mask_x, img_u_w, ignore, mixed_in), args,
                                        mixers, speed, strong, mix_gen)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        sums += torch.stack([loss.detach(), *(p.detach() for p in parts)]).float()
    sums = all_reduce(sums) / (iters * world)
    with torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp):
        miou, ious = evaluate(net, loader_val, num_classes, device, progress)
    return {"epoch": epoch, "loss": sums[0].item(), "loss_x": sums[1].item(), "loss_s": sums[2].item(),
            "loss_fp": sums[3].item(), "loss_speed": sums[4].item(), "miou": miou, "iou": ious,
            "lr": lr, "seconds": time.time() - t0}


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
        pred = model(img[:4].to(device))[0].argmax(1).cpu()
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


if __name__ == "__main__":
    try:
        main(args=ARGS)
    except DataError as err:  # a data problem is a one-line message, not a traceback
        sys.exit(f"{EXAMPLE}: error: {err}")
