"""The training step's forward and backward pass replayed as one CUDA graph (``cuda_graph=true``).

A small VAE's step is a few hundred tiny kernels; launching them one by one from Python costs far
more than running them. ``GraphedStep`` records the step once per input shape (usually two: the
full batches and an epoch's last, smaller one) in a CUDA graph (``torch.cuda.CUDAGraph``) and
then replays it with a single launch, after copying the batch into the graph's input buffers.

The recorded function must be *graph-safe*: read only its inputs and tensors that stay where they
are (parameters, buffers), write its results in place (the parameters' ``.grad``, the module's
running sums) or return them, never wait for the device (no ``.item()``, no Python ``if`` on a
tensor) and use no Python number that changes from step to step. The random noise is drawn
inside the graph from the CUDA generator, which PyTorch advances at each replay.

Before recording, the function runs a few times on a side stream (PyTorch's recipe: it lets the
libraries set up their workspaces); the ``state`` tensors (running sums, counters) and the random
state are put back afterwards, so the first replay computes what the first eager step would have.
Without a CUDA device the function simply runs eagerly on the same buffers, which is how the CPU
tests exercise this path.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

StepFunction = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


class GraphedStep:
    def __init__(self, fn: StepFunction, state: Callable[[], list[torch.Tensor]], warmup_runs: int = 3):
        self.fn = fn
        self.state = state
        self.warmup_runs = warmup_runs
        self.graphs: dict[tuple, tuple] = {}  # input shapes -> (replay, static x, static y, static output)
        self.pool = None  # one memory pool shared by the graphs

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """Run the step on (x, y); the result is the graph's output buffer, valid until the next call."""
        if x.device.type != "cuda":
            return self.fn(x, y)
        key = (tuple(x.shape), None if y is None else tuple(y.shape))
        if key not in self.graphs:
            self.graphs[key] = self._record(x, y)
        replay, static_x, static_y, out = self.graphs[key]
        static_x.copy_(x)
        if static_y is not None:
            static_y.copy_(y)
        replay()
        return out

    def _record(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple:
        static_x, static_y = x.clone(), (None if y is None else y.clone())
        saved = [t.clone() for t in self.state()]
        rng = torch.cuda.get_rng_state(x.device)
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup_runs):
                self.fn(static_x, static_y)
        torch.cuda.current_stream(x.device).wait_stream(side)
        # autocast (bf16-mixed) caches the low-precision copies of the weights: a copy cached by the
        # warm-up would be recorded as a constant instead of a cast of the current weights
        torch.clear_autocast_cache()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self.fn(static_x, static_y)
        torch.clear_autocast_cache()
        self.pool = graph.pool()
        for tensor, value in zip(self.state(), saved):
            tensor.copy_(value)
        torch.cuda.set_rng_state(rng, x.device)
        return graph.replay, static_x, static_y, out


def graph_safe_training_step(module) -> StepFunction:
    """The training step of a ``VAEModule`` as a graph-safe function of (x, y): the forward pass,
    the gradients (written into each parameter's ``.grad`` in place) and the running sums, with
    nothing that waits for the device or changes between steps outside the module's tensors (the
    KL schedule is step-independent: ``VAEModule.check_trainer`` refuses the others)."""

    def step(x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        t = module.terms(x, y, 0)
        params = [p for p in module.parameters() if p.requires_grad]
        grads = torch.autograd.grad(t.loss, params, allow_unused=True)
        for p, g in zip(params, grads, strict=True):
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            if g is not None:
                p.grad.copy_(g)
        return module.record_step(t, len(x))

    return step
