"""DataModules: each owns its data, splits and augmentation; all take root, batch_size, num_workers, image_size."""
from .ade20k import ADE20KDataModule
from .base import VisionDataModule
from .coco import COCODataModule
from .image_folder import ImageFolderDataModule
from .mnist_demo import MNISTDemoDataModule
from .synthetic_scenes import SyntheticScenesDataModule
from .tree_crowns import TreeCrownsDataModule

__all__ = ['VisionDataModule', 'ImageFolderDataModule', 'MNISTDemoDataModule', 'ADE20KDataModule',
           'SyntheticScenesDataModule', 'COCODataModule',
           'TreeCrownsDataModule']
