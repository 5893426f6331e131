"""The world's ImageNet-9-style split: one scene drawn with its background kept, removed or swapped.

Xiao et al. ("Noise or Signal: The Role of Image Backgrounds in Object Recognition", ICLR 2021)
cut ImageNet images into foreground and background and recombine them. The world draws its
scenes, so it can recombine them exactly: a scene is an object (class, pose, part colours, the
cue) rendered once and composited over each variant's background, with one noise field for all,
so the object's pixels are the same in every variant and only the background differs.

==========  =================================================  ============================
variant     background                                         ImageNet-9 counterpart
==========  =================================================  ============================
original    as ``test``: the class's own style w.p. spurious_p  ``original``
only_fg     black                                              ``only_fg``
no_fg       the original's, the object's pixels black           ``no_fg``
only_bg     the original's, no object (and so no cue)          ``only_bg_t`` (a perfect fill)
mixed_same  a new draw of the class's own style                ``mixed_same``
mixed_rand  a uniformly random class's style                   ``mixed_rand``
mixed_next  the next class's style (k + 1 mod classes)         ``mixed_next``
==========  =================================================  ============================

Images without an object (no_fg, only_bg) get empty part labels, so relevance-against-mask
metrics leave them out. Image ``i`` of the split is variant ``i mod 7`` of scene ``i div 7``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from pipeline.data.world.classes import CLASSES, ObjectClass
from pipeline.data.world.generate import (
    NO_BACKGROUND_CLASS,
    NO_CUE,
    WorldSample,
    class_assignment,
    draw_background_class,
    draw_cue_class,
    in_distribution_pose,
    sample_rng,
)
from pipeline.data.world.render import (
    NUM_BACKGROUND_STYLES,
    background,
    cue_region,
    downsample_labels,
    downsample_mean,
    paint_cue,
    paint_parts,
    part_colors,
    part_label_map,
    pixel_grid,
)
from pipeline.data.world.splits import BACKGROUND_VARIANTS

if TYPE_CHECKING:
    from pipeline.config.data import WorldConfig

SPLIT = "backgrounds"
WITHOUT_OBJECT = ("no_fg", "only_bg")


def scene_classes(seed: int, count: int, num_classes: int) -> np.ndarray:
    """The class of each of ``count`` images: balanced over scenes, repeated over a scene's variants."""
    scenes = -(-count // len(BACKGROUND_VARIANTS))
    return np.repeat(class_assignment(seed, SPLIT, scenes, num_classes), len(BACKGROUND_VARIANTS))[:count]


def render_scene(
    config: WorldConfig, classes: tuple[ObjectClass, ...], scene: int, class_index: int, seed: int
) -> list[WorldSample]:
    """Scene ``scene`` in every variant (BACKGROUND_VARIANTS order); deterministic in (seed, scene, class)."""
    rng = sample_rng(seed, SPLIT, scene)
    size, ss, count = config.image_size, config.supersample, len(classes)
    obj = classes[class_index]
    xs, ys = pixel_grid(size, ss)
    backgrounds = {
        "original": draw_background_class("test", class_index, count, config.spurious_p, rng),
        "mixed_same": class_index,
        "mixed_rand": int(rng.integers(count)),
        "mixed_next": (class_index + 1) % count,
    }
    labels_hi = part_label_map(obj, in_distribution_pose(size, rng), xs, ys)
    colors = part_colors(obj, rng, config.hue_jitter)
    cue_class = (
        draw_cue_class("test", class_index, count, config.cue_probability, rng) if config.cue_size > 0 else NO_CUE
    )
    cue = cue_region(labels_hi, round(config.cue_size * size) * ss, rng) if cue_class != NO_CUE else None
    cue_class = cue_class if cue is not None else NO_CUE
    # The object painted once, on black: paint_parts and paint_cue write only the object's pixels.
    painted = paint_parts(np.zeros((*xs.shape, 3)), labels_hi, colors, rng)
    if cue is not None:
        paint_cue(painted, labels_hi, cue, CLASSES.index(classes[cue_class]))
    canvases = {
        variant: background(CLASSES.index(classes[k]) % NUM_BACKGROUND_STYLES, xs, ys, size, rng)
        for variant, k in backgrounds.items()
    }
    noise = rng.normal(0.0, 0.015, size=(size, size, 3))
    on_object = (labels_hi > 0)[..., None]
    labels = downsample_labels(labels_hi, ss, len(obj.parts))
    samples = []
    for variant in BACKGROUND_VARIANTS:
        if variant == "only_fg":
            canvas, bg_class = np.where(on_object, painted, 0.0), NO_BACKGROUND_CLASS
        elif variant == "no_fg":
            canvas, bg_class = np.where(on_object, 0.0, canvases["original"]), backgrounds["original"]
        elif variant == "only_bg":
            canvas, bg_class = canvases["original"], backgrounds["original"]
        else:
            canvas, bg_class = np.where(on_object, painted, canvases[variant]), backgrounds[variant]
        has_object = variant not in WITHOUT_OBJECT
        image = downsample_mean(canvas, ss) + noise
        samples.append(
            WorldSample(
                image=np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8),
                part_labels=labels if has_object else np.zeros_like(labels),
                class_index=class_index,
                background_class=bg_class,
                cue_class=cue_class if has_object else NO_CUE,
                rendering="photo",
                part_names=obj.part_names,
                variant=variant,
            )
        )
    return samples


def render_images(
    config: WorldConfig, classes: tuple[ObjectClass, ...], start: int, class_indices: np.ndarray, seed: int
) -> list[WorldSample]:
    """Images ``start``, ``start + 1``, ... of the split (scenes cut by a chunk boundary are drawn again)."""
    samples: list[WorldSample] = []
    drawn: tuple[int, list[WorldSample]] | None = None
    for offset, class_index in enumerate(class_indices):
        scene, variant = divmod(start + offset, len(BACKGROUND_VARIANTS))
        if drawn is None or drawn[0] != scene:
            drawn = (scene, render_scene(config, classes, scene, int(class_index), seed))
        samples.append(drawn[1][variant])
    return samples
