"""Training: ``python -m models.train --preset P --data DIR --out DIR``.

MaskTrackRCNN's schedule on YouTube-VIS-format data (SGD, lr 0.005 per 32
images scaled with the batch, momentum 0.9, weight decay 1e-4, gradient clip
35, linear warm-up, steps at epochs 8 and 11 of 12). Checkpoints go to
``--out``; ``--resume`` continues exactly where a run stopped, mid-epoch
included, so long CPU runs can be done in chunks (``--max-iters`` /
``--time-limit``). CUDA with AMP when present; several GPUs with
``torchrun --nproc-per-node N -m models.train ...`` (DDP).

The eight experiments of the backbone / RoI-extractor study are
``--preset {r50,r101,x101_32x4d,x101_64x4d} --roi-extractor {roialign,temporal}``.

``--copy-paste``, ``--zoom`` and ``--photometric`` turn on the training-pair
augmentation of ``models.data.augment`` (new backgrounds and pasted people,
zoom in and out, camera looks); check what it makes with
``python -m models.data.preview --data DIR --out sheet.png`` and the same flags.
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
from torch.utils.data import DataLoader
from tqdm import tqdm

from .checkpoint import read_checkpoint, save_checkpoint
from .data import YTVISPairs, collate_pairs, load_ytvis
from .data.augment import add_augment_arguments, build_augmenter, resolve_augment_arguments
from .data.split_args import add_split_arguments, resolve_split_arguments
from .presets import PRESETS, build_model
from .schedule import ResumableSampler, Schedule
from .sizes import parse_size_wh


def _input_size(text: str) -> tuple[int, int]:
    """``--input-size`` WIDTHxHEIGHT -> (width, height), at least 32 a side."""
    try:
        return parse_size_wh(text, minimum=32)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m models.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", required=True, choices=list(PRESETS))
    p.add_argument("--roi-extractor", choices=["roialign", "temporal"], default="roialign")
    p.add_argument("--temporal-heads", default="box,track", help="heads using Temporal RoI Align (box,mask,track)")
    add_split_arguments(p)
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoints and log.jsonl")
    p.add_argument("--input-size", type=_input_size, default=(640, 360), help="keep-ratio scale WxH")
    p.add_argument("--frame-range", type=int, default=None, help="reference frame within +-N frames")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--lr-steps", type=int, nargs="*", default=[8, 11])
    p.add_argument("--batch-size", type=int, default=1, help="pairs per process and step")
    p.add_argument("--base-lr", type=float, default=0.005, help="lr per --base-batch images")
    p.add_argument("--base-batch", type=int, default=32)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--clip", type=float, default=35.0, help="gradient norm clip (0 = off)")
    p.add_argument("--warmup-iters", type=int, default=500)
    p.add_argument("--warmup-ratio", type=float, default=1.0 / 3.0)
    p.add_argument("--pretrained-backbone", help="local backbone weights: a torchvision ImageNet checkpoint (ResNet "
                   "presets) or the NanoDet-g checkpoint of `make nanodet` (nano; its default)")
    p.add_argument("--weights", type=Path, help="start from this checkpoint's weights (fine-tuning)")
    p.add_argument("--resume", nargs="?", const="auto", help="continue from OUT/latest.pt (or a given path)")
    p.add_argument("--max-iters", type=int, help="stop (with a checkpoint) after this many iterations in all")
    p.add_argument("--time-limit", type=float, help="stop (with a checkpoint) after this many minutes")
    p.add_argument("--checkpoint-every", type=int, default=500, help="iterations between latest.pt saves")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model option override")
    add_augment_arguments(p)
    args = p.parse_args(argv)
    resolve_split_arguments(p, args)
    resolve_augment_arguments(p, args)
    return args


def model_overrides(args: argparse.Namespace, categories: list[dict]) -> dict:
    width, height = args.input_size
    overrides = {
        "roi_extractor": args.roi_extractor,
        "temporal_heads": tuple(h for h in args.temporal_heads.split(",") if h),
        "num_classes": len(categories),
        "class_names": tuple(c["name"] for c in categories),
        "min_size": min(width, height),
        "max_size": max(width, height),
    }
    if args.pretrained_backbone:
        overrides["pretrained_backbone"] = args.pretrained_backbone
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"error: --set {item!r}: expected KEY=VALUE")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value  # a bare word, e.g. --set support_level=coarsest
    return overrides


class Distributed:
    """What DDP needs to know; a single process when not launched by torchrun."""

    def __init__(self) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if self.world_size > 1:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self) -> torch.device:
        if torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        if self.world_size == 1:
            return values
        tensor = torch.tensor(list(values.values()), device=self.device())
        dist.all_reduce(tensor)
        return dict(zip(values, (tensor / self.world_size).tolist()))


def to_device(images: list[torch.Tensor], targets: list[dict], device: torch.device):
    return [i.to(device) for i in images], [{k: v.to(device) for k, v in t.items()} for t in targets]


def main(argv: list[str] | None = None) -> int:
    try:
        return train(parse_args(argv))
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def train(args: argparse.Namespace) -> int:
    ddp = Distributed()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed + ddp.rank)
    device = ddp.device()

    annotations = load_ytvis(args.ann)
    dataset = YTVISPairs(
        annotations, args.images, scale=args.input_size, flip_prob=0.5, frame_range=args.frame_range, seed=args.seed,
        augmenter=build_augmenter(args, annotations, args.images),
    )
    if len(dataset) == 0:
        raise SystemExit(f"error: {args.ann}: no annotated frames to train on")
    categories = annotations.categories

    model = build_model(args.preset, **model_overrides(args, categories))
    if ddp.main and model.config.backbone == "resnet" and not model.config.pretrained_backbone and not (
        args.resume or args.weights
    ):
        print(f"warning: {args.preset} starts from random weights; give --pretrained-backbone "
              "PATH (a local torchvision ImageNet checkpoint) for the reference recipe", file=sys.stderr)
    start_iteration = 0
    resume = None
    if args.resume:
        resume_path = args.out / "latest.pt" if args.resume == "auto" else Path(args.resume)
        resume = read_checkpoint(resume_path)
        model.load_state_dict(resume["model"])
        start_iteration = int(resume["iteration"])
    elif args.weights:
        model.load_state_dict(read_checkpoint(args.weights)["model"])
    model.to(device)

    sampler = ResumableSampler(len(dataset), args.seed, ddp.rank, ddp.world_size)
    iters_per_epoch = math.ceil(sampler.per_rank / args.batch_size)
    total_iters = iters_per_epoch * args.epochs
    schedule = Schedule(
        base_lr=args.base_lr,
        base_batch=args.base_batch,
        batch_size=args.batch_size * ddp.world_size,
        epochs=args.epochs,
        lr_steps=tuple(args.lr_steps),
        warmup_iters=args.warmup_iters,
        warmup_ratio=args.warmup_ratio,
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=schedule.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    use_amp = device.type == "cuda" and not args.no_amp
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        if "scaler" in resume:
            scaler.load_state_dict(resume["scaler"])
    train_model = model
    if ddp.world_size > 1:
        ids = [device.index] if device.type == "cuda" else None
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    loader_args = dict(batch_size=args.batch_size, collate_fn=collate_pairs, num_workers=args.workers)
    if args.workers > 0:
        loader_args["persistent_workers"] = False
    args.out.mkdir(parents=True, exist_ok=True)
    log = (args.out / "log.jsonl").open("a") if ddp.main else None
    stop_at = total_iters if args.max_iters is None else min(total_iters, args.max_iters)
    deadline = time.monotonic() + args.time_limit * 60 if args.time_limit else math.inf

    def checkpoint(name: str, iteration: int) -> None:
        if ddp.main:
            save_checkpoint(
                args.out / name, model, categories,
                optimizer=optimizer.state_dict(), scaler=scaler.state_dict(),
                epoch=iteration // iters_per_epoch, iteration=iteration, args=json.loads(json.dumps(vars(args), default=str)),
            )

    iteration = start_iteration
    bar = tqdm(total=stop_at, initial=iteration, disable=not ddp.main, dynamic_ncols=True, desc="train")
    model.train()
    started = time.monotonic()
    last: dict[str, float] = {}
    while iteration < stop_at and time.monotonic() < deadline:
        epoch = iteration // iters_per_epoch
        sampler.set_epoch(epoch, start=(iteration - epoch * iters_per_epoch) * args.batch_size)
        dataset.set_epoch(epoch)
        for key_images, key_targets, ref_images, ref_targets in DataLoader(dataset, sampler=sampler, **loader_args):
            lr = schedule.lr_at(iteration, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            key_images, key_targets = to_device(key_images, key_targets, device)
            ref_images, ref_targets = to_device(ref_images, ref_targets, device)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                losses = train_model(key_images, key_targets, ref_images, ref_targets)
                loss = sum(losses.values())
            if not torch.isfinite(loss):
                checkpoint("diverged.pt", iteration)
                raise SystemExit(f"error: loss is {float(loss)} at iteration {iteration}; stopped (see diverged.pt)")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if args.clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, args.clip)
            scaler.step(optimizer)
            scaler.update()
            iteration += 1

            last = ddp.mean({"loss": loss.item(), **{k: v.item() for k, v in losses.items()}})
            bar.update(1)
            bar.set_postfix(loss=f"{last['loss']:.3f}", track=f"{last['loss_track']:.3f}", lr=f"{lr:.2e}", refresh=False)
            if log is not None and (iteration % args.log_every == 0 or iteration == stop_at):
                elapsed = time.monotonic() - started
                rate = (iteration - start_iteration) / max(elapsed, 1e-9)
                record = {"iter": iteration, "epoch": epoch, "lr": lr, **last,
                          "s_per_iter": 1 / max(rate, 1e-9), "eta_s": (stop_at - iteration) / max(rate, 1e-9)}
                log.write(json.dumps(record) + "\n")
                log.flush()
            if iteration % args.checkpoint_every == 0:
                checkpoint("latest.pt", iteration)
            if iteration % iters_per_epoch == 0:
                checkpoint(f"epoch_{iteration // iters_per_epoch}.pt", iteration)
            if iteration >= stop_at or time.monotonic() >= deadline:
                break
    bar.close()
    checkpoint("latest.pt", iteration)
    done = iteration >= total_iters
    if done and ddp.main:
        save_checkpoint(args.out / "final.pt", model, categories, iteration=iteration)
    if ddp.main:
        state = "finished" if done else f"stopped at {iteration}/{total_iters}; continue with --resume"
        loss_text = f", last loss {last['loss']:.3f}" if last else ""
        print(f"train: {args.preset}/{args.roi_extractor} {state}{loss_text}, "
              f"{time.monotonic() - started:.0f} s, checkpoints in {args.out}", file=sys.stderr)
    if ddp.world_size > 1:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
