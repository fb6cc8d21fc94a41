"""Small shared harness for the benchmark scripts: machine facts, result files, tables.

Benchmarks use the public deepprior API like any user; this module only records where and how
a number was measured, so every table in RESULTS.md can be traced to a command and a machine.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import fcntl
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepprior import jsonable

RESULTS = Path(__file__).resolve().parent / "results"


def machine_info() -> dict[str, Any]:
    """Where the numbers come from: CPU/GPU, thread count, versions, date, exact command."""
    import deepprior

    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "platform": platform.platform(),
        "processor": _cpu_name(),
        # the VM may report a generic name ("Intel(R) Xeon(R) Processor"): the family and
        # model numbers, and the kernels torch dispatches, tell two CPUs apart
        "cpu_id": _cpu_id(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "deepprior": deepprior.__version__,
        "commit": _git_commit(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _git_commit() -> str | None:
    """The checkout's commit ("-dirty" with uncommitted changes); None outside a git checkout."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"],
                             cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _cpu_id() -> str | None:
    """"family F model M stepping S" from /proc/cpuinfo (x86), None where there is none."""
    try:
        fields = dict(line.split(":", 1) for line in
                      Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines()
                      if ":" in line)
    except OSError:
        return None
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    if "cpu family" not in fields:
        return None
    return " ".join(f"{k.removeprefix('cpu ')} {fields.get(k, '?')}"
                    for k in ("cpu family", "model", "stepping"))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


#: Photographs bundled with scikit-image (no download) that no default was chosen on: the
#: defaults were measured on ``camera`` and ``astronaut`` only (``defaults.py --photos``).
PHOTOS = ("coffee", "brick", "chelsea", "grass", "rocket", "coins", "clock", "moon")


def clean_image(name: str, size: int) -> np.ndarray:
    """A clean test image as float32 in [0, 1]: a library sample image, or one of
    scikit-image's bundled photographs (``PHOTOS``), cut to its central square and resized
    with anti-aliasing to ``size``², as the sample images are."""
    from skimage import data
    from skimage.transform import resize

    from deepprior import sample_image
    from deepprior.data import SAMPLE_IMAGES

    if name in SAMPLE_IMAGES:
        return sample_image(name, size=size)
    image = getattr(data, name)().astype(np.float32) / 255.0
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    image = image[top:top + side, left:left + side]
    image = resize(image, (size, size) + image.shape[2:], anti_aliasing=True, order=1)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def save_json(name: str, payload: dict[str, Any]) -> Path:
    """Write ``results/<name>.json`` with the machine info attached."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    body = {"machine": machine_info(), **payload}
    path.write_text(json.dumps(jsonable(body), indent=1) + "\n")
    return path


def markdown_table(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub markdown table; floats with 2 decimals unless already formatted."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column, "")
            cells.append(f"{value:.2f}" if isinstance(value, float) else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine_line(info: dict[str, Any]) -> str:
    """One line for RESULTS.md: processor, threads, versions, date."""
    return (
        f"{info['processor']}, {info['cpu_count']} cores ({info['torch_threads']} torch threads), "
        f"torch {info['torch']}, deepprior {info['deepprior']}, {info['date']}"
    )


def study_arguments(parser: argparse.ArgumentParser, *, name: str) -> None:
    """The options every study script shares (denoise.py, cs.py)."""
    parser.add_argument("--only", choices=("all", "baselines", "prior"), default="all",
                        help="run only the baselines or only the deepprior arms (all)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the rows already in the JSON file and skip them")
    parser.add_argument("--recompute", action="store_true",
                        help="with --resume: recompute the selected rows even if stored")
    parser.add_argument("--report", action="store_true",
                        help="print the tables from the JSON file, redraw the plot, exit")
    parser.add_argument("--max-fits", type=int, default=10**6,
                        help="run at most this many new deepprior fits (all)")
    parser.add_argument("--shard", type=parse_shard, default=(0, 1), metavar="K/N",
                        help="run only the cases K, K+N, K+2N, ... of each list (0/1): start N "
                             "processes with K = 0..N-1 and --resume to share the work "
                             "between N cores; they write to the same JSON file safely")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    parser.add_argument("--seed", type=int, default=0, help="noise, operator and network seed (0)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS,
                        help=f"where {name}.json and {name}.png go (benchmarks/results)")


def study_main(
    args: argparse.Namespace,
    *,
    name: str,
    run: Callable[[argparse.Namespace, Store], None],
    plot: Callable[[dict[str, Any], Path], Any],
    report: Callable[[dict[str, Any]], str],
    config: dict[str, Any] | None = None,
) -> int:
    """The entry point of a study script: ``--report`` only, or run, save, plot and report.

    ``run(args, store)`` adds the rows; ``config`` (study-specific settings) is recorded with
    the run next to the options every study shares.
    """
    path = args.out_dir / f"{name}.json"
    if args.report:
        if not path.exists():
            print(f"error: {path} does not exist; run the study first", file=sys.stderr)
            return 1
        payload = json.loads(path.read_text())
        plot(payload, args.out_dir / f"{name}.png")
        print(report(payload))
        return 0
    torch.set_num_threads(args.threads)
    run_config = {"quick": args.quick, "only": args.only, "seed": args.seed,
                  "threads": args.threads, "shard": "/".join(map(str, args.shard)),
                  "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), **(config or {})}
    store = Store(path, args.resume, run_config)
    start = time.perf_counter()
    run(args, store)
    plot(store.payload, args.out_dir / f"{name}.png")
    print(report(store.payload))
    print(f"\n{len(store.payload['rows'])} rows in {path} "
          f"({time.perf_counter() - start:.0f} s)", flush=True)
    return 0


def without_every(spec: str) -> str:
    """A stopping spec without its rules' ``every=k``: how often a rule reads the output moves
    where it stops by a few iterations, not what it measures (results/observe_every.json)."""
    return re.sub(r",?every=\d+", "", spec)


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` → ``(K, N)`` with ``0 <= K < N``."""
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard must look like K/N, got {text!r}") from None
    if not 0 <= k < n:
        raise argparse.ArgumentTypeError(f"--shard K/N needs 0 <= K < N, got {text!r}")
    return k, n


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<path>.lock``: one process at a time rewrites ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


#: The fields of a run (``machine_info``) that :meth:`Store.add` copies into every row.
STAMP = ("date", "processor", "cpu_id", "commit")


class Store:
    """The JSON file of a study: rows keyed by ``row["key"]``, written after every row.

    Several processes may fill one file at once (``--shard``): every write takes an exclusive
    lock on ``<file>.lock``, re-reads the file, replaces only its own row and run entry, and
    writes the file atomically, so no process loses another's rows.
    """

    def __init__(self, path: Path, resume: bool, config: dict[str, Any]) -> None:
        self.path = path
        # as it reads back from JSON, so that the run can be found in the file again
        run = {**machine_info(), "config": config, "pid": os.getpid()}
        self.run = jsonable(run)
        self.payload: dict[str, Any] = {"study": path.stem, "runs": [], "rows": []}
        with locked(self.path):
            if resume and path.exists():
                self.payload = json.loads(path.read_text())
            self.payload["runs"].append(self.run)
            self._write()
        self.done = {self.key(row) for row in self.payload["rows"]}

    @staticmethod
    def key(row: dict[str, Any]) -> str:
        return json.dumps(row["key"])

    def add(self, row: dict[str, Any], *, keep_replaced: bool = False) -> None:
        """Store ``row`` (replacing a stored row with the same key) and write the file; with
        ``keep_replaced`` the row it replaces is kept in it, under ``previous`` (a case
        re-run after a default changed keeps what the old default gave).

        The row is stamped with where it was measured (``run``: the :data:`STAMP` fields of
        the run): the same fit on another CPU, or another commit, can stop elsewhere, so a
        row must say which it came from."""
        row = {**row, "run": {k: self.run.get(k) for k in STAMP}}
        with locked(self.path):
            if self.path.exists():
                on_disk = json.loads(self.path.read_text())
                runs = on_disk["runs"]
                if self.run not in runs:
                    runs.append(self.run)
                self.payload = on_disk
            rows = [r for r in self.payload["rows"] if self.key(r) != self.key(row)]
            replaced = [r for r in self.payload["rows"] if self.key(r) == self.key(row)]
            if keep_replaced and replaced:
                row = {**row, "previous": {k: v for k, v in replaced[0].items()
                                           if k not in ("key", "previous")}}
            self.payload["rows"] = [*rows, row]
            self._write()
        self.done.add(self.key(row))

    def _write(self) -> None:
        tmp = self.path.with_suffix(f".json.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(jsonable(self.payload), indent=1) + "\n")
        tmp.replace(self.path)
