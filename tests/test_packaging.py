"""The installed package must carry what a user runs, under one top-level name."""
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_wheel_has_one_top_level_package_and_ships_configs_heads_and_datamodules(tmp_path):
    result = subprocess.run(
        [sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w', str(tmp_path),
         str(REPO)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    wheel = zipfile.ZipFile(next(tmp_path.glob('*.whl')))
    names = set(wheel.namelist())
    top_level = {n.split('/')[0] for n in names if not n.split('/')[0].endswith('.dist-info')}
    assert top_level == {'vir_lightning'}
    packaged = {n for n in names if n.startswith('vir_lightning/configs/') and n.endswith('.yaml')}
    expected = {f'vir_lightning/configs/{p.relative_to(REPO / "configs")}' for p in (REPO / 'configs').rglob('*.yaml')}
    assert expected and packaged == expected
    modules = {f'vir_lightning/heads/{p.name}' for p in (REPO / 'heads').glob('*.py')} | \
        {f'vir_lightning/datamodules/{p.name}' for p in (REPO / 'datamodules').glob('*.py')}
    assert modules <= names and 'vir_lightning/tasks/__init__.py' in names and 'vir_lightning/models/vir.py' in names
