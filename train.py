"""Config-driven distributed trainer: baseline (Horovod's DistributedOptimizer) or DGC from the same command.

    horovodrun -np 2 -H localhost:2 --gloo python train.py --configs configs/cifar/resnet20.py \
        configs/dgc/wm5.py configs/dgc/fp16.py configs/dgc/int32.py [train.num_epochs=5 ...]
    torchrun --standalone --nproc-per-node 2 train.py --backend torch --configs ...   # DDP + comm hook
    python train.py --configs ... --evaluate [--checkpoint FILE]    # the run's checkpoint, or FILE (also a
                                                                    # compressed model: scripts/compress_model.py)

Config files compose in order; ``key=value`` items among them override keys after all files ran. The run
directory (``runs/<dataset>.<model>[.<extra configs>].np<N>`` unless --run-dir) holds config.txt,
TensorBoard events, metrics.json and checkpoints; a run directory with a checkpoint resumes from it.
"""
import argparse
import contextlib
import math
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", required=True, metavar="FILE_OR_KEY=VALUE",
                        help="config files in order, then key=value overrides (e.g. train.num_epochs=5)")
    parser.add_argument("--run-dir", help="run directory (default: runs/<derived name>)")
    parser.add_argument("--resume", action="store_true",
                        help="require a checkpoint in the run directory (resuming is automatic anyway)")
    parser.add_argument("--evaluate", action="store_true", help="evaluate the run's checkpoint, do not train")
    parser.add_argument("--checkpoint", help="with --evaluate: this checkpoint file (or a compressed model file of "
                                             "scripts/compress_model.py) instead of the run's")
    parser.add_argument("--backend", choices=("horovod", "torch"), default="horovod",
                        help="horovod (horovodrun; default) or torch (torchrun: DistributedDataParallel, the "
                             "compressors through its communication hook)")
    parser.add_argument("more_overrides", nargs="*", metavar="KEY=VALUE", help="more config overrides")
    args = parser.parse_args(argv)
    bad = [item for item in args.more_overrides if "=" not in item]
    if bad:
        parser.error(f"{bad[0]!r} is not a key=value override (config files go after --configs)")
    args.overrides = [c for c in args.configs if "=" in c] + args.more_overrides
    args.config_files = [c for c in args.configs if "=" not in c]
    if not args.config_files:
        parser.error("--configs needs at least one config file")
    return args


def run_name(cfg, config_files, world_size):
    """<dataset>.<model>[.<extra configs>].np<N>, e.g. cifar10.resnet20.dgc-wm5+dgc-fp16.np2."""
    extras = []
    for path in config_files[1:]:
        rel = pathlib.Path(path).resolve().relative_to(ROOT / "configs").with_suffix("")
        extras.append("-".join(rel.parts))
    model = cfg.model.target.__name__ if cfg.model.target else "model"
    return ".".join([cfg.data.name, model] + (["+".join(extras)] if extras else []) + [f"np{world_size}"])


def scaled_optimizer(cfg, model, world_size):
    """The configured optimizer over ``model``: the dataset file's lr times ``train.lr_multiplier`` (a
    compression file's, e.g. signSGD's unit-sign steps need 1/100), times the workers with
    ``train.scale_lr_by_workers``."""
    scale = world_size if cfg.train.scale_lr_by_workers else 1
    return cfg.train.optimizer(model.parameters(), lr=cfg.train.optimizer.lr * cfg.train.lr_multiplier * scale)


def exchange_options(cfg):
    """The dgc exchange's configured parts, the same for both backends: compressor, memory, dense compressor,
    non-finite policy and (fp16 autocast) the loss scale."""
    loss_scale = None
    if cfg.train.amp == "fp16":
        from dgc.amp import LossScale
        loss_scale = LossScale(cfg.train.amp_init_scale)
    return {"compression": cfg.train.compression(),
            "memory": cfg.train.memory() if cfg.train.memory is not None else None,
            "dense_compression": cfg.train.dense_compression() if cfg.train.dense_compression is not None else None,
            "nonfinite": cfg.train.nonfinite, "loss_scale": loss_scale}


def fused(cfg, communicator):
    """``communicator`` through the fused exchange with ``train.fuse_exchange`` (None stays None)."""
    if communicator is None or not cfg.train.fuse_exchange:
        return communicator
    from dgc.fused import FusedCommunicator
    return FusedCommunicator(communicator)


def build_optimizer(cfg, model, world_size, communicator=None):
    """The configured optimizer, distributed: Horovod's own DistributedOptimizer for the baseline
    (``train.compression`` None), dgc.horovod's with the configured compressor and memory otherwise (through
    the fused exchange with ``train.fuse_exchange``; within hosts densely and compressed only between them
    with ``train.hierarchical``, where no ``communicator`` is given). Returns
    it with its exchange statistics (``set_epoch``, ``last_exchange``, ``state_dict``)."""
    import horovod.torch as hvd

    import dgc.horovod as dgc_hvd

    optimizer = scaled_optimizer(cfg, model, world_size)
    passes = cfg.train.backward_passes_per_step
    if cfg.train.compression is None:     # Horovod's own: no skipping, no loss scaling (check_config)
        optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters(),
                                             compression=hvd.Compression.none, backward_passes_per_step=passes)
        return optimizer, dgc_hvd.DenseStats(model.named_parameters())
    local = None
    if cfg.train.hierarchical and communicator is None:
        communicator, local = dgc_hvd.hierarchical_communicators()
    elif communicator is None:
        communicator = dgc_hvd.HorovodCommunicator()
    communicator, local = fused(cfg, communicator), fused(cfg, local)
    route = {"hierarchical": (communicator, local)} if local is not None else {"communicator": communicator}
    optimizer = dgc_hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters(),
                                             backward_passes_per_step=passes, model=model, **route,
                                             **exchange_options(cfg))
    return optimizer, optimizer.exchange


def build_ddp(cfg, model, world_size):
    """The torch backend: ``model`` (on its device: DDP drives the GPU it is on) in DistributedDataParallel
    with DDP's own allreduce for the baseline, or the configured compressor and memory through
    :mod:`dgc.torch`'s communication hook (fused with ``train.fuse_exchange``). Returns ``(ddp_model,
    optimizer, exchange statistics, step)``, ``step()`` being the optimizer step to call (the hook's: it
    skips agreed bad steps and steps corrected tensors plainly)."""
    from torch.nn.parallel import DistributedDataParallel

    import dgc.torch as dgc_torch
    from dgc.exchange import DenseStats

    optimizer = scaled_optimizer(cfg, model, world_size)
    device = next(model.parameters()).device
    ddp = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if cfg.train.compression is None and cfg.train.torch_hook is not None:
        from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook
        state = cfg.train.torch_hook()
        ddp.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
        return ddp, optimizer, DenseStats(model.named_parameters(), powersgd=state), lambda: optimizer.step()
    if cfg.train.compression is None:
        return ddp, optimizer, DenseStats(model.named_parameters()), lambda: optimizer.step()
    hook = dgc_torch.DGCHook(ddp, optimizer, communicator=fused(cfg, dgc_torch.TorchCommunicator()),
                             **exchange_options(cfg))
    ddp.register_comm_hook(hook, dgc_torch.dgc_hook)
    return ddp, optimizer, hook.exchange, lambda: hook.step(optimizer)


def replica_check(cfg, backend, model, steps_per_epoch):
    """``check(global_step)``: with ``train.check_replicas_every`` (None: once per epoch) steps, compare every
    parameter and integer buffer of ``model`` across all ranks (:mod:`dgc.replicas`; one int64 allgather),
    raising :class:`~dgc.replicas.ReplicaMismatch` on every rank when some rank's differ."""
    from dgc.replicas import check_replicas, replicated_tensors

    every = cfg.train.check_replicas_every
    every = steps_per_epoch if every is None else every
    if not every:
        return lambda global_step: None
    if backend == "torch":
        from dgc.torch import TorchCommunicator as World
    else:
        from dgc.horovod import HorovodCommunicator as World
    world = World()

    def check(global_step):
        if global_step % every == 0:
            check_replicas(world, replicated_tensors(model), f"after step {global_step}")
    return check


def check_training_setup(cfg, backend):
    """Build the model and the distributed optimizer (``backend`` "torch": the DDP hook's state) once on one
    in-process worker, so that a bad compressor, memory or optimizer argument stops every rank with a message
    before the process group starts or anything trains (and the torch backend never needs Horovod)."""
    from dgc.inprocess import InProcessGroup
    from training import auto
    from training.config import ConfigError

    if auto.is_auto(cfg):
        check_auto(cfg, backend)
        return
    if cfg.train.compression is None:
        return
    for key in ("compression", "memory", "dense_compression"):
        try:
            if cfg.train[key] is not None:
                cfg.train[key]()
        except (ValueError, TypeError) as error:
            raise ConfigError(f"train.{key}: {error}") from None
    try:
        model, communicator = cfg.model(), InProcessGroup(1).communicator(0)
        if backend == "torch":
            from dgc.torch import DGCHook
            DGCHook(model, scaled_optimizer(cfg, model, 1), communicator=communicator, **exchange_options(cfg))
        else:
            build_optimizer(cfg, model, 1, communicator)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"train.optimizer with this compression and memory: {error}") from None


def check_auto(cfg, backend):
    """compression=auto: its options, and every candidate's config with the run's other keys (as
    :func:`check_config` and :func:`check_training_setup` check one), before anything starts."""
    from training import auto
    from training.config import ConfigError
    try:
        cfg.train.compression()
    except (ValueError, TypeError) as error:
        raise ConfigError(f"train.compression (configs/compression/auto.py): {error}") from None
    if cfg.train.hierarchical:
        raise ConfigError("train.hierarchical=True with compression=auto: auto chooses among flat exchanges "
                          "(dense, fp16, dgc); choose configs/dgc/hierarchical.py's setup yourself")
    for name in cfg.train.compression.candidates:
        with auto.candidate(cfg, name):
            try:
                check_config(cfg)
                check_training_setup(cfg, backend)
            except ConfigError as error:
                raise ConfigError(f"compression=auto, candidate {name!r}: {error}; drop it from "
                                  "train.compression.candidates or change the key") from None


def auto_compression(cfg, hvd, model, train_loader, main_ckpt, device, autocast, channels_last):
    """compression=auto: the choice the run's checkpoint records (a resumed run keeps it, whatever it would
    measure now), else one made now on this run's batches (:mod:`training.auto`; nothing trained, RNG states
    put back); ``cfg`` becomes the chosen candidate's config. Returns ``(decision record, kept)``."""
    import itertools

    import torch
    from training import auto
    from training import checkpoint as ckpt
    record = None
    if hvd.rank() == 0:
        for path in (main_ckpt, ckpt.previous(main_ckpt)):
            try:
                if path.is_file():
                    record = auto.recorded(ckpt.load(path)["history"])
                    break
            except ckpt.CorruptCheckpoint:
                continue
    record = hvd.allgather_object(record, name="dgc.auto.recorded")[0]
    kept = record is not None
    if not kept:
        options, passes = cfg.train.compression(), cfg.train.backward_passes_per_step
        rng = ckpt.rng_state()
        first = []
        for x, y in itertools.islice(train_loader, 1 + options.calibration_steps * passes):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            first.append((x.contiguous(memory_format=torch.channels_last) if channels_last else x, y))
        record = auto.decide(options, hvd, model, itertools.cycle(first).__next__, device, passes, autocast,
                             auto.candidate_methods(cfg, options.candidates))
        ckpt.set_rng_state(rng)
    auto.apply(cfg, record["choice"])
    return record, kept


def code_digest():
    """SHA-256 of the code every rank runs (train.py, dgc/, training/, models/, configs/), to compare across ranks."""
    import hashlib
    digest = hashlib.sha256()
    for path in sorted([ROOT / "train.py", *(p for d in ("dgc", "training", "models", "configs")
                                             for p in (ROOT / d).rglob("*.py"))]):
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def check_ranks_agree(hvd, description):
    """Every rank must run the same config and code (a host with another checkout or other overrides would
    train something else silently): compare digests across ranks before anything is trained. Returns an
    error message naming the differing ranks, or None."""
    import hashlib
    mine = (hashlib.sha256(description.encode()).hexdigest(), code_digest())
    everyone = hvd.allgather_object(mine, name="dgc.fingerprints")
    for what, index in (("config", 0), ("code", 1)):
        differ = [r for r, f in enumerate(everyone) if f[index] != everyone[0][index]]
        if differ:
            return (f"ranks {differ} run a different {what} than rank 0 ({what} digests "
                    f"{sorted({f[index][:12] for f in everyone})}); start every rank with the same "
                    f"{'checkout' if what == 'code' else 'config files and overrides'}")
    return None


def probe_writable(folder):
    """Create ``folder`` and write and remove a probe file there; return an error message, or None."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe.{os.getpid()}"
        probe.write_bytes(b"dgc")
        probe.unlink()
    except OSError as error:
        return f"run directory {folder} is not writable ({error.strerror or error}); choose another --run-dir"
    return None


def model_state_of(cfg, path, option):
    """The model state dict in ``path`` (a run directory: its checkpoints/checkpoint.pt), for ``option``
    (--evaluate, train.init_checkpoint): a train.py checkpoint, or a compressed model file
    (scripts/compress_model.py) decoded into ordinary tensors. A ConfigError naming the file when it is
    missing, truncated or altered, or holds another model than ``cfg``'s (checked on the meta device)."""
    import torch

    from dgc import storage
    from training import checkpoint as ckpt
    from training.config import ConfigError

    path = pathlib.Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "checkpoint.pt"
    if not path.is_file():
        raise ConfigError(f"{option}: no checkpoint at {path}")
    try:
        state = storage.load(path)[0] if storage.is_compressed(path) else ckpt.load(path)
    except (ckpt.CorruptCheckpoint, storage.StorageError) as error:
        raise ConfigError(f"{option}: {error}") from None
    if not storage.is_compressed(path):
        if not isinstance(state, dict) or "model" not in state:
            raise ConfigError(f"{option}: {path} is no train.py checkpoint (it holds no 'model')")
        state = state["model"]
    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in cfg.model().state_dict().items()}
    found = {name: tuple(t.shape) for name, t in state.items()}
    if found != expected:
        differ = sorted(set(found) ^ set(expected)) or [n for n in expected if found[n] != expected[n]]
        raise ConfigError(f"{option}: {path} holds another model than the configs' {cfg.model.target.__name__}: "
                          f"{len(differ)} tensors differ in name or shape, e.g. {', '.join(differ[:3])}")
    return state


def evaluate(model, loader, hvd, channels_last, name, device):
    """Loss, top-1 and top-5 (percent) over the whole test set (each rank holds a disjoint shard), on
    ``device``: the sums stay there until the one allreduce at the end."""
    import torch
    from training.runlog import sum_over_workers, topk_correct

    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct1 = correct5 = torch.zeros((), device=device)
    count = 0
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out = model(x)
            loss_sum += torch.nn.functional.cross_entropy(out, y, reduction="sum").double()
            c1, c5 = topk_correct(out, y, (1, 5))
            correct1, correct5 = correct1 + c1, correct5 + c5
            count += len(y)
    loss_sum, correct1, correct5, count = sum_over_workers(hvd, [loss_sum, correct1, correct5, count], name)
    return {"test_loss": loss_sum / count, "test_top1": 100 * correct1 / count, "test_top5": 100 * correct5 / count}


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from training.config import ConfigError, load_configs
    from training.data import DatasetMissing
    try:
        cfg = load_configs(args.config_files, args.overrides, root=ROOT / "configs")
        check_config(cfg)
        check_device(cfg, args.backend)
        if args.backend == "torch" and cfg.train.hierarchical:
            raise ConfigError("train.hierarchical=True needs --backend horovod (its per-host process sets)")
        if args.backend != "torch" and cfg.train.torch_hook is not None:
            raise ConfigError("train.torch_hook (e.g. configs/ddp/powersgd.py) is a DDP communication "
                              "hook: it needs --backend torch under torchrun")
        check_training_setup(cfg, args.backend)
        if args.evaluate and args.checkpoint:
            args.model_state = model_state_of(cfg, args.checkpoint, "--evaluate")
        import torch
        from training import data as data_lib
        dataset = cfg.data.dataset()
        dataset["train"] = data_lib.subset(dataset["train"], cfg.data.train_fraction)
        dataset["test"] = data_lib.subset(dataset["test"], cfg.data.test_fraction)
    except (ConfigError, DatasetMissing) as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2
    return train(args, cfg, dataset)


def check_config(cfg):
    """Fail before training on a missing section, a non-positive count or another bad value (the device
    keys: :func:`check_device_keys`)."""
    from training.config import ConfigError
    required = {"data.name": cfg.data.get("name"), "data.dataset": cfg.data.get("dataset"),
                "model": cfg.get("model"), "train.optimizer": cfg.train.get("optimizer"),
                "train.scheduler": cfg.train.get("scheduler")}
    for key, value in required.items():
        if value is None or (hasattr(value, "target") and value.target is None):
            raise ConfigError(f"config key {key!r} is not set; the config files must define it "
                              "(start from a dataset+model file such as configs/cifar/resnet20.py)")
    for key in ("num_epochs", "batch_size", "backward_passes_per_step", "log_every"):
        value = cfg.train[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"config key 'train.{key}' must be a positive int, got {value!r}")
    if cfg.train.hierarchical not in (True, False):
        raise ConfigError(f"config key 'train.hierarchical' must be True or False, got {cfg.train.hierarchical!r}")
    if cfg.train.torch_hook is not None and cfg.train.compression is not None:
        raise ConfigError("train.torch_hook (a DDP communication hook, e.g. configs/ddp/powersgd.py) and "
                          f"train.compression ({cfg.train.compression}) both replace DDP's allreduce; keep one")
    if cfg.train.hierarchical and cfg.train.compression is None:
        raise ConfigError("train.hierarchical=True needs a compression (train.compression is None: Horovod's own "
                          "allreduce, which is made hierarchical by HOROVOD_HIERARCHICAL_ALLREDUCE=1 instead)")
    if cfg.train.nonfinite not in ("skip", "stop"):
        raise ConfigError(f"config key 'train.nonfinite' must be 'skip' or 'stop', got {cfg.train.nonfinite!r}")
    if cfg.train.amp not in (None, "bf16", "fp16"):
        raise ConfigError(f"config key 'train.amp' must be None, 'bf16' or 'fp16', got {cfg.train.amp!r}")
    if cfg.train.amp == "fp16" and cfg.train.compression is None:
        raise ConfigError("train.amp='fp16' needs a compression (its loss scaling and overflow skipping live in the "
                          "dgc exchange); the Horovod baseline runs with train.amp='bf16' or None")
    scale = cfg.train.amp_init_scale
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise ConfigError(f"config key 'train.amp_init_scale' must be a positive number, got {scale!r}")
    multiplier = cfg.train.lr_multiplier
    if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)) or not 0 < multiplier < math.inf:
        raise ConfigError(f"config key 'train.lr_multiplier' must be a positive finite number (the factor on "
                          f"train.optimizer.lr), got {multiplier!r}")
    every = cfg.train.measure_error_every
    if not isinstance(every, int) or isinstance(every, bool) or every < 0:
        raise ConfigError(f"config key 'train.measure_error_every' must be an int >= 0 (0: never), got {every!r}")
    every = cfg.train.check_replicas_every
    if every is not None and (not isinstance(every, int) or isinstance(every, bool) or every < 0):
        raise ConfigError("config key 'train.check_replicas_every' must be None (once per epoch) or an int >= 0 "
                          f"(steps; 0: never), got {every!r}")
    if cfg.train.prune is not None:
        if not hasattr(cfg.train.prune.target, "check"):
            raise ConfigError("config key 'train.prune' must be None or Config(GradualPruner, ...) (configs/prune/"
                              f"gradual.py), got {cfg.train.prune!r}")
        try:
            cfg.train.prune.target.check(**cfg.train.prune, num_epochs=cfg.train.num_epochs)
        except (ValueError, TypeError) as error:
            raise ConfigError(f"train.prune: {error}") from None
    if cfg.train.init_checkpoint is not None and not isinstance(cfg.train.init_checkpoint, str):
        raise ConfigError("config key 'train.init_checkpoint' must be None or the path of a checkpoint (or its run "
                          f"directory), got {cfg.train.init_checkpoint!r}")
    check_device_keys(cfg)


def check_device_keys(cfg):
    """Fail before anything starts on a bad ``train.device`` or ``train.dist_backend``, on "cuda" where CUDA
    is not available, and on a process-group backend that has none for the training device's tensors."""
    import torch
    from training.config import ConfigError
    if cfg.train.device not in ("auto", "cpu", "cuda"):
        raise ConfigError("config key 'train.device' must be 'auto' (this rank's GPU if CUDA is available, else "
                          f"the CPU), 'cpu' or 'cuda', got {cfg.train.device!r}")
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        why = (f"this torch {torch.__version__} is built without CUDA" if torch.version.cuda is None else
               f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU"
               + (f" with CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r}"
                  if "CUDA_VISIBLE_DEVICES" in os.environ else ""))
        raise ConfigError(f"train.device='cuda' but CUDA is not available here ({why}); set train.device='cpu' "
                          "(or 'auto': the GPU where there is one)")
    backend = cfg.train.dist_backend
    if backend is None:
        return
    served = backend_devices(backend)
    if served is None:
        import torch.distributed as dist
        known = [b for b in dist.Backend.backend_list if b != "undefined"]
        raise ConfigError("config key 'train.dist_backend' must be None (\"cpu:gloo,cuda:nccl\" on a GPU, \"gloo\" "
                          f"on the CPU) or a torch.distributed backend (one of {', '.join(known)}) or "
                          f"device:backend pairs for cpu and cuda, e.g. 'cpu:gloo,cuda:nccl'; got {backend!r}")
    kind = device_type(cfg)
    if kind not in served:
        raise ConfigError(f"train.dist_backend={backend!r} has no backend for {kind} tensors and train.device="
                          f"{cfg.train.device!r} trains on the {kind.upper()}; add one (e.g. 'cpu:gloo,cuda:nccl') "
                          "or leave train.dist_backend None")


def backend_devices(backend):
    """``{device type: backend name}`` that the process-group backend string ``backend`` serves ("gloo": the
    CPU and CUDA; "nccl": CUDA only; "cpu:gloo,cuda:nccl": as written), or None where it is not one."""
    import torch.distributed as dist
    known = set(dist.Backend.backend_list) - {"undefined"}
    served = {}
    for part in backend.split(",") if isinstance(backend, str) else [""]:
        device, _, name = part.rpartition(":")
        devices = [device] if device else ["cuda"] if name == "nccl" else ["cpu", "cuda"]
        if name not in known or not set(devices) <= {"cpu", "cuda"} or set(devices) & set(served):
            return None
        served.update(dict.fromkeys(devices, name))
    return served


def device_type(cfg):
    """"cuda" or "cpu": ``train.device``, "auto" being the GPU where CUDA is available."""
    import torch
    if cfg.train.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.train.device


def dist_backend(cfg):
    """The torch backend's process-group backend: ``train.dist_backend``, else NCCL for CUDA tensors beside
    Gloo for the CPU's (object collectives pickle to the CPU) on a GPU, Gloo on the CPU."""
    return cfg.train.dist_backend or ("cpu:gloo,cuda:nccl" if device_type(cfg) == "cuda" else "gloo")


def check_device(cfg, backend):
    """What the training device needs of ``backend`` (horovod or torch), checked before any process starts:
    ``train.dist_backend`` is the torch backend's; Horovod trains on the GPU only when built with CUDA; NCCL
    takes one GPU per rank."""
    import torch
    from training.config import ConfigError
    kind = device_type(cfg)
    if backend != "torch":
        if cfg.train.dist_backend is not None:
            raise ConfigError(f"train.dist_backend={cfg.train.dist_backend!r} is the torch backend's process group "
                              "(--backend torch); Horovod uses the operations it was built with")
        if kind == "cuda":
            import horovod.torch as hvd
            if not hvd.cuda_built():
                raise ConfigError(f"train.device={cfg.train.device!r} trains on the GPU, but this Horovod is "
                                  "built without CUDA; build it with HOROVOD_GPU_OPERATIONS=NCCL bash "
                                  "scripts/setup.sh, set train.device='cpu', or use --backend torch")
        return
    if kind != "cuda" or backend_devices(dist_backend(cfg)).get("cuda") != "nccl":
        return
    ranks, gpus = int(os.environ.get("LOCAL_WORLD_SIZE", "1")), torch.cuda.device_count()
    if ranks > gpus:
        raise ConfigError(f"{ranks} ranks on this host and {gpus} GPU{'s' * (gpus != 1)}: NCCL takes one GPU per "
                          f"rank; start at most {gpus} per host (torchrun --nproc-per-node {gpus}), or set "
                          "train.dist_backend='gloo' (ranks then share GPUs, their tensors through host memory)")


def training_device(cfg, local_rank):
    """The device this rank trains on, made current: the CPU, or (CUDA) GPU ``local_rank`` of this host's
    (modulo their number: ranks beyond it share GPUs, which Gloo allows and NCCL refuses)."""
    import torch
    if device_type(cfg) == "cpu":
        return torch.device("cpu")
    device = torch.device("cuda", local_rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    return device


def train(args, cfg, dataset):
    import torch
    from tqdm import tqdm

    if args.backend == "torch":
        from training import torch_backend as hvd
    else:
        import horovod.torch as hvd

    from dgc.replicas import ReplicaMismatch
    from training import auto
    from training.config import ConfigError
    from training import checkpoint as ckpt
    from training import data as data_lib
    from training.runlog import RunLog, sum_over_workers

    if args.backend == "torch":
        hvd.init(backend=dist_backend(cfg))
    else:
        hvd.init(process_sets="dynamic" if cfg.train.hierarchical else None)   # hierarchical: per-host sets
    device = training_device(cfg, hvd.local_rank())      # current before the first collective (NCCL's)
    rank, world = hvd.rank(), hvd.size()
    torch.set_num_threads(cfg.train.num_threads or max(1, torch.get_num_threads() // hvd.local_size()))
    torch.manual_seed(cfg.seed)
    run_dir = pathlib.Path(args.run_dir or ROOT / "runs" / run_name(cfg, args.config_files, world))
    ckpt_dir = run_dir / "checkpoints"
    main_ckpt = pathlib.Path(args.checkpoint) if args.checkpoint else ckpt_dir / "checkpoint.pt"
    description = cfg.describe()
    problem = check_ranks_agree(hvd, description)
    if problem:
        if rank == 0:
            print(f"train.py: error: {problem}", file=sys.stderr)
        return 2

    model = cfg.model().to(device)     # before the distributed optimizer or DDP takes its parameters
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.amp)
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
    data_lib.seed_rank(cfg.seed, rank)
    # Inputs only: channels_last parameters would give non-contiguous gradients, which Horovod refuses.
    channels_last = cfg.train.channels_last
    train_loader, sampler, test_loader = data_lib.loaders(dataset, cfg.train.batch_size, rank, world,
                                                          cfg.data.num_workers, cfg.seed, device=device,
                                                          prefetch_factor=cfg.data.prefetch_factor)
    passes = cfg.train.backward_passes_per_step
    num_batches = len(train_loader)
    if num_batches == 0:
        if rank == 0:
            print(f"train.py: error: {len(dataset['train'])} training images over {world} workers make no whole "
                  f"batch of train.batch_size={cfg.train.batch_size}; raise data.train_fraction or lower the batch "
                  "size", file=sys.stderr)
        return 2
    # The last step of an epoch takes the passes that are left (num_batches need not divide): nothing is
    # carried into the next epoch.
    steps_per_epoch = math.ceil(num_batches / passes)
    problems = hvd.allgather_object(probe_writable(ckpt_dir), name="dgc.probe")  # every rank stops alike
    problem = next((f"rank {r}: {p}" for r, p in enumerate(problems) if p), None)
    if problem:
        if rank == 0:
            print(f"train.py: error: {problem}", file=sys.stderr)
        return 2
    # Its gradient hooks come before the exchange's (DDP's hook keeps a copy of the local gradient).
    pruner = cfg.train.prune(model, steps_per_epoch=steps_per_epoch, num_epochs=cfg.train.num_epochs) \
        if cfg.train.prune is not None else None
    auto_record = None
    if auto.is_auto(cfg):
        auto_record, kept = auto_compression(cfg, hvd, model, train_loader, main_ckpt, device, autocast,
                                             channels_last)
        if rank == 0:
            print(f"auto: keeping {auto_record['choice']}, the choice recorded in {main_ckpt}" if kept
                  else auto.summary(auto_record), flush=True)
    if args.backend == "torch":
        net, optimizer, exchange, step = build_ddp(cfg, model, world)
    else:
        optimizer, exchange = build_optimizer(cfg, model, world)
        net, step = model, lambda: optimizer.step()     # late bound: the scheduler wraps optimizer.step
    scheduler = cfg.train.scheduler(optimizer, steps_per_epoch=steps_per_epoch, num_epochs=cfg.train.num_epochs)
    if pruner is not None:
        pruner.attach(optimizer, getattr(exchange, "memory", None))
    check_replicas = replica_check(cfg, args.backend, model, steps_per_epoch)

    if args.evaluate:
        if not main_ckpt.is_file():
            if rank == 0:
                print(f"train.py: error: --evaluate: no checkpoint at {main_ckpt}", file=sys.stderr)
            return 2
        try:        # --checkpoint FILE was read and checked before training began
            state = args.model_state if args.checkpoint else model_state_of(cfg, main_ckpt, "--evaluate")
            model.load_state_dict(state)
        except ConfigError as error:
            if rank == 0:
                print(f"train.py: error: {error}", file=sys.stderr)
            return 2
        result = evaluate(model, test_loader, hvd, channels_last, "eval", device)
        if rank == 0:
            print(" ".join(f"{k}={v:.4f}" for k, v in result.items()))
        return 0

    leaders = None      # the ranks keeping residuals: all, or with train.hierarchical each host's leader
    if cfg.train.hierarchical:
        leads = hvd.allgather_object(exchange.communicator is not None, name="dgc.leaders")
        leaders = [r for r, lead in enumerate(leads) if lead]
    try:
        start_epoch, history = ckpt.resume(main_ckpt, ckpt_dir, rank, world, description, model, optimizer,
                                           scheduler, exchange, all_ok=lambda ok: hvd.allreduce(
                                               torch.tensor(float(ok), device=device), op=hvd.Min,
                                               name="dgc.resume").item() == 1,
                                           leaders=leaders, extra={"prune": pruner} if pruner else None)
    except ckpt.ResumeError as error:
        if rank == 0:
            print(f"train.py: error: {error}", file=sys.stderr)
        return 2
    if start_epoch == 0 and args.resume:
        if rank == 0:
            print(f"train.py: error: --resume: no checkpoint at {main_ckpt}", file=sys.stderr)
        return 2
    if start_epoch and rank == 0:
        print(f"resuming {run_dir} at epoch {start_epoch + 1}", flush=True)
    if not start_epoch and cfg.train.init_checkpoint is not None:     # rank 0's weights go to all below
        problem = None
        if rank == 0:
            try:
                model.load_state_dict(model_state_of(cfg, cfg.train.init_checkpoint, "train.init_checkpoint"))
            except ConfigError as error:
                problem = str(error)
        problem = hvd.allgather_object(problem, name="dgc.init_checkpoint")[0]
        if problem:
            if rank == 0:
                print(f"train.py: error: {problem}", file=sys.stderr)
            return 2
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    if start_epoch:
        hvd.broadcast_optimizer_state(optimizer, root_rank=0)

    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.txt").write_text(f"# {' '.join(sys.argv)}\n{description}\n")
    info = {"run": run_dir.name, "dataset": cfg.data.name, "model": cfg.model.target.__name__, "num_workers": world,
            "device": device.type,
            "compression": "none" if cfg.train.compression is None else cfg.train.compression.target.__name__,
            "dense_bytes_per_step": sum(p.numel() * 4 for p in model.parameters() if p.requires_grad),
            **({"auto": auto_record} if auto_record is not None else {})}
    log = RunLog(run_dir, info, cfg.train.target_accuracy, history, enabled=rank == 0)

    for epoch in range(start_epoch, cfg.train.num_epochs):
        sampler.set_epoch(epoch)
        model.train()
        started = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)     # read at logging steps only
        correct = torch.zeros((), device=device)
        seen = steps = bytes_sent = 0
        sums = {"compression_ratio": 0.0, "compress_s": 0.0, "decompress_s": 0.0}
        errors, snrs = [], []
        skipped_before = exchange.skipped_steps
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg.train.num_epochs}", disable=rank != 0 or None,
                   leave=False, dynamic_ncols=True)
        for i, (x, y) in enumerate(bar):
            exchange.set_epoch(epoch + i / num_batches if cfg.train.compression_warmup_per_step else epoch)
            every = cfg.train.measure_error_every    # sampled steps also measure the error against dense
            exchange.measure_error = every > 0 and (epoch * steps_per_epoch + steps + 1) % every == 0
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            accumulating = (i + 1) % passes and i + 1 < num_batches
            # DDP exchanges at every backward unless told not to (Horovod's optimizer counts the passes).
            with net.no_sync() if accumulating and net is not model else contextlib.nullcontext():
                with autocast():
                    out = net(x)
                    loss = torch.nn.functional.cross_entropy(out, y)
                passes_in_step = min(passes, num_batches - i // passes * passes)
                scale = exchange.loss_scale.value if cfg.train.amp == "fp16" else 1.0
                (loss * (scale / passes_in_step)).backward()
            loss_sum += loss.detach().double() * len(y)
            correct += (out.argmax(1) == y).sum()
            seen += len(y)
            if accumulating:
                continue
            step()
            if pruner is not None:
                pruner.step()
            optimizer.zero_grad()
            scheduler.step()
            stats = exchange.last_exchange
            steps += 1
            bytes_sent += stats["bytes_sent"]
            for key in sums:
                sums[key] += stats[key]
            if stats["relative_error"] is not None:
                errors.append(stats["relative_error"])
            if stats["snr_db"] is not None:
                snrs.append(stats["snr_db"])
            global_step = epoch * steps_per_epoch + steps
            try:
                check_replicas(global_step)
            except ReplicaMismatch as error:      # raised alike on every rank: all stop, nothing saved
                bar.close()
                log.close()
                if rank == 0:
                    print(f"train.py: error: {error}", file=sys.stderr, flush=True)
                return 2
            if rank == 0 and (global_step % cfg.train.log_every == 0 or stats["relative_error"] is not None):
                log.step(global_step, loss.item(), optimizer.param_groups[0]["lr"], stats)
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{100 * correct.item() / seen:.1f}",
                                ratio=f"{stats['compression_ratio']:.4f}", refresh=False)
        bar.close()
        train_loss, train_correct, train_seen = sum_over_workers(hvd, [loss_sum, correct, seen], f"train.{epoch}")
        train_time = time.perf_counter() - started
        result = evaluate(model, test_loader, hvd, channels_last, f"eval.{epoch}", device)
        record = {"epoch": epoch + 1, "train_loss": train_loss / train_seen, "train_top1": 100 * train_correct / train_seen,
                  **result, "epoch_time_s": time.perf_counter() - started, "images_per_s": train_seen / train_time,
                  "steps": steps, "bytes_sent": bytes_sent,
                  "compression_ratio": sums["compression_ratio"] / max(steps, 1),
                  "compress_ms": 1000 * sums["compress_s"] / max(steps, 1),
                  "decompress_ms": 1000 * sums["decompress_s"] / max(steps, 1),
                  "relative_error": sum(errors) / len(errors) if errors else None,
                  "snr_db": sum(snrs) / len(snrs) if snrs else None,
                  "skipped_steps": exchange.skipped_steps - skipped_before,
                  "loss_scale": exchange.loss_scale.value if cfg.train.amp == "fp16" else None,
                  "lr": optimizer.param_groups[0]["lr"], "sparsity": pruner.sparsity() if pruner else None}
        if auto_record is not None and auto.recorded(log.history) is None:    # kept in the checkpoint
            record["auto"] = auto_record
        log.epoch(record)
        if rank == 0:
            print(f"epoch {epoch + 1}/{cfg.train.num_epochs} train_loss={record['train_loss']:.4f} "
                  f"train_top1={record['train_top1']:.2f} test_loss={record['test_loss']:.4f} "
                  f"test_top1={record['test_top1']:.2f} ratio={record['compression_ratio']:.5f} "
                  f"time={record['epoch_time_s']:.1f}s"
                  + (f" sparsity={record['sparsity']:.4f}" if pruner else ""), flush=True)
        ckpt.save(main_ckpt, ckpt_dir, rank, world, epoch + 1, description, model, optimizer, scheduler, exchange,
                  log.history, barrier=hvd.barrier, leaders=leaders,
                  extra={"prune": pruner.state_dict()} if pruner else None)
    log.close()
    if rank == 0 and log.history:
        summary = log.summary()
        log.write_metrics()
        print(f"done: best_test_top1={summary['best_test_top1']:.2f} final_test_top1={summary['final_test_top1']:.2f} "
              f"mean_compression_ratio={summary['mean_compression_ratio']:.5f} run_dir={run_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
