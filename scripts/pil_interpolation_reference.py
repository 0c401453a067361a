#!/usr/bin/env python3
"""Pillow reference outputs for the bicubic resize and bicubic affine warps.

Prints the constants checked by `src/data/transforms/geometry.rs` and `ops.rs` tests
(`*_bicubic_is_bit_identical_to_pil`). Needs only Pillow (`pip install pillow`); the values in the
tests were made with Pillow 13.0.0, whose 8-bit resampling (Resample.c) and affine filters
(Geometry.c) are unchanged since Pillow 4.
"""
import PIL
from PIL import Image

BICUBIC = Image.Resampling.BICUBIC

# The 6x5 "L" test image of the bilinear tests.
gray = Image.frombytes("L", (6, 5), bytes((i * 37 + (i // 6) * 11) % 256 for i in range(30)))
# A 7x5 RGB image whose channels differ.
rgb = Image.frombytes(
    "RGB", (7, 5), bytes((i * 53 + (i // 21) * 29 + (i % 3) * 71) % 256 for i in range(105))
)


def show(name, img):
    print(f"{name} = {list(img.tobytes())}")


print(f"# Pillow {PIL.__version__}")
show("gray_down_4x3", gray.resize((4, 3), BICUBIC))
show("gray_up_9x7", gray.resize((9, 7), BICUBIC))
show("gray_down_2x2", gray.resize((2, 2), BICUBIC))
show("gray_wide_11x5", gray.resize((11, 5), BICUBIC))
show("rgb_3x4", rgb.resize((3, 4), BICUBIC))
show("rgb_up_10x8", rgb.resize((10, 8), BICUBIC))
show("gray_rotate17", gray.rotate(17, resample=BICUBIC, fillcolor=128))
show(
    "gray_shear_x02",
    gray.transform(gray.size, Image.AFFINE, (1, 0.2, 0, 0, 1, 0), resample=BICUBIC, fillcolor=128),
)
show(
    "gray_translate_x03",
    gray.transform(
        gray.size, Image.AFFINE, (1, 0, 0.3 * 6, 0, 1, 0), resample=BICUBIC, fillcolor=128
    ),
)
show("rgb_rotate_m23", rgb.rotate(-23, resample=BICUBIC, fillcolor=(128, 128, 128)))
