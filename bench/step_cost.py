"""What an exact measurement costs next to plain training: ms per step, side by side, in one run.

Loops, all on the same network, batch size and data (random CIFAR-shaped uint8 images):

* ``typical``: a typical PyTorch loop, a DataLoader over normalized float tensors with ``--workers``
  workers, fp32, NCHW, default (non-deterministic) kernels;
* ``resident``: data resident on the device as uint8 and normalized there (deep/data.py),
  channels_last on CUDA;
* ``deterministic``: the same with deterministic algorithms (what pass 1 runs);
* ``record_only``: deterministic step + the recorder, no forward at theta* (recording overhead);
* ``replay``: what pass 2 runs per step: deterministic step + forward at theta* + recorder;
* on CUDA, ``graph_deterministic``, ``graph_record_only``, ``graph_replay``: the same three
  deterministic loops with each step replayed as one CUDA graph (deep/graphs.py), as the runner
  runs them there;
* ``runner``: the real two-pass runner (deep/measure.py: data indexing, the last smaller batch,
  checkpoints, replay checks) over ``--runner-epochs`` epochs, per step of pass 1 + pass 2; on CUDA
  its steps are CUDA graph replays (deep/graphs.py, the runner's default there), and at strict
  fp32 it is also run without graphs, so the graphs' speed-up is read side by side.

Precision: every loop of one measurement runs at one stated precision, set explicitly before it
through torch's current precision API (deep/env.py ``set_tf32``; ``--tf32 off``: strict fp32
matmuls and convolutions, the runner's default; ``on``: TF32 in both, which is deterministic too,
and which the runner offers as ``allow_tf32`` and records). ``--tf32 both`` measures each network
at both, side by side, so the ratios can be read either way (default on CUDA; on the CPU TF32
does not exist and only ``off`` is run); ``--tf32-also NET ...`` adds TF32 for those networks only.

Graph loops report the path they really ran (``graph_paths``, and the runner's ``runner_step_path``
for both passes): a loop whose capture failed ran eagerly, is listed in ``fell_back``, is printed
as such, and gives no graph ratio (an eager number is never printed as a graph number).

The JSON is written after every network and precision (``complete`` is true only at the end), so
a run cut by its time limit keeps what it measured.

Ratios printed and written to JSON (with the device name and library versions):
``recording overhead = (record_only - deterministic) / replay`` and
``two-pass cost = (deterministic + replay) / typical``, and the runner's own two-pass cost.

Usage::

    python bench/step_cost.py --device cuda --networks resnet18 resnet34 vgg16 --tf32 both --out $OUT/step_cost.json
    python bench/step_cost.py --device cpu --width 0.125 --steps 5 --warmup 2 --workers 0   # CPU check
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from deep.data import CyclicSampler, DeviceData  # noqa: E402
from deep.env import environment, precision_state, resolve_device, restore_precision, set_deterministic  # noqa: E402
from deep.env import set_tf32  # noqa: E402
from deep.graphs import WARMUP_STEPS, StepGraphs  # noqa: E402
from deep.measure import measure  # noqa: E402
from deep.pass2 import StarRecording  # noqa: E402
from deep.step import batch_stats_only, flat_model, make_step  # noqa: E402
from deep.models import build_model  # noqa: E402
from gamma_theory import PathRecorder  # noqa: E402
from gamma_theory.flat import FlatParams  # noqa: E402
from gamma_theory.files import write_json  # noqa: E402


class _NoStarForward(StarRecording):
    """Pass 2's recording without the forward at theta*: a zero stands for its loss (the
    recording's own cost, apart from the forward's)."""

    zero: torch.Tensor

    def at_forward(self, batch):
        return self.zero


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _timed(step, dev, warmup, steps) -> float:
    for _ in range(warmup):
        step()
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(dev)
    return 1e3 * (time.perf_counter() - t0) / steps


def set_precision(tf32: bool) -> None:
    """TF32 in matmuls and convolutions, on or off, explicitly (PyTorch's defaults differ)."""
    set_tf32(tf32)


def bench_network(name, dev, args, images, labels, tf32: bool = False) -> dict:
    cl = dev.type == "cuda"

    def model():
        torch.manual_seed(0)
        m = build_model(name, 10, width=args.width).to(dev)
        return m.to(memory_format=torch.channels_last) if cl else m

    res = {"tf32": tf32}
    # typical: DataLoader over float tensors, NCHW, default kernels, at the stated precision
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark = True
    set_precision(tf32)
    x_all = (images.float() / 255 - 0.5) / 0.25
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_all, labels), batch_size=args.batch_size,
                                         shuffle=True, num_workers=args.workers, pin_memory=cl, drop_last=True,
                                         persistent_workers=args.workers > 0)
    m = build_model(name, 10, width=args.width).to(dev)
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    it = iter(loader)

    def typical():
        nonlocal it
        try:
            xb, yb = next(it)
        except StopIteration:
            it = iter(loader)
            xb, yb = next(it)
        xb, yb = xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True)
        loss = F.cross_entropy(m(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    res["typical"] = _timed(typical, dev, args.warmup, args.steps)

    data = DeviceData(images, labels, device=dev, channels_last=cl)
    sampler = CyclicSampler(len(data), args.batch_size, 0)
    batches: list = []

    def next_idx():
        if not batches:
            batches.extend(b for b in sampler.next_epoch(dev) if len(b) == args.batch_size)
        return batches.pop()

    def loop(det: bool, star: bool, record: bool, graphs: bool = False):
        """One loop's step: the runner's own step (deep/step.py), with pass 2's recording around it
        when ``record`` (the forward at theta* too when ``star``; without, a zero stands for its
        loss). ``graphs``: as the runner on CUDA, the whole step replayed as one CUDA graph."""
        if det:
            set_deterministic(allow_tf32=tf32)
        else:
            torch.use_deterministic_algorithms(False)
            torch.backends.cudnn.benchmark = True
            set_precision(tf32)
        mm = model()
        fp = flat_model(mm) if record or graphs else None  # the runner's layout: theta_k is the flat buffer
        o = torch.optim.SGD(mm.parameters(), lr=0.01)
        recording = None
        if record:
            ms = model()
            rec = PathRecorder(fp, FlatParams(ms).flat, 0.01)
            if star:
                contextlib.ExitStack().enter_context(batch_stats_only(ms))  # for the loop's life, as pass 2
                recording = StarRecording(rec, [ms], F.cross_entropy, record_grad=False)
            else:
                recording = _NoStarForward(rec, [], F.cross_entropy, record_grad=False)
                recording.zero = torch.zeros((), device=dev)
        body = make_step(mm, o, data, F.cross_entropy, fp, recording)
        g = (StepGraphs(dev, True, backend=args.graphs_backend()) if args.graphs_backend is not None
             else StepGraphs(dev, True)) if graphs else None
        made.append(g)

        def step():
            idx = next_idx()
            out = body(idx) if g is None else g.run(len(idx), body, idx)
            if recording is not None:
                recording.rec.push(out[0].clone() if g is not None else out[0])
                if len(recording.rec) >= 64:  # the runner flushes once per epoch
                    recording.rec.flush()
        return step

    made: list = []  # each loop's StepGraphs (None: no graphs), in order
    res["resident"] = _timed(loop(False, False, False), dev, args.warmup, args.steps)
    res["deterministic"] = _timed(loop(True, False, False), dev, args.warmup, args.steps)
    res["record_only"] = _timed(loop(True, False, True), dev, args.warmup, args.steps)
    res["replay"] = _timed(loop(True, True, True), dev, args.warmup, args.steps)
    if cl or args.graphs_backend is not None:  # the same three deterministic loops as CUDA graph replays
        warm = max(args.warmup, WARMUP_STEPS + 1)  # the eager warm-up steps and the capture, then replays only
        res["graph_paths"], res["fell_back"] = {}, []
        for kind, flags in (("graph_deterministic", (True, False, False)), ("graph_record_only", (True, False, True)),
                            ("graph_replay", (True, True, True))):
            res[kind] = _timed(loop(*flags, True), dev, warm, args.steps)
            info = res["graph_paths"][kind] = made[-1].info()
            if info["path"] != "cuda-graphs" or info["fallback"]:
                res["fell_back"].append(kind)
                print(f"  {name}: {kind} FELL BACK to eager ({info['fallback']}): its time is an eager time",
                      flush=True)

    # the real runner, both passes, on the first runner_images images: with CUDA graphs where the
    # runner uses them (its default on CUDA), and on CUDA at strict fp32 also without, side by side
    n = min(len(data), args.runner_images)
    sub = DeviceData(images[:n], labels[:n], device=dev, channels_last=cl)

    def runner(graphs: bool) -> dict:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            run = measure(lambda: build_model(name, 10, width=args.width),
                          lambda p: torch.optim.SGD(p, lr=0.01), sub, lr=0.01, epochs=args.runner_epochs,
                          batch_size=args.batch_size, workdir=Path(tmp) / "r", channels_last=cl, progress=False,
                          allow_tf32=tf32, cuda_graphs=graphs)
            wall = time.perf_counter() - t0
        meta = run.trace.meta
        return {"two_pass_per_step": 1e3 * wall / len(run.trace), "pass1": meta["pass1"]["ms_per_step"],
                "pass2": meta["pass2"]["ms_per_step"], "replay_verified": meta["replay_verified"],
                "allow_tf32": meta["env"]["allow_tf32"],
                "step_path": {p: meta[p]["step_path"]["path"] for p in ("pass1", "pass2")},
                "fallback": {p: meta[p]["step_path"]["fallback"] for p in ("pass1", "pass2")
                             if meta[p]["step_path"]["fallback"]}}

    r = runner(cl)
    if cl and (r["fallback"] or set(r["step_path"].values()) != {"cuda-graphs"}):
        res.setdefault("fell_back", []).append("runner")
        print(f"  {name}: the runner FELL BACK to eager ({r['step_path']}, {r['fallback']})", flush=True)
    res["runner_two_pass_per_step"] = r["two_pass_per_step"]
    res["runner_pass1"], res["runner_pass2"] = r["pass1"], r["pass2"]
    res["runner_replay_verified"] = r["replay_verified"]
    res["runner_allow_tf32"] = r["allow_tf32"]
    res["runner_step_path"] = r["step_path"]
    if cl and not tf32 and "runner" not in res.get("fell_back", []):
        e = runner(False)
        res["runner_eager"] = e
        res["runner_graphs_speedup"] = {"pass1": e["pass1"] / r["pass1"], "pass2": e["pass2"] / r["pass2"],
                                        "two_pass": e["two_pass_per_step"] / r["two_pass_per_step"]}
    res["ratios"] = {
        "recording_overhead_of_replay_step": (res["record_only"] - res["deterministic"]) / res["replay"],
        "two_pass_over_typical": (res["deterministic"] + res["replay"]) / res["typical"],
        "runner_two_pass_over_typical": res["runner_two_pass_per_step"] / res["typical"],
        "deterministic_over_resident": res["deterministic"] / res["resident"],
    }
    if "graph_replay" in res and not set(res["fell_back"]) & {"graph_deterministic", "graph_record_only",
                                                               "graph_replay"}:
        res["ratios"].update({
            "graph_recording_overhead_of_replay_step": (res["graph_record_only"] - res["graph_deterministic"])
            / res["graph_replay"],
            "graph_two_pass_over_typical": (res["graph_deterministic"] + res["graph_replay"]) / res["typical"],
        })
    return res


def main(argv=None, graphs_backend=None) -> int:
    """``graphs_backend``: a factory of a stand-in graph backend (tests: the graph loops on the CPU)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=None)
    ap.add_argument("--networks", nargs="+", default=["resnet18", "resnet34", "vgg16"])
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--images", type=int, default=10000, help="random CIFAR-shaped images to train on")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--runner-images", type=int, default=5000)
    ap.add_argument("--runner-epochs", type=int, default=2)
    ap.add_argument("--tf32", choices=("off", "on", "both"), default=None,
                    help="precision of every loop: off (strict fp32), on (TF32), or both side by side "
                         "(default: both on CUDA, off on the CPU)")
    ap.add_argument("--tf32-also", nargs="+", default=[], metavar="NET",
                    help="with --tf32 off: these networks at TF32 too")
    ap.add_argument("--out", default=None, help="write the results as JSON here (after every network)")
    args = ap.parse_args(argv)
    args.graphs_backend = graphs_backend
    dev = resolve_device(args.device)
    if args.tf32 is None:
        args.tf32 = "both" if dev.type == "cuda" else "off"
    if (args.tf32 != "off" or args.tf32_also) and dev.type != "cuda":
        ap.error("--tf32 on/both, --tf32-also: TF32 exists only on CUDA")
    precisions = {"off": [False], "on": [True], "both": [False, True]}[args.tf32]
    todo = [(n, t) for n in args.networks for t in precisions]
    todo += [(n, True) for n in args.tf32_also if (n, True) not in todo]
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (args.images,), generator=g)
    result = {"command": " ".join(["python", "bench/step_cost.py", *sys.argv[1:]]),
              "args": {k: v for k, v in vars(args).items() if k != "graphs_backend"},
              "env": environment(dev), "ms_per_step": {}, "complete": False, "fell_back": {}}
    if any(t for _, t in todo):
        result["ms_per_step_tf32"] = {}

    def save():
        if args.out:  # atomically, its folder made if needed
            write_json(args.out, result, default=str)

    before = (precision_state(), torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    for name, tf32 in todo:
        try:
            r = bench_network(name, dev, args, images, labels, tf32)
        finally:  # the caller's settings back (the loops set precision and determinism per loop)
            restore_precision(before[0])
            torch.use_deterministic_algorithms(before[1])
            torch.backends.cudnn.benchmark = before[2]
        result["ms_per_step_tf32" if tf32 else "ms_per_step"][name] = r
        if r.get("fell_back"):
            result["fell_back"][f"{name} ({'TF32' if tf32 else 'strict fp32'})"] = r["fell_back"]
        save()
        rt = r["ratios"]
        print(f"{name} ({'TF32' if tf32 else 'strict fp32'}): typical {r['typical']:.2f} | "
              f"resident {r['resident']:.2f} | deterministic "
              f"{r['deterministic']:.2f} | record_only {r['record_only']:.2f} | replay {r['replay']:.2f} | "
              f"runner 2-pass {r['runner_two_pass_per_step']:.2f} ms/step")
        print(f"  recording overhead {100 * rt['recording_overhead_of_replay_step']:.1f}% of a replay step; "
              f"two-pass / typical {rt['two_pass_over_typical']:.2f}x; runner two-pass / typical "
              f"{rt['runner_two_pass_over_typical']:.2f}x (pass 1 {r['runner_step_path']['pass1']}, pass 2 "
              f"{r['runner_step_path']['pass2']}); replay verified: {r['runner_replay_verified']}")
        if "graph_recording_overhead_of_replay_step" in rt:
            print(f"  as CUDA graphs: deterministic {r['graph_deterministic']:.2f} | record_only "
                  f"{r['graph_record_only']:.2f} | replay {r['graph_replay']:.2f} ms/step; recording overhead "
                  f"{100 * rt['graph_recording_overhead_of_replay_step']:.1f}%; two-pass / typical "
                  f"{rt['graph_two_pass_over_typical']:.2f}x")
        elif "graph_replay" in r:
            print(f"  as CUDA graphs: no graph numbers, loops fell back to eager: {', '.join(r['fell_back'])}")
        if "runner_graphs_speedup" in r:
            sp = r["runner_graphs_speedup"]
            print(f"  runner without graphs: pass 1 {r['runner_eager']['pass1']:.2f}, pass 2 "
                  f"{r['runner_eager']['pass2']:.2f} ms/step; graphs speed them up {sp['pass1']:.2f}x and "
                  f"{sp['pass2']:.2f}x")
    result["complete"] = True
    save()
    e = result["env"]
    print(f"device: {e['device_name']} ({e['device']}), torch {e['torch']}, CUDA {e['cuda']}, cuDNN {e['cudnn']}, "
          f"driver {e['driver']}")
    if result["fell_back"]:
        print("step_cost: graphs FELL BACK to eager in " + "; ".join(f"{k}: {', '.join(v)}"
                                                                  for k, v in result["fell_back"].items()))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
