"""Test stand-in, active only in `cft` processes started with CFT_TEST_TINY_SAM=1 on the path.

`dvc repro` runs each stage in its own process, so a test cannot monkeypatch the masks stage.
This swaps SAM's vit_b preset for the tiny architecture of tests/grounded_models.py (a real
vit_b embedding takes ~20 s per image on a 2-core CPU), and stands in for trained weights: the
random decoder still runs on every box, but each mask is then replaced by the ellipse inscribed in
its box, as a trained SAM's mask follows its box (random masks are rightly flagged `noisy` and
leave nothing to fine-tune on). The stage loads the weights files named in params with the real
loading code.
"""

import os
import sys

if os.environ.get("CFT_TEST_TINY_SAM") == "1" and os.path.basename(sys.argv[0] if sys.argv else "") == "cft":
    import numpy as np

    from pipeline.masks.segmenting import SAM_ARCHITECTURES, BoxSegmenter
    from tests.helpers.grounded_models import TINY_SAM

    SAM_ARCHITECTURES["vit_b"] = TINY_SAM
    random_segment = BoxSegmenter.segment

    def box_following_segment(self, embeddings, index, boxes):  # type: ignore[no-untyped-def]
        masks = random_segment(self, embeddings, index, boxes)
        yy, xx = np.mgrid[: masks.shape[1], : masks.shape[2]] + 0.5
        for mask, (x0, y0, x1, y1) in zip(masks, boxes, strict=True):
            mask[...] = ((xx - (x0 + x1) / 2) / max((x1 - x0) / 2, 0.5)) ** 2 + (
                (yy - (y0 + y1) / 2) / max((y1 - y0) / 2, 0.5)
            ) ** 2 <= 1
        return masks

    BoxSegmenter.segment = box_following_segment
