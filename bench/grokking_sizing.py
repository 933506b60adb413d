"""Sizing the transformer suite's presets (issue 23): a plain torch training loop on modular
addition, no measurement, one thread by default.

Per evaluated epoch it prints the training loss and accuracy and the held-out accuracy of the
iterate at the end of the epoch (all evaluated in one no-grad forward), and the wall time so
far; at the end, the first epoch whose iterate fits the training set (train accuracy 100%:
memorization), the first whose held-out accuracy is >= 95% (grokking), the epoch where the
training loss first fell below ``--target-loss``, and the milliseconds per training step and
per evaluation, measured apart.

    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/grokking_sizing.py --optimizer adamw --lr 1e-3 \\
        --wd 1.0 --train-fraction 0.4 --epochs 3000 --max-minutes 8

It prints a final ``RESULT {json}`` line.

``--measure DIR`` instead measures the same configuration exactly through
:func:`deep.measure.measure` (the training split as :class:`deep.tensordata.TensorData`, the loss
``outputs(F.cross_entropy)``, the warm-up as a per-step ``scheduler_fn``; ``--epochs`` epochs of
``--batch`` samples) into ``DIR``, and prints the replay verdict of ``DIR/trace.json``, pass 1's
and pass 2's milliseconds per step, and theta*'s training and held-out accuracy:

    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/grokking_sizing.py --batch 512 --warmup 10 --epochs 40 \
        --measure /tmp/grok-measure
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import torch
import torch.nn.functional as F

from deep.algorithmic import modular_addition
from deep.models.transformer import ACTIVATIONS, NORMS, RESIDUALS, build_transformer


def make_optimizer(name, params, lr, wd, momentum, betas, eps):
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd)
    if name == "sgdm":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=wd)
    raise ValueError(name)


@torch.no_grad()
def evaluate(model, x, y, n_train):
    """Loss and accuracy on the first ``n_train`` rows (the training set) and accuracy on the rest."""
    was = model.training
    model.eval()
    logits = model(x)
    model.train(was)
    correct = logits.argmax(1) == y
    tr_loss = F.cross_entropy(logits[:n_train], y[:n_train]).item()
    return tr_loss, correct[:n_train].float().mean().item(), correct[n_train:].float().mean().item()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--p", type=int, default=97)
    ap.add_argument("--train-fraction", type=float, default=0.4)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--random-labels", action="store_true")
    ap.add_argument("--seed", type=int, default=0, help="model initialization seed")
    ap.add_argument("--layers", type=int, choices=(1, 2), default=1)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--d-mlp", type=int, default=None)
    ap.add_argument("--norm", choices=NORMS, default="none")
    ap.add_argument("--residual", choices=RESIDUALS, default="all")
    ap.add_argument("--activation", choices=ACTIVATIONS, default="relu")
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--optimizer", choices=("sgd", "sgdm", "adam", "adamw"), default="adamw")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--wd", type=float, default=1.0)
    ap.add_argument("--momentum", type=float, default=0.5)
    ap.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.98))
    ap.add_argument("--eps", type=float, default=1e-8)
    ap.add_argument("--warmup", type=int, default=0, help="linear warm-up over this many steps")
    ap.add_argument("--batch", type=int, default=0, help="0: full batch")
    ap.add_argument("--epochs", type=int, default=1000)
    ap.add_argument("--max-minutes", type=float, default=10.0)
    ap.add_argument("--eval-every", type=int, default=1)
    ap.add_argument("--print-every", type=int, default=50)
    ap.add_argument("--target-loss", type=float, default=0.01)
    ap.add_argument("--stop", choices=("grok", "target", "never"), default="grok",
                    help="stop at grokking, at the target loss (and memorization), or never")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--measure", metavar="DIR", default=None,
                    help="measure this configuration exactly with deep.measure.measure() into DIR instead")
    ap.add_argument("--data-seed", type=int, default=0, help="the measured run's sampler seed (--measure)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    task = modular_addition(args.p, args.train_fraction, args.split_seed, random_labels=args.random_labels)
    x_all = torch.cat([task.x_train, task.x_test])
    y_all = torch.cat([task.y_train, task.y_test])
    n_train = len(task)
    def model_fn():
        return build_transformer(f"transformer{args.layers}", task.vocab_size, task.num_classes, task.seq_len,
                                 args.norm, args.residual, args.activation, args.dropout, args.seed,
                                 d_model=args.d_model, n_heads=args.heads, d_mlp=args.d_mlp)

    def opt_fn(params):
        return make_optimizer(args.optimizer, params, args.lr, args.wd, args.momentum, tuple(args.betas), args.eps)

    def sched_fn(opt):
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / args.warmup))

    batch = n_train if args.batch <= 0 else args.batch
    if args.measure:
        return run_measured(args, task, model_fn, opt_fn, sched_fn if args.warmup else None, batch)
    model = model_fn()
    opt = opt_fn(model.parameters())
    sched = sched_fn(opt) if args.warmup else None
    steps_per_epoch = math.ceil(n_train / batch)
    gen = torch.Generator().manual_seed(1234 + args.seed)
    print(f"# {task.describe()}; {model.describe()}", flush=True)
    print(f"# {vars(args)}; batch {batch}, {steps_per_epoch} steps per epoch", flush=True)

    t_start, c_start = time.perf_counter(), time.process_time()
    t_train = t_eval = 0.0
    steps = 0
    mem = grok = target = None
    last = None
    diverged = False
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        perm = torch.randperm(n_train, generator=gen) if batch < n_train else None
        for i in range(steps_per_epoch):
            if perm is None:
                xb, yb = task.x_train, task.y_train
            else:
                idx = perm[i * batch:(i + 1) * batch]
                xb, yb = task.x_train[idx], task.y_train[idx]
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            steps += 1
        t_train += time.perf_counter() - t0
        if not math.isfinite(loss.item()):
            diverged = True
            print(f"epoch {epoch}: loss {loss.item()} -- diverged", flush=True)
            break
        if epoch % args.eval_every and epoch != args.epochs:
            continue
        t0 = time.perf_counter()
        tr_loss, tr_acc, te_acc = evaluate(model, x_all, y_all, n_train)
        t_eval += time.perf_counter() - t0
        wall = time.perf_counter() - t_start
        last = (epoch, tr_loss, tr_acc, te_acc, wall)
        new = []
        cpu = time.process_time() - c_start
        if mem is None and tr_acc == 1.0:
            mem = (epoch, wall, cpu)
            new.append("MEMORIZED")
        if grok is None and te_acc >= 0.95:
            grok = (epoch, wall, cpu)
            new.append("GROKKED")
        if target is None and tr_loss < args.target_loss:
            target = (epoch, wall, cpu)
            new.append(f"TRAIN LOSS < {args.target_loss}")
        if new or epoch % args.print_every == 0 or epoch == 1:
            print(f"epoch {epoch:6d}  train loss {tr_loss:.4g}  train acc {tr_acc:.4f}  held-out acc {te_acc:.4f}"
                  f"  wall {wall:7.1f}s  cpu {time.process_time() - c_start:7.1f}s  {' '.join(new)}", flush=True)
        if args.stop == "grok" and grok is not None and mem is not None:
            break
        if args.stop == "target" and target is not None and mem is not None:
            break
        if wall > 60 * args.max_minutes:
            print(f"# stopped at the time limit of {args.max_minutes} min", flush=True)
            break
    wall = time.perf_counter() - t_start
    result = {
        "config": vars(args), "n_train": n_train, "n_test": int(task.y_test.numel()), "batch": batch,
        "steps_per_epoch": steps_per_epoch, "epochs_run": last[0] if last else None, "steps": steps,
        "memorized_epoch": mem[0] if mem else None, "memorized_wall_s": round(mem[1], 1) if mem else None,
        "memorized_cpu_s": round(mem[2], 1) if mem else None,
        "grokked_epoch": grok[0] if grok else None, "grokked_wall_s": round(grok[1], 1) if grok else None,
        "grokked_cpu_s": round(grok[2], 1) if grok else None,
        "target_loss_epoch": target[0] if target else None,
        "target_loss_wall_s": round(target[1], 1) if target else None,
        "final": dict(zip(("epoch", "train_loss", "train_acc", "test_acc", "wall_s"), last)) if last else None,
        "diverged": diverged, "wall_s": round(wall, 1), "cpu_s": round(time.process_time() - c_start, 1),
        "ms_per_step": round(1000 * t_train / max(steps, 1), 2),
        "ms_per_eval": round(1000 * t_eval / max(1, (last[0] if last else 0) // args.eval_every), 2),
        "num_params": model.describe()["num_params"], "torch": torch.__version__, "threads": args.threads,
    }
    print("RESULT " + json.dumps(result), flush=True)


def run_measured(args, task, model_fn, opt_fn, sched_fn, batch):
    """The configuration measured exactly by :func:`deep.measure.measure` (two passes, bitwise
    replay); prints what the trace says about the replay and the pass times."""
    from deep.losses import outputs
    from deep.measure import measure
    from deep.state import load_state

    train, held_out = task.as_data()
    print(f"# measure(): {task.describe()}; {model_fn().describe()}", flush=True)
    t0 = time.perf_counter()
    res = measure(model_fn, opt_fn, train, lr=args.lr, epochs=args.epochs, batch_size=batch, workdir=args.measure,
                  seed=args.seed, data_seed=args.data_seed, loss_fn=outputs(F.cross_entropy), scheduler_fn=sched_fn,
                  progress=False)
    wall = time.perf_counter() - t0
    with open(os.path.join(args.measure, "trace.json")) as f:
        side = json.load(f)
    star = model_fn()
    star.load_state_dict(load_state(os.path.join(args.measure, "theta_star.pt"), "cpu"))
    star.eval()
    with torch.no_grad():
        held_acc = (star(held_out.tensors[0]).argmax(1) == held_out.tensors[1]).float().mean().item()
    tr = res.trace
    result = {
        "config": vars(args), "status": res.status, "workdir": args.measure, "steps": len(tr) if tr is not None else None,
        "replay_verified": side.get("replay_verified"),
        "pass1_ms_per_step": side["pass1"]["ms_per_step"], "pass1_wall_s": side["pass1"]["wall_s"],
        "pass2_ms_per_step": side["pass2"]["ms_per_step"], "pass2_wall_s": side["pass2"]["wall_s"],
        "theta_stars": side["pass2"]["theta_stars"], "wall_s": round(wall, 1),
        "theta_star_eval": side.get("theta_star_eval"), "theta_star_held_out_acc": held_acc,
        "final_loss": float(tr.loss[-1]) if tr is not None else None,
        "num_params": side.get("num_params"), "torch": torch.__version__, "threads": args.threads,
    }
    print(f"replay_verified: {result['replay_verified']}")
    print(f"pass 1: {result['pass1_ms_per_step']:.2f} ms/step ({result['pass1_wall_s']:.1f} s); pass 2: "
          f"{result['pass2_ms_per_step']:.2f} ms/step ({result['pass2_wall_s']:.1f} s, {result['theta_stars']} theta*); "
          f"{result['steps']} steps, {wall:.1f} s in all")
    print("RESULT " + json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
