"""``python -m vir_lightning benchmark``: throughput and peak memory of ViR, QnA-ViT and ViT by resolution.

``python -m vir_lightning benchmark layers --help``: the layer-level comparison of QnA with local
self-attention (``layer_benchmark.py``). ``python -m vir_lightning benchmark adaptive --help``: what
AdaViT checkpoints save, in real throughput (``adaptive_benchmark.py``). ``python -m vir_lightning benchmark
streaming --help``: causal ViR on huge images, streamed in bands and whole (``streaming_benchmark.py``).

For every backbone, resolution and (for ViR) retention form it measures, after warm-up and as
the median of repeated runs: inference images/s, training-step images/s (forward, backward and
an AdamW step) and peak memory, for the backbone alone or with a dense head (UPerNet or Faster
R-CNN). By default (``--timing interleaved``) every model of a size is timed in one process, one pass
of each per round in rotating order, and a speed-up is the median of the round-by-round ratios: what
a user comparing the two models on the same machine gets. On a machine whose speed drifts by 10-30%
within minutes (shared CPUs), timing each point on its own, minutes apart (``--timing isolated``),
can read a ratio 10% off either way. ViT runs timm's ``scaled_dot_product_attention`` pinned to the
flash backend (bf16 on GPU), and the backend that actually ran is recorded. Out-of-memory points are recorded as OOM
and the run goes on. Results: a JSON file with every raw figure and the device, versions,
dtype, batch and command; a CSV; a markdown table; a plot of throughput and memory against
resolution.

Peak memory is CUDA's allocator peak on GPU. On CPU, where PyTorch keeps no allocator
statistics, there are two figures: the peak growth of the process's resident memory over what the
model and input already held, sampled every millisecond in a fresh process (what the machine must
have, including the freed blocks the C heap keeps), and the tensor peak, the most memory the
tensors of one inference pass hold at once, tracked op by op (what the computation needs: the
CPU counterpart of the CUDA figure).
"""
import argparse
import concurrent.futures
import csv
import ctypes
import datetime
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

DEFAULT_BACKBONES = ('vir_tiny_patch16_224', 'vit_tiny_patch16_224', 'qna_vit_tiny')
DEFAULT_SIZES = (224, 512, 1024, 2048)
HEADS = ('none', 'uper', 'faster_rcnn')
SDPA_ORDER = ('FLASH_ATTENTION', 'EFFICIENT_ATTENTION', 'CUDNN_ATTENTION', 'MATH')


def is_vir(name: str) -> bool:
    return name.startswith('vir_')


def family(name: str) -> str:
    """ViR (global, linear), QnA (local, linear) or ViT (global, quadratic: any other timm model)."""
    return 'ViR' if is_vir(name) else 'QnA' if name.startswith('qna_') else 'ViT'


# ---- memory ----------------------------------------------------------------------------------------
def _rss_bytes() -> int:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


@contextmanager
def peak_memory(device: torch.device):
    """Yields a dict whose 'mb' holds the peak memory (MiB) used inside the block."""
    result = {'mb': None}
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        yield result
        torch.cuda.synchronize(device)
        result['mb'] = (torch.cuda.max_memory_allocated(device) - start) / 2 ** 20
        return
    baseline, peak, done = _rss_bytes(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        done.set()
        sampler.join()
        result['mb'] = max(0, max(peak[0], _rss_bytes()) - baseline) / 2 ** 20


def tensor_peak_mb(step: Callable[[], None]) -> float:
    """Peak MiB held by the tensors that ``step`` creates, tracked op by op: on CPU what CUDA's allocator peak
    counts on GPU, the memory the computation itself needs, without what the C heap keeps of freed blocks
    (resident memory holds both). Buffers an op frees before it returns are not seen."""
    from torch.multiprocessing.reductions import StorageWeakRef
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class LiveTensors(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.live, self.peak = {}, 0  # storage address -> (weak reference, bytes)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            seen = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
            for tensor in tree_leaves(out):
                if not isinstance(tensor, torch.Tensor) or tensor.untyped_storage().data_ptr() in seen:
                    continue  # in place, out= or a view of an input: nothing new
                storage = tensor.untyped_storage()
                address, held = storage.data_ptr(), self.live.get(storage.data_ptr())
                if address and (held is None or held[0].expired()):
                    self.live = {a: h for a, h in self.live.items() if not h[0].expired()}
                    self.live[address] = (StorageWeakRef(storage), storage.nbytes())
                    self.peak = max(self.peak, sum(h[1] for h in self.live.values()))
            return out

    with LiveTensors() as tracker:
        step()
    return tracker.peak / 2 ** 20


def warm_resident_mb(step: Callable[[], None]) -> Optional[float]:
    """Peak resident MiB that one more pass adds to a warm process, the C heap's free memory handed back first
    (glibc's ``malloc_trim``): what a long run over many images holds, without the one-time costs of a first
    pass (library code paged in, thread pools) and without the freed blocks earlier passes left in the heap.
    None where the C library has no ``malloc_trim``."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        return None
    with peak_memory(torch.device('cpu')) as memory:
        step()
    return memory['mb']


def _is_oom(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, torch.OutOfMemoryError) or 'out of memory' in text or "can't allocate memory" in text


# ---- models ----------------------------------------------------------------------------------------
def build_model(name: str, size: int, head: str, mode: Optional[str], args, geometry: str = '1d') -> torch.nn.Module:
    """The backbone (and head) at ``size``; ViR in retention form ``mode`` and ``geometry``."""
    import timm
    import vir_lightning  # noqa: F401  (registers ViR)
    kwargs = dict(img_size=size)
    if is_vir(name):
        kwargs.update(retention_mode=mode, chunk_size=args.chunk_size, direction=args.direction,
                      retention_kernel=args.kernel, geometry=geometry)
    if head == 'none':
        return timm.create_model(name, num_classes=0, **kwargs)
    if head == 'uper':  # four maps, as the mmseg ViT recipe (which blocks does not change the cost)
        from ..heads import UPerNet
        backbone = timm.create_model(name, features_only=True, out_indices=4, **kwargs)
        return _BackboneAndHead(backbone, UPerNet(backbone.feature_info.channels(), num_classes=150))
    from ..heads import create_detector
    from ..tasks.detection import detection_backbone
    return create_detector('faster_rcnn', detection_backbone(name, kwargs), num_classes=80)


class _BackboneAndHead(torch.nn.Module):
    def __init__(self, backbone: torch.nn.Module, head: torch.nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, images: torch.Tensor):
        return self.head(self.backbone(images))


def _loss(outputs) -> torch.Tensor:
    if isinstance(outputs, dict):  # detector losses
        return sum(outputs.values())
    if isinstance(outputs, (tuple, list)):
        return sum(o.float().mean() for o in outputs if o is not None)
    return outputs.float().mean()


def _detection_targets(batch: int, size: int, device: torch.device) -> List[dict]:
    boxes = torch.tensor([[0.1, 0.1, 0.3, 0.4], [0.5, 0.5, 0.9, 0.8]], device=device) * size
    return [{'boxes': boxes, 'labels': torch.tensor([1, 2], device=device)} for _ in range(batch)]


# ---- timing ----------------------------------------------------------------------------------------
@contextmanager
def sdpa_backend(pinned: Optional[str]):
    """Pin scaled_dot_product_attention to one backend (None: PyTorch's choice)."""
    if pinned is None:
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel(getattr(SDPBackend, pinned)):
        yield


def _synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def passes_per_sample(step: Callable[[], None], device: torch.device, min_seconds: float) -> int:
    """How many passes one timed sample holds: enough to last ``min_seconds`` (from one more warm pass), so that
    a pass of a few milliseconds is not timed at the grain of the clock and the scheduler; 1 for longer passes,
    and without a pass when ``min_seconds`` is 0."""
    if min_seconds <= 0:
        return 1
    return max(1, math.ceil(min_seconds / _timed(step, device, 1)))


def _timed(step: Callable[[], None], device: torch.device, passes: int) -> float:
    """Seconds per pass of ``passes`` passes run back to back."""
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(passes):
        step()
    _synchronize(device)
    return (time.perf_counter() - start) / passes


def median_seconds(step: Callable[[], None], device: torch.device, warmup: int, repeats: int,
                   min_seconds: float = 0.0) -> List[float]:
    for _ in range(warmup):
        step()
    passes = passes_per_sample(step, device, min_seconds)
    return [_timed(step, device, passes) for _ in range(repeats)]


def _record(name: str, size: int, head: str, mode: Optional[str], geometry: Optional[str], args, dtype: torch.dtype,
            status: str) -> Dict:
    """What identifies a point (tokens assume patch 16 until the model says otherwise)."""
    return dict(backbone=name, family=family(name), retention_mode=mode, geometry=geometry, size=size, head=head,
                batch_size=args.batch_size, dtype=str(dtype).replace('torch.', ''), tokens=(size // 16) ** 2,
                status=status)


def measure(name: str, size: int, head: str, mode: Optional[str], geometry: Optional[str], args,
            device: torch.device, dtype: torch.dtype) -> Dict:
    """One point: inference and training figures, or the reason there are none."""
    record = _record(name, size, head, mode, geometry, args, dtype, status='ok')
    torch.manual_seed(0)
    try:
        model = build_model(name, size, head, mode, args, geometry).to(device)
    except Exception as error:  # noqa: BLE001 - recorded, the run goes on
        return {**record, 'status': 'OOM' if _is_oom(error) else f'error: {error}'}
    patch = next((m.patch_size for m in model.modules() if type(m).__name__ == 'PatchEmbed'), (16, 16))
    record['tokens'] = (size // patch[0]) * (size // patch[1])
    images = torch.randn(args.batch_size, 3, size, size, device=device)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    backends = [None] if family(name) != 'ViT' or args.sdpa == 'auto' else \
        list(SDPA_ORDER[SDPA_ORDER.index(args.sdpa):])
    for backend in backends:  # the first backend that runs is the one recorded
        try:
            with sdpa_backend(backend):
                record.update(_run(model, images, head, args, device, autocast))
            record['sdpa_backend'] = backend.lower() if backend else ('none' if is_vir(name) else 'auto')
            break
        except RuntimeError as error:
            if _is_oom(error):
                record['status'] = 'OOM'
                break
            if backend is None or 'No available kernel' not in str(error):
                record['status'] = f'error: {str(error).splitlines()[0]}'
                break
        finally:
            if device.type == 'cuda':
                torch.cuda.empty_cache()
    del model
    return record


def in_fresh_process(function: Callable, *args):
    """``function(*args)`` in a fresh process, so that memory freed by earlier points cannot hide this
    one's; None if the process was killed (typically by the out-of-memory killer)."""
    context = multiprocessing.get_context('spawn')
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        try:
            return pool.submit(function, *args).result()
        except concurrent.futures.process.BrokenProcessPool:
            return None


def measure_isolated(name: str, size: int, head: str, mode: Optional[str], geometry: Optional[str], args,
                     device: torch.device, dtype: torch.dtype) -> Dict:
    """``measure`` in a fresh process."""
    return in_fresh_process(measure, name, size, head, mode, geometry, args, device, dtype) or \
        _record(name, size, head, mode, geometry, args, dtype, status='OOM')


def _inference_step(model, images: torch.Tensor, head: str) -> Callable[[], None]:
    model.eval()
    inputs = list(images) if head == 'faster_rcnn' else images
    return lambda: model(inputs)


def _training_step(model, images: torch.Tensor, head: str, args, device: torch.device, autocast) -> Callable[[], None]:
    """Forward, backward and an AdamW step."""
    model.train()
    for module in model.modules():  # frozen BatchNorm: UPerNet's pooled 1x1 maps cannot train BN at batch 1
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    if args.grad_checkpointing:
        getattr(getattr(model, 'backbone', model), 'set_grad_checkpointing', lambda *_: None)(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    as_list = head == 'faster_rcnn'
    inputs = list(images) if as_list else images
    targets = _detection_targets(len(images), images.shape[-1], device) if as_list else None

    def step():
        with autocast:
            loss = _loss(model(inputs, targets) if as_list else model(inputs))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def _figures(kind: str, times: List[float], batch: int) -> Dict:
    median = statistics.median(times)
    return {f'{kind}_seconds': median, f'{kind}_images_per_s': batch / median, f'{kind}_times': times}


def _run(model, images, head: str, args, device: torch.device, autocast) -> Dict:
    with torch.inference_mode(), autocast, peak_memory(device) as memory:
        times = median_seconds(_inference_step(model, images, head), device, args.warmup, args.repeats,
                               args.min_sample_seconds)
    figures = {**_figures('infer', times, len(images)), 'infer_peak_mb': memory['mb']}
    if device.type == 'cpu':
        with torch.inference_mode(), autocast:
            step = _inference_step(model, images, head)
            figures['infer_tensor_peak_mb'] = tensor_peak_mb(step)
            figures['infer_warm_peak_mb'] = warm_resident_mb(step)
    if not args.train:
        return figures
    step = _training_step(model, images, head, args, device, autocast)
    with peak_memory(device) as memory:
        times = median_seconds(step, device, args.warmup, args.repeats, args.min_sample_seconds)
    return {**figures, **_figures('train', times, len(images)), 'train_peak_mb': memory['mb']}


# ---- interleaved timing ----------------------------------------------------------------------------
def interleaved_seconds(steps: List[Callable[[], None]], device: torch.device, warmup: int,
                        repeats: int, min_seconds: float = 0.0) -> List[List[float]]:
    """Each step's time in every one of ``repeats`` rounds, one sample of every step per round (the order rotated
    round by round), after ``warmup`` untimed passes of each: models compared in the same seconds of a machine
    whose speed drifts, so that round r of two models can be divided. A sample is one pass, or as many as last
    ``min_seconds`` (``passes_per_sample``), its time given per pass."""
    for step in steps:
        for _ in range(warmup):
            step()
    passes = [passes_per_sample(step, device, min_seconds) for step in steps]
    times = [[] for _ in steps]
    for r in range(repeats):
        for i in [(r + j) % len(steps) for j in range(len(steps))]:
            times[i].append(_timed(steps[i], device, passes[i]))
    return times


def time_interleaved(records: List[Dict], head: str, args, device: torch.device, dtype: torch.dtype) -> None:
    """Replace the timings of the ``records`` (one size, every model that ran) by interleaved ones, measured with
    all their models in this process, pass by pass."""
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    models, images, pinned = [], None, []
    for r in records:
        torch.manual_seed(0)
        models.append(build_model(r['backbone'], r['size'], head, r['retention_mode'], args,
                                  r['geometry'] or '1d').to(device))
        backend = r.get('sdpa_backend', 'none').upper()
        pinned.append(backend if backend in SDPA_ORDER else None)
    images = torch.randn(args.batch_size, 3, records[0]['size'], records[0]['size'], device=device)

    def pinned_step(step, backend):
        def run():
            with sdpa_backend(backend):
                step()
        return run

    with torch.inference_mode(), autocast:
        steps = [pinned_step(_inference_step(m, images, head), b) for m, b in zip(models, pinned)]
        for r, times in zip(records, interleaved_seconds(steps, device, args.warmup, args.repeats,
                                                       args.min_sample_seconds)):
            r.update(_figures('infer', times, len(images)))
    if args.train:
        steps = [pinned_step(_training_step(m, images, head, args, device, autocast), b)
                 for m, b in zip(models, pinned)]
        for r, times in zip(records, interleaved_seconds(steps, device, args.warmup, args.repeats,
                                                       args.min_sample_seconds)):
            r.update(_figures('train', times, len(images)))
    for r in records:
        r['timing'] = 'interleaved'


def paired_ratio(ours: Dict, base: Dict, kind: str) -> Optional[float]:
    """How many times faster ``ours`` is than ``base``: the median of the round-by-round ratios when both were
    timed interleaved, else the ratio of their medians."""
    a, b = ours.get(f'{kind}_times'), base.get(f'{kind}_times')
    if not a or not b:
        return None
    if ours.get('timing') == base.get('timing') == 'interleaved' and len(a) == len(b):
        return statistics.median(tb / ta for ta, tb in zip(a, b))
    return statistics.median(b) / statistics.median(a)


# ---- plan, outputs ---------------------------------------------------------------------------------
def plan(args) -> List[tuple]:
    """(backbone, size, retention mode, geometry) points; recurrent only up to --recurrent-max-tokens, and in 1D."""
    points = []
    for size in args.sizes:
        for name in args.backbones:
            if not is_vir(name):
                points.append((name, size, None, None))
                continue
            for geometry in args.geometries:
                for mode in args.modes:
                    if mode == 'parallel' and (size // 16) ** 2 > args.parallel_max_tokens:
                        continue
                    if mode == 'recurrent' and ((size // 16) ** 2 > args.recurrent_max_tokens or geometry == '2d'):
                        continue
                    points.append((name, size, mode, geometry))
    return points


# environment variables that change CPU speed or memory (the C heap's thresholds, thread counts, a preloaded allocator)
TUNING_VARIABLES = ('MALLOC_', 'OMP_', 'MKL_', 'KMP_', 'LD_PRELOAD')


def cpu_name() -> str:
    """The processor's model name (Linux), else what ``platform`` knows: this project's 2-core machines of one
    kind ran the same models 2-3x faster on one day than on another, so results say which CPU ran."""
    try:
        with open('/proc/cpuinfo') as cpuinfo:
            return next(line.split(':', 1)[1].strip() for line in cpuinfo if line.startswith('model name'))
    except (OSError, StopIteration):
        return f'{platform.processor() or platform.machine()} CPU'


def environment(device: torch.device, dtype: torch.dtype, args, argv: List[str]) -> Dict:
    import lightning
    import timm
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else \
        f'{cpu_name()} ({torch.backends.cpu.get_cpu_capability()}), {torch.get_num_threads()} threads'
    versions = {'python': platform.python_version(), 'torch': torch.__version__, 'timm': timm.__version__,
                'lightning': lightning.__version__}
    try:
        import fla
        versions['fla'] = getattr(fla, '__version__', 'installed')
    except ImportError:
        pass
    return {'device': name, 'device_type': device.type, 'dtype': str(dtype).replace('torch.', ''),
            'batch_size': args.batch_size, 'versions': versions, 'platform': platform.platform(),
            'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
            'command': 'python -m vir_lightning benchmark ' + ' '.join(argv),
            'environment': {k: v for k, v in os.environ.items() if k.startswith(TUNING_VARIABLES)},
            'settings': {k: v for k, v in vars(args).items() if k != 'output'}}


def label(record: Dict) -> str:
    mode = record.get('retention_mode')
    if mode and record.get('geometry') == '2d':
        return record['backbone'] + f' ({mode}, 2d)'
    if mode or record.get('family') == 'QnA':
        return record['backbone'] + (f' ({mode})' if mode else '')
    return record['backbone'] + f" (sdpa {record.get('sdpa_backend', '?')})"


def write_outputs(results: List[Dict], meta: Dict, output: Path) -> List[Path]:
    output.mkdir(parents=True, exist_ok=True)
    paths = [output / 'results.json', output / 'results.csv', output / 'results.md', output / 'results.png']
    paths[0].write_text(json.dumps({'meta': meta, 'results': results}, indent=1))
    columns = ['backbone', 'family', 'retention_mode', 'geometry', 'sdpa_backend', 'head', 'size', 'tokens',
               'batch_size', 'dtype', 'status', 'infer_images_per_s', 'infer_seconds', 'infer_peak_mb',
               'infer_warm_peak_mb', 'infer_tensor_peak_mb', 'train_images_per_s', 'train_seconds', 'train_peak_mb']
    with open(paths[1], 'w', newline='') as f:
        writer = csv.DictWriter(f, columns, extrasaction='ignore')
        writer.writeheader()
        writer.writerows(results)
    paths[2].write_text(markdown_table(results, meta))
    plot(results, meta, paths[3])
    return paths


def _fmt(value, digits: int = 2) -> str:
    return '' if value is None else f'{value:.{digits}f}'


def heading(meta: Dict) -> List[str]:
    """The lines above a results table: device, dtype, batch, date and the command that measured it."""
    variables = ''.join(f'{k}={v} ' for k, v in meta.get('environment', {}).items())
    return [f"{meta['device']}, {meta['dtype']}, batch {meta['batch_size']}, {meta['date']}",
            f"`{variables}{meta['command']}`", '']


def markdown_table(results: List[Dict], meta: Dict) -> str:
    lines = [*heading(meta),
             '| model | head | size | tokens | inference img/s | train img/s | inference peak MiB '
             '| warm inference peak MiB | inference tensor peak MiB | train peak MiB |',
             '|---|---|---|---|---|---|---|---|---|---|']
    for r in results:
        if r['status'] != 'ok':
            lines.append(f"| {label(r)} | {r['head']} | {r['size']} | {r['tokens']} | {r['status']} | | | | | |")
            continue
        lines.append(f"| {label(r)} | {r['head']} | {r['size']} | {r['tokens']} | "
                     f"{_fmt(r['infer_images_per_s'], 3)} | {_fmt(r.get('train_images_per_s'), 3)} | "
                     f"{_fmt(r['infer_peak_mb'], 0)} | {_fmt(r.get('infer_warm_peak_mb'), 0)} | "
                     f"{_fmt(r.get('infer_tensor_peak_mb'), 0)} | "
                     f"{_fmt(r.get('train_peak_mb'), 0)} |")
    lines += ['', ratio_table(results)]
    if any(r.get('geometry') == '2d' for r in results):
        lines += ['', geometry_table(results)]
    return '\n'.join(lines) + '\n'


def geometry_table(results: List[Dict]) -> str:
    """ViR in 2D against the same ViR in 1D, form for form and size for size: time ratios (> 1: 2D is slower;
    median of paired ratios when timed interleaved) and memory ratios."""
    rows = ['| size | model | 2D / 1D inference time | 2D / 1D training time | 2D / 1D inference memory '
            '| 2D / 1D warm memory | 2D / 1D tensor memory |', '|---|---|---|---|---|---|---|']
    ok = [r for r in results if r['status'] == 'ok' and r['family'] == 'ViR']
    for two in (r for r in ok if r.get('geometry') == '2d'):
        one = next((r for r in ok if r.get('geometry') == '1d' and all(
            r[key] == two[key] for key in ('backbone', 'size', 'retention_mode', 'head'))), None)
        if one is None:
            continue
        ratios = [paired_ratio(one, two, 'infer'), paired_ratio(one, two, 'train')] + [
            two[key] / one[key] if two.get(key) and one.get(key) else None
            for key in ('infer_peak_mb', 'infer_warm_peak_mb', 'infer_tensor_peak_mb')]
        rows.append(f"| {two['size']} | {label(two)} | " + ' | '.join(f"{_fmt(x)}{'x' if x else ''}" for x in ratios)
                    + ' |')
    return '\n'.join(rows)


def ratio_table(results: List[Dict]) -> str:
    """ViR (the ``auto`` form if measured: what a user gets; else the fastest form) and QnA-ViT over the ViT, per
    size: speed-ups (> 1: faster than ViT; median of paired ratios when timed interleaved) and memory ratios
    (< 1: less than ViT; peak memory, and on CPU the warm pass's peak and the tensor peak too)."""
    rows = ['| size | model | / ViT inference | / ViT training | / ViT inference memory | / ViT warm memory '
            '| / ViT tensor memory |', '|---|---|---|---|---|---|---|']
    ok = [r for r in results if r['status'] == 'ok']
    for size in sorted({r['size'] for r in ok}):
        vit = [r for r in ok if r['size'] == size and r['family'] == 'ViT']
        for name in ('ViR', 'QnA'):
            ours = [r for r in ok if r['size'] == size and r['family'] == name]
            if not ours or not vit:
                continue
            for geometry in dict.fromkeys(r.get('geometry') for r in ours):
                mine = [r for r in ours if r.get('geometry') == geometry]
                auto = [r for r in mine if r.get('retention_mode') == 'auto']
                best = auto[0] if auto else max(mine, key=lambda r: r['infer_images_per_s'])
                rows.append(_ratio_row(size, best, vit[0]))
    return '\n'.join(rows)


def _ratio_row(size: int, ours: Dict, base: Dict) -> str:
    ratios = [paired_ratio(ours, base, 'infer'), paired_ratio(ours, base, 'train')] + [
        ours[key] / base[key] if ours.get(key) and base.get(key) else None
        for key in ('infer_peak_mb', 'infer_warm_peak_mb', 'infer_tensor_peak_mb')]
    return f"| {size} | {label(ours)} | " + ' | '.join(f"{_fmt(x)}{'x' if x else ''}" for x in ratios) + ' |'


def plot(results: List[Dict], meta: Dict, path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    panels = [('infer_images_per_s', 'inference images/s'), ('train_images_per_s', 'training images/s'),
              ('infer_peak_mb', 'inference peak memory (MiB)')]
    panels += [(key, title) for key, title in (('infer_warm_peak_mb', 'warm inference peak memory (MiB)'),
                                               ('infer_tensor_peak_mb', 'inference tensor peak (MiB)'))
               if any(r.get(key) for r in results)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    for ax, (key, title) in zip(axes, panels):
        for name in dict.fromkeys(label(r) for r in results):
            points = sorted((r['size'], r[key]) for r in results
                            if label(r) == name and r['status'] == 'ok' and r.get(key))
            if points:
                ax.plot(*zip(*points), marker='o', label=name, linestyle='--' if 'vit' in name else '-')
            oom = [r['size'] for r in results if label(r) == name and r['status'] == 'OOM']
            if oom:
                ax.scatter(oom, [ax.get_ylim()[0]] * len(oom), marker='x', color='red')
        ax.set_xscale('log', base=2)
        ax.set_yscale('log')
        ax.set_xlabel('image side (pixels)')
        ax.set_title(title)
        ax.grid(True, which='both', alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{meta['device']}, {meta['dtype']}, batch {meta['batch_size']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- command line ----------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='python -m vir_lightning benchmark', description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--backbones', nargs='+', default=list(DEFAULT_BACKBONES),
                   help='timm model names; ViR ones run in every --modes form, others (ViT) once')
    p.add_argument('--sizes', nargs='+', type=int, default=list(DEFAULT_SIZES), help='square image sides')
    p.add_argument('--modes', nargs='+', default=['auto', 'chunkwise', 'parallel', 'recurrent'],
                   choices=['auto', 'parallel', 'chunkwise', 'recurrent'],
                   help="ViR retention forms ('auto', the default form: parallel up to 448 tokens, chunkwise above)")
    p.add_argument('--direction', default='bidirectional', choices=['causal', 'bidirectional'])
    p.add_argument('--geometries', nargs='+', default=['1d'], choices=['1d', '2d'],
                   help="ViR retention geometries: raster-order 1D, or 2D decay by grid distance")
    p.add_argument('--chunk-size', type=int, default=64)
    p.add_argument('--kernel', default='auto', choices=['auto', 'torch', 'fla'],
                   help="chunkwise implementation: fla's Triton kernels on CUDA, or PyTorch")
    p.add_argument('--head', default='none', choices=HEADS, help='backbone alone or with a dense head')
    p.add_argument('--batch-size', type=int, default=1)
    p.add_argument('--device', default='auto', help="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    p.add_argument('--dtype', default='auto', choices=['auto', 'float32', 'bfloat16', 'float16'],
                   help='autocast dtype; auto: bfloat16 on GPU, float32 on CPU')
    p.add_argument('--sdpa', default='FLASH_ATTENTION', choices=['auto', *SDPA_ORDER],
                   help="ViT attention backend to pin (the next ones are tried if it cannot run); "
                        "'auto': PyTorch's choice")
    p.add_argument('--train', action=argparse.BooleanOptionalAction, default=True,
                   help='also time training steps (forward, backward, AdamW)')
    p.add_argument('--grad-checkpointing', action='store_true', help='recompute block activations in backward')
    p.add_argument('--warmup', type=int, default=1, help='untimed runs before timing')
    p.add_argument('--repeats', type=int, default=3, help='timed samples; the median is reported')
    p.add_argument('--min-sample-seconds', type=float, default=0.25,
                   help='a timed sample repeats a pass until it lasts this long (passes of a few ms are noisy); '
                        'its time is given per pass. 0: one pass per sample')
    p.add_argument('--parallel-max-tokens', type=int, default=4096,
                   help='skip the parallel form (N x N scores) above this many tokens')
    p.add_argument('--recurrent-max-tokens', type=int, default=1024,
                   help='skip the token-by-token recurrent form above this many tokens')
    p.add_argument('--timing', default='interleaved', choices=['interleaved', 'isolated'],
                   help="interleaved: every model of a size timed in one process, pass by pass in rotating order "
                        "(ratios: medians of the round-by-round ratios); isolated: each point timed on its own, "
                        "one after the other, as memory is measured")
    p.add_argument('--isolate', action=argparse.BooleanOptionalAction, default=None,
                   help='measure every point in a fresh process (default on CPU, where it is what makes the '
                        'memory figures exact)')
    p.add_argument('--output', default=None, help='output folder (default: benchmarks/results/<device>-<date>)')
    return p


def device_and_dtype(args):
    """--device and --dtype resolved: 'auto' is CUDA if present, bf16 autocast there and float32 on CPU."""
    from ..errors import UserError
    device = torch.device('cuda' if args.device == 'auto' and torch.cuda.is_available() else
                          'cpu' if args.device == 'auto' else args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: no CUDA device here; use --device cpu")
    dtype = getattr(torch, args.dtype) if args.dtype != 'auto' else \
        (torch.bfloat16 if device.type == 'cuda' else torch.float32)
    return device, dtype


def main(argv: Optional[List[str]] = None) -> Path:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ..errors import UserError
    argv = list(sys.argv[2:] if argv is None else argv)
    if argv[:1] == ['layers']:
        from .layer_benchmark import main as layers_main
        return layers_main(argv[1:])
    if argv[:1] == ['adaptive']:
        from .adaptive_benchmark import main as adaptive_main
        return adaptive_main(argv[1:])
    if argv[:1] == ['streaming']:
        from .streaming_benchmark import main as streaming_main
        return streaming_main(argv[1:])
    args = parser().parse_args(argv)
    device, dtype = device_and_dtype(args)
    if args.batch_size < 1 or args.repeats < 1 or args.warmup < 0 or args.min_sample_seconds < 0 or \
            any(s < 16 or s % 16 for s in args.sizes):
        raise UserError('--batch-size and --repeats must be >= 1, --warmup and --min-sample-seconds >= 0, '
                        '--sizes multiples of 16')
    meta = environment(device, dtype, args, argv)
    output = Path(args.output) if args.output else Path('benchmarks/results') / \
        f"{meta['device_type']}-{meta['date'][:10]}"
    points = plan(args)
    isolate = args.isolate if args.isolate is not None else device.type == 'cpu'
    # interleaved: each point's own run only measures memory (one pass), the timing comes after, all together
    memory_args = argparse.Namespace(**{**vars(args), 'warmup': 0, 'repeats': 1, 'min_sample_seconds': 0}) \
        if args.timing == 'interleaved' else args
    results = []
    with Progress(TextColumn('{task.description}'), BarColumn(), TextColumn('{task.completed}/{task.total}'),
                  TimeElapsedColumn()) as progress:
        task = progress.add_task('benchmark', total=len(points))
        for size in dict.fromkeys(point[1] for point in points):
            at_size = []
            for name, _, mode, geometry in (p for p in points if p[1] == size):
                progress.update(task, description=f'{name} {mode or ""} {geometry or ""} {size}px'.replace('  ', ' '))
                record = (measure_isolated if isolate else measure)(name, size, args.head, mode, geometry, memory_args,
                                                                    device, dtype)
                results.append(record)
                at_size.append(record)
                progress.advance(task)
            ok = [r for r in at_size if r['status'] == 'ok']
            if args.timing == 'interleaved' and ok:
                progress.update(task, description=f'interleaved timing, {size}px')
                time_interleaved(ok, args.head, args, device, dtype)
            for record in at_size:
                figures = f"{record['infer_images_per_s']:.3f} img/s" if record['status'] == 'ok' else record['status']
                progress.console.print(f'{label(record)} {size}px: {figures}')
            write_outputs(results, meta, output)  # partial results survive an interrupted run
    print(markdown_table(results, meta))
    print(f'wrote {output}/results.{{json,csv,md,png}}')
    return output
