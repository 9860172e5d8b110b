"""The NumPy reference trainer: gdfast.train.Trainer driving the reference
MLP and optimizers, for the end-to-end comparison and as a test oracle.

Both adapters keep their tensors in a gdfast Params arena (the reference
code works on its views), so the same Trainer, schedule and checkpoints run
unchanged and only the math underneath differs.
"""
import numpy as np

from ..mlp import evaluate, log_softmax
from ..params import Params
from . import mlp as ref_mlp
from . import optim as ref_optim


class ReferenceMLP:
    """reference.mlp.MLP in float32 with the gdfast.MLP interface the Trainer uses."""

    def __init__(self, sizes, activation="relu", loss="cross_entropy", init_from=None):
        self.sizes = list(sizes)
        self.net = ref_mlp.MLP(sizes, activation=activation, loss=loss, dtype=np.float32)
        self.params = Params({name: arr.shape for name, arr in self.net.params.items()})
        if init_from is not None:          # e.g. a gdfast.MLP's params: the same start
            self.params.copy_from(init_from)
        self.net.params = {name: self.params[name] for name in self.params}

    def loss_and_grad(self, x, y):
        loss, grads = self.net.loss_and_grad(x, y)
        for name, g in grads.items():
            self.params.grad_of(name)[...] = g
        return loss

    def predict(self, x):
        return np.argmax(self.net.forward(x), axis=1)

    def evaluate(self, x, y, batch_size=1000):
        return evaluate(self.net.forward, self.net.loss, self.sizes[-1], x, y, batch_size,
                        log_probs=lambda rows: log_softmax(self.net._forward(rows)[-1]))


class ReferenceOptimizer:
    """A reference optimizer over a Params arena, with param_groups and state."""

    def __init__(self, name, params, **hyper):
        self.params = params
        names = list(params)
        self.opt = getattr(ref_optim, name)([params[n] for n in names], **hyper)
        self.grads = [params.grad_of(n) for n in names]
        self.param_groups = [self.opt.hyper]          # "lr" lives there, read every step

    def step(self, grads=None, max_grad_norm=None):
        return self.opt.step(self.grads, max_grad_norm)

    def state_dict(self):
        return {"t": self.opt.t, "hyper": dict(self.opt.hyper),
                "state": {k: [np.array(a) for a in v] for k, v in vars(self.opt).items()
                          if isinstance(v, list) and v and isinstance(v[0], np.ndarray)
                          and not k.startswith("_")}}

    def load_state_dict(self, state):
        self.opt.t = int(state["t"])
        self.opt.hyper.update(state["hyper"])
        for k, arrays in state["state"].items():
            for dst, src in zip(getattr(self.opt, k), arrays):
                dst[...] = src
