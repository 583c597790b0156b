"""Memories: what a worker keeps of the gradient values it did not send (the residual).

Protocol, per compressed tensor ``name``: ``compensate(grad)`` folds the new gradient into the memory and
returns the tensor to select from; after selection ``update(name, indices)`` removes what was sent.
So after every step, for every tensor, sent values + residual == everything accumulated.
"""
import torch


class Memory:
    """No memory: unsent values are dropped (plain top-k sparsification)."""

    def initialize(self, world_size):
        """Called once with the number of workers (the clipping threshold depends on it)."""
        self.world_size = world_size

    def compensate(self, grad, name):
        return grad

    def update(self, name, indices):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


class _BufferMemory(Memory):
    """Named per-tensor buffers, created on first use, checkpointed by name (each rank has its own)."""

    buffer_names = ()

    def __init__(self):
        self.buffers = {key: {} for key in self.buffer_names}

    def _buffer(self, key, name, like):
        buf = self.buffers[key].get(name)
        if buf is None or buf.shape != like.shape:
            buf = self.buffers[key][name] = torch.zeros_like(like)
        elif buf.device != like.device or buf.dtype != like.dtype:
            buf = self.buffers[key][name] = buf.to(like)
        return buf

    def state_dict(self):
        return {key: dict(bufs) for key, bufs in self.buffers.items()}

    def load_state_dict(self, state):
        missing = set(self.buffer_names) - set(state)
        if missing:
            raise KeyError(f"{type(self).__name__}.load_state_dict: state lacks {sorted(missing)}")
        self.buffers = {key: {name: t.clone() for name, t in state[key].items()} for key in self.buffer_names}


class ResidualMemory(_BufferMemory):
    """Error feedback: residual r += g, select from r, zero r where sent."""

    buffer_names = ("residuals",)

    def compensate(self, grad, name):
        return self._buffer("residuals", name, grad).add_(grad)

    def update(self, name, indices):
        self.buffers["residuals"][name].index_fill_(0, indices, 0)


class DGCSGDMemory(_BufferMemory):
    """DGC's memory for momentum SGD (Lin et al. 2018, §3.2 and §3.3).

    Momentum correction (eq. 4/5): accumulate the velocity ``u = m*u + g`` and send from
    ``v = v + u`` (Nesterov: ``v = v + g + m*u``) instead of accumulating raw gradients.
    Momentum factor masking: where values were sent, zero ``u`` as well as ``v``, so stale momentum does
    not push the delayed update further. Local gradient clipping: before accumulation, each tensor's
    gradient is clipped to L2 norm ``gradient_clipping * N**-0.5`` (N workers), so the sum over workers
    respects the global threshold.
    """

    buffer_names = ("momentums", "velocities")

    def __init__(self, momentum=0.9, nesterov=False, gradient_clipping=None, momentum_masking=True):
        super().__init__()
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
            raise ValueError(f"DGCSGDMemory: momentum={momentum!r} must be in [0, 1)")
        if gradient_clipping is not None and not (
                isinstance(gradient_clipping, (int, float)) and gradient_clipping > 0):
            raise ValueError(f"DGCSGDMemory: gradient_clipping={gradient_clipping!r} must be None or a "
                             "positive max L2 norm")
        self.momentum = float(momentum)
        self.nesterov = nesterov
        self.gradient_clipping = gradient_clipping
        self.momentum_masking = momentum_masking
        self.world_size = 1

    def compensate(self, grad, name):
        if self.gradient_clipping is not None:
            max_norm = self.gradient_clipping * self.world_size ** -0.5
            scale = (max_norm / (torch.linalg.vector_norm(grad) + 1e-6)).clamp(max=1.0)
            grad = grad * scale
        u = self._buffer("momentums", name, grad).mul_(self.momentum).add_(grad)
        v = self._buffer("velocities", name, grad)
        if self.nesterov:
            return v.add_(grad).add_(u, alpha=self.momentum)
        return v.add_(u)

    def update(self, name, indices):
        self.buffers["velocities"][name].index_fill_(0, indices, 0)
        if self.momentum_masking:
            self.buffers["momentums"][name].index_fill_(0, indices, 0)
