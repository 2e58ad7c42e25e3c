"""Two "nodes" on this machine: two torchrun launches (static rendezvous on 127.0.0.1, one CPU process
each, gloo) run the documented ``trainer/multinode.yaml`` preset through Lightning's own DDP.

Each node runs in its own folder, as on separate machines, so whatever rank 1 wrote would show there.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

# The demo data: 5,000 MNIST digits, 20% held out (datamodules/mnist_demo.py).
TRAIN_IMAGES, VAL_IMAGES = 4000, 1000
GLOBAL_BATCH, NODES = 32, 2
LIMIT_TRAIN = 0.4  # a fraction of each process's loader, so the step count depends on the per-device batch
TIMEOUT_S = 300

TASK = [  # a tiny ViR that learns enough in 50 steps for the accuracy to move off chance (10%)
    '--config', 'cls_demo.yaml',
    '--model.backbone_kwargs.depth=1', '--model.backbone_kwargs.patch_size=7', '--model.backbone_kwargs.embed_dim=64',
    '--model.backbone_kwargs.init_values=1.0', '--model.lr=2e-3', '--model.warmup_epochs=0',
    '--data.num_workers=0', f'--data.batch_size={GLOBAL_BATCH}',
]
CPU = ['--trainer.accelerator=cpu', '--trainer.devices=1', '--trainer.precision=32-true']
FIT = ['--trainer.max_epochs=1', f'--trainer.limit_train_batches={LIMIT_TRAIN}', '--trainer.num_sanity_val_steps=0']
ENV = {**os.environ, 'NO_ALBUMENTATIONS_UPDATE': '1', 'OMP_NUM_THREADS': '1'}  # one core per "node"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list:
    """Every process below ``pid`` (torchrun starts its workers in sessions of their own)."""
    children = {}
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            parent = int(stat.read_text().rsplit(')', 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _kill(procs) -> None:
    for proc in procs:
        if proc.poll() is None:
            for pid in [proc.pid] + _descendants(proc.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait()


def _run_together(commands, timeout: float = TIMEOUT_S):
    """Runs ``(args, cwd, log)`` commands at once; their return codes and outputs. As soon as one
    fails, the others are killed (a node whose peer died would wait in a collective for 30 minutes)."""
    procs = []
    for args, cwd, log in commands:
        Path(cwd).mkdir(parents=True, exist_ok=True)
        with open(log, 'w') as out:
            procs.append(subprocess.Popen(args, cwd=cwd, env=ENV, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True))
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs):
            if any(p.returncode not in (None, 0) for p in procs) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        timed_out = any(p.poll() is None for p in procs) and time.monotonic() > deadline
        _kill(procs)
    outputs = [Path(log).read_text(errors='replace') for _, _, log in commands]
    return [p.returncode for p in procs], outputs, timeout if timed_out else None


def _report(names, codes, outputs, timed_out=None) -> str:
    head = f'timed out after {timed_out:g} s (killed); ' if timed_out else ''
    return head + '\n'.join(f'--- {name}: exit {code}\n{out[-3000:]}' for name, code, out in zip(names, codes, outputs))


def _vir(*args):
    return [sys.executable, '-m', 'vir_lightning', *args]


def _scalars(log_dir: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(log_dir), size_guidance={'scalars': 0})
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()['scalars']}


def _checkpoint(path: Path) -> dict:
    return torch.load(path, map_location='cpu', weights_only=True)


def _two_nodes(tmp_path: Path):
    """Node 0 and node 1 as two torchrun launches; a fresh port and fresh folders if the port was taken."""
    names = ['node 0', 'node 1']
    for _ in range(3):
        port = _free_port()
        for rank in range(NODES):
            shutil.rmtree(tmp_path / f'node{rank}', ignore_errors=True)
        commands = [(
            [sys.executable, '-m', 'torch.distributed.run', '--nnodes', str(NODES), '--node_rank', str(rank),
             '--nproc_per_node', '1', '--master_addr', '127.0.0.1', '--master_port', str(port),
             '-m', 'vir_lightning', 'fit', *TASK, '--config', 'trainer/multinode.yaml',
             *CPU, f'--trainer.num_nodes={NODES}', '--trainer.sync_batchnorm=true', *FIT],
            tmp_path / f'node{rank}', tmp_path / f'node{rank}.log') for rank in range(NODES)]
        codes, outputs, timed_out = _run_together(commands)
        if codes == [0, 0] or not any('address already in use' in out.lower() for out in outputs):
            break  # else another process took the port between _free_port() and torchrun's bind
    assert codes == [0, 0], _report(names, codes, outputs, timed_out)
    return outputs


def test_two_torchrun_nodes_train_and_the_checkpoint_moves_to_one_process(tmp_path):
    out0, out1 = _two_nodes(tmp_path)
    node0, node1 = tmp_path / 'node0', tmp_path / 'node1'
    world = NODES  # one process per node

    # world size: each process announces its rank among 2, and rank 0 the group over gloo
    assert 'Initializing distributed: GLOBAL_RANK: 0, MEMBER: 1/2' in out0, out0[-3000:]
    assert 'Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2' in out1, out1[-3000:]
    assert 'distributed_backend=gloo' in out0 and 'Starting with 2 processes' in out0, out0[-3000:]

    # rank 0 alone writes: node 1's folder stays empty, node 0 holds one set of checkpoints
    assert sorted(p.relative_to(node1).as_posix() for p in node1.rglob('*')) == []
    run = node0 / 'runs' / 'cls_demo' / 'version_0'
    assert sorted(p.name for p in (node0 / 'runs' / 'cls_demo').iterdir()) == ['version_0']
    names = sorted(p.name for p in (run / 'checkpoints').iterdir())
    assert [n for n in names if n.startswith('last')] == ['last.ckpt'], names
    assert len([n for n in names if n.startswith('best')]) == 1, names

    # per-device batch = global batch / world size: each process's shard of the training set (2,000
    # digits) in batches of 32 / 2 = 16 makes 125 batches, 0.4 of which is 50 steps (a per-device
    # batch of 32 would give 24 steps; unsharded data, 100)
    two_node = _checkpoint(run / 'checkpoints' / 'last.ckpt')
    device_batch = GLOBAL_BATCH // world
    steps = int(LIMIT_TRAIN * ((TRAIN_IMAGES // world) // device_batch))
    assert steps == 50
    assert two_node['global_step'] == steps

    # the two-node validation (500 + 500 digits, no padding: 1,000 divides by 2) equals one process's
    assert VAL_IMAGES % world == 0
    logged = _scalars(run)
    ckpt = tmp_path / 'two_node_last.ckpt'
    shutil.copy(run / 'checkpoints' / 'last.ckpt', ckpt)  # the resume below replaces last.ckpt
    codes, outputs, timed_out = _run_together([
        (_vir('validate', *TASK, '--config', 'trainer/cpu.yaml', *CPU, f'--ckpt_path={ckpt}'),
         tmp_path / 'validate', tmp_path / 'validate.log'),
        # and `--ckpt_path last` in node 0's folder resumes it on another number of devices (one process,
        # no DDP), into epoch 1
        (_vir('fit', *TASK, '--config', 'trainer/cpu.yaml', *CPU, *FIT, '--trainer.max_epochs=2',
              '--trainer.limit_train_batches=0.04', '--ckpt_path=last'),
         node0, tmp_path / 'resume.log'),
    ])
    assert codes == [0, 0], _report(['validate', 'resume'], codes, outputs, timed_out)
    one = _scalars(tmp_path / 'validate' / 'runs' / 'cls_demo' / 'version_0')
    assert len(logged['val/acc1']) == 1 and len(one['val/acc1']) == 1, (logged.keys(), one.keys())
    two_acc, one_acc = logged['val/acc1'][0], one['val/acc1'][0]
    assert two_acc == pytest.approx(one_acc, abs=1e-6)
    assert logged['val/loss'][0] == pytest.approx(one['val/loss'][0], rel=1e-5)
    assert two_acc > 0.12, f'val/acc1 {two_acc}: the model should have moved off chance (0.10)'
    print(f'world size {world}, per-device batch {device_batch}, steps {steps}; val/acc1 two nodes {two_acc:.6f} '
          f'one process {one_acc:.6f}; val/loss {logged["val/loss"][0]:.6f} vs {one["val/loss"][0]:.6f}')

    restored = 'Restored all states from the checkpoint at runs/cls_demo/version_0/checkpoints/last.ckpt'
    assert restored in outputs[1], outputs[1][-3000:]
    assert 'Initializing distributed' not in outputs[1]
    resumed = _checkpoint(run / 'checkpoints' / 'last.ckpt')
    # the 50 restored steps, then one process with the whole batch of 32: 4,000 / 32 = 125 batches, 0.04 of
    # them is 5 more steps
    assert resumed['global_step'] == steps + int(0.04 * (TRAIN_IMAGES // GLOBAL_BATCH))
