"""The world's object classes: each one a named set of parts built from convex primitives.

Coordinates are object-local, roughly in [-1, 1], with y pointing down (image convention). The
parts and their arrangement define a class; every part also has a class-typical colour (HSV) so
that a small model can learn the object quickly. Parts are painted in list order (later on top),
and the visible pixels of each part are its ground-truth mask, as in part-annotated datasets.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import cos, pi, sin

from pipeline.utils.errors import CftError


@dataclass(frozen=True)
class Ellipse:
    cx: float
    cy: float
    rx: float
    ry: float
    angle_deg: float = 0.0


@dataclass(frozen=True)
class Polygon:
    """A convex polygon, vertices in any winding order."""

    vertices: tuple[tuple[float, float], ...]


Primitive = Ellipse | Polygon


@dataclass(frozen=True)
class Part:
    name: str
    shapes: tuple[Primitive, ...]
    hsv: tuple[float, float, float]


@dataclass(frozen=True)
class ObjectClass:
    name: str
    parts: tuple[Part, ...]

    @property
    def part_names(self) -> list[str]:
        return [part.name for part in self.parts]


def _rect(x0: float, y0: float, x1: float, y1: float) -> Polygon:
    return Polygon(((x0, y0), (x1, y0), (x1, y1), (x0, y1)))


def _tri(*vertices: tuple[float, float]) -> Polygon:
    return Polygon(tuple(vertices))


def _circle(cx: float, cy: float, r: float) -> Ellipse:
    return Ellipse(cx, cy, r, r)


def _petals(cx: float, cy: float, count: int, distance: float, length: float, width: float) -> tuple[Ellipse, ...]:
    angles = [2 * pi * k / count for k in range(count)]
    return tuple(
        Ellipse(cx + distance * cos(a), cy + distance * sin(a), length, width, angle_deg=a * 180 / pi) for a in angles
    )


CLASSES: tuple[ObjectClass, ...] = (
    ObjectClass(
        "fish",
        (
            Part("tail fin", (_tri((0.5, 0.0), (0.95, -0.45), (0.95, 0.45)),), (0.02, 0.85, 0.85)),
            Part("dorsal fin", (_tri((-0.25, -0.2), (0.25, -0.2), (0.1, -0.62)),), (0.14, 0.9, 0.95)),
            Part("body", (Ellipse(-0.05, 0.0, 0.62, 0.34),), (0.08, 0.85, 0.95)),
            Part("eye", (_circle(-0.38, -0.08, 0.13),), (0.0, 0.0, 0.08)),
        ),
    ),
    ObjectClass(
        "bird",
        (
            Part("legs", (_rect(-0.08, 0.35, 0.06, 0.85), _rect(0.18, 0.35, 0.32, 0.85)), (0.07, 0.9, 0.85)),
            Part("body", (Ellipse(0.12, 0.12, 0.52, 0.32),), (0.6, 0.75, 0.8)),
            Part("wing", (Ellipse(0.2, 0.02, 0.38, 0.17, angle_deg=-20),), (0.5, 0.8, 0.9)),
            Part("head", (_circle(-0.45, -0.28, 0.24),), (0.66, 0.8, 0.55)),
            Part("beak", (_tri((-0.62, -0.36), (-0.62, -0.18), (-0.98, -0.27)),), (0.13, 0.95, 0.95)),
        ),
    ),
    ObjectClass(
        "house",
        (
            Part("walls", (_rect(-0.6, -0.1, 0.6, 0.8),), (0.11, 0.35, 0.92)),
            Part("roof", (_tri((-0.8, -0.08), (0.8, -0.08), (0.0, -0.85)),), (0.0, 0.8, 0.7)),
            Part("door", (_rect(-0.4, 0.3, -0.1, 0.8),), (0.07, 0.7, 0.4)),
            Part("window", (_rect(0.12, 0.08, 0.45, 0.4),), (0.55, 0.5, 1.0)),
        ),
    ),
    ObjectClass(
        "car",
        (
            Part("cabin", (Polygon(((-0.5, 0.0), (0.45, 0.0), (0.3, -0.45), (-0.3, -0.45))),), (0.92, 0.35, 0.95)),
            Part("car body", (_rect(-0.92, -0.05, 0.92, 0.35),), (0.98, 0.85, 0.85)),
            Part("wheels", (_circle(-0.52, 0.38, 0.22), _circle(0.52, 0.38, 0.22)), (0.0, 0.0, 0.15)),
            Part("headlight", (_circle(0.8, 0.08, 0.11),), (0.15, 0.9, 1.0)),
        ),
    ),
    ObjectClass(
        "tree",
        (
            Part("trunk", (_rect(-0.14, 0.1, 0.14, 0.92),), (0.07, 0.75, 0.45)),
            Part("crown", (Ellipse(0.0, -0.3, 0.62, 0.55),), (0.33, 0.8, 0.65)),
            Part("apples", (_circle(0.25, -0.35, 0.13), _circle(-0.28, -0.15, 0.13)), (0.99, 0.9, 0.9)),
        ),
    ),
    ObjectClass(
        "flower",
        (
            Part("stem", (_rect(-0.07, -0.1, 0.07, 0.92),), (0.3, 0.8, 0.6)),
            Part("leaf", (Ellipse(0.25, 0.45, 0.26, 0.1, angle_deg=-30),), (0.36, 0.85, 0.75)),
            Part("petals", _petals(0.0, -0.35, 6, 0.3, 0.2, 0.12), (0.85, 0.7, 0.95)),
            Part("flower center", (_circle(0.0, -0.35, 0.17),), (0.14, 0.95, 1.0)),
        ),
    ),
    ObjectClass(
        "mushroom",
        (
            Part("stem", (Polygon(((-0.2, -0.05), (0.2, -0.05), (0.28, 0.85), (-0.28, 0.85))),), (0.12, 0.2, 0.95)),
            Part("cap", (Ellipse(0.0, -0.2, 0.75, 0.38),), (0.0, 0.85, 0.85)),
            Part(
                "spots",
                (_circle(-0.35, -0.3, 0.12), _circle(0.12, -0.38, 0.12), _circle(0.45, -0.15, 0.1)),
                (0.0, 0.0, 1.0),
            ),
        ),
    ),
    ObjectClass(
        "rocket",
        (
            Part("flame", (_tri((-0.15, 0.5), (0.15, 0.5), (0.0, 0.98)),), (0.08, 1.0, 1.0)),
            Part(
                "fins",
                (_tri((-0.2, 0.15), (-0.2, 0.55), (-0.55, 0.62)), _tri((0.2, 0.15), (0.2, 0.55), (0.55, 0.62))),
                (0.62, 0.8, 0.7),
            ),
            Part("hull", (_rect(-0.22, -0.5, 0.22, 0.55),), (0.6, 0.08, 0.85)),
            Part("nose cone", (_tri((-0.22, -0.5), (0.22, -0.5), (0.0, -0.98)),), (0.0, 0.85, 0.8)),
            Part("porthole", (_circle(0.0, -0.12, 0.13),), (0.5, 0.7, 0.95)),
        ),
    ),
    ObjectClass(
        "snowman",
        (
            Part("snowballs", (_circle(0.0, 0.48, 0.42), _circle(0.0, -0.05, 0.3)), (0.6, 0.05, 1.0)),
            Part("head", (_circle(0.0, -0.45, 0.2),), (0.6, 0.05, 0.97)),
            Part("hat", (_rect(-0.17, -0.95, 0.17, -0.6), _rect(-0.3, -0.66, 0.3, -0.58)), (0.0, 0.0, 0.12)),
            Part("scarf", (_rect(-0.3, -0.32, 0.3, -0.18),), (0.98, 0.85, 0.85)),
            Part("carrot nose", (_tri((0.05, -0.53), (0.05, -0.37), (0.45, -0.45)),), (0.07, 0.95, 0.95)),
        ),
    ),
    ObjectClass(
        "butterfly",
        (
            Part(
                "forewings",
                (Ellipse(-0.42, -0.3, 0.42, 0.28, angle_deg=30), Ellipse(0.42, -0.3, 0.42, 0.28, angle_deg=-30)),
                (0.76, 0.7, 0.85),
            ),
            Part(
                "hindwings",
                (Ellipse(-0.3, 0.3, 0.28, 0.22, angle_deg=-30), Ellipse(0.3, 0.3, 0.28, 0.22, angle_deg=30)),
                (0.11, 0.9, 0.95),
            ),
            Part("thorax", (Ellipse(0.0, 0.0, 0.1, 0.5),), (0.0, 0.0, 0.15)),
            Part(
                "antennae",
                (
                    Polygon(((-0.1, -0.4), (0.02, -0.44), (-0.26, -0.98), (-0.4, -0.9))),
                    Polygon(((0.1, -0.4), (-0.02, -0.44), (0.26, -0.98), (0.4, -0.9))),
                ),
                (0.0, 0.0, 0.2),
            ),
        ),
    ),
)

CLASS_BY_NAME = {cls.name: cls for cls in CLASSES}


def resolve_classes(names: list[str] | None) -> tuple[ObjectClass, ...]:
    """The selected classes in catalog order; unknown names are an error that lists the known ones."""
    if names is None:
        return CLASSES
    unknown = [name for name in names if name not in CLASS_BY_NAME]
    if unknown:
        raise CftError(f"unknown world class(es) {unknown}; the world has {[c.name for c in CLASSES]}")
    if len(set(names)) < 2:
        raise CftError("the world needs at least two distinct classes")
    return tuple(cls for cls in CLASSES if cls.name in names)


def concept_catalog(classes: tuple[ObjectClass, ...] = CLASSES) -> dict[str, list[str]]:
    """Class name -> its part names: the world's ground-truth concepts."""
    return {cls.name: cls.part_names for cls in classes}
