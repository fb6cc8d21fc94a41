"""Speed variants of a fitting step, measured side by side in one run (issue: a fitting engine
at the hardware's limit). Each variant is timed on the same image, one torch thread; the
variants take turns **step by step** (one step of each, then the next round), and the median
step is reported: timing blocks of steps one variant after the other let the load of the
shared machine drift between blocks by ±20%, more than most of the differences measured here.
Ratios to the baseline are what to read.

Every network (Deep Decoder, Deep Image Prior, ConvDecoder; the adjoint only where the
upsampling is bilinear, not ConvDecoder):

- ``baseline``: the library's network, Adam step, as ``fit`` runs it;
- ``bf16 autocast``: the forward pass under ``torch.autocast`` with bfloat16, as
  ``fit(precision="bf16")`` runs it (the backward follows the forward's types);
- ``upsampling adjoint``: the gradient of bilinear ×2 upsampling computed as its adjoint, a
  depthwise 4×4 convolution of stride 2 after replicate padding (a custom autograd function;
  same gradients to float rounding) instead of ATen's ``upsample_bilinear2d_backward``.

The Deep Image Prior also:

- ``64 channels``, ``32 channels``: its skip network at that width (channels per scale; the
  library's 128), the same input.

The Deep Decoder also:

- ``channels_last``: the network and input in channels-last memory format;
- ``var_mean norm``: channel normalization written as ``var_mean`` + one fused affine
  (``addcmul``) instead of ``F.instance_norm``;
- ``torch.compile``: the network compiled by TorchInductor (default mode; on the CPU it emits
  C++ for the pointwise and reduction kernels); the first compilation's time, with an empty
  compile cache as on a user's first run, is reported apart (``compile s``), the steps after
  it are timed like the others;
- ``K fits (vmap)``: K = 2, 4, 8 networks stacked with ``torch.func.stack_module_state`` and
  run with ``vmap`` in one step (one Adam over the stacked weights), time per step against K
  times the baseline;
- ``K fits (stacked)``: the same K networks written out as one batch of K images: every 1×1
  convolution one ``bmm`` over the K weight matrices, upsampling and ReLU on the batch, channel
  norm one ``instance_norm`` over K·k channels (outputs equal to the K separate nets).

With ``--vs-plain-loop``: the library's fitting loop against the plainest loop on the same
network. ``reconstruct(noisy, net=NET)`` runs as a user calls it (the default denoising fit of
camera, σ = 25: its automatic stop's bookkeeping, output average and, for DIP, input noise),
its budget cut to ``--steps``, then again with a fixed budget; from its callback, after every
library iteration, one step of a plain loop on a second copy of the same network (built with
the same seed) is run: forward, mean squared error, backward, Adam at the same learning rate —
nothing else. The two loops take turns step by step, so both meet the same load; means of the
time between callbacks (one library iteration, the plain step excluded) and of the plain step,
over a whole number of 8-iteration cycles (DIP's rules read the unperturbed output every 8th
iteration: a median would leave that pass out). deepinv's own
``DeepImagePrior`` loop is not timed: deepinv needs a torchvision that replaces this CPU
torch (``pip install --dry-run deepinv`` next to torch 2.13.0 would install torch 2.14.1).

With ``--k-fits``: K fits (K = 1, 2, 4, 8) of one network, each to its own noisy camera
(noise seeds 0 … K−1) for a fixed budget, in turn with ``fit`` and at once with ``fit_many``
(one batch through ``vmap``), alternating; the seconds of each and the per-fit ratio (at once /
in turn). ``benchmarks/gpu_speed.py`` runs the same on CUDA.

With ``--time-to-result``: the Deep Decoder's default denoising fit of camera 256², σ = 25
(``reconstruct(noisy, net="deep_decoder")``, automatic stop), as the library runs it and with
the network wrapped in ``torch.compile`` (compilation counts in the time), alternating, twice
each: the first compilation starts from an empty cache, the second finds the first's code in
the on-disk cache, as a user's second image would.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/speed_variants.py [--sizes 64 128] [--steps 40]
        [--nets deep_decoder dip conv_decoder]
    OMP_NUM_THREADS=1 python benchmarks/speed_variants.py --nets dip --sizes 128 256 \
        --name speed_variants_dip                    # DIP's widths at 128² and 256²
    python benchmarks/speed_variants.py --time-to-result [--threads 2]
    OMP_NUM_THREADS=1 python benchmarks/speed_variants.py --k-fits --nets deep_decoder dip \
        --sizes 64 128 --steps 16 --repeats 2
    OMP_NUM_THREADS=1 python benchmarks/speed_variants.py --vs-plain-loop --nets deep_decoder dip \
        --steps 120
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import tempfile
import time

import harness
import torch
from torch.func import functional_call, stack_module_state, vmap

from deepprior import (
    Identity,
    add_gaussian_noise,
    build_net,
    fit,
    fit_many,
    nets,
    problem_defaults,
    reconstruct,
    sample_image,
)
from deepprior.stopping import Fixed


class VarMeanNorm(torch.nn.Module):
    """Channel normalization with var_mean and one fused affine (same output)."""

    def __init__(self, norm: torch.nn.Module) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = norm.weight, norm.bias, norm.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, unbiased=False)
        scale = self.weight[None, :, None, None] * torch.rsqrt(var + self.eps)
        return torch.addcmul(self.bias[None, :, None, None] - mean * scale, x, scale)


class _UpsamplingAdjoint(torch.autograd.Function):
    """Bilinear ×2 upsampling whose backward is its adjoint as a strided convolution: along an
    axis the gradient is ``0.25 g[2j-1] + 0.75 g[2j] + 0.75 g[2j+1] + 0.25 g[2j+2]`` with ``g``
    extended by its border values."""

    @staticmethod
    def forward(ctx, x):
        return torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear",
                                               align_corners=False)

    @staticmethod
    def backward(ctx, grad):
        h = torch.tensor((0.25, 0.75, 0.75, 0.25), dtype=grad.dtype)
        kernel = (h[:, None] * h[None, :]).expand(grad.shape[1], 1, 4, 4)
        padded = torch.nn.functional.pad(grad, (1, 1, 1, 1), mode="replicate")
        return torch.nn.functional.conv2d(padded, kernel, stride=2, groups=grad.shape[1])


class UpsamplingAdjoint(torch.nn.Module):
    """``nn.Upsample(scale_factor=2, mode="bilinear")`` with :class:`_UpsamplingAdjoint`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _UpsamplingAdjoint.apply(x)


def _swapped(net: torch.nn.Module, kind: str, make) -> torch.nn.Module:
    """A copy of ``net`` with every child module of class name ``kind`` replaced by
    ``make(child)``."""
    net = copy.deepcopy(net)
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if type(child).__name__ == kind:
                setattr(module, name, make(child))
    return net


@contextlib.contextmanager
def compiled_networks():
    """Inside: every network ``reconstruct`` builds by name is wrapped in ``torch.compile``."""
    build = nets.build_net

    def build_compiled(*args, **kwargs):
        module, z = build(*args, **kwargs)
        return torch.compile(module), z
    nets.build_net = build_compiled
    try:
        yield
    finally:
        nets.build_net = build


def _interleaved(steps: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds of each step function, the variants taking turns one step at a time."""
    for step in steps.values():
        for _ in range(5):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return times


def _single(net, z, y, bf16: bool = False, learning_rate: float = 0.01):
    opt = torch.optim.Adam(net.parameters(), lr=learning_rate)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # as fit(precision=)
            out = net(z).float()
        torch.mean((out - y) ** 2).backward()
        opt.step()
    return step


def _compiled(net, z, y, record: dict):
    compiled = torch.compile(net)
    step = _single(compiled, z, y)
    start = time.perf_counter()
    step()  # compiles forward and backward
    record.setdefault("compile", []).append(time.perf_counter() - start)
    return step


def _bmm_stacked(size: int, k: int, y):
    """K Deep Decoders as one batch: per-member 1×1 weights in a bmm, one norm call."""
    built, inputs = zip(*(build_net("deep_decoder", (1, size, size), seed=s) for s in range(k)),
                        strict=True)
    zs = torch.cat(inputs)
    convs = [[m for m in net.modules() if isinstance(m, torch.nn.Conv2d)] for net in built]
    norms = [[m for m in net.modules() if type(m).__name__ == "ChannelNorm"] for net in built]
    weights = [torch.nn.Parameter(torch.stack([c[i].weight[:, :, 0, 0].detach() for c in convs]))
               for i in range(len(convs[0]))]
    gains = [torch.nn.Parameter(torch.cat([n[i].weight.detach() for n in norms]))
             for i in range(len(norms[0]))]
    shifts = [torch.nn.Parameter(torch.cat([n[i].bias.detach() for n in norms]))
              for i in range(len(norms[0]))]
    last = len(gains) - 1

    def conv(w, x):
        return torch.bmm(w, x.flatten(2)).unflatten(2, x.shape[2:])

    def forward():
        x = zs
        for i, (w, g, b) in enumerate(zip(weights, gains, shifts, strict=False)):
            x = conv(w, x)
            if i < last:
                x = torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear",
                                                    align_corners=False)
            x = torch.relu(x)
            x = torch.nn.functional.instance_norm(x.flatten(0, 1)[None], weight=g, bias=b,
                                                  eps=1e-5).view_as(x)
        return torch.sigmoid(conv(weights[-1], x))

    with torch.no_grad():  # the stacked form computes what the K nets compute
        reference = torch.cat([net(zs[i:i + 1]) for i, net in enumerate(built)])
        assert torch.allclose(forward(), reference, atol=1e-5)
    opt = torch.optim.Adam([*weights, *gains, *shifts], lr=0.01)

    def step():
        opt.zero_grad(set_to_none=True)
        torch.mean((forward() - y) ** 2, dim=(1, 2, 3)).sum().backward()
        opt.step()
    return step


def _stacked(size: int, k: int, y):
    built = [build_net("deep_decoder", (1, size, size), seed=s) for s in range(k)]
    params, buffers = stack_module_state([net for net, _ in built])
    zs = torch.stack([z for _, z in built])
    base = copy.deepcopy(built[0][0]).to("meta")
    forward = vmap(lambda p, b, z: functional_call(base, (p, b), (z,)))
    opt = torch.optim.Adam(list(params.values()), lr=0.01)

    def step():
        opt.zero_grad(set_to_none=True)
        out = forward(params, buffers, zs)  # (K, 1, 1, H, W)
        torch.mean((out - y) ** 2, dim=(1, 2, 3, 4)).sum().backward()
        opt.step()
    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nets", nargs="+", default=["deep_decoder", "dip", "conv_decoder"],
                        help="networks (the Deep Decoder gets every variant, the others bf16; "
                             "they run a quarter of --steps)")
    parser.add_argument("--time-to-result", action="store_true",
                        help="instead: the Deep Decoder's automatic-stop fit of camera 256², "
                             "σ = 25, as the library runs it and under torch.compile")
    parser.add_argument("--vs-plain-loop", action="store_true",
                        help="instead: reconstruct's loop against a plain loop (forward, MSE, "
                             "backward, Adam) on the same network, step by step")
    parser.add_argument("--k-fits", action="store_true",
                        help="instead: K fits in turn (fit) and at once (fit_many), K = 1, 2, "
                             "4, 8")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default="speed_variants",
                        help="the results file's name, results/NAME.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")  # cold cache
    if args.time_to_result:
        return time_to_result(args.threads)
    if args.vs_plain_loop:
        return vs_plain_loop(args)
    if args.k_fits:
        rows = [k_fits(net_name, size, k, args.steps, "cpu", args.repeats)
                for net_name in args.nets for size in args.sizes for k in (1, 2, 4, 8)]
        path = harness.save_json(f"speed_k_fits_{args.threads}thread", {"rows": rows})
        print(harness.markdown_table(rows, list(rows[0])))
        print(f"wrote {path}")
        return 0
    rows = []
    for net_name, size in [(n, s) for s in args.sizes for n in args.nets]:
        net, z = build_net(net_name, (1, size, size), seed=0)
        y = torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(0))
        compile_seconds: dict[str, list[float]] = {}
        variants = {
            "baseline": lambda net=net, z=z, y=y: _single(copy.deepcopy(net), z, y),
            "bf16 autocast": lambda net=net, z=z, y=y: _single(copy.deepcopy(net), z, y, True),
        }
        if net_name in ("deep_decoder", "dip"):  # bilinear ×2 (ConvDecoder's is nearest)
            variants["upsampling adjoint"] = lambda net=net, z=z, y=y: _single(
                _swapped(net, "Upsample", lambda m: UpsamplingAdjoint()), z, y)
        if net_name == "deep_decoder":
            variants |= _decoder_variants(net, z, y, size, compile_seconds)
        if net_name == "dip":
            for width in (64, 32):
                narrow = build_net("dip", (1, size, size), seed=0, channels=width)[0]
                variants[f"{width} channels"] = lambda net=narrow, z=z, y=y: _single(net, z, y)
        steps = args.steps if net_name == "deep_decoder" else max(5, args.steps // 4)
        times = _interleaved({name: make() for name, make in variants.items()},
                             args.repeats * steps)
        base = statistics.median(times["baseline"])
        for name, values in times.items():
            k = int(name.split("=")[1].split()[0]) if name.startswith("K=") else 1
            seconds = statistics.median(values)
            rows.append({"net": net_name, "size": size, "variant": name,
                         "s/step": round(seconds, 5), "vs baseline": round(seconds / base, 2),
                         "per fit vs baseline": round(seconds / k / base, 2),
                         "compile s": round(compile_seconds["compile"][0], 1)
                         if name == "torch.compile" else ""})
            print(rows[-1], flush=True)
    path = harness.save_json(args.name, {"rows": rows, "steps": args.steps,
                                                "repeats": args.repeats})
    print(harness.markdown_table(rows, list(rows[0])))
    print(f"wrote {path}")
    return 0


def k_fits(net_name: str, size: int, k: int, steps: int, device: str,
           repeats: int) -> dict:
    """K fits of ``net_name`` (seeds 0 … K−1), each to its own noisy camera (σ = 25), for
    ``steps`` iterations: in turn with ``fit`` and at once with ``fit_many``, alternating
    ``repeats`` times after a short warm-up of each; the median seconds of each."""
    clean = torch.from_numpy(sample_image("camera", size=size))[None, None]
    noisy = [torch.from_numpy(add_gaussian_noise(clean[0, 0].numpy(), 25 / 255, seed=s))[None,
                                                                                          None]
             for s in range(k)]
    operator = Identity((1, size, size))
    options = {"learning_rate": problem_defaults("denoise", net_name).learning_rate,
               "device": device, "reg_noise_std": 1 / 30 if net_name == "dip" else 0.0}

    def in_turn(budget: int) -> float:
        built = [build_net(net_name, (1, size, size), seed=s) for s in range(k)]
        return sum(fit(net, z, y, operator, policy=Fixed(budget), max_num_iter=budget,
                       seed=s, **options).elapsed
                   for s, ((net, z), y) in enumerate(zip(built, noisy, strict=True)))

    def at_once(budget: int) -> float:
        nets_, zs = zip(*(build_net(net_name, (1, size, size), seed=s) for s in range(k)),
                        strict=True)
        results = fit_many(nets_, zs, noisy, [operator] * k,
                           policies=[Fixed(budget) for _ in range(k)], max_num_iter=budget,
                           **options)
        return max(r.elapsed for r in results)

    in_turn(3), at_once(3)  # warm-up: allocations, kernel selection
    times: dict[str, list[float]] = {"in turn": [], "at once": []}
    for _ in range(repeats):
        times["in turn"].append(in_turn(steps))
        times["at once"].append(at_once(steps))
    turn_s, once_s = (statistics.median(times[name]) for name in ("in turn", "at once"))
    row = {"net": net_name, "size": size, "device": device, "K": k, "steps": steps,
           "in turn s": round(turn_s, 3), "at once s": round(once_s, 3),
           "at once / in turn": round(once_s / turn_s, 2),
           "at once / one fit": round(once_s / (turn_s / k), 2)}
    print(row, flush=True)
    return row


def time_to_result(threads: int) -> int:
    """``reconstruct`` to its automatic stop, after and before, alternating (seed 0)."""
    clean = sample_image("camera", size=256)
    noisy = add_gaussian_noise(clean, 25 / 255, seed=0)
    contexts = {"library": contextlib.nullcontext, "torch.compile": compiled_networks}
    rows = []
    for run, variant in enumerate([*contexts, *contexts]):
        torch._dynamo.reset()  # the compiled code stays in the on-disk cache of this process
        with contexts[variant]():
            start = time.process_time()
            result = reconstruct(noisy, net="deep_decoder", seed=0, ground_truth=clean)
            cpu = time.process_time() - start
        if variant == "torch.compile":
            variant += " (cold cache)" if run < len(contexts) else " (warm cache: second run)"
        rows.append({"variant": variant, "threads": threads, "stopped at": result.num_iter,
                     "steps": result.num_steps, "wall s": round(result.elapsed, 1),
                     "CPU s": round(cpu, 1), "PSNR": round(result.psnr, 3)})
        print(rows[-1], flush=True)
    path = harness.save_json(f"speed_time_to_result_{threads}thread",
                             {"rows": rows, "case": "camera 256², σ = 25, seed 0, Deep Decoder"})
    print(harness.markdown_table(rows, list(rows[0])))
    print(f"wrote {path}")
    return 0


def vs_plain_loop(args: argparse.Namespace) -> int:
    """``reconstruct``'s iterations against plain-loop steps on the same network, in turns."""
    rows = []
    for net_name, size in [(n, s) for s in args.sizes for n in args.nets]:
        clean = sample_image("camera", size=size)
        noisy = add_gaussian_noise(clean, 25 / 255, seed=0)
        steps = 8 * max(1, round(args.steps / (8 if net_name == "deep_decoder" else 32)))
        # the automatic stop as a user gets it, and a fixed budget: the rules that measure the
        # output (discrepancy, hold-out) ask DIP's loop for one more, unperturbed forward pass
        for stop in ("auto", f"fixed:num_iter={steps + 5}"):
            net, z = build_net(net_name, (1, size, size), seed=0)
            step = _single(net, z, torch.from_numpy(noisy)[None, None],
                           learning_rate=problem_defaults("denoise", net_name).learning_rate)
            library: list[float] = []
            plain: list[float] = []
            mark = [time.perf_counter()]

            def take_turns(state, library=library, plain=plain, mark=mark, step=step) -> None:
                start = time.perf_counter()
                library.append(start - mark[0])  # one library iteration, the plain step not in
                step()
                mark[0] = time.perf_counter()
                plain.append(mark[0] - start)

            result = reconstruct(noisy, net=net_name, seed=0, max_num_iter=steps + 5,
                                 stop=stop, callback=take_turns)
            library, plain = library[5:], plain[5:]  # warm-up: Adam's state, allocations
            lib_s, plain_s = statistics.fmean(library), statistics.fmean(plain)
            rows.append({"net": net_name, "size": size, "threads": args.threads,
                         "rule": result.config["stop_resolved"],
                         "iterations timed": len(library), "library ms/it": 1e3 * lib_s,
                         "plain loop ms/it": 1e3 * plain_s,
                         "library speed-up": round(plain_s / lib_s, 2)})
            print(rows[-1], flush=True)
    path = harness.save_json(f"speed_vs_plain_loop_{args.threads}thread", {"rows": rows})
    print(harness.markdown_table(rows, list(rows[0])))
    print(f"wrote {path}")
    return 0


def _decoder_variants(net, z, y, size: int, compile_seconds: dict) -> dict:
    """The Deep Decoder's own variants (layout, norm, compilation, K fits at once)."""
    return {
            "channels_last": lambda net=net, z=z, y=y: _single(
                copy.deepcopy(net).to(memory_format=torch.channels_last),
                z.to(memory_format=torch.channels_last), y),
            "var_mean norm": lambda net=net, z=z, y=y: _single(
                _swapped(net, "ChannelNorm", VarMeanNorm), z, y),
            "torch.compile": lambda net=net, z=z, y=y, seconds=compile_seconds: _compiled(
                copy.deepcopy(net), z, y, seconds),
            **{f"K={k} fits (vmap)": (lambda k=k, size=size, y=y: _stacked(size, k, y))
               for k in (2, 4, 8)},
            **{f"K={k} fits (stacked)": (lambda k=k, size=size, y=y: _bmm_stacked(size, k, y))
               for k in (2, 4, 8)},
    }


if __name__ == "__main__":
    raise SystemExit(main())
