"""``python -m vir_lightning {fit,validate,test,predict} --config NAME.yaml``: LightningCLI with
packaged configs, linked class counts, TensorBoard and a Rich progress bar by default, and
one-line errors for user mistakes. ``python -m vir_lightning benchmark --help``: throughput and
memory of ViR against ViT by resolution; ``python -m vir_lightning study --help``: ViR against ViT
on the demo tasks."""
import importlib.util
import sys
from pathlib import Path
from typing import List, Optional

from lightning.pytorch.cli import LightningCLI

from .errors import UserError, find_user_error, user_message

CONFIG_FLAGS = ('--config', '-c')


def config_dir() -> Path:
    """The packaged configs: ``vir_lightning.configs`` (the repository's configs/ in an editable install)."""
    return Path(importlib.util.find_spec('vir_lightning.configs').submodule_search_locations[0])


def resolve_config(name: str) -> str:
    """A path that exists is used as is; otherwise a bare name is looked up in the packaged configs."""
    if Path(name).exists():
        return name
    for candidate in (config_dir() / name, config_dir() / f'{name}.yaml'):
        if candidate.is_file():
            return str(candidate)
    available = sorted(str(p.relative_to(config_dir())) for p in config_dir().rglob('*.yaml'))
    raise UserError(f"config '{name}' not found in the working directory nor among the packaged configs: "
                    f"{', '.join(available)}")


def resolve_config_args(argv: List[str]) -> List[str]:
    out = list(argv)
    for i, arg in enumerate(out):
        if arg in CONFIG_FLAGS and i + 1 < len(out):
            out[i + 1] = resolve_config(out[i + 1])
        elif arg.startswith('--config='):
            out[i] = '--config=' + resolve_config(arg.split('=', 1)[1])
    return out


# What a task takes from its DataModule, linked once both are instantiated. A task without the
# argument (a classifier has no palette) skips the link; a DataModule without the value gives None.
DATA_LINKS = ('num_classes', 'class_names', 'palette', 'ignore_index', 'category_ids')


class VirLightningCLI(LightningCLI):
    """Links data-derived values (``DATA_LINKS``) into the task; TensorBoard and Rich by default."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({f'trainer.{key}': value for key, value in TRAINER_DEFAULTS.items()})
        for name in DATA_LINKS:
            parser.link_arguments(f'data.{name}', f'model.init_args.{name}', apply_on='instantiate')


TRAINER_DEFAULTS = {
    'logger': {
        'class_path': 'lightning.pytorch.loggers.TensorBoardLogger',
        'init_args': {'save_dir': 'runs', 'name': 'vir_lightning'},
    },
    'callbacks': [
        {'class_path': 'lightning.pytorch.callbacks.RichProgressBar'},
        {'class_path': 'lightning.pytorch.callbacks.LearningRateMonitor', 'init_args': {'logging_interval': 'step'}},
    ],
}


def cli_main(args: Optional[List[str]] = None) -> VirLightningCLI:
    from .datamodules import VisionDataModule
    from .tasks import VisionTask

    return VirLightningCLI(
        VisionTask,
        VisionDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        parser_kwargs={'description': __doc__},
    )


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point; ``argv`` defaults to the command line (rewritten in place so DDP workers see the same)."""
    try:
        args = sys.argv[1:] if argv is None else argv
        if args[:1] == ['benchmark']:
            from .tools.benchmark import main as benchmark_main
            benchmark_main(args[1:])
        elif args[:1] == ['study']:
            from .tools.study import main as study_main
            study_main(args[1:])
        elif argv is None:
            sys.argv[1:] = resolve_config_args(sys.argv[1:])
            cli_main()
        else:
            cli_main(resolve_config_args(argv))
    except Exception as error:
        user_error = find_user_error(error)
        if user_error is None:
            raise
        print(f'error: {user_message(user_error)}', file=sys.stderr)
        sys.exit(2)
