"""Adam for the DLRL fit: torch's fused Adam kernel, called directly.

Why not ``torch.optim.Adam(fused=True)``: the kernel is the same, but constructing a
``torch.optim`` optimiser imports ``torch._dynamo`` (its ``add_param_group`` is wrapped in
``_disable_dynamo``) — about 2 s on the 2-core CI machine, paid by every short ``dlrl fit``
process and by the demo — and its ``step`` spends ~0.3 ms of Python per call (hooks, grouping
by device and dtype, profiler records) where a DLRL epoch on ML-100K is a few ms.

:class:`FusedAdam` runs exactly torch's update (the step counts + 1,
then ``torch._fused_adam_``: L2 weight decay added to the gradient, bias-corrected moments,
``eps`` outside the square root; ``tests/test_optim.py`` checks it bit for bit against
``torch.optim.Adam(fused=True)``), and its ``state_dict`` has torch's layout, so checkpoints
written by either load into the other. The learning rate is a float64 tensor on the params'
device that the caller may update in place (no host sync per epoch).
"""
from __future__ import annotations

import torch

#: the keys of a torch.optim.Adam param group (torch 2.x), written into our state_dict so that a
#: checkpoint can be resumed by ``torch.optim.Adam`` too
_GROUP_KEYS = dict(amsgrad=False, maximize=False, foreach=None, capturable=False, differentiable=False, fused=True,
                   decoupled_weight_decay=False)


def fused_supported(device) -> bool:
    return torch.device(device).type in ("cpu", "cuda") and hasattr(torch, "_fused_adam_")


class FusedAdam:
    """Adam over ``params`` (a list of tensors, or of dicts ``{"params": [...],
    "weight_decay": w}`` for per-group weight decay); ``lr`` a number or a float64 tensor
    shared by all groups (``param_groups[i]["lr"]`` is that tensor)."""

    def __init__(self, params, lr, betas=(0.9, 0.999), weight_decay=0.0, eps=1e-8):
        params = list(params)
        groups = params if params and isinstance(params[0], dict) else [{"params": params}]
        dev = groups[0]["params"][0].device
        self.lr = lr if isinstance(lr, torch.Tensor) else torch.tensor(float(lr), dtype=torch.float64, device=dev)
        b1, b2 = (float(b) for b in betas)
        self.param_groups = []
        for g in groups:
            ps = list(g["params"])
            for p in ps:
                if not fused_supported(p.device) or p.dtype not in (torch.float32, torch.float64, torch.float16,
                                                                     torch.bfloat16):
                    raise ValueError(f"params: FusedAdam needs floating CPU/CUDA tensors, got {p.dtype} on {p.device}")
            self.param_groups.append(dict(params=ps, lr=self.lr, betas=(b1, b2), eps=float(eps),
                                          weight_decay=float(g.get("weight_decay", weight_decay)), **_GROUP_KEYS))
        self.state: dict = {}
        self._plans: dict = {}  # group index → (ids of the params stepped, their kernel lists); see step

    def zero_grad(self, set_to_none=True):
        for g in self.param_groups:
            for p in g["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.zero_()

    @torch.no_grad()
    def step(self):
        for gi, g in enumerate(self.param_groups):
            # the lists handed to the kernel depend only on which params have a gradient: built
            # once per such set (a DLRL fit: once), not every epoch (~15 µs of Python each time)
            key = tuple(id(p) for p in g["params"] if p.grad is not None)
            plan = self._plans.get(gi)
            if plan is None or plan[0] != key:
                plan = self._plans[gi] = (key, self._kernel_lists(g))
            b1, b2 = g["betas"]
            for dev, steps, P, A, B, S in plan[1]:
                lr = g["lr"]
                if isinstance(lr, torch.Tensor) and lr.device != dev:
                    lr = lr.to(dev)
                steps.add_(1)  # every step count (S are views of it)
                torch._fused_adam_(P, [p.grad for p in P], A, B, [], S, amsgrad=False, lr=lr, beta1=b1, beta2=b2,
                                   weight_decay=g["weight_decay"], eps=g["eps"], maximize=False, grad_scale=None,
                                   found_inf=None)

    def _kernel_lists(self, g):
        """[(device, steps, params, exp_avgs, exp_avg_sqs, step counts)] for the params of group
        ``g`` that have a gradient, one entry per (device, dtype) — one kernel call each (a DLRL
        model's params share both). Creates the state of a param on its first step, as
        torch.optim does.

        Each param's "step" (a 0-d float32 tensor, torch's layout) becomes a view of one vector
        ``steps``, so that counting a step is one ``add_`` instead of ``torch._foreach_add_``,
        which on the CPU runs one add per 0-d tensor (~15 µs for a DLRL model's 6–9 params);
        +1 on an integer-valued float32 is exact, so the counts are torch's."""
        by_kind: dict = {}
        for p in g["params"]:
            if p.grad is None:
                continue
            st = self.state.get(p)
            if st is None:
                st = self.state[p] = {"step": torch.zeros((), dtype=torch.float32, device=p.device),
                                      "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                                      "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
            by_kind.setdefault((p.device, p.dtype), []).append((p, st["exp_avg"], st["exp_avg_sq"], st["step"]))
        out = []
        for (dev, _), rows in by_kind.items():
            P, A, B, S = (list(c) for c in zip(*rows))
            steps = torch.stack(S)
            S = list(steps.unbind(0))
            for p, s in zip(P, S):
                self.state[p]["step"] = s
            out.append((dev, steps, P, A, B, S))
        return out

    # ------------------------------------------------------------------ torch.optim layout
    def state_dict(self):
        index, state, groups = {}, {}, []
        for g in self.param_groups:
            ids = []
            for p in g["params"]:
                i = index.setdefault(id(p), len(index))
                ids.append(i)
                if p in self.state:
                    state[i] = dict(self.state[p])
            groups.append({k: v for k, v in g.items() if k != "params"} | {"params": ids})
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, sd):
        groups = sd["param_groups"]
        if len(groups) != len(self.param_groups) or any(len(a["params"]) != len(b["params"])
                                                        for a, b in zip(groups, self.param_groups)):
            raise ValueError("optimizer state: expected "
                             f"{[len(g['params']) for g in self.param_groups]} parameters per group, got "
                             f"{[len(g['params']) for g in groups]}")
        self.state = {}
        self._plans = {}  # they hold the old state's tensors
        for saved, g in zip(groups, self.param_groups):
            lr = saved.get("lr")
            if isinstance(lr, torch.Tensor):
                self.lr.copy_(lr.to(self.lr.device, self.lr.dtype))
            elif lr is not None:
                self.lr.fill_(float(lr))
            g["betas"] = tuple(float(b) for b in saved.get("betas", g["betas"]))
            g["eps"] = float(saved.get("eps", g["eps"]))
            g["weight_decay"] = float(saved.get("weight_decay", g["weight_decay"]))
            for i, p in zip(saved["params"], g["params"]):
                st = sd["state"].get(i)
                if st is None:
                    continue
                self.state[p] = {"step": st["step"].to(device=p.device, dtype=torch.float32).reshape(()).clone(),
                                 "exp_avg": st["exp_avg"].to(device=p.device, dtype=p.dtype).clone(),
                                 "exp_avg_sq": st["exp_avg_sq"].to(device=p.device, dtype=p.dtype).clone()}
