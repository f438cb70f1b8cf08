"""The one prepared device check for a CUDA machine (no installs, no network):

    PYTHONPATH=. python benchmarks/gpu_check.py --out benchmarks/results

1. fluxode on CUDA end to end (float32): FlowOptimizer (reference backend) equals torch's
   single-tensor AdamW on the GPU; the fused backend (Triton) stays within float32 rounding;
   integrate() with the fused Triton field agrees with the reference field; one ODEOptimizer
   rk4 step runs on the GPU.
2. Then ``benchmarks/cuda_kernels.py``: Triton kernels' correctness on the GPU, and the
   bandwidth sweep against torch AdamW(fused=True) and a copy kernel, as JSON in --out.
Exits non-zero on the first failed check.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def end_to_end(dev: str) -> None:
    from fluxode.integrate import integrate
    from fluxode.ode_optimizer import ODEOptimizer
    from fluxode.optim import FlowOptimizer
    from fluxode.problems import make_problem

    torch.manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.Tanh(),
                                torch.nn.Linear(512, 10)).to(dev) for _ in range(3)]
    for net in nets[1:]:
        net.load_state_dict(nets[0].state_dict())
    x, y = torch.randn(128, 256, device=dev), torch.randn(128, 10, device=dev)
    opts = [torch.optim.AdamW(nets[0].parameters(), lr=1e-3, foreach=False),
            FlowOptimizer(nets[1].parameters(), "adamw", lr=1e-3),
            FlowOptimizer(nets[2].parameters(), "adamw", lr=1e-3, backend="fused")]
    for _ in range(20):
        for net, opt in zip(nets, opts):
            opt.zero_grad()
            ((net(x) - y) ** 2).mean().backward()
            opt.step()
    ref, same, fused = ([p.detach() for p in n.parameters()] for n in nets)
    assert all(torch.equal(a, b) for a, b in zip(ref, same)), "reference backend != torch"
    for a, b in zip(ref, fused):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
    print("ok  FlowOptimizer on", dev, "(reference bitwise, fused within float32 rounding)")

    prob = make_problem("mlp-digits", dtype=torch.float32, device=dev)
    a = integrate("adamw", prob, T=5.0, method="rk4", step_size=0.5, backend="reference")
    b = integrate("adamw", prob, T=5.0, method="rk4", step_size=0.5, backend="fused")
    torch.testing.assert_close(b.W, a.W, rtol=1e-4, atol=1e-5)
    print("ok  integrate on", dev, "with the Triton field, NFE", b.stats["nfe"])

    net = nets[0]
    opt = ODEOptimizer(net.parameters(), "adamw", "rk4", lr=1e-3)

    def closure():
        opt.zero_grad()
        loss = ((net(x) - y) ** 2).mean()
        loss.backward()
        return loss
    l0 = float(opt.step(closure).detach())
    for _ in range(5):
        opt.step(closure)
    assert float(closure().detach()) < l0, "ODEOptimizer did not reduce the loss"
    print("ok  ODEOptimizer rk4 on", dev)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run this on a CUDA machine", file=sys.stderr)
        return 2
    end_to_end("cuda")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.call([sys.executable, str(Path(__file__).with_name("cuda_kernels.py")),
                            "--out", str(out / "cuda.json")])


if __name__ == "__main__":
    sys.exit(main())
