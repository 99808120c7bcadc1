"""Train the small VGG of models/qcfs.py on MNIST or Fashion-MNIST (CPU is enough).

Reads data through snncc.data (run `make data` first); inputs are the loader's [0,1] pixels with
no normalisation, so the exported ONNX model takes exactly what `snncc.data.load` returns.
Writes a checkpoint (state dict + model config + test accuracy) to --out.

    .venv/bin/python models/train.py --dataset fashion-mnist --act qcfs --levels 4 \
        --epochs 5 --out .cache/models/fmnist_qcfs_vgg_t4.pt
"""

from __future__ import annotations

import argparse
import math
import pathlib
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from models.qcfs import QCFS, build, thresholds  # noqa: E402
from snncc import data  # noqa: E402


def augment(x: torch.Tensor, pad: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random crop after zero padding by ``pad`` (per sample), and optional horizontal flip."""
    b, c, h, w = x.shape
    if pad > 0:
        xp = F.pad(x, (pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
        ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
        rows = (oy[:, None] + torch.arange(h))[:, None, :, None]  # [b,1,h,1]
        cols = (ox[:, None] + torch.arange(w))[:, None, None, :]  # [b,1,1,w]
        bi = torch.arange(b)[:, None, None, None]
        ci = torch.arange(c)[None, :, None, None]
        x = xp[bi, ci, rows, cols]
    if flip:
        mask = torch.rand(b, generator=gen) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        xb = torch.from_numpy(x[i : i + batch]).contiguous(memory_format=torch.channels_last)
        correct += int((model(xb).argmax(1).numpy() == y[i : i + batch]).sum())
    return correct / len(x)


@torch.no_grad()
def auto_thresholds(model: torch.nn.Module, x: torch.Tensor, q: float = 0.995) -> list[float]:
    """Sets each QCFS θ, in order, to the ``q`` quantile of its positive inputs on ``x`` (eval mode)."""
    model.eval()
    for layer in [m for m in model.modules() if isinstance(m, QCFS)]:
        seen: list[torch.Tensor] = []
        handle = layer.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
        model(x)
        handle.remove()
        pos = seen[0][seen[0] > 0]
        k = max(1, int(q * pos.numel()))
        layer.theta.fill_(float(pos.kthvalue(k).values) if pos.numel() else 1.0)
    return thresholds(model)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv/linear weights only; not on BN, biases or QCFS thresholds."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="fashion-mnist", choices=data.DATASETS)
    ap.add_argument("--act", default="qcfs", choices=("qcfs", "relu"))
    ap.add_argument("--levels", type=int, default=4, help="QCFS quantisation levels T̃")
    ap.add_argument("--theta", default="8.0",
                    help="initial QCFS threshold θ: a number, or 'auto' = per layer the 99.5th "
                         "percentile of its positive input on 1024 training images (best with --init)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--opt", default="sgd", choices=("sgd", "adam"))
    ap.add_argument("--lr", type=float, default=None, help="peak LR (default 0.1 sgd, 2e-3 adam)")
    ap.add_argument("--wd", type=float, default=5e-4, help="weight decay on conv/linear weights")
    ap.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                    help="random crop (pad 2); plus horizontal flip on fashion-mnist")
    ap.add_argument("--init", type=pathlib.Path, default=None,
                    help="start from this checkpoint's weights (e.g. a ReLU model for QCFS)")
    ap.add_argument("--train-limit", type=int, default=None, help="use only the first N training images")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=pathlib.Path, required=True, help="checkpoint path (.pt)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    x_train, y_train = data.load(args.dataset, "train")
    x_test, y_test = data.load(args.dataset, "test")
    if args.train_limit:
        x_train, y_train = x_train[: args.train_limit], y_train[: args.train_limit]
    x_train_t, y_train_t = torch.from_numpy(x_train), torch.from_numpy(y_train)

    theta0 = 8.0 if args.theta == "auto" else float(args.theta)
    model = build(args.act, args.levels, theta0)
    if args.init is not None:
        state = torch.load(args.init, map_location="cpu", weights_only=True)["state_dict"]
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any(not k.endswith(".theta") for k in missing):
            raise SystemExit(f"--init {args.init}: missing {missing}, unexpected {unexpected}")
        print(f"init from {args.init}")
    if args.theta == "auto":
        th = auto_thresholds(model, torch.from_numpy(x_train[:1024]))
        print("QCFS θ from data: " + ", ".join(f"{t:.3f}" for t in th))
    model = model.to(memory_format=torch.channels_last)
    lr = args.lr if args.lr is not None else (0.1 if args.opt == "sgd" else 2e-3)
    groups = param_groups(model, args.wd)
    if args.opt == "sgd":
        opt = torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    else:
        for g in groups:  # AdamW-style decoupled decay
            g["weight_decay"] *= 10
        opt = torch.optim.AdamW(groups, lr=lr)
    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    total = args.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))

    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.dataset}: train {len(x_train)}, test {len(x_test)}; model VGG act={args.act}"
          f"{f' T̃={args.levels}' if args.act == 'qcfs' else ''}, {n_params} params; "
          f"{args.opt} lr={lr} epochs={args.epochs}", flush=True)
    flip = args.augment and args.dataset == "fashion-mnist"
    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x_train), generator=gen)
        loss_sum, correct, seen = 0.0, 0, 0
        for i in range(steps_per_epoch):
            idx = perm[i * args.batch_size : (i + 1) * args.batch_size]
            xb, yb = x_train_t[idx], y_train_t[idx]
            if args.augment:
                xb = augment(xb, 2, flip, gen)
            xb = xb.contiguous(memory_format=torch.channels_last)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            seen += len(idx)
        acc = evaluate(model, x_test, y_test)
        th = thresholds(model)
        th_s = f", θ {min(th):.2f}..{max(th):.2f}" if th else ""
        print(f"epoch {epoch + 1}/{args.epochs}: loss {loss_sum / seen:.4f}, train acc {correct / seen:.4f}, "
              f"test acc {acc:.4f}{th_s}, {time.time() - t0:.0f}s", flush=True)

    model = model.to(memory_format=torch.contiguous_format)
    acc = evaluate(model, x_test, y_test)
    config = {"act": args.act, "levels": args.levels, "theta": theta0}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "config": config, "dataset": args.dataset,
                "test_acc": acc, "argv": sys.argv[1:]}, args.out)
    qcfs = [m for m in model.modules() if isinstance(m, QCFS)]
    print(f"test accuracy {acc:.4f} ({args.dataset} test, {len(x_test)} images); "
          f"{len(qcfs)} QCFS layers; saved {args.out} ({time.time() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
