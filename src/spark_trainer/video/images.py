"""Stand-alone images: re-encoded to one format from their pixels only, so EXIF (camera,
GPS position, timestamps) and any other embedded metadata are gone."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

GPS_IFD = 0x8825


@dataclass(frozen=True)
class CleanImage:
    data: bytes
    metadata: dict


def clean(path: Path, out_format: str) -> CleanImage:
    """Read, apply the EXIF orientation (so stripping it does not rotate the picture),
    drop everything but the pixels, re-encode. Raises OSError/ValueError on a bad image."""
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        img.load()
        exif = img.getexif()
        had_gps = bool(exif.get_ifd(GPS_IFD))
        source_format = img.format
        upright = ImageOps.exif_transpose(img)
    mode = "RGBA" if out_format == "png" and upright.mode in ("RGBA", "LA", "P") else "RGB"
    pixels = Image.frombytes(mode, upright.size, upright.convert(mode).tobytes())  # a fresh image: no info dict
    buf = io.BytesIO()
    pixels.save(buf, format="PNG" if out_format == "png" else "JPEG", **({"quality": 95} if out_format == "jpeg" else {}))
    return CleanImage(buf.getvalue(), {
        "width": upright.size[0], "height": upright.size[1], "source_format": source_format, "mode": mode,
        "format": out_format, "exif_tags_removed": len(exif), "had_gps": had_gps,
    })
