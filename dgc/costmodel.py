"""What an exchange costs: bytes on the wire per worker for each collective (ring algorithms), and a per-step
time model of each exchange method (alpha-beta, with the backward pass's overlap and the codecs' time), pure
Python so a what-if question needs no torch.

The model (:func:`predict`), in the form the paper's own performance model (Lin et al., ICLR 2018, §5) and
Agarwal et al. (MLSys'22) take:

- **Collectives.** One collective costs ``link.latency`` (a fixed per-collective cost: the stated latency of
  one collective, whatever its algorithm's number of hops) plus the bytes each worker sends in it over
  ``link.bandwidth`` (bytes per second each way per worker): ring allreduce 2 (N - 1) / N of the tensor, ring
  allgather N - 1 rows, broadcast the tensor once (pipelined). The link is one serial resource: collectives
  queue, in the order they are started; unfused, the allreduces ready when the link frees leave as one
  (Horovod's tensor fusion, :attr:`Constants.backend_fusion`). ``link.burst`` models a token-bucket shaper
  (the tc tbf links of scripts/bench_network.py).
- **Compute and overlap.** ``compute`` (forward + backward, no exchange) splits into a forward pass and a
  backward pass (``Constants.backward_fraction``). The backward pass produces gradients in reverse model
  order, its time shared equally among the weight tensors (a convolution's FLOPs are about equal across
  ResNet/VGG stages, where channels double as the resolution halves; 1-d tensors are ready with the layer
  before them). As in Horovod's hooks, each tensor is compressed on the training thread as its gradient is
  ready (delaying the rest of the backward pass) and, unfused, its collective starts at once, overlapping
  the remaining backward pass; fused (:mod:`dgc.fused`), every tensor waits for the last gradient, then one
  collective per (collective, element type) leaves. After the backward pass the training thread waits for
  each exchange in turn and decompresses it; a second round (PowerSGD's Q) starts as its first is decoded.
- **Codecs.** Host seconds per element and per tensor (:class:`Constants`), from ``bench_compression.py``'s
  figures on this project's 2-core CPU (``docs/bench_compression.txt``) times a scale fitted on the recorded
  training steps (:data:`CPU_SCALE`), or a GPU's (assumed); on the critical path.
- **Hierarchical DGC** (``"dgc_hier"``, ``ranks_per_host`` R): a dense fp32 allreduce among a host's R ranks
  over ``local_link``, DGC at ``ratio`` x R between the N / R hosts' leaders (the flat exchange's update
  density, README "Hierarchical exchange"), then a broadcast within the host; the leader compresses each
  host average as it arrives, and the broadcasts start once every compressed round is done.

What it leaves out, so read its numbers as such: Horovod's cycle time and fusion-buffer limit, a latency that
grows with N (a ring's 2 (N - 1) hops; ``link.latency`` is per collective), the non-finite flag's tiny
collective, contention between the codecs and the compute for cores, congestion, and stragglers. Validated
against measured steps at N <= 4 only (scripts/validate_costmodel.py, docs/costmodel/validation.md).
"""
import math
from dataclasses import dataclass, field, fields, replace

METHODS = ("dense", "fp16", "powersgd", "dgc", "dgc_hier")
PAPER_WARMUP = (0.25, 0.0625, 0.015625, 0.00390625)
"""configs/dgc/paper_warmup.py's kept ratios over the first four epochs (§3.3); then the method's ratio."""
BLOCK = 2 ** 16
"""Elements per block of the compact 16-bit indices (dgc.compressors.sparse.Pairs.BLOCK)."""
CPU_SCALE = 5.66
"""How much slower the codecs run in this project's recorded 2-worker training steps than in
bench_compression.py's figures: fitted by scripts/validate_costmodel.py (docs/costmodel/validation.md)."""


def ring_allreduce_bytes(workers, nbytes):
    """Bytes each worker sends in a ring allreduce of an ``nbytes`` tensor: 2 (N - 1) / N of it
    (reduce-scatter, then allgather)."""
    return 2 * (workers - 1) * nbytes / workers


def ring_allgather_bytes(workers, nbytes):
    """Bytes each worker sends in a ring allgather of an ``nbytes`` row per worker: N - 1 rows."""
    return (workers - 1) * nbytes


def broadcast_bytes(workers, nbytes):
    """Bytes each worker sends in a pipelined broadcast of an ``nbytes`` tensor: once (none alone)."""
    return nbytes if workers > 1 else 0


def sparse_is_larger(workers, row_bytes, numel, dense_itemsize=4):
    """Whether an allgather of ``row_bytes`` of pairs per worker moves more bytes than an allreduce of the
    ``numel``-element selection sent densely (zeros elsewhere, ``dense_itemsize`` bytes per value): the
    sparse/dense switch's rule (SparCML, SC'19), decided alike on every rank from sizes alone."""
    return workers > 1 and ring_allgather_bytes(workers, row_bytes) > ring_allreduce_bytes(workers, numel * dense_itemsize)


def num_selects(numel, ratio):
    """k: how many of ``numel`` values a sparsifier at ``ratio`` sends (dgc.compressors.base.num_selects)."""
    return min(numel, max(1, round(numel * ratio)))


def pairs_nbytes(k, numel, value_bytes=4, index_bytes=8):
    """Bytes of one worker's row of ``k`` (value, index) pairs of a ``numel``-element tensor, as
    dgc.compressors.sparse.Pairs encodes it: values of ``value_bytes`` (1: int8, plus a 4-byte float32
    scale), indices of ``index_bytes`` (2: compact 16-bit offsets, plus a 4-byte count per 2^16 block
    when the tensor has more than one block)."""
    scale = 4 if value_bytes == 1 else 0
    blocks = -(-numel // BLOCK)
    counts = 4 * blocks if index_bytes == 2 and blocks > 1 else 0
    return scale + k * value_bytes + counts + k * index_bytes


@dataclass(frozen=True)
class Link:
    """A network link: ``bandwidth`` in bytes per second each way per worker, ``latency`` in seconds per
    collective (the fixed cost of starting one, whatever its size). ``burst``: bytes a token-bucket shaper
    (tc tbf, as scripts/bench_network.py shapes its links) lets through at once after the link was idle,
    refilled at ``bandwidth`` (0: a real link)."""
    bandwidth: float
    latency: float = 0.0
    burst: float = 0.0

    def __post_init__(self):
        if not _number(self.bandwidth) or not self.bandwidth > 0:
            raise ValueError(f"Link: bandwidth={self.bandwidth!r} must be > 0 (bytes per second each way)")
        if not _number(self.latency) or not self.latency >= 0:
            raise ValueError(f"Link: latency={self.latency!r} must be >= 0 (seconds per collective)")
        if not _number(self.burst) or not self.burst >= 0:
            raise ValueError(f"Link: burst={self.burst!r} must be >= 0 (bytes of a token bucket)")

    @classmethod
    def from_allreduce(cls, workers, nbytes, seconds, latency=0.0):
        """The link a timed ring allreduce of ``nbytes`` among ``workers`` that took ``seconds`` implies
        (``latency`` of it being the per-collective cost): its wire bytes per worker over the rest."""
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 2:
            raise ValueError(f"Link.from_allreduce: workers={workers!r} must be an int >= 2 (one worker sends nothing)")
        if not _number(seconds) or not seconds > latency:
            raise ValueError(f"Link.from_allreduce: seconds={seconds!r} must exceed latency={latency!r}")
        return cls(ring_allreduce_bytes(workers, nbytes) / (seconds - latency), latency)

    def collective_seconds(self, wire_bytes, tokens=0.0):
        """Seconds one collective takes that makes each worker send ``wire_bytes``, ``tokens`` of them
        (a shaper's bucket) at no cost."""
        return self.latency + max(0.0, wire_bytes - tokens) / self.bandwidth


@dataclass(frozen=True)
class Method:
    """An exchange method and its wire format (see the module docstring for the names).

    ``ratio``: DGC's kept fraction (``dgc_hier``: per rank; the hosts' leaders keep ``ratio`` x
    ``ranks_per_host``). ``value_bytes``: 4 fp32, 2 fp16, 1 int8 (sparse values). ``index_bytes``: 8 int64,
    4 int32, 2 compact block offsets. ``dense_bytes``: bytes per value of the tensors that go dense (2 with an
    fp16 dense compressor). ``min_compress_numel``: weights (2+ dimensions) of at least this many elements
    are compressed (dgc.exchange.is_compressible). ``rank``: PowerSGD's. ``fused``: the fused exchange.
    ``switch``: DGC's sparse/dense switch (:func:`sparse_is_larger`, per tensor). ``ranks_per_host``:
    ``dgc_hier``'s ranks per host."""
    name: str
    ratio: float = 0.001
    value_bytes: int = 4
    index_bytes: int = 8
    dense_bytes: int = 4
    min_compress_numel: int = 1024
    rank: int = 4
    fused: bool = False
    switch: bool = True
    ranks_per_host: int = 1

    def __post_init__(self):
        if self.name not in METHODS:
            raise ValueError(f"Method: name={self.name!r}; expected one of {', '.join(METHODS)}")
        if not _number(self.ratio) or not 0 < self.ratio <= 1:
            raise ValueError(f"Method: ratio={self.ratio!r} is outside (0, 1]; it is the fraction of values kept")
        for what, allowed in (("value_bytes", (1, 2, 4)), ("index_bytes", (2, 4, 8)), ("dense_bytes", (2, 4))):
            if getattr(self, what) not in allowed:
                raise ValueError(f"Method: {what}={getattr(self, what)!r}; expected one of {allowed}")
        for what in ("min_compress_numel", "rank", "ranks_per_host"):
            value = getattr(self, what)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Method: {what}={value!r} must be an int >= 1")


@dataclass(frozen=True)
class Constants:
    """The model's per-device constants: host seconds per element (of the dense gradient) and per tensor.

    Defaults: calibrated on this project's 2-core CPU: ``docs/bench_compression.txt``'s figures (2 torch
    threads, one process) times :data:`CPU_SCALE`, the factor scripts/validate_costmodel.py fits on the
    recorded training steps (one torch thread per worker, two workers and Horovod's threads on two cores).
    The figures: DGC with momentum correction compresses at about 1.5 to 2 GB/s of fp32 gradient on 2^18 to
    2^24 elements (2.4 ns per element) plus about 0.15 ms per tensor (threshold sampling, kernel launches);
    its scatter-add decompression zero-fills the tensor and adds N k pairs; PowerSGD's round trip at 2^24 runs
    at 1.14 GB/s (3.5 ns per element at rank 4: M Q, M^T P and P Q^T, ~0.9 ns per element and unit of rank);
    an fp16 cast each way ~0.5 ns per element; every tensor through the library's exchange ~30 us of Python.
    Horovod's own dense path has no codec here (its cost is in the per-collective latency).
    ``backward_fraction``: the backward pass's share of forward + backward (about 2/3: it computes two
    products per layer). :meth:`bench_figures` gives the figures unscaled, :meth:`assumed_gpu` a GPU's."""
    backward_fraction: float = 2 / 3
    tensor_overhead: float = 30e-6 * CPU_SCALE
    cast_per_element: float = 0.5e-9 * CPU_SCALE
    dgc_tensor_overhead: float = 0.15e-3 * CPU_SCALE
    dgc_compress_per_element: float = 2.4e-9 * CPU_SCALE
    dgc_decompress_per_element: float = 0.3e-9 * CPU_SCALE
    dgc_add_per_pair: float = 5e-9 * CPU_SCALE
    powersgd_compress_per_element_rank: float = 0.3e-9 * CPU_SCALE
    powersgd_decompress_per_element_rank: float = 0.6e-9 * CPU_SCALE
    memory_per_element: float = 0.5e-9 * CPU_SCALE
    """PowerSGD's ResidualMemory compensate + update (DGC's memory is in dgc_compress_per_element)."""
    backend_fusion: bool = True
    """Unfused, the backend batches the allreduces that are ready when the link frees into one collective
    (Horovod's tensor fusion; allgathers and broadcasts go one by one)."""

    def __post_init__(self):
        if not _number(self.backward_fraction) or not 0 <= self.backward_fraction <= 1:
            raise ValueError(f"Constants: backward_fraction={self.backward_fraction!r} must be in [0, 1]")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "backend_fusion":
                continue
            if not _number(value) or value < 0:
                raise ValueError(f"Constants: {f.name}={value!r} must be a number >= 0")

    @classmethod
    def bench_figures(cls):
        """The codec figures of docs/bench_compression.txt as they are (2 threads, nothing else running)."""
        return cls().scaled(1 / CPU_SCALE)

    @classmethod
    def from_file(cls, path):
        """Constants from a JSON file of field values (scripts/validate_costmodel.py --constants writes one)."""
        import json
        with open(path) as f:
            data = json.load(f)
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"Constants: {path!r} has unknown fields {unknown}; expected some of "
                             f"{[f.name for f in fields(cls)]}")
        return cls(**data)

    @classmethod
    def assumed_gpu(cls):
        """Assumed (not measured here: this project has no GPU) constants of a V100/A100-class GPU: each
        codec's per-element cost is the memory it touches over ~900 GB/s of HBM (DGC with momentum correction
        about 15 fp32 passes: 0.07 ns; an fp16 cast 6 bytes: 0.007 ns; PowerSGD's matmuls ~0.01 ns per
        element and unit of rank), plus per-tensor kernel launches (DGC's selection ~20 kernels: 0.1 ms) and
        the library's ~30 us of Python per tensor."""
        return cls(tensor_overhead=30e-6, cast_per_element=0.007e-9, dgc_tensor_overhead=0.1e-3,
                   dgc_compress_per_element=0.07e-9, dgc_decompress_per_element=0.005e-9, dgc_add_per_pair=0.05e-9,
                   powersgd_compress_per_element_rank=0.005e-9, powersgd_decompress_per_element_rank=0.01e-9,
                   memory_per_element=0.02e-9)

    def scaled(self, factor):
        """These constants with every codec time multiplied by ``factor`` (e.g. one torch thread, not two)."""
        return replace(self, **{f.name: getattr(self, f.name) * factor for f in fields(self)
                                if f.name not in ("backward_fraction", "backend_fusion")})


@dataclass
class Prediction:
    """One step's prediction. ``seconds``: the step; ``exchange``: seconds the link is busy (every collective's
    latency plus transfer, hidden or not; hierarchical: between hosts); ``codec``: compress + decompress host
    seconds; ``exposed``: what the exchange adds to ``compute`` (seconds - compute); ``bytes_sent``: payload
    bytes per worker (what dgc.exchange.Exchange's ``stats['bytes_sent']`` counts: each tensor's payload
    once per round; hierarchical: the leader's between hosts); ``wire_bytes``: bytes each worker sends on the
    wire (ring algorithms); ``collectives``: collectives started per step as the exchange and
    bench_network.py count them (unfused: one per payload and round, before the backend's own fusion; fused:
    the fused ones; between hosts for ``dgc_hier``); ``link_collectives``: those the model put on the link
    (after the backend's fusion, :attr:`Constants.backend_fusion`); ``dense_switched``: compressed tensors
    the switch sent densely; ``local_*``: the hierarchical exchange's within-host stages (allreduce +
    broadcast)."""
    seconds: float
    exchange: float
    codec: float
    bytes_sent: float
    collectives: float
    wire_bytes: float = 0.0
    compute: float = 0.0
    exposed: float = 0.0
    dense_switched: int = 0
    local_bytes: float = 0.0
    local_seconds: float = 0.0
    local_collectives: float = 0.0
    link_collectives: float = 0.0


@dataclass
class _Payload:
    collective: str
    nbytes: int
    itemsize: int


@dataclass
class _Tensor:
    numel: int
    weight: float
    rounds: list = field(default_factory=list)
    compress: float = 0.0
    decodes: list = field(default_factory=lambda: [0.0])
    """Host seconds decoding each round's result (the last: decompression into the average)."""


def predict(shapes, method, workers, link, compute=0.0, local_link=None, constants=None):
    """Predicted seconds per step (a :class:`Prediction`) of ``method`` for parameters of ``shapes`` (model
    order) on ``workers`` workers over ``link``, given ``compute`` seconds of forward + backward without any
    exchange; ``local_link``: the link within a host (``dgc_hier`` with ranks_per_host > 1);
    ``constants``: a :class:`Constants` (default: this project's CPU)."""
    shapes = _checked_shapes(shapes)
    if not isinstance(method, Method):
        raise TypeError(f"predict: method={method!r}; expected a dgc.costmodel.Method")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"predict: workers={workers!r} must be an int >= 1")
    if not isinstance(link, Link):
        raise TypeError(f"predict: link={link!r}; expected a dgc.costmodel.Link")
    if not _number(compute) or compute < 0:
        raise ValueError(f"predict: compute={compute!r} must be >= 0 seconds (forward + backward)")
    constants = constants if constants is not None else Constants()
    if method.name == "dgc_hier":
        return _predict_hierarchical(shapes, method, workers, link, compute, local_link, constants)
    tensors, switched = _tensors(shapes, method, workers, constants)
    return _simulate(tensors, method.fused, workers, link, compute, constants, switched)


def _tensors(shapes, method, workers, constants, ratio=None):
    """Each tensor's payloads per round and its codec seconds, under ``method`` among ``workers``."""
    ratio = method.ratio if ratio is None else ratio
    c = constants
    tensors, switched = [], 0
    for shape in shapes:
        numel = math.prod(shape)
        t = _Tensor(numel, 1.0 if len(shape) > 1 else 0.0)
        compressed = method.name not in ("dense", "fp16") and len(shape) > 1 and numel >= method.min_compress_numel
        if method.name == "dense":
            t.rounds = [[_Payload("allreduce", 4 * numel, 4)]]
        elif method.name == "fp16":
            t.rounds = [[_Payload("allreduce", 2 * numel, 2)]]
            t.compress = c.cast_per_element * numel
            t.decodes = [t.compress]
        elif not compressed:
            t.rounds = [[_Payload("allreduce", method.dense_bytes * numel, method.dense_bytes)]]
            t.compress = c.tensor_overhead + (c.cast_per_element * numel if method.dense_bytes == 2 else 0.0)
            t.decodes = [t.compress - c.tensor_overhead]
        elif method.name == "powersgd":
            rows, cols = shape[0], numel // shape[0]
            rank = min(method.rank, rows, cols)
            t.rounds = [[_Payload("allreduce", 4 * rows * rank, 4)], [_Payload("allreduce", 4 * cols * rank, 4)]]
            t.compress = (c.tensor_overhead + c.memory_per_element * numel
                          + c.powersgd_compress_per_element_rank * numel * rank)
            decode = c.powersgd_decompress_per_element_rank * numel * rank / 2    # QR + M^T P, then P Q^T
            t.decodes = [decode, decode]
        else:
            k = num_selects(numel, ratio)
            row = pairs_nbytes(k, numel, method.value_bytes, method.index_bytes)
            t.compress = c.tensor_overhead + c.dgc_tensor_overhead + c.dgc_compress_per_element * numel
            t.decodes = [c.dgc_decompress_per_element * numel]
            if method.switch and sparse_is_larger(workers, row, numel, 4):
                t.rounds = [[_Payload("allreduce", 4 * numel, 4)]]
                switched += 1
            else:
                t.rounds = [[_Payload("allgather", row, 1)]]
                t.decodes[0] += c.dgc_add_per_pair * workers * k
        tensors.append(t)
    return tensors, switched


def _wire(payload, workers):
    if payload.collective == "allreduce":
        return ring_allreduce_bytes(workers, payload.nbytes)
    if payload.collective == "allgather":
        return ring_allgather_bytes(workers, payload.nbytes)
    return broadcast_bytes(workers, payload.nbytes)


class _Line:
    """A link as one serial resource: collectives queue in the order they are started."""

    def __init__(self, link, workers, batch=False):
        self.link, self.workers, self.free, self.batch = link, workers, 0.0, batch
        self.busy = self.wire = self.collectives = 0.0
        self.tokens = link.burst
        """The shaper's bucket (full at the step's start: the forward pass left the link idle)."""

    def send(self, ready, payloads):
        """Start one collective carrying ``payloads`` (all of one kind) at ``ready`` or once the link is free;
        return when it ends."""
        wire = sum(_wire(p, self.workers) for p in payloads)
        self.collectives += 1
        if self.workers == 1:
            return ready
        start = max(ready, self.free)
        if self.collectives > 1:
            self.tokens = min(self.link.burst, self.tokens + (start - self.free) * self.link.bandwidth)
        seconds = self.link.collective_seconds(wire, self.tokens)
        self.tokens = max(0.0, self.tokens - wire)
        self.free = start + seconds
        self.busy += seconds
        self.wire += wire
        return self.free

    def queue(self, items):
        """Start ``items`` ((ready time, payloads) in the order they are started) one collective each, or, with
        ``batch`` (the backend's own fusion: Horovod's tensor fusion), every allreduce of one element size that
        is ready when the link frees together in one; return each item's end time."""
        ends, i = [0.0] * len(items), 0
        while i < len(items):
            start = max(items[i][0], self.free)
            group = [i]
            if self.batch and all(p.collective == "allreduce" for p in items[i][1]):
                kind = {p.itemsize for p in items[i][1]}
                j = i + 1
                while (j < len(items) and items[j][0] <= start and {p.itemsize for p in items[j][1]} == kind
                       and all(p.collective == "allreduce" for p in items[j][1])):
                    group.append(j)
                    j += 1
            end = self.send(start, [p for g in group for p in items[g][1]])
            for g in group:
                ends[g] = end
            i = group[-1] + 1
        return ends

    def send_fused(self, ready, payloads):
        """One collective per (collective, element size) of ``payloads``, started together; when all end."""
        groups = {}
        for p in payloads:
            groups.setdefault((p.collective, p.itemsize), []).append(p)
        return max((self.send(ready, group) for group in groups.values()), default=ready)


def _backward(tensors, compute, constants, compress=True):
    """Forward end, and each tensor's (in reverse model order) time its payload can leave the training thread
    (its gradient ready, compressed when ``compress``); returns (order, ready times, backward end)."""
    forward = compute * (1 - constants.backward_fraction)
    backward = compute * constants.backward_fraction
    order = list(reversed(range(len(tensors))))
    total = sum(t.weight for t in tensors)
    share = [(t.weight / total if total else 1 / len(tensors)) * backward for t in tensors]
    clock, ready = forward, {}
    for i in order:
        clock += share[i] + (tensors[i].compress if compress else 0.0)
        ready[i] = clock
    return order, ready, clock


def _exchange_rounds(tensors, order, sent, line, fused, clock):
    """Wait for and decode every tensor's rounds on ``line`` from ``clock`` on: ``sent[i]`` is when round 1 of
    tensor i ends (already started); a later round starts as the round before is decoded (fused: together,
    once all of the round are decoded). Returns the training thread's clock when the last is decoded."""
    for r in range(max(len(t.rounds) for t in tensors)):
        decoded = []
        for i in order:
            if len(tensors[i].rounds) <= r:
                continue
            clock = max(clock, sent[i]) + tensors[i].decodes[r]
            if r + 1 < len(tensors[i].rounds):
                decoded.append((i, clock))
        if fused and decoded:
            end = line.send_fused(clock, [p for i, _ in decoded for p in tensors[i].rounds[r + 1]])
            sent = {i: end for i, _ in decoded}
        else:
            sent = dict(zip([i for i, _ in decoded], line.queue([(at, tensors[i].rounds[r + 1]) for i, at in decoded])))
    return clock


def _simulate(tensors, fused, workers, link, compute, constants, switched):
    order, ready, backward_end = _backward(tensors, compute, constants)
    line = _Line(link, workers, constants.backend_fusion)
    if fused:
        end = line.send_fused(backward_end, [p for i in order for p in tensors[i].rounds[0]])
        sent = dict.fromkeys(order, end)
    else:
        sent = dict(zip(order, line.queue([(ready[i], tensors[i].rounds[0]) for i in order])))
    clock = _exchange_rounds(tensors, order, sent, line, fused, backward_end)
    codec = sum(t.compress + sum(t.decodes) for t in tensors)
    payload = sum(p.nbytes for t in tensors for rnd in t.rounds for p in rnd)
    collectives = line.collectives if fused else sum(len(rnd) for t in tensors for rnd in t.rounds)
    seconds = max(clock, compute)
    return Prediction(seconds=seconds, exchange=line.busy, codec=codec, bytes_sent=payload,
                      collectives=collectives, wire_bytes=line.wire, compute=compute, exposed=seconds - compute,
                      dense_switched=switched, link_collectives=line.collectives)


def _predict_hierarchical(shapes, method, workers, link, compute, local_link, constants):
    """``dgc_hier``: dense within the host, DGC at ratio x ranks_per_host between the hosts' leaders, a
    broadcast back (dgc.exchange.Exchange.finish's phases)."""
    per_host = method.ranks_per_host
    if workers % per_host:
        raise ValueError(f"predict: workers={workers} is not a multiple of ranks_per_host={per_host} (every host "
                         "must run as many ranks)")
    if per_host > 1 and not isinstance(local_link, Link):
        raise ValueError(f"predict: dgc_hier with ranks_per_host={per_host} needs local_link, a Link within the "
                         f"host; got {local_link!r}")
    hosts = workers // per_host
    ratio = min(1.0, method.ratio * per_host)
    tensors, switched = _tensors(shapes, method, hosts, constants, ratio)
    order, ready, backward_end = _backward(tensors, compute, constants, compress=False)
    local = _Line(local_link if local_link is not None else link, per_host, constants.backend_fusion)
    averages = [_Payload("allreduce", 4 * t.numel, 4) for t in tensors]
    if method.fused:
        end = local.send_fused(backward_end, averages)
        arrived = dict.fromkeys(order, end)
    else:
        arrived = dict(zip(order, local.queue([(ready[i], [averages[i]]) for i in order])))
    line = _Line(link, hosts, constants.backend_fusion)
    clock, compressed = backward_end, []
    for i in order:         # the leader compresses each host average as it arrives
        clock = max(clock, arrived[i]) + tensors[i].compress
        compressed.append((clock, tensors[i].rounds[0]))
    if method.fused:
        sent = dict.fromkeys(order, line.send_fused(clock, [p for _, rnd in compressed for p in rnd]))
    else:
        sent = dict(zip(order, line.queue(compressed)))
    clock = _exchange_rounds(tensors, order, sent, line, method.fused, clock)
    broadcasts = [_Payload("broadcast", 4 * t.numel, 4) for t in tensors]
    if method.fused:
        clock = local.send_fused(clock, broadcasts)
    else:
        clock = max(local.queue([(clock, [broadcasts[i]]) for i in order]) + [clock])
    codec = sum(t.compress + sum(t.decodes) for t in tensors)
    payload = sum(p.nbytes for t in tensors for rnd in t.rounds for p in rnd) if hosts > 1 else 0
    collectives = line.collectives if method.fused else sum(len(rnd) for t in tensors for rnd in t.rounds)
    seconds = max(clock, compute)
    return Prediction(seconds=seconds, exchange=line.busy, codec=codec, bytes_sent=payload,
                      collectives=collectives if hosts > 1 else 0, wire_bytes=line.wire, compute=compute,
                      exposed=seconds - compute, dense_switched=switched,
                      local_bytes=2 * sum(4 * t.numel for t in tensors) if per_host > 1 else 0,
                      local_seconds=local.busy, local_collectives=local.collectives if per_host > 1 else 0,
                      link_collectives=line.collectives if hosts > 1 else 0)


def warmup_predictions(shapes, method, workers, link, compute=0.0, schedule=PAPER_WARMUP, local_link=None,
                       constants=None):
    """[(epoch, ratio, Prediction)] of a DGC method over the warm-up ``schedule`` (kept ratio per epoch,
    §3.3; default configs/dgc/paper_warmup.py's), then one entry at the method's own ratio."""
    ratios = [max(r, method.ratio) for r in schedule] + [method.ratio]
    return [(epoch, r, predict(shapes, replace(method, ratio=r), workers, link, compute, local_link, constants))
            for epoch, r in enumerate(ratios)]


def crossover_workers(shapes, method, limit=2 ** 24):
    """The smallest N at which DGC's allgather of pairs (switch off) makes each worker send more bytes than a
    dense fp32 ring allreduce of the whole gradient: where its allgather stops paying (None: not up to
    ``limit``). Bytes, not seconds, so it holds for any link and compute: (N - 1) x the pairs grows with N,
    2 (N - 1) / N x the dense gradient does not."""
    shapes = _checked_shapes(shapes)
    flat = replace(method, name="dgc" if method.name == "dgc_hier" else method.name, switch=False, fused=False,
                   ranks_per_host=1)
    dense_bytes = 4 * sum(math.prod(s) for s in shapes)

    def worse(n):
        tensors, _ = _tensors(shapes, flat, n, Constants())
        wire = sum(_wire(p, n) for t in tensors for rnd in t.rounds for p in rnd)
        return wire > ring_allreduce_bytes(n, dense_bytes)

    if not worse(limit):
        return None
    low, high = 1, limit          # worse(low) is False (no bytes at N = 1), worse(high) True
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if worse(mid) else (mid, high)
    return high


def slower_than_dense_from(shapes, method, link, compute=0.0, local_link=None, constants=None, limit=2 ** 20):
    """The N >= 2 (a multiple of ``ranks_per_host``) from which on ``method``'s predicted step stays slower
    than dense fp32's on ``link`` with ``compute``: the last crossing, since at small N dense may hide under
    the backward pass too (DGC then loses by its codec), at medium N win, and lose again as its allgather's
    (N - 1) rows grow. None: not slower at ``limit`` workers; the smallest N: slower at every N. Found on a
    doubling grid, then by bisection within the last interval: a time-based companion of
    :func:`crossover_workers`."""
    step = method.ranks_per_host if method.name == "dgc_hier" else 1
    dense = Method("dense")

    def slower(units):
        n = units * step
        return (predict(shapes, method, n, link, compute, local_link, constants).seconds
                > predict(shapes, dense, n, link, compute, local_link, constants).seconds)

    grid = [2 if step == 1 else 1]
    while grid[-1] < max(grid[0], limit // step):
        grid.append(min(2 * grid[-1], max(grid[0], limit // step)))
    verdicts = [slower(u) for u in grid]
    if not verdicts[-1]:
        return None
    faster = [i for i, v in enumerate(verdicts) if not v]
    if not faster:
        return grid[0] * step
    low, high = grid[faster[-1]], grid[faster[-1] + 1]
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if slower(mid) else (mid, high)
    return high * step


def parse_rate(text):
    """Bytes per second of a link rate in tc's spelling: a number and bit/kbit/mbit/gbit/tbit (SI, bits per
    second), e.g. ``10mbit``, ``25gbit``, ``12.5e6`` (plain: bytes per second)."""
    return _parse(text, {"tbit": 1e12 / 8, "gbit": 1e9 / 8, "mbit": 1e6 / 8, "kbit": 1e3 / 8, "bit": 1 / 8, "": 1.0},
                  "a link rate such as 10mbit, 25gbit or 100mbit (bits per second)", positive=True)


def parse_latency(text):
    """Seconds of a latency: a number and s/ms/us/ns, e.g. ``20us``, ``1ms``, ``0``."""
    return _parse(text, {"ms": 1e-3, "us": 1e-6, "ns": 1e-9, "s": 1.0, "": 1.0},
                  "a latency such as 20us, 1ms or 0", positive=False)


def _parse(text, units, expected, positive):
    spelled = str(text).strip().lower()
    for unit, scale in units.items():       # longest units first (dict order)
        if spelled.endswith(unit):
            number = spelled[:len(spelled) - len(unit)] if unit else spelled
            try:
                value = float(number) * scale
            except ValueError:
                continue
            if math.isfinite(value) and (value > 0 if positive else value >= 0):
                return value
            break
    raise ValueError(f"{text!r} is not {expected}")


def _checked_shapes(shapes):
    checked = []
    for shape in shapes:
        shape = tuple(shape)
        if any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
            raise ValueError(f"predict: shape {shape!r} must be a tuple of ints >= 1")
        checked.append(shape)
    if not checked:
        raise ValueError("predict: shapes is empty; expected the parameter shapes in model order")
    return checked


def _number(value):
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
