"""``compression=auto`` (configs/compression/auto.py): measure this run's compute and link in its first steps,
ask the cost model (:func:`dgc.costmodel.predict`) how long a step of each candidate takes, and train with the
least lossy candidate whose predicted step is within ``tolerance`` of the fastest (issue 21; the question
Agarwal et al., MLSys'22, ask of every compression method: does it beat well-tuned dense SGD here?).

The candidates are the repository's own config files, least lossy first: ``dense`` (no compression file:
Horovod's or DDP's own fp32 allreduce, the baseline), ``fp16`` (configs/compression/fp16.py) and ``dgc``
(configs/compression/dgc.py with configs/dgc/compact.py's wire format, through the fused exchange). The
cost model's :class:`~dgc.costmodel.Method` of each is read from the config it builds (:func:`method_of`).
Rank 0 decides from its link measurement and the ranks' mean compute time and every rank takes its record
(one object allgather), so all train the same method.
"""
import contextlib
import math
import pathlib
import runpy
import statistics
import sys
import time

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"
CANDIDATES = {"dense": (), "fp16": ("compression/fp16.py",), "dgc": ("compression/dgc.py", "dgc/compact.py")}
"""Each candidate's config files (under configs/), in order from least to most lossy."""
FUSED = {"dgc": True}
"""``train.fuse_exchange`` a candidate sets (the others keep the run's)."""
KEYS = ("compression", "memory", "dense_compression", "fuse_exchange")
"""The train keys a candidate sets."""
UNBOUNDED = sys.float_info.max
"""The bandwidth of a link nothing crosses (one worker)."""


class Auto:
    """``train.compression``'s target for ``compression=auto`` (never trains itself: train.py replaces it by
    the chosen candidate). ``candidates``: names of :data:`CANDIDATES`; ``calibration_steps``: timed forward
    + backward steps (after one untimed warm-up pass); ``tolerance``: how much slower than the fastest a less
    lossy candidate may be predicted (0.05: 5%). ``bandwidth`` (bytes per second each way per worker),
    ``latency`` (seconds per collective) and ``burst`` (bytes of a token-bucket shaper): the link as given
    instead of measured, for tests and what-if runs (None: measured)."""

    def __init__(self, candidates=tuple(CANDIDATES), calibration_steps=3, tolerance=0.05, bandwidth=None,
                 latency=None, burst=None):
        if isinstance(candidates, str) or not isinstance(candidates, (list, tuple)) or not candidates:
            raise ValueError(f"Auto: candidates={candidates!r} must be a non-empty list of names among "
                             f"{', '.join(CANDIDATES)}")
        unknown = [c for c in candidates if c not in CANDIDATES]
        if unknown or len(set(candidates)) != len(candidates):
            raise ValueError(f"Auto: candidates={list(candidates)!r} "
                             + (f"has unknown {unknown[0]!r}" if unknown else "repeats a name")
                             + f"; expected distinct names among {', '.join(CANDIDATES)}")
        if isinstance(calibration_steps, bool) or not isinstance(calibration_steps, int) or calibration_steps < 1:
            raise ValueError(f"Auto: calibration_steps={calibration_steps!r} must be an int >= 1 (timed steps)")
        if not _number(tolerance) or not 0 <= tolerance < 1:
            raise ValueError(f"Auto: tolerance={tolerance!r} must be a number in [0, 1) (0.05: within 5% of the "
                             "fastest)")
        for what, value, low in (("bandwidth", bandwidth, 0), ("latency", latency, -1), ("burst", burst, -1)):
            if value is not None and (not _number(value) or not value > low):
                raise ValueError(f"Auto: {what}={value!r} must be None (measured) or a number "
                                 f"{'> 0' if low == 0 else '>= 0'}")
        if bandwidth is None and (latency is not None or burst is not None):
            raise ValueError("Auto: latency and burst are given with bandwidth (a link given, not measured); "
                             f"bandwidth is None (latency={latency!r}, burst={burst!r})")
        self.candidates = [c for c in CANDIDATES if c in candidates]
        self.calibration_steps, self.tolerance = calibration_steps, float(tolerance)
        self.bandwidth, self.latency, self.burst = bandwidth, latency, burst


def is_auto(cfg):
    """Whether the run's ``train.compression`` is ``compression=auto``."""
    compression = cfg.train.compression
    return compression is not None and getattr(compression, "target", None) is Auto


def apply(cfg, name):
    """Make ``cfg`` (the loaded global config tree) the candidate ``name``'s: its config files run on it."""
    from training.config import configs
    if cfg is not configs:
        raise ValueError("training.auto.apply: cfg must be training.config.configs (the tree config files change)")
    for key in KEYS[:3]:
        cfg.train[key] = None
    for path in CANDIDATES[name]:
        runpy.run_path(str(CONFIGS / path), run_name=f"configs:{path}")
    if name in FUSED:
        cfg.train.fuse_exchange = FUSED[name]


@contextlib.contextmanager
def candidate(cfg, name):
    """``cfg`` as candidate ``name``'s config for the block (to check it), then as it was."""
    saved = {key: cfg.train[key] for key in KEYS}
    try:
        apply(cfg, name)
        yield cfg
    finally:
        cfg.train.update(saved)


def method_of(cfg):
    """The cost model's :class:`~dgc.costmodel.Method` of a candidate's config: dense (no compression), fp16
    (FP16Compressor) or DGC with the wire format its compressor and dense compressor send."""
    from dgc.compressors.dgc import DGCCompressor
    from dgc.compressors.fp16 import FP16Compressor
    from dgc.costmodel import Method

    compression = cfg.train.compression
    if compression is None:
        return Method("dense")
    if compression.target is FP16Compressor:
        return Method("fp16", fused=bool(cfg.train.fuse_exchange))
    if compression.target is not DGCCompressor:
        raise ValueError(f"training.auto.method_of: no cost model for {compression.target.__name__}")
    index_bytes = 2 if compression.get("compact_indices") else 4 if compression.get("int32_indices") else 8
    dense = cfg.train.dense_compression
    return Method("dgc", ratio=compression.get("compress_ratio", 0.001),
                  value_bytes=2 if compression.get("fp16_values") else 4, index_bytes=index_bytes,
                  dense_bytes=2 if dense is not None and dense.target is FP16Compressor else 4,
                  min_compress_numel=compression.get("min_compress_numel", 1024),
                  fused=bool(cfg.train.fuse_exchange), switch=compression.get("dense_switch", True))


def candidate_methods(cfg, names):
    """``{name: Method}`` of the candidates ``names``, read from their configs over ``cfg``."""
    methods = {}
    for name in names:
        with candidate(cfg, name):
            methods[name] = method_of(cfg)
    return methods


def choose(shapes, workers, compute, link, methods, tolerance=0.05, constants=None):
    """The decision, from measurements alone: each of ``methods`` (``{name: Method}``, least lossy first)
    predicted for parameters of ``shapes`` (model order) on ``workers`` over ``link`` with ``compute``
    seconds of forward + backward; the first whose step is within ``tolerance`` of the fastest is chosen
    (a tie goes to the less lossy). Returns the record train.py logs: choice and predicted seconds."""
    from dgc.costmodel import predict
    predictions = {name: predict(shapes, method, workers, link, compute, constants=constants)
                   for name, method in methods.items()}
    fastest = min(p.seconds for p in predictions.values())
    choice = next(name for name, p in predictions.items() if p.seconds <= fastest * (1 + tolerance))
    return {"choice": choice, "tolerance": tolerance,
            "predicted_s": {name: p.seconds for name, p in predictions.items()},
            "predicted_bytes": {name: p.bytes_sent for name, p in predictions.items()}}


def compute_seconds(model, batches, steps, passes=1, autocast=contextlib.nullcontext, sync=lambda: None):
    """Median seconds of forward + backward of ``model`` (without any exchange: no distributed wrapper yet)
    over ``steps`` steps of ``passes`` batches each, after one untimed pass. ``batches``: a callable
    returning the next ``(x, y)``. The model's state and gradients are put back as they were (BatchNorm's
    running statistics included), so calibrating trains nothing."""
    import torch
    saved = {key: value.clone() for key, value in model.state_dict().items()}
    was_training = model.training
    model.train()
    times = []
    try:
        for step in range(steps + 1):
            sync()
            started = time.perf_counter()
            for _ in range(passes if step else 1):
                x, y = batches()
                with autocast():
                    loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()
            sync()
            if step:
                times.append(time.perf_counter() - started)
    finally:
        model.zero_grad(set_to_none=True)
        model.load_state_dict(saved)
        model.train(was_training)
    return statistics.median(times)


def measure_link(hvd, device, max_bytes, target_s=0.1, repeats=3, sync=lambda: None):
    """Measure the link by timed dense fp32 allreduces through ``hvd`` (horovod.torch or
    training.torch_backend): the per-collective cost from a 4-byte one, the bandwidth from one doubled (from
    256 KiB, up to ``max_bytes``) until it takes ``target_s``, repeated back to back (a shaper's bucket
    drained; the fastest of ``repeats`` counts, the others met noise), and, where it reached ``target_s``, a
    shaper's burst from one more after an idle second. Where even ``max_bytes`` (the model's gradient) takes
    under twice the per-collective cost, the link's bandwidth cannot be told from noise at the sizes that
    matter: its lower bound (all the time as transfer) is taken. Rank 0's times decide (one object
    allgather per collective, so every rank runs the same ones). Returns ``(Link, measured dict)``."""
    import torch

    from dgc.costmodel import Link, ring_allreduce_bytes

    def timed(numel):
        tensor = torch.ones(numel, device=device)
        sync()
        started = time.perf_counter()
        hvd.allreduce(tensor, op=hvd.Sum, name=f"dgc.auto.link.{numel}")
        sync()
        return hvd.allgather_object(time.perf_counter() - started, name=f"dgc.auto.time.{numel}")[0]

    workers = hvd.size()
    timed(1)
    latency = min(timed(1) for _ in range(repeats))
    numel = 2 ** 16
    cap = max(numel, int(max_bytes) // 4)
    while timed(numel) < target_s and numel < cap:
        numel = min(2 * numel, cap)
    seconds = min(timed(numel) for _ in range(repeats))
    wire = ring_allreduce_bytes(workers, 4 * numel)
    resolved = seconds > 2 * latency
    bandwidth = wire / (seconds - latency if resolved else seconds)
    measured = {"allreduce_bytes": 4 * numel, "allreduce_s": seconds, "tiny_allreduce_s": latency,
                "bandwidth_resolved": resolved}
    burst = 0.0
    if seconds >= target_s:
        time.sleep(1.0)
        idle = measured["idle_allreduce_s"] = timed(numel)
        burst = min(wire, max(0.0, wire - (idle - latency) * bandwidth))
        burst = burst if burst > 0.05 * wire else 0.0     # within noise: no shaper
    return Link(bandwidth, latency, burst), measured


def decide(auto, hvd, model, batches, device, passes=1, autocast=contextlib.nullcontext, methods=None):
    """Calibrate and decide on every rank: each measures its compute (:func:`compute_seconds`), rank 0 the
    link (:func:`measure_link`, unless ``auto`` gives it) and decides (:func:`choose`) for the ranks' mean
    compute; every rank returns rank 0's record. ``methods``: ``{name: Method}`` of ``auto.candidates``."""
    import torch

    from dgc.costmodel import Constants, Link

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    compute = compute_seconds(model, batches, auto.calibration_steps, passes, autocast, sync)
    computes = hvd.allgather_object(compute, name="dgc.auto.compute")
    shapes = [tuple(p.shape) for p in model.parameters() if p.requires_grad]
    workers = hvd.size()
    measured = {}
    if auto.bandwidth is not None:
        link = Link(auto.bandwidth, auto.latency or 0.0, auto.burst or 0.0)
    elif workers == 1:
        link = Link(UNBOUNDED)
    else:
        link, measured = measure_link(hvd, device, 4 * sum(math.prod(s) for s in shapes), sync=sync)
    record = None
    if hvd.rank() == 0:
        constants = Constants.assumed_gpu() if device.type == "cuda" else Constants()
        mean = sum(computes) / len(computes)
        record = {**choose(shapes, workers, mean, link, methods, auto.tolerance, constants),
                  "compute_s": mean, "compute_s_per_rank": computes, "workers": workers,
                  "bandwidth": link.bandwidth if link.bandwidth < UNBOUNDED else None, "latency": link.latency,
                  "burst": link.burst, "link": "given" if auto.bandwidth is not None else
                  "none (one worker)" if workers == 1 else "measured", **measured,
                  "calibration_steps": auto.calibration_steps, "constants": "gpu" if device.type == "cuda" else "cpu"}
    return hvd.allgather_object(record, name="dgc.auto.decision")[0]


def summary(record):
    """The one stdout line of a decision record."""
    times = ", ".join(f"{name} {s:.4f}" for name, s in record["predicted_s"].items())
    bandwidth = "unbounded" if record["bandwidth"] is None else f"{record['bandwidth']:.4g} B/s"
    return (f"auto: chose {record['choice']} (predicted s/step: {times}; least lossy within "
            f"{100 * record['tolerance']:g}% of the fastest) from compute {record['compute_s']:.4f} s/step, "
            f"link ({record['link']}) {bandwidth}, {1e6 * record['latency']:.0f} us per collective, burst "
            f"{record['burst']:.0f} B, {record['workers']} workers")


def recorded(history):
    """The decision recorded in a checkpoint's metrics history (the epoch record it was made in), or None."""
    return next((h["auto"] for h in history if h.get("auto") is not None), None)


def _number(value):
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
