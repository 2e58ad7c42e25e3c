"""The installed package must carry what a user runs: configs inside the wheel, top-level packages."""
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_wheel_ships_configs_heads_and_datamodules(tmp_path):
    result = subprocess.run(
        [sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w', str(tmp_path),
         str(REPO)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    names = set(zipfile.ZipFile(next(tmp_path.glob('*.whl'))).namelist())
    packaged = {n for n in names if n.startswith('vir_lightning/configs/')}
    expected = {f'vir_lightning/configs/{p.relative_to(REPO / "configs")}' for p in (REPO / 'configs').rglob('*.yaml')}
    assert expected and packaged == expected
    assert {'heads/__init__.py', 'datamodules/__init__.py', 'vir_lightning/tasks/__init__.py'} <= names
