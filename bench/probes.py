"""Benchmark the probes against scikit-learn at Cityscapes-like sizes.

Not a test. ``python bench/probes.py --quick`` (50k train x 10k query patches,
768 dims, 19 classes) or ``--full`` (451,584 x 188,160: the 72-image train
subset against the 30 validation images, 32 tiles x 196 patches each).

Compares, on the same synthetic class-structured features:
- exact 1-NN (ours, blockwise torch) vs ``KNeighborsClassifier(n_neighbors=1,
  algorithm="brute", n_jobs=-1)``: time and % identical predictions (l2; our
  "dot" metric, the paper's, is timed too but has no scikit-learn equivalent);
- the linear probe vs ``LogisticRegression`` (lbfgs): time and test accuracy;
- the peak resident memory each call adds.
With ``--full`` scikit-learn's k-NN runs on the first ``--sklearn-queries``
queries only and its time is scaled linearly to all queries; the table says so.
"""

from __future__ import annotations

import argparse
import os
import platform
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from vitlocal.probes.knn import knn_predict, nearest_neighbors, resolve_device
from vitlocal.probes.linear import predict, train_linear_probe

SIZES = {"quick": (50_000, 10_000), "full": (451_584, 188_160)}
DIM, CLASSES = 768, 19


def make_features(n_train: int, n_query: int, seed: int) -> tuple[np.ndarray, ...]:
    """Gaussian classes with long-tailed priors and a few large-variance dimensions (MAE-like)."""
    rng = np.random.default_rng(seed)
    priors = 1.0 / np.arange(1, CLASSES + 1)
    priors /= priors.sum()
    centers = rng.normal(size=(CLASSES, DIM)).astype(np.float32) * 0.12
    scale = np.ones(DIM, dtype=np.float32)
    scale[rng.choice(DIM, 8, replace=False)] = 10.0

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.choice(CLASSES, size=n, p=priors)
        x = rng.standard_normal(size=(n, DIM), dtype=np.float32)
        x += centers[y]
        x *= scale
        return x, y

    train_x, train_y = draw(n_train)
    query_x, query_y = draw(n_query)
    return train_x, train_y, query_x, query_y


class PeakRSS:
    """Peak resident memory added while the block runs (polls /proc, Linux only)."""

    def __enter__(self) -> PeakRSS:
        self.base = self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_bytes())

    @property
    def added_mib(self) -> float:
        return (self.peak - self.base) / 2**20


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """Result, seconds, peak added MiB (GPU: peak allocated)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as mem:
        start = time.perf_counter()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
    return result, seconds, max(mem.added_mib, gpu)


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    dev = resolve_device(None)
    gpu = f", GPU {torch.cuda.get_device_name(dev)}" if dev.type == "cuda" else ""
    load = ", load average " + " ".join(f"{v:.1f}" for v in os.getloadavg())
    torch_info = f"torch {torch.__version__} with {torch.get_num_threads()} threads"
    return f"{os.cpu_count()} CPUs ({cpu}), {torch_info}{gpu}{load}"


def bench_knn(train_x, train_y, query_x, sk_queries: int) -> list[str]:
    ours_l2, t_l2, m_l2 = timed(lambda: knn_predict(train_x, train_y, query_x, metric="l2"))
    _, t_dot, m_dot = timed(lambda: knn_predict(train_x, train_y, query_x, metric="dot"))
    sk = KNeighborsClassifier(n_neighbors=1, algorithm="brute", metric="euclidean", n_jobs=-1)
    sk.fit(train_x, train_y)
    n_sk = min(sk_queries, len(query_x))
    ref, t_sk, m_sk = timed(lambda: sk.predict(query_x[:n_sk]))
    t_sk_all = t_sk * len(query_x) / n_sk
    same = ours_l2[:n_sk] == ref
    note = (
        ""
        if n_sk == len(query_x)
        else f" (sklearn on {n_sk} queries, time extrapolated x{len(query_x) / n_sk:.1f})"
    )
    rows = [
        f"| 1-NN l2 | {t_l2:.1f} s | {t_sk_all:.1f} s{note} | {t_sk_all / t_l2:.1f}x "
        f"| {100 * same.mean():.3f}% identical predictions | {m_l2:.0f} / {m_sk:.0f} MiB |",
        f"| 1-NN dot (paper) | {t_dot:.1f} s | no sklearn equivalent | — | — | {m_dot:.0f} MiB |",
    ]
    if not same.all():
        rows.append(_explain_disagreements(train_x, query_x[:n_sk], ~same))
    return rows


def _explain_disagreements(train_x: np.ndarray, query_x: np.ndarray, differ: np.ndarray) -> str:
    """Where predictions differ: how much farther our neighbour is than the float64 one."""
    q = query_x[differ].astype(np.float64)
    idx32, _ = nearest_neighbors(train_x, query_x[differ], metric="l2")
    _, d64 = nearest_neighbors(train_x, query_x[differ], metric="l2", dtype=torch.float64)
    ours = ((q - train_x[idx32[:, 0]].astype(np.float64)) ** 2).sum(axis=1)
    gap = np.abs(ours - d64[:, 0]) / d64[:, 0]
    return (
        f"| | {differ.sum()} disagreements: our float32 neighbour is farther than the float64 "
        f"one by at most {gap.max():.1e} (relative), i.e. rounding-level near-ties | | | | |"
    )


def bench_linear(train_x, train_y, query_x, query_y, epochs: int) -> list[str]:
    (probe, settings), t_ours, m_ours = timed(
        lambda: train_linear_probe(train_x, train_y, CLASSES, epochs=epochs, seed=0)
    )
    acc_ours = (predict(probe, query_x) == query_y).mean()
    fit_ours = (predict(probe, train_x) == train_y).mean()
    sk = LogisticRegression(max_iter=500)
    _, t_sk, m_sk = timed(lambda: sk.fit(train_x, train_y))
    acc_sk, fit_sk = sk.score(query_x, query_y), sk.score(train_x, train_y)
    return [
        f"| linear probe ({settings['epochs']} ep, batch {settings['batch_size']}, "
        f"lr {settings['lr']}) vs LogisticRegression (lbfgs, {int(sk.n_iter_.max())} it) "
        f"| {t_ours:.1f} s | {t_sk:.1f} s | {t_sk / t_ours:.1f}x "
        f"| test accuracy {100 * acc_ours:.2f}% vs {100 * acc_sk:.2f}% "
        f"({100 * (acc_ours - acc_sk):+.2f} pt); "
        f"train {100 * fit_ours:.2f}% vs {100 * fit_sk:.2f}% "
        f"| {m_ours:.0f} / {m_sk:.0f} MiB |"
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="50k x 10k patches (default)")
    mode.add_argument("--full", action="store_true", help="451,584 x 188,160 patches")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=30, help="linear-probe epochs")
    parser.add_argument(
        "--sklearn-queries", type=int, default=10_000, help="queries scikit-learn's k-NN runs on"
    )
    args = parser.parse_args()
    size = "full" if args.full else "quick"
    n_train, n_query = SIZES[size]
    train_x, train_y, query_x, query_y = make_features(n_train, n_query, args.seed)

    print(
        f"## Probe benchmark ({size}: {n_train:,} train x {n_query:,} query patches, "
        f"{DIM} dims, {CLASSES} classes)\n"
    )
    print(f"Machine: {machine()}\n")
    print(
        "| task | ours | scikit-learn | speed-up | agreement | peak added memory (ours / sklearn) |"
    )
    print("|---|---|---|---|---|---|")
    for row in bench_knn(train_x, train_y, query_x, args.sklearn_queries):
        print(row, flush=True)
    for row in bench_linear(train_x, train_y, query_x, query_y, args.epochs):
        print(row, flush=True)


if __name__ == "__main__":
    main()
