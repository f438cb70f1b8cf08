"""CPU benchmark of the Adam step: fluxode's fast path against torch.optim's three AdamW paths.

Bytes moved per parameter (fp32, the minimum one pass needs): Adam/AdamW 28 B (read W, g, m,
v; write W, m, v), AdamW+amsgrad 36 B, RMSprop 20 B (+8 centered, +8 momentum), Adam field
28 B (read W, m, v, g; write dW, dm, dv). ``gbps`` is that count / time, so a path that
moves more bytes (torch foreach, ~80 B) shows as a lower effective GB/s.
"""

from __future__ import annotations

import time

import torch

BYTES_PER_PARAM = {"adam": 28, "adam-amsgrad": 36, "rmsprop": 20, "rmsprop-centered-momentum": 36,
                   "adam-field": 28}

_HP = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)


def _time(fn, repeats: int) -> float:
    fn()  # warm up (first touch of every page, lazy state init)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _torch_adamw(n: int, mode: str):
    p = torch.nn.Parameter(torch.randn(n))
    p.grad = torch.randn(n)
    kw = {"fused": dict(fused=True), "foreach": dict(foreach=True),
          "single": dict(foreach=False)}[mode]
    opt = torch.optim.AdamW([p], **_HP, **kw)
    return opt.step, (p, opt)


def _fluxode_adamw(n: int):
    from . import adam_step_
    w, g, m, v = torch.randn(n), torch.randn(n), torch.zeros(n), torch.zeros(n)
    k = [0]

    def step():
        k[0] += 1
        adam_step_(w, g, m, v, step=k[0], decoupled=True, backend="fused", **_HP)
    return step, (w, g, m, v)


def run_cpu_bench(max_log2: int = 24, repeats: int = 5, min_log2: int = 16,
                  include_single: bool = True) -> list[dict]:
    """Time one AdamW step (fp32, weight decay) for N = 2^min_log2 .. 2^max_log2.

    Returns records {impl, n, seconds, gbps, ratio_vs_torch_fused, bytes_per_param} for impl
    in fluxode, torch-fused, torch-foreach, torch-single (the last skipped above 2^25 unless
    ``include_single``). ratio_vs_torch_fused = torch-fused seconds / impl seconds (> 1 is
    faster than torch's fused=True).
    """
    if not (10 <= min_log2 <= max_log2 <= 30):
        raise ValueError(f"need 10 <= min_log2 <= max_log2 <= 30; got {min_log2}, {max_log2}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1; got {repeats}")
    records = []
    for log2 in range(min_log2, max_log2 + 1):
        n = 1 << log2
        reps = max(1, repeats if log2 < 24 else min(repeats, 3))
        res = {}
        for impl in ("torch-fused", "fluxode", "torch-foreach", "torch-single"):
            if impl == "torch-single" and not include_single and log2 > 25:
                continue
            fn, keep = (_fluxode_adamw(n) if impl == "fluxode"
                        else _torch_adamw(n, impl.split("-")[1]))
            res[impl] = _time(fn, reps)
            del fn, keep
        for impl, sec in res.items():
            records.append(dict(impl=impl, n=n, seconds=sec,
                                gbps=BYTES_PER_PARAM["adam"] * n / sec / 1e9,
                                ratio_vs_torch_fused=res["torch-fused"] / sec,
                                bytes_per_param=BYTES_PER_PARAM["adam"], kernel="adamw")
                           )
    return records


def format_table(records: list[dict]) -> str:
    lines = [f"{'impl':<14} {'log2 N':>6} {'ms':>10} {'GB/s':>8} {'x torch fused':>14}"]
    for r in records:
        lines.append(f"{r['impl']:<14} {r['n'].bit_length() - 1:>6} {1e3 * r['seconds']:>10.3f} "
                     f"{r['gbps']:>8.2f} {r['ratio_vs_torch_fused']:>14.3f}")
    return "\n".join(lines)
