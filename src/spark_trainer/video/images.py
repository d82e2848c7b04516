"""Stand-alone images: re-encoded to one format from their pixels only, so EXIF (camera,
GPS position, timestamps) and any other embedded metadata are gone."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from spark_trainer.video import containers

GPS_IFD = 0x8825


@dataclass(frozen=True)
class CleanImage:
    data: bytes
    metadata: dict


class TooManyPixels(Exception):
    """The image's header declares more than `ingest_video.max_pixels` pixels."""


def clean(path: Path, out_format: str, max_pixels: int) -> CleanImage:
    """Read as the format its extension names, check the size its header declares, apply the
    EXIF orientation (so stripping it does not rotate the picture), drop everything but the
    pixels, re-encode. Raises TooManyPixels before any pixel is decoded, OSError/ValueError on
    a bad image or one of another format, UnsupportedContainer for an extension with no
    allowed format."""
    from PIL import Image, ImageOps

    with containers.open_file(path) as f:
        try:
            img = Image.open(f, formats=[containers.image_format(path)])
        except Image.DecompressionBombError as e:  # Pillow's own cap, checked while opening
            raise TooManyPixels(f"Pillow refuses it as a decompression bomb: {e}") from e
        with img:
            width, height = img.size
            if width * height > max_pixels:
                raise TooManyPixels(f"{width}x{height} = {width * height} pixels is over ingest_video.max_pixels "
                                    f"({max_pixels})")
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
