"""SYNTHETIC outdoor scenes for a no-download segmentation demo, in the exact ADE20K folder layout.

These images are NOT real photographs: they are drawn procedurally with numpy and PIL from a
seed, the first time ``prepare_data`` runs (a few seconds), into ``root``:

    root/images/{training,validation}/scene_NNNNN.jpg
    root/annotations/{training,validation}/scene_NNNNN.png   (0 = unlabelled, 1..7 = classes)
    root/README.txt                                          (says what this is; marks it complete)

so the real ADE20K code path (file matching, reduce_zero_label, mmseg augmentations) reads them.
Seven classes: sky, building, tree, grass, road, water, car. The scenes are built so that colour
alone is not enough: water and sky are both blue (water lies below the horizon and has ripples),
grass and tree crowns are both green (crowns are blotchy blobs on trunks, standing above the
ground), road and many buildings are grey (roads are trapezoids in the ground, buildings stand
on the horizon and have windows), cars come in sky, grass and road colours; every image has its
own lighting, colour cast and pixel noise, and small unlabelled clutter (value 0, ignored). Four
scene types alternate (street, lake, park, coast), so any four consecutive images hold every class.

Numbers from it measure only that a pipeline learns; they say nothing about ADE20K or real scenes.
"""
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from vir_lightning.errors import UserError
from .ade20k import ADE20KDataModule
from .prepared import is_prepared, write_once

SYNTHETIC_CLASSES = ('sky', 'building', 'tree', 'grass', 'road', 'water', 'car')
SYNTHETIC_PALETTE = ((70, 130, 180), (70, 70, 70), (107, 142, 35), (152, 251, 152), (128, 64, 128),
                     (0, 80, 200), (0, 0, 142))
SKY, BUILDING, TREE, GRASS, ROAD, WATER, CAR = range(1, 8)  # raw values in the PNGs; 0 = unlabelled
SCENE_TYPES = ('street', 'lake', 'park', 'coast')
GENERATOR, GENERATOR_VERSION = 'synthetic_scenes', 1


# ---- drawing ---------------------------------------------------------------------------------
class _Canvas:
    """An RGB float image and its label map, painted together shape by shape (painter's order)."""

    def __init__(self, rng: np.random.Generator, height: int, width: int):
        self.rng, self.h, self.w = rng, height, width
        self.image = np.zeros((height, width, 3), np.float32)
        self.label = np.zeros((height, width), np.uint8)
        self.yy = np.broadcast_to(np.arange(height, dtype=np.float32)[:, None], (height, width))
        self._noise = {}

    def mask(self, draw_fn) -> np.ndarray:
        layer = Image.new('L', (self.w, self.h), 0)
        draw_fn(ImageDraw.Draw(layer))
        return np.asarray(layer) > 0

    def noise(self, cells: float) -> np.ndarray:
        """Smooth noise in about [-1, 1], with features about 1/cells of the image wide (one field per scale)."""
        if cells not in self._noise:
            gh, gw = max(2, int(round(cells * self.h / self.w))), max(2, int(round(cells)))
            grid = Image.fromarray(self.rng.standard_normal((gh, gw)).astype(np.float32), mode='F')
            self._noise[cells] = np.asarray(grid.resize((self.w, self.h), Image.BILINEAR)) / 1.5
        return self._noise[cells]

    def paint(self, mask: np.ndarray, label: int, color, texture: Optional[np.ndarray] = None,
              amplitude: float = 0.0) -> None:
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if not len(rows):
            return
        box = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)  # work on the shape's bounding box
        inside = mask[box]
        pixels = color[box][inside] if np.ndim(color) == 3 else \
            np.broadcast_to(np.asarray(color, np.float32), (int(inside.sum()), 3))
        if texture is not None and amplitude:
            pixels = pixels + amplitude * texture[box][inside][:, None]
        self.image[box][inside] = pixels
        self.label[box][inside] = label


def _jitter(rng, color, amount=18.0):
    return np.clip(np.asarray(color, np.float32) + rng.uniform(-amount, amount, 3), 0, 255)


def _draw_sky(c: _Canvas, horizon: float) -> None:
    rng = c.rng
    kind = rng.choice(['clear', 'pale', 'overcast', 'dusk'], p=[0.45, 0.25, 0.15, 0.15])
    top, low = {
        'clear': ((40, 100, 200), (150, 195, 235)),
        'pale': ((110, 160, 215), (200, 220, 240)),
        'overcast': ((130, 140, 155), (185, 190, 200)),
        'dusk': ((60, 70, 140), (235, 150, 100)),
    }[kind]
    top, low = _jitter(rng, top), _jitter(rng, low)
    t = np.clip(c.yy / max(horizon, 1.0), 0, 1)[..., None]
    gradient = top * (1 - t) + low * t
    c.paint(np.ones((c.h, c.w), bool), SKY, gradient, c.noise(3), 6)
    for _ in range(rng.integers(0, 4)):  # clouds: sky too
        cx, cy = rng.uniform(0, c.w), rng.uniform(0, 0.8 * horizon)
        rx, ry = rng.uniform(0.06, 0.18) * c.w, rng.uniform(0.03, 0.07) * c.h
        shade = rng.uniform(200, 250)
        cloud = c.mask(lambda d: [d.ellipse((cx + dx - rx, cy + dy - ry, cx + dx + rx, cy + dy + ry), fill=1)
                                  for dx, dy in rng.uniform(-1, 1, (3, 2)) * (rx * 0.6, ry * 0.5)])
        c.paint(cloud, SKY, (shade, shade, shade + 5), c.noise(6), 10)


def _draw_ground(c: _Canvas, horizon: float) -> None:
    rng = c.rng
    dry = rng.random() < 0.25
    base = _jitter(rng, (150, 150, 70) if dry else (80, 145, 55), 20)
    ground = c.mask(lambda d: d.polygon([(0, horizon), (c.w, horizon + rng.uniform(-4, 4)), (c.w, c.h), (0, c.h)],
                                        fill=1))
    shade = (0.75 + 0.35 * np.clip((c.yy - horizon) / max(c.h - horizon, 1), 0, 1))[..., None]
    c.paint(ground, GRASS, base * shade, c.noise(8) + 0.5 * c.noise(24), 22)


def _draw_water(c: _Canvas, horizon: float, top: float, bottom: float, left: float = 0, right: float = None) -> None:
    rng = c.rng
    right = c.w if right is None else right
    base = _jitter(rng, (35, 95, 160) if rng.random() < 0.7 else (40, 120, 130), 20)
    n = 8
    xs = np.linspace(left, right, n)
    upper = [(x, top + rng.uniform(-2, 2)) for x in xs]
    lower = [(x, bottom + rng.uniform(-0.06, 0.06) * c.h) for x in xs[::-1]]
    water = c.mask(lambda d: d.polygon(upper + lower, fill=1))
    ripples = np.sin(c.yy * rng.uniform(0.6, 1.2) + 2.5 * c.noise(10)) * 0.7 + 0.5 * c.noise(20)
    depth = (0.85 + 0.3 * np.clip((c.yy - top) / max(bottom - top, 1), 0, 1))[..., None]
    c.paint(water, WATER, base * depth, ripples, 18)


def _draw_road(c: _Canvas, horizon: float, width_frac: float = None, x_vanish: float = None,
               dirt: bool = False) -> Tuple[float, float, float]:
    """A road from the bottom edge to near the horizon; returns (x_vanish, half width at bottom, top y)."""
    rng = c.rng
    x_vanish = rng.uniform(0.3, 0.7) * c.w if x_vanish is None else x_vanish
    half_bottom = (rng.uniform(0.3, 0.45) if width_frac is None else width_frac) * c.w
    top = horizon + rng.uniform(1, 4)
    half_top = rng.uniform(0.01, 0.04) * c.w
    x_bottom = x_vanish + rng.uniform(-0.15, 0.15) * c.w
    polygon = [(x_vanish - half_top, top), (x_vanish + half_top, top), (x_bottom + half_bottom, c.h),
               (x_bottom - half_bottom, c.h)]
    road = c.mask(lambda d: d.polygon(polygon, fill=1))
    gray = rng.uniform(85, 140)
    base = _jitter(rng, (gray + 25, gray + 10, gray - 10) if dirt else (gray, gray, gray + 5), 8)
    c.paint(road, ROAD, base, c.noise(20), 12)
    if not dirt:  # dashed centre line: still road
        line_color = (235, 235, 230) if rng.random() < 0.6 else (230, 200, 60)
        for s in np.linspace(0.05, 0.95, 7):
            t0, t1 = s, s + 0.06
            ya, yb = top + (c.h - top) * t0, top + (c.h - top) * t1
            xa, xb = x_vanish + (x_bottom - x_vanish) * t0, x_vanish + (x_bottom - x_vanish) * t1
            width = max(1, int(1 + 3 * t1))
            dash = c.mask(lambda d: d.line([(xa, ya), (xb, yb)], fill=1, width=width)) & road
            c.paint(dash, ROAD, line_color, c.noise(30), 10)
    return x_vanish, half_bottom, top


def _draw_building(c: _Canvas, x0: float, width: float, base_y: float, height: float) -> None:
    rng = c.rng
    palette = [(150, 150, 150), (200, 190, 165), (165, 80, 60), (225, 225, 215), (95, 100, 110),
               (110, 150, 190)]  # the last: blue glass, like the sky
    wall = _jitter(rng, palette[rng.integers(len(palette))], 15)
    top = base_y - height
    body = c.mask(lambda d: d.rectangle((x0, top, x0 + width, base_y), fill=1))
    c.paint(body, BUILDING, wall, c.noise(12), 10)
    if rng.random() < 0.3:  # pitched roof
        roof = c.mask(lambda d: d.polygon([(x0 - 2, top), (x0 + width + 2, top),
                                           (x0 + width / 2, top - rng.uniform(0.2, 0.5) * width)], fill=1))
        c.paint(roof, BUILDING, _jitter(rng, (120, 55, 45), 20), c.noise(12), 8)
    window = _jitter(rng, (40, 50, 70) if rng.random() < 0.7 else (235, 225, 160), 15)
    step_x, step_y = rng.uniform(5, 10), rng.uniform(6, 11)
    win_w, win_h = step_x * rng.uniform(0.4, 0.6), step_y * rng.uniform(0.4, 0.6)
    windows = c.mask(lambda d: [d.rectangle((x, y, x + win_w, y + win_h), fill=1)
                                for x in np.arange(x0 + 2, x0 + width - win_w - 1, step_x)
                                for y in np.arange(top + 3, base_y - win_h - 3, step_y)])
    c.paint(windows & body, BUILDING, window, c.noise(20), 8)


def _draw_tree(c: _Canvas, x: float, base_y: float, size: float) -> None:
    rng = c.rng
    trunk_w, trunk_h = max(2.0, size * 0.12), size * rng.uniform(0.35, 0.6)
    trunk = c.mask(lambda d: d.rectangle((x - trunk_w / 2, base_y - trunk_h, x + trunk_w / 2, base_y), fill=1))
    c.paint(trunk, TREE, _jitter(rng, (95, 65, 40), 15), c.noise(20), 8)
    autumn = rng.random() < 0.2
    crown_color = _jitter(rng, (200, 120, 40) if autumn else (45, 105, 40), 20)
    cy = base_y - trunk_h - size * 0.3
    blobs = [(x + dx * size * 0.35, cy + dy * size * 0.25, size * rng.uniform(0.25, 0.45))
             for dx, dy in rng.uniform(-1, 1, (rng.integers(2, 5), 2))]
    crown = c.mask(lambda d: [d.ellipse((bx - r, by - r, bx + r, by + r), fill=1) for bx, by, r in blobs])
    c.paint(crown, TREE, crown_color, c.noise(14) + c.noise(35), 28)


def _draw_car(c: _Canvas, x: float, base_y: float, length: float) -> None:
    rng = c.rng
    colors = [(200, 30, 30), (40, 80, 190), (230, 230, 230), (30, 30, 35), (225, 200, 40), (160, 165, 170),
              (60, 140, 60), (120, 170, 220)]
    body_color = _jitter(rng, colors[rng.integers(len(colors))], 15)
    height = length * rng.uniform(0.3, 0.4)
    x0, x1 = x - length / 2, x + length / 2
    body = c.mask(lambda d: d.rounded_rectangle((x0, base_y - height * 0.6, x1, base_y - height * 0.12),
                                                radius=max(1, height * 0.15), fill=1))
    cabin = c.mask(lambda d: d.polygon([(x0 + length * 0.2, base_y - height * 0.6),
                                        (x0 + length * 0.3, base_y - height),
                                        (x1 - length * 0.3, base_y - height),
                                        (x1 - length * 0.15, base_y - height * 0.6)], fill=1))
    c.paint(body | cabin, CAR, body_color, c.noise(25), 8)
    glass = c.mask(lambda d: d.polygon([(x0 + length * 0.27, base_y - height * 0.62),
                                        (x0 + length * 0.33, base_y - height * 0.92),
                                        (x1 - length * 0.33, base_y - height * 0.92),
                                        (x1 - length * 0.2, base_y - height * 0.62)], fill=1))
    c.paint(glass & cabin, CAR, _jitter(rng, (50, 60, 80), 10), c.noise(25), 6)
    r = height * 0.2
    wheels = c.mask(lambda d: [d.ellipse((wx - r, base_y - 2 * r, wx + r, base_y), fill=1)
                               for wx in (x0 + length * 0.22, x1 - length * 0.22)])
    c.paint(wheels, CAR, (20, 20, 20), c.noise(25), 5)


def _draw_clutter(c: _Canvas, horizon: float) -> None:
    """Small unlabelled things (value 0 -> ignored): rocks, signs, bins."""
    rng = c.rng
    for _ in range(rng.integers(0, 4)):
        x, y = rng.uniform(0, c.w), rng.uniform(horizon, c.h)
        r = rng.uniform(2, 7) * (0.5 + (y - horizon) / max(c.h - horizon, 1))
        color = rng.uniform(30, 230, 3)
        if rng.random() < 0.5:
            blob = c.mask(lambda d: d.ellipse((x - r, y - r * 0.7, x + r, y + r * 0.7), fill=1))
        else:
            blob = c.mask(lambda d: d.rectangle((x - 1, y - 4 * r, x + 1, y), fill=1)) | \
                c.mask(lambda d: d.rectangle((x - r, y - 5 * r, x + r, y - 3.5 * r), fill=1))
        c.paint(blob, 0, color, c.noise(20), 10)


def _skyline(c: _Canvas, horizon: float, x_from: float, x_to: float, max_height: float) -> None:
    x = x_from + c.rng.uniform(-10, 5)
    while x < x_to:
        width = c.rng.uniform(0.08, 0.25) * c.w
        _draw_building(c, x, width, horizon + c.rng.uniform(0, 3), c.rng.uniform(0.3, 1.0) * max_height)
        x += width + c.rng.uniform(-3, 12)


def _tree_line(c: _Canvas, horizon: float, x_from: float, x_to: float, count: int, size=(0.12, 0.25)) -> None:
    for x in np.sort(c.rng.uniform(x_from, x_to, count)):
        _draw_tree(c, x, horizon + c.rng.uniform(0, 4), c.rng.uniform(*size) * c.h)


def render_scene(rng: np.random.Generator, height: int, width: int, kind: str) -> Tuple[np.ndarray, np.ndarray]:
    """One synthetic scene: (HWC uint8 RGB image, HW uint8 labels with 0 = unlabelled, 1..7 classes)."""
    c = _Canvas(rng, height, width)
    horizon = rng.uniform(0.35, 0.6) * height
    _draw_sky(c, horizon)
    _draw_ground(c, horizon)
    if kind == 'street':
        _skyline(c, horizon, 0, width, horizon * 0.9)
        if rng.random() < 0.6:
            _tree_line(c, horizon + 0.08 * height, 0, width, rng.integers(1, 4))
        xv, half, top = _draw_road(c, horizon)
        for _ in range(rng.integers(1, 4)):
            t = rng.uniform(0.25, 0.9)
            y = top + (height - top) * t
            x = xv + (rng.uniform(-0.6, 0.6) * half) * t
            _draw_car(c, x, y, (0.08 + 0.35 * t) * width)
    elif kind == 'lake':
        _tree_line(c, horizon, 0, width, rng.integers(3, 8), size=(0.1, 0.2))
        _draw_water(c, horizon, horizon + rng.uniform(0.03, 0.1) * height, rng.uniform(0.7, 0.9) * height,
                    rng.uniform(-0.2, 0.2) * width, width * rng.uniform(0.8, 1.2))
        if rng.random() < 0.4:
            _draw_building(c, rng.uniform(0, 0.8) * width, rng.uniform(0.1, 0.2) * width, horizon + 2,
                           rng.uniform(0.1, 0.25) * height)
        if rng.random() < 0.5:
            _draw_tree(c, rng.uniform(0, width), rng.uniform(0.92, 1.0) * height, rng.uniform(0.3, 0.5) * height)
    elif kind == 'park':
        _tree_line(c, horizon, 0, width, rng.integers(2, 6), size=(0.12, 0.22))
        if rng.random() < 0.4:
            _skyline(c, horizon - 1, rng.uniform(0, 0.5) * width, rng.uniform(0.5, 1.0) * width, horizon * 0.5)
            _tree_line(c, horizon + 2, 0, width, rng.integers(1, 3), size=(0.12, 0.2))
        xv, half, top = _draw_road(c, horizon, width_frac=rng.uniform(0.1, 0.2), dirt=rng.random() < 0.5)
        if rng.random() < 0.5:
            _draw_car(c, xv + rng.uniform(-0.3, 0.3) * half, rng.uniform(0.65, 0.9) * height,
                      rng.uniform(0.15, 0.3) * width)
        for _ in range(rng.integers(1, 3)):
            _draw_tree(c, rng.uniform(0, width), rng.uniform(0.75, 1.0) * height, rng.uniform(0.3, 0.55) * height)
    else:  # coast: sea to the horizon, a shore road with cars, a town on the far shore
        _draw_water(c, horizon, horizon - 1, rng.uniform(0.6, 0.75) * height)
        if rng.random() < 0.6:
            _skyline(c, horizon, rng.uniform(0, 0.6) * width, rng.uniform(0.6, 1.0) * width, horizon * 0.35)
        road_top = rng.uniform(0.75, 0.85) * height
        road = c.mask(lambda d: d.polygon([(0, road_top), (width, road_top + rng.uniform(-5, 5)),
                                           (width, height), (0, height)], fill=1))
        gray = rng.uniform(85, 140)
        c.paint(road, ROAD, _jitter(rng, (gray, gray, gray + 5), 8), c.noise(20), 12)
        for _ in range(rng.integers(0, 3)):
            _draw_car(c, rng.uniform(0.1, 0.9) * width, rng.uniform(0.93, 1.0) * height,
                      rng.uniform(0.2, 0.35) * width)
        if rng.random() < 0.5:
            _draw_tree(c, rng.uniform(0, width), rng.uniform(0.72, 0.8) * height, rng.uniform(0.3, 0.5) * height)
    _draw_clutter(c, horizon)
    # the camera: exposure, colour cast, sensor noise
    image = c.image * rng.uniform(0.8, 1.15) + rng.uniform(-12, 12, 3)
    image += rng.standard_normal(image.shape, dtype=np.float32) * rng.uniform(3, 9)
    return np.clip(image, 0, 255).astype(np.uint8), c.label


def scene_size(rng: np.random.Generator) -> Tuple[int, int]:
    """(height, width): 120..192 x 160..256, landscape mostly, some square and portrait."""
    return int(rng.integers(120, 193)), int(rng.integers(160, 257))


def generate_scenes(root: Path, num_train: int, num_val: int, seed: int = 0) -> None:
    """Write the synthetic set into root in the ADE20K layout; deterministic in seed."""
    for split_index, (split, count) in enumerate((('training', num_train), ('validation', num_val))):
        image_dir, label_dir = root / 'images' / split, root / 'annotations' / split
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            rng = np.random.default_rng([seed, split_index, i])
            image, label = render_scene(rng, *scene_size(rng), SCENE_TYPES[i % len(SCENE_TYPES)])
            name = f'scene_{i:05d}'
            Image.fromarray(image).save(image_dir / f'{name}.jpg', quality=92)
            Image.fromarray(label, mode='L').save(label_dir / f'{name}.png')


def _readme(num_train: int, num_val: int, seed: int) -> str:
    classes = '\n'.join(f'  {i + 1} {name}  RGB {SYNTHETIC_PALETTE[i]}' for i, name in enumerate(SYNTHETIC_CLASSES))
    return (
        "SYNTHETIC DEMO DATA - NOT REAL PHOTOGRAPHS\n\n"
        "Procedurally drawn outdoor scenes (numpy + PIL), written by vir_lightning's\n"
        "datamodules/synthetic_scenes.py so that the segmentation pipeline can be tried without\n"
        "downloading anything. Same folder layout as ADE20K (ADEChallengeData2016):\n"
        "  images/{training,validation}/*.jpg, annotations/{training,validation}/*.png\n"
        "Annotations: 0 = unlabelled (ignored), then\n"
        f"{classes}\n\n"
        "Scores measured on it show only that a model and pipeline learn; they say nothing about\n"
        "ADE20K or real images. Delete this folder to regenerate it.\n")


def _signature(num_train: int, num_val: int, seed: int) -> str:
    return f"generator: {GENERATOR} v{GENERATOR_VERSION} seed={seed} training={num_train} validation={num_val}"


class SyntheticScenesDataModule(ADE20KDataModule):
    """SYNTHETIC street/lake/park/coast scenes, 7 classes, generated on first use: a segmentation demo.

    Reads through ADE20KDataModule (same layout, reduce_zero_label, mmseg augmentations), so
    training on it exercises the real ADE20K code path. ``prepare_data`` writes the set once
    (deterministic in ``seed``; a few seconds) and does nothing when ``root`` already holds it.

    Args:
        root: where the scenes are written.
        image_size: training crop (images are 120..192 x 160..256; evaluation short side = crop).
        num_train, num_val: number of training and validation scenes.
        seed: generation seed (changing it, or the counts, regenerates the folder).
        Others: as ADE20KDataModule.
    """

    CLASS_NAMES = SYNTHETIC_CLASSES
    PALETTE = SYNTHETIC_PALETTE
    DATASET_NAME = 'synthetic scenes'

    def __init__(
            self,
            root: str = 'data/seg_demo',
            batch_size: int = 16,
            num_workers: int = 0,
            image_size: int = 128,
            num_train: int = 300,
            num_val: int = 60,
            seed: int = 0,
            predict_dir: Optional[str] = None,
            scale: Optional[Tuple[int, int]] = None,
            ratio_range: Tuple[float, float] = (0.5, 2.0),
            cat_max_ratio: float = 0.75,
            hflip: float = 0.5,
            photometric: bool = True,
            mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
            std: Sequence[float] = IMAGENET_DEFAULT_STD,
    ):
        if num_train < 1 or num_val < 1:
            raise UserError(f"--data.num_train and --data.num_val must be at least 1, got {num_train}, {num_val}")
        self.num_train, self.num_val, self.seed = num_train, num_val, seed
        super().__init__(
            root, batch_size, num_workers, image_size, reduce_zero_label=True, predict_dir=predict_dir, scale=scale,
            ratio_range=ratio_range, cat_max_ratio=cat_max_ratio, hflip=hflip, photometric=photometric,
            mean=mean, std=std)

    def check_data_on_init(self) -> bool:
        return False  # written by prepare_data

    def missing_data_message(self, missing: Path) -> str:
        return (f"synthetic demo scenes not found: '{missing}' does not exist. They are written by "
                f"prepare_data() (the Trainer calls it); delete '{self.root}' if it is incomplete.")

    def is_prepared(self) -> bool:
        return is_prepared(self.root, _signature(self.num_train, self.num_val, self.seed))

    def prepare_data(self) -> None:
        """Write the scenes into root unless they are there (a few seconds; atomic, see ``prepared.py``)."""
        def generate(folder: Path) -> str:
            generate_scenes(folder, self.num_train, self.num_val, self.seed)
            return _readme(self.num_train, self.num_val, self.seed)

        write_once(self.root, _signature(self.num_train, self.num_val, self.seed), GENERATOR, 'synthetic demo scene',
                   generate)

    def setup(self, stage: str) -> None:
        if not self.is_prepared() and not (stage == 'predict' and self.predict_dir):
            self.prepare_data()  # called outside a Trainer; idempotent and safe against a concurrent writer
        super().setup(stage)
