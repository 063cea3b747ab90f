"""Benchmark the exact k-NN against faiss and against the machine's matmul peak.

Not a test. ``python bench/probes.py --quick`` (the default: 50k train x 4k
query patches, 768 dims, 19 classes; well under a minute on 2 cores) or
``--full`` (451,584 x 188,160: the paper's Cityscapes 1-NN; for a GPU).

What users compare an exact patch search with is faiss's flat index: the same
matrix product. On the same synthetic class-structured features, in one run:

- the machine's peak: best of a few float32 matmuls of 4096^3 (GPU: 8192^3),
  torch's and, on the CPU, numpy's (OpenBLAS, which the CPU search uses),
  the real limit of any exact search;
- exact 1-NN, ours (``vitlocal.probes.knn.nearest_neighbors``, ``dot`` — the
  paper's metric — and ``l2``) vs faiss ``IndexFlatIP`` / ``IndexFlatL2``
  with as many threads as torch: seconds, achieved GFLOP/s (2 n m d / s),
  ``faiss / ours: N.NN x`` and the % of identical indices (exact ties, equal
  float64 scores, aside);
- the linear probe: seconds and epochs/s;
- with ``--sklearn``, the retired baselines too: scikit-learn's brute-force
  ``KNeighborsClassifier`` and ``LogisticRegression`` (about a minute more).

faiss is optional (``pip install -e ".[bench]"``); without it its rows say
so. Times are medians of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from vitlocal.probes.knn import knn_predict, nearest_neighbors, resolve_device
from vitlocal.probes.linear import predict, train_linear_probe

try:
    import faiss
except ImportError:  # optional: the `bench` extra
    faiss = None

SIZES = {"quick": (50_000, 4_000), "full": (451_584, 188_160)}
DIM, CLASSES = 768, 19
FAISS_INDEX = {"dot": "IndexFlatIP", "l2": "IndexFlatL2"}


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


def timed(fn: Callable[[], Any], repeats: int = 1) -> tuple[Any, float, float]:
    """Result, median seconds over ``repeats`` runs, peak added MiB (GPU: peak allocated)."""
    times, added = [], 0.0
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        with PeakRSS() as mem:
            start = time.perf_counter()
            result = fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
        added = max(added, mem.added_mib, gpu)
    return result, statistics.median(times), added


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
    faiss_info = f", faiss {faiss.__version__}" if faiss is not None else ", faiss not installed"
    return f"{os.cpu_count()} CPUs ({cpu}), {torch_info}{faiss_info}{gpu}{load}"


def peak_gflops(repeats: int = 3) -> tuple[float, str]:
    """Best float32 matmul throughput on the device the k-NN uses, and whose it is.

    On the CPU both BLAS libraries at hand are timed (torch's MKL, numpy's
    OpenBLAS, which the CPU search uses): the faster one is the machine's
    practical peak.
    """
    dev = resolve_device(None)
    n = 8192 if dev.type == "cuda" else 4096
    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    candidates = {"torch.matmul": lambda: a @ b}
    if dev.type == "cpu":
        a_np, b_np = a.numpy(), b.numpy()
        candidates["numpy.matmul (OpenBLAS)"] = lambda: a_np @ b_np
    best: dict[str, float] = {}
    for name, product in candidates.items():
        product()  # warm-up
        best[name] = min(timed(product)[1] for _ in range(repeats))
    name = min(best, key=best.get)
    return 2 * n**3 / best[name] / 1e9, name


def _scores64(train_x: np.ndarray, query_x: np.ndarray, idx: np.ndarray, metric: str) -> np.ndarray:
    """float64 score of each query against its chosen gallery item (larger is better)."""
    q, g = query_x.astype(np.float64), train_x[idx].astype(np.float64)
    return (q * g).sum(axis=1) if metric == "dot" else -((q - g) ** 2).sum(axis=1)


def agreement(train_x, query_x, ours: np.ndarray, theirs: np.ndarray, metric: str) -> str:
    """% identical indices among queries whose two picks are not an exact (float64) tie."""
    differ = ours != theirs
    s_ours = _scores64(train_x, query_x[differ], ours[differ], metric)
    s_theirs = _scores64(train_x, query_x[differ], theirs[differ], metric)
    ties = s_ours == s_theirs
    counted = len(ours) - int(ties.sum())
    same = 100 * (counted - int((~ties).sum())) / counted if counted else 100.0
    text = f"{same:.3f}% identical indices"
    if ties.any():
        text += f" ({int(ties.sum())} exact ties aside)"
    if (~ties).any():
        gap = np.abs(s_ours - s_theirs)[~ties] / np.abs(s_theirs[~ties])
        kind = "rounding-level near-ties" if gap.max() < 1e-5 else "not rounding: check the search"
        text += f"; {int((~ties).sum())} differ in float64 score by at most {gap.max():.1e} (relative): {kind}"
    return text


def bench_knn(train_x, query_x, peak: float, repeats: int) -> tuple[list[str], list[str]]:
    """Table rows and ``faiss / ours`` summary lines, one per metric."""
    flop = 2 * len(train_x) * len(query_x) * DIM
    rows, lines = [], []
    for metric in ("dot", "l2"):
        (ours, _), t_ours, m_ours = timed(lambda: nearest_neighbors(train_x, query_x, metric=metric), repeats)
        ours_cells = f"{t_ours:.2f} s, {flop / t_ours / 1e9:.0f} GFLOP/s ({100 * flop / t_ours / 1e9 / peak:.0f}% of peak)"
        name = FAISS_INDEX[metric]
        if faiss is None:
            rows.append(f"| 1-NN {metric} | {ours_cells} | faiss not installed: skipped | — | — | {m_ours:.0f} / — MiB |")
            lines.append(f"1-NN {metric}: faiss not installed (pip install -e '.[bench]'): skipped")
            continue
        index = getattr(faiss, name)(DIM)
        index.add(train_x)
        (_, theirs), t_faiss, m_faiss = timed(lambda: index.search(query_x, 1), repeats)
        agree = agreement(train_x, query_x, ours[:, 0], theirs[:, 0], metric)
        rows.append(
            f"| 1-NN {metric} | {ours_cells} | {name}: {t_faiss:.2f} s, {flop / t_faiss / 1e9:.0f} GFLOP/s "
            f"| {t_faiss / t_ours:.2f} x | {agree} | {m_ours:.0f} / {m_faiss:.0f} MiB |"
        )
        lines.append(f"1-NN {metric}: faiss / ours: {t_faiss / t_ours:.2f} x ({name} {t_faiss:.2f} s, "
                     f"ours {t_ours:.2f} s); {agree}")
    return rows, lines


def bench_sklearn_knn(train_x, train_y, query_x) -> str:
    from sklearn.neighbors import KNeighborsClassifier

    ours = knn_predict(train_x, train_y, query_x, metric="l2")
    _, t_ours, _ = timed(lambda: knn_predict(train_x, train_y, query_x, metric="l2"))
    sk = KNeighborsClassifier(n_neighbors=1, algorithm="brute", metric="euclidean", n_jobs=-1).fit(train_x, train_y)
    ref, t_sk, m_sk = timed(lambda: sk.predict(query_x))
    return (
        f"| 1-NN l2 vs scikit-learn (brute) | {t_ours:.2f} s | KNeighborsClassifier: {t_sk:.2f} s "
        f"| {t_sk / t_ours:.2f} x (sklearn / ours) | {100 * (ours == ref).mean():.3f}% identical predictions "
        f"| — / {m_sk:.0f} MiB |"
    )


def bench_linear(train_x, train_y, query_x, query_y, epochs: int, repeats: int, sklearn: bool) -> list[str]:
    (probe, settings), t_ours, m_ours = timed(
        lambda: train_linear_probe(train_x, train_y, CLASSES, epochs=epochs, seed=0), repeats
    )
    acc_ours = (predict(probe, query_x) == query_y).mean()
    label = f"linear probe ({settings['epochs']} ep, batch {settings['batch_size']}, lr {settings['lr']})"
    ours_cells = f"{t_ours:.2f} s ({epochs / t_ours:.1f} epochs/s), test accuracy {100 * acc_ours:.2f}%"
    if not sklearn:
        return [f"| {label} | {ours_cells} | — | — | — | {m_ours:.0f} MiB |"]
    from sklearn.linear_model import LogisticRegression

    sk = LogisticRegression(max_iter=500)
    _, t_sk, m_sk = timed(lambda: sk.fit(train_x, train_y))
    return [
        f"| {label} vs LogisticRegression (lbfgs, {int(sk.n_iter_.max())} it) | {ours_cells} | {t_sk:.2f} s, "
        f"test accuracy {100 * sk.score(query_x, query_y):.2f}% | {t_sk / t_ours:.2f} x (sklearn / ours) | — "
        f"| {m_ours:.0f} / {m_sk:.0f} MiB |"
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="50k x 4k patches (default)")
    mode.add_argument("--full", action="store_true", help="451,584 x 188,160 patches")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=30, help="linear-probe epochs")
    parser.add_argument("--repeats", type=int, default=1, help="runs per timing (the median is reported)")
    parser.add_argument("--sklearn", action="store_true", help="also time the scikit-learn baselines")
    args = parser.parse_args()
    size = "full" if args.full else "quick"
    n_train, n_query = SIZES[size]
    if faiss is not None:
        faiss.omp_set_num_threads(torch.get_num_threads())  # same threads as ours
    train_x, train_y, query_x, query_y = make_features(n_train, n_query, args.seed)

    print(f"## Probe benchmark ({size}: {n_train:,} train x {n_query:,} query patches, {DIM} dims, "
          f"{CLASSES} classes, median of {args.repeats})\n")
    print(f"Machine: {machine()}\n")
    peak, peak_by = peak_gflops()
    print(f"Peak: {peak:.0f} GFLOP/s (float32 {peak_by} of 4096^2, best of 3 of each BLAS)\n")
    print("| task | ours | faiss / baseline | ratio | agreement | peak added memory (ours / other) |")
    print("|---|---|---|---|---|---|")
    rows, lines = bench_knn(train_x, query_x, peak, args.repeats)
    for row in rows:
        print(row, flush=True)
    if args.sklearn:
        print(bench_sklearn_knn(train_x, train_y, query_x), flush=True)
    for row in bench_linear(train_x, train_y, query_x, query_y, args.epochs, args.repeats, args.sklearn):
        print(row, flush=True)
    print()
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
