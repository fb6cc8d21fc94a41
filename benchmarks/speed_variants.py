"""Speed variants of the Deep Decoder step, measured side by side in one run (issue: a fitting
engine at the hardware's limit). Each variant is timed on the same image, one torch thread,
alternating, repeated; ratios to the baseline are what to read (the machine is shared).

- ``baseline``: the library's Deep Decoder, Adam step, as ``fit`` runs it;
- ``channels_last``: the network and input in channels-last memory format;
- ``var_mean norm``: channel normalization written as ``var_mean`` + one fused affine
  (``addcmul``) instead of ``F.instance_norm``;
- ``K fits (vmap)``: K = 2, 4, 8 networks stacked with ``torch.func.stack_module_state`` and
  run with ``vmap`` in one step (one Adam over the stacked weights), time per step against K
  times the baseline.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/speed_variants.py [--sizes 64 128] [--steps 40]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import harness
import torch
from torch.func import functional_call, stack_module_state, vmap

from deepprior import build_net


class VarMeanNorm(torch.nn.Module):
    """Channel normalization with var_mean and one fused affine (same output)."""

    def __init__(self, norm: torch.nn.Module) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = norm.weight, norm.bias, norm.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, unbiased=False)
        scale = self.weight[None, :, None, None] * torch.rsqrt(var + self.eps)
        return torch.addcmul(self.bias[None, :, None, None] - mean * scale, x, scale)


def _swap_norms(net: torch.nn.Module) -> torch.nn.Module:
    net = copy.deepcopy(net)
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if type(child).__name__ == "ChannelNorm":
                setattr(module, name, VarMeanNorm(child))
    return net


def _time(step, steps: int) -> float:
    for _ in range(5):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def _single(net, z, y):
    opt = torch.optim.Adam(net.parameters(), lr=0.01)

    def step():
        opt.zero_grad(set_to_none=True)
        torch.mean((net(z) - y) ** 2).backward()
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
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for size in args.sizes:
        net, z = build_net("deep_decoder", (1, size, size), seed=0)
        y = torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(0))
        variants = {
            "baseline": lambda net=net, z=z, y=y: _single(copy.deepcopy(net), z, y),
            "channels_last": lambda net=net, z=z, y=y: _single(
                copy.deepcopy(net).to(memory_format=torch.channels_last),
                z.to(memory_format=torch.channels_last), y),
            "var_mean norm": lambda net=net, z=z, y=y: _single(_swap_norms(net), z, y),
            **{f"K={k} fits (vmap)": (lambda k=k, size=size, y=y: _stacked(size, k, y))
               for k in (2, 4, 8)},
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.repeats):  # alternate, so that load changes hit every variant
            for name, make in variants.items():
                times[name].append(_time(make(), args.steps))
        base = statistics.median(times["baseline"])
        for name, values in times.items():
            k = int(name.split("=")[1].split()[0]) if name.startswith("K=") else 1
            seconds = statistics.median(values)
            rows.append({"size": size, "variant": name, "s/step": round(seconds, 5),
                         "vs baseline": round(seconds / base, 2),
                         "per fit vs baseline": round(seconds / k / base, 2)})
            print(rows[-1], flush=True)
    path = harness.save_json("speed_variants", {"rows": rows, "steps": args.steps,
                                                "repeats": args.repeats})
    print(harness.markdown_table(rows, list(rows[0])))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
