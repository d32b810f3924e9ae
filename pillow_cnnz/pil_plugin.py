"""Pillow plugin for ``.cnnz``: ``Image.open`` reads the header, ``load()`` decodes.

Laid out like Pillow's own plugins (``_accept`` -> ImageFile subclass -> ``_save`` ->
registration). Opening never imports torch: size, mode and metadata come from the
container alone, so listing or filtering thousands of files stays cheap.
"""
from __future__ import annotations

from typing import IO

from PIL import Image, ImageFile

from . import container, heads

FORMAT = "CNNZ"
EXTENSION = ".cnnz"
MIME = "image/x-cnnz"
_INFO_KEYS = {"EXIF": "exif", "ICCP": "icc_profile", "XMP ": "xmp"}
# Modes saved after a conversion to a mode the codec stores that keeps the picture and what an ICC
# profile of it means (Pillow's WebP and AVIF plugins convert every mode to RGB; CMYK, LAB and HSV
# would keep a profile that no longer fits, and I, I;16 and F would be clipped to 8 bits: those raise).
_CONVERT = {"1": "L", "P": None, "PA": "RGBA", "RGBX": "RGB", "YCbCr": "RGB", "RGBa": "RGBA", "La": "LA"}


def _accept(prefix: bytes) -> bool:
    return container.accept(prefix)


class CnnzImageFile(ImageFile.ImageFile):
    format = FORMAT
    format_description = "CNNZ learned image codec"

    def _open(self) -> None:
        assert self.fp is not None
        header, sections = container.read_directory(self.fp)
        self._size = (header.width, header.height)
        self._mode = header.mode
        self._header = header
        self._sections = {s.tag: s for s in sections}
        self._decoded = False
        self._scale = 1  # what draft() picked
        self.info["quality"] = header.quality
        self.info["model_id"] = header.model_hex
        for tag, key in _INFO_KEYS.items():
            if tag in self._sections:
                self.info[key] = container.read_payload(self.fp, self._sections[tag])

    def _getexif(self) -> dict | None:
        if "exif" not in self.info:
            return None
        return self.getexif()._get_merged_dict()

    def draft(self, mode: str | None, size: tuple[int, int] | None) -> tuple[str, tuple[int, int, float, float]] | None:
        """Decode at 1/8, 1/4 or 1/2 of the size where that still gives at least ``size``, as
        Pillow's JPEG plugin picks (``heads.draft_scale``), so ``thumbnail()`` decodes a fraction
        of the pixels.
        ``im.size`` becomes the reduced size; returns ``(mode, box)``, the box being the whole
        image in the reduced one's pixels, or None once the image is loaded. ``mode`` is ignored:
        the file's mode is kept."""
        if self._decoded or self.fp is None:
            return None
        width, height = self._header.width, self._header.height
        scale = heads.draft_scale(width, height, size) if size else 1
        self._scale = scale
        self._size = heads.scaled_size(width, height, scale)
        return self.mode, (0, 0, width / scale, height / scale)

    def reduce(self, factor: int | tuple[int, int], box: tuple[int, int, int, int] | None = None) -> Image.Image:
        """Pillow's ``reduce``; before ``load()``, a whole image reduced by 2, 4 or 8 is decoded at
        that scale (``heads.py``) instead of decoded whole and then reduced."""
        f = tuple(factor) if isinstance(factor, (list, tuple)) else (factor, factor)
        whole = box is None or tuple(box) == (0, 0, *self.size)
        if not self._decoded and self.fp is not None and whole and f[0] == f[1] and self._scale * f[0] in heads.SCALES[1:]:
            pixels = self._decode(self._scale * f[0])
            return self._new(Image.frombytes(self.mode, heads.scaled_size(*self.size, f[0]), pixels.tobytes()).im)
        return super().reduce(factor, box)

    def _decode(self, scale: int):
        """The file's pixels at 1/``scale`` of its size."""
        from . import codec

        assert self.fp is not None
        payloads = {tag: container.read_payload(self.fp, section) for tag, section in self._sections.items()
                    if tag in ("ALPH", "LATZ", "LATY")}
        return codec.decode_payloads(self._header, payloads, scale=scale)

    def load(self) -> Image.core.PixelAccess | None:
        if not self._decoded and self.fp is not None:
            pixels = self._decode(self._scale)
            self._decoded = True
            if self._exclusive_fp:
                self.fp.close()
            # Hand Pillow the pixels directly: a "raw" tile would let ImageFile.load()
            # memory-map the .cnnz file itself when it is opened by name.
            self.fp = None
            self.tile = []
            self.load_prepare()
            self.frombytes(pixels.tobytes())
        return super().load()


def _metadata(im: Image.Image) -> dict[str, bytes]:
    """EXIF / ICC / XMP from the save options, defaulting to the image's own ``info``."""
    info = im.encoderinfo
    exif = info.get("exif", im.info.get("exif", b""))
    if isinstance(exif, Image.Exif):
        exif = exif.tobytes()
    xmp = info.get("xmp", im.info.get("xmp", b""))
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8")
    icc = info.get("icc_profile", im.info.get("icc_profile")) or b""
    return {"EXIF": bytes(exif or b""), "ICCP": bytes(icc), "XMP ": bytes(xmp or b"")}


def _storable(im: Image.Image) -> Image.Image:
    if im.mode in container.MODES:
        return im
    if im.mode in _CONVERT:
        target = _CONVERT[im.mode] or ("RGBA" if im.has_transparency_data else "RGB")
        return im.convert(target)
    msg = f"cannot write mode {im.mode} as CNNZ: {_ADVICE.get(im.mode[:1], _ADVICE['other'])}"
    raise OSError(msg)


# What to do with a mode the codec does not store, by its first letter: advice that keeps the
# picture (``convert('L')`` alone clips samples above 255, so a 16-bit picture comes out white).
_ADVICE = {
    "I": ("it has more than 8 bits a sample; scale them to 0..255 first, e.g. for 16-bit samples "
          "im.point(lambda v: v / 256).convert('L')"),
    "F": ("it has float samples; scale them to 0..255 first, e.g. for samples in 0..1 "
          "im.point(lambda v: v * 255).convert('L')"),
    "other": ("it is another colour space, and its ICC profile would no longer fit; convert it to RGB "
              "first, with PIL.ImageCms or im.convert('RGB')"),
}


def _save(im: Image.Image, fp: IO[bytes], filename: str | bytes) -> None:
    if im.encoderinfo.get("lossless"):
        msg = ("CNNZ is lossy and cannot save losslessly (lossless=True); save masks, label maps and "
               "other images that must come back exactly as PNG (or WebP with lossless=True)")
        raise ValueError(msg)
    from . import codec
    import numpy as np

    quality = im.encoderinfo.get("quality", 4)
    stored = _storable(im)
    data = codec.encode(np.asarray(stored), stored.mode, quality, device=im.encoderinfo.get("device"),
                        metadata=_metadata(im), method=im.encoderinfo.get("method", 0))
    fp.write(data)


def register() -> None:
    """Register the format with Pillow (idempotent)."""
    Image.register_open(FORMAT, CnnzImageFile, _accept)
    Image.register_save(FORMAT, _save)
    Image.register_extension(FORMAT, EXTENSION)
    Image.register_mime(FORMAT, MIME)
