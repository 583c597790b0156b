"""Memories: what a worker keeps of the gradient values it did not send (the residual).

Protocol, per compressed tensor ``name`` (flat tensors): ``compensate(grad, name, decay)`` folds the new
gradient into the memory and returns the tensor to compress, which is the residual buffer itself (the exchange
hands it to the compressor viewed in the parameter's shape); once the compressor
says what was sent, ``update(name, sent)`` keeps ``residual = compensated - sent``: a sparse fast path for
:class:`~dgc.compressors.Sparse` (subtract at the sent indices: zero, or the encoding's rounding error) and
a dense subtraction for quantizers. So after every step, sent + residual == everything accumulated.
Buffers are float32 (float64 for float64 gradients) whatever the gradient's dtype: a bf16 or fp16 residual
would round away the small values error feedback exists to keep (bf16 holds 8 significant bits), so the
compressor then sees, and the memory subtracts, float32 values.

Transactions (set ``transactional``): compensate and update then write a staging copy of the state, which
``commit()`` makes current and ``rollback()`` drops (all, or by name), so a step skipped on every rank (a
non-finite gradient anywhere) leaves the memory exactly as it was, at no extra pass over the state (double
buffering).
"""
import torch

from dgc.compressors.base import Sparse


class Memory:
    """No memory: unsent values are dropped (plain compression without error feedback)."""

    applies_momentum = False
    """True when compensate() applies SGD momentum itself (momentum correction); the exchange then hands it
    the weight decay to fold into the gradient (``decay``) and the optimizer takes a plain step for those
    tensors."""
    keeps_state = False
    """True when compensate() returns a buffer the memory keeps (the exchange never sends it in place)."""
    transactional = False
    """True: changes wait for :meth:`commit` (or are dropped by :meth:`rollback`)."""

    def initialize(self, world_size):
        """Called once with the number of workers (the clipping threshold depends on it)."""
        self.world_size = world_size

    def compensate(self, grad, name, decay=None):
        """The tensor to compress for ``grad``. ``decay``: ``(param, weight_decay)`` to fold in as
        ``grad + weight_decay * param``; the exchange gives it only to memories that apply momentum."""
        return grad

    def update(self, name, sent):
        pass

    def mask(self, name, keep):
        """Forget what is kept for tensor ``name`` where the flat bool ``keep`` is False (pruned weights:
        training/prune.py), so that no sparsifier selects those positions again."""

    def commit(self):
        """Make this step's changes the state (transactional memories)."""

    def rollback(self, names=None):
        """Forget this step's changes (transactional memories): all, or those of the tensors in ``names``
        (the others then wait for :meth:`commit`)."""

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def buffer_dtype(dtype):
    """The dtype a memory keeps for gradients of ``dtype``: float32, or float64 for float64 gradients."""
    return torch.promote_types(dtype, torch.float32)


def _subtract(residual, sent):
    """residual -= sent: at a sparsifier's (distinct) indices, or everywhere for a dense ``sent``."""
    if isinstance(sent, Sparse):
        residual.index_add_(0, sent.indices, sent.values, alpha=-1)
    else:
        residual.sub_(sent.reshape(residual.shape))


class _BufferMemory(Memory):
    """Named per-tensor buffers, created on first use, checkpointed by name (each rank has its own)."""

    buffer_names = ()
    keeps_state = True

    def __init__(self):
        self.buffers = {key: {} for key in self.buffer_names}
        """The committed state: what is checkpointed."""
        self._staged = {key: {} for key in self.buffer_names}
        self._touched = set()

    def _pair(self, key, name, like):
        """``(current, new)`` buffers of ``key`` for ``name``, float32 or wider (:func:`buffer_dtype`) on
        ``like``'s device: compensate reads the first and writes the second; they are one buffer unless
        transactional (then the second is the staging copy)."""
        dtype = buffer_dtype(like.dtype)
        buf = self.buffers[key].get(name)
        if buf is None or buf.shape != like.shape:
            buf = self.buffers[key][name] = torch.zeros(like.shape, dtype=dtype, device=like.device)
        elif buf.device != like.device or buf.dtype != dtype:
            buf = self.buffers[key][name] = buf.to(like.device, dtype)
        if not self.transactional:
            return buf, buf
        staged = self._staged[key].get(name)
        if staged is None or staged.shape != buf.shape or staged.dtype != buf.dtype or staged.device != buf.device:
            staged = self._staged[key][name] = torch.empty_like(buf)
        self._touched.add(name)
        return buf, staged

    def _new(self, key, name):
        """The buffer this step's compensate wrote (for update)."""
        return self._staged[key][name] if name in self._touched else self.buffers[key][name]

    def mask(self, name, keep):
        for bufs in self.buffers.values():
            if name in bufs:
                bufs[name].mul_(keep.to(bufs[name].device))

    def commit(self):
        for name in self._touched:
            for key in self.buffer_names:
                self.buffers[key][name], self._staged[key][name] = self._staged[key][name], self.buffers[key][name]
        self._touched.clear()

    def rollback(self, names=None):
        if names is None:
            self._touched.clear()
        else:
            self._touched.difference_update(names)

    def state_dict(self):
        return {key: dict(bufs) for key, bufs in self.buffers.items()}

    def load_state_dict(self, state):
        missing = set(self.buffer_names) - set(state)
        if missing:
            raise KeyError(f"{type(self).__name__}.load_state_dict: state lacks {sorted(missing)}")
        self.buffers = {key: {name: t.clone() for name, t in state[key].items()} for key in self.buffer_names}
        self._touched.clear()


class ResidualMemory(_BufferMemory):
    """Error feedback (Seide et al. 2014; Karimireddy et al. 2019): r += g, compress r, r -= what was sent."""

    buffer_names = ("residuals",)

    def compensate(self, grad, name, decay=None):
        residual, new = self._pair("residuals", name, grad)
        return torch.add(residual, grad, out=new)

    def update(self, name, sent):
        _subtract(self._new("residuals", name), sent)


_CHUNK = 1 << 18
"""Elements per chunk of the CPU's compensation pass (its four or five 1 MB slices stay in L2)."""


class DGCSGDMemory(_BufferMemory):
    """DGC's memory for momentum SGD (Lin et al. 2018, §3.2 and §3.3).

    Momentum correction (eq. 4/5): accumulate the velocity ``u = m*u + g`` and send from ``v = v + u``
    (Nesterov: ``v = v + g + m*u``) instead of accumulating raw gradients. ``momentum`` and ``nesterov``
    default to None: they follow the optimizer (:meth:`follow`); a value given here must agree with it.
    Momentum factor masking: where values were sent, zero ``u`` as well as ``v``, so stale momentum does
    not push the delayed update further (sparse payloads only).
    Local gradient clipping (§3.2, Appendix C): ``gradient_clipping`` = c is the threshold the paper sets
    for the summed (here: averaged) gradient. The paper clips each node's share G_k = g_k / N (Algorithm 1
    carries the 1/N) to ``c * N**-1/2``, so that N independent shares sum to norm about c; our gradients
    are local means g_k = N * G_k, so each compressed tensor's local mean gradient is clipped to
    ``c * N**1/2``, before weight decay is folded in (per tensor, so each exchange can start as soon as its
    gradient exists; gradients that agree across workers can average up to ``c * N**1/2``). Dense tensors
    (biases, BatchNorm) are not clipped.
    """

    buffer_names = ("momentums", "velocities")
    applies_momentum = True

    def __init__(self, momentum=None, nesterov=None, gradient_clipping=None, momentum_masking=True):
        super().__init__()
        if momentum is not None and (isinstance(momentum, bool) or not isinstance(momentum, (int, float))
                                     or not 0 <= momentum < 1):
            raise ValueError(f"DGCSGDMemory: momentum={momentum!r} must be None (follow the optimizer) or in [0, 1)")
        if gradient_clipping is not None and (isinstance(gradient_clipping, bool) or not (
                isinstance(gradient_clipping, (int, float)) and gradient_clipping > 0)):
            raise ValueError(f"DGCSGDMemory: gradient_clipping={gradient_clipping!r} must be None or a "
                             "positive max L2 norm")
        self.requested = (momentum, nesterov)
        self.momentum = None if momentum is None else float(momentum)
        self.nesterov = nesterov
        self.gradient_clipping = gradient_clipping
        self.momentum_masking = momentum_masking
        self.world_size = 1

    def follow(self, momentum, nesterov):
        """Take the optimizer's momentum and Nesterov setting; refuse one that contradicts a value given
        to the constructor (momentum would silently differ between compressed and dense tensors)."""
        for what, mine, theirs in (("momentum", self.requested[0], momentum), ("nesterov", self.requested[1], nesterov)):
            if mine is not None and mine != theirs:
                raise ValueError(f"DGCSGDMemory: {what}={mine!r} but the optimizer has {what}={theirs!r}; "
                                 f"leave {what} unset (it follows the optimizer) or make them equal")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)

    def compensate(self, grad, name, decay=None):
        """Clip ``grad``, fold in ``decay``, then ``u = m*u + g``, ``v += u`` (Nesterov: ``v += g + m*u``);
        return ``v``. The clip factor min(1, max_norm / ||g||) stays on the device (a host read per tensor would
        stall the GPU), so every gradient is multiplied by it, exactly by 1 where unclipped. On the CPU chunk
        by chunk, so the clipped and decayed gradient and ``u`` are still in cache when ``v`` reads them and
        no full-size temporary is made."""
        if self.momentum is None:
            raise RuntimeError("DGCSGDMemory: momentum is unset; give momentum= or let the distributed "
                               "optimizer call follow() with its optimizer's momentum")
        scale = None
        if self.gradient_clipping is not None:
            max_norm = self.gradient_clipping * self.world_size ** 0.5
            norm = torch.linalg.vector_norm(grad, dtype=buffer_dtype(grad.dtype))
            scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        param, weight_decay = decay if decay is not None else (None, 0)
        (u, u_new), (v, v_new) = self._pair("momentums", name, grad), self._pair("velocities", name, grad)
        step = _CHUNK if grad.device.type == "cpu" else grad.numel()
        scratch = None
        if scale is not None or weight_decay:
            scratch = torch.empty(min(step, grad.numel()), dtype=u.dtype, device=grad.device)
        for start in range(0, grad.numel(), step):
            part = slice(start, start + step)
            g = grad[part]
            if scratch is not None:
                t = scratch[:g.numel()]
                if g.dtype != t.dtype:      # a 16-bit gradient: clip and decay in the buffers' dtype
                    g = t.copy_(g)
                if scale is None:
                    g = torch.add(g, param[part], alpha=weight_decay, out=t)
                else:
                    g = torch.mul(g, scale, out=t)
                    if weight_decay:
                        g.add_(param[part], alpha=weight_decay)
            uc = torch.add(g, u[part], alpha=self.momentum, out=u_new[part])
            if self.nesterov:
                torch.add(v[part], g, out=v_new[part]).add_(uc, alpha=self.momentum)
            else:
                torch.add(v[part], uc, out=v_new[part])
        return v_new

    def update(self, name, sent):
        _subtract(self._new("velocities", name), sent)
        if self.momentum_masking and isinstance(sent, Sparse):
            self._new("momentums", name).index_fill_(0, sent.indices, 0)
