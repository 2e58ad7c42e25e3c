"""The package's rooms and how they depend on each other: imports flow one way, heavy ones stay lazy."""
import subprocess
import sys


def _loaded_after(statement: str, modules) -> list:
    code = f'import sys; {statement}; print([m for m in {list(modules)!r} if m in sys.modules])'
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return eval(result.stdout.strip().splitlines()[-1])


def test_importing_the_models_loads_neither_lightning_nor_mmseg():
    assert _loaded_after('import vir_lightning', ['lightning', 'mmseg', 'mmcv', 'albumentations']) == []


def test_data_and_heads_never_import_tasks_the_cli_or_mmseg():
    statement = 'import vir_lightning.heads, vir_lightning.datamodules, vir_lightning.callbacks'
    assert _loaded_after(statement, ['vir_lightning.tasks', 'vir_lightning.cli', 'mmseg', 'mmcv']) == []


def test_only_the_mmseg_integration_loads_mmseg_and_the_compatibility_comes_first():
    assert _loaded_after('import vir_lightning.tasks, vir_lightning.cli', ['mmseg', 'mmcv', 'pycocotools']) == []
    assert _loaded_after('import vir_lightning.mmseg; import mmseg.models', ['mmseg.models']) == ['mmseg.models']
