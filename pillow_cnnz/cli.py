"""The ``cnnz`` command: encode, decode, convert and inspect ``.cnnz`` files."""
from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

from PIL import Image

from . import atomic, container, heads, pil_plugin, save, settings
from . import __version__, convert
from .precision import require_torch


def _source(name: str) -> str | io.BytesIO:
    """A file name, or for ``-`` standard input (read whole: Pillow needs to seek)."""
    return io.BytesIO(sys.stdin.buffer.read()) if name == "-" else name


def _encode(args: argparse.Namespace) -> int:
    require_torch("cnnz encode")  # before the input is read or the output touched
    fmt = Image.registered_extensions().get(Path(args.output).suffix.lower(), pil_plugin.FORMAT)
    if fmt != pil_plugin.FORMAT and not args.any_extension:
        msg = (f"{args.output} is named as a {fmt} file, but encode writes CNNZ: name it .cnnz, pass "
               f"--any-extension to keep the name, or use cnnz decode to write {fmt}")
        raise ValueError(msg)
    with Image.open(_source(args.input)) as im:
        if args.output == "-":
            im.save(sys.stdout.buffer, format=pil_plugin.FORMAT, quality=args.quality, device=args.device,
                    method=args.method)
            return 0
        save(im, args.output, quality=args.quality, device=args.device, method=args.method)
    if not os.path.isfile(args.output):  # a FIFO or a device, written in place: nothing to read back
        return 0
    return _info(argparse.Namespace(file=args.output))


def _output_format(path: str) -> str:
    """The Pillow format that writes files named like ``path`` (by its extension)."""
    ext = os.path.splitext(path)[1].lower()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None or fmt not in Image.SAVE:
        msg = (f"{path}: cannot tell the output format from the file extension ({ext or 'none'}); "
               f"name the output with one Pillow writes, e.g. .png, .webp or .tif")
        raise ValueError(msg)
    return fmt


def _decoded(args: argparse.Namespace, fmt: str) -> bytes:
    """The input ``.cnnz`` (at 1/``--scale``) as a file of format ``fmt``, complete in memory."""
    with Image.open(_source(args.input)) as im:
        if im.format != pil_plugin.FORMAT:
            msg = f"{args.input} is a {im.format} file, not CNNZ"
            raise ValueError(msg)
        out = io.BytesIO()
        (im.reduce(args.scale) if args.scale > 1 else im).save(out, format=fmt)
    return out.getvalue()


def _decode(args: argparse.Namespace) -> int:
    if args.output == "-":  # ``cnnz decode IN -``: the image on standard output, in --format (PNG by default)
        sys.stdout.buffer.write(_decoded(args, args.format or "PNG"))
        return 0
    # The output is complete in memory before anything is written: a failure or a kill
    # meanwhile leaves no partial file (and the old one, if any, as it was).
    fmt = _output_format(args.output)
    target = atomic.Target(args.output)  # what open(output, "wb") would refuse, before the decode
    target.write_bytes(_decoded(args, fmt))
    return 0


def _info(args: argparse.Namespace) -> int:
    path = Path(args.file)
    with path.open("rb") as fp:
        header, sections = container.read_directory(fp)
        for section in sections:
            container.read_payload(fp, section)  # verifies every checksum
    size = path.stat().st_size
    print(f"{path}: CNNZ version {header.version}")
    print(f"  size      {header.width}x{header.height}, mode {header.mode}")
    if header.fold:
        along = "columns" if header.fold_columns else "rows"
        print(f"  folded    {along} in segments of {header.fold} pixels, coded as {'x'.join(map(str, header.coded_size))}")
    print(f"  quality   {header.quality:g}")
    print(f"  bpp       {size * 8 / (header.width * header.height):.4f} ({size} bytes)")
    print(f"  model id  {header.model_hex}")
    for s in sections:
        print(f"  section   {s.tag!r:8} {s.length:>10} bytes  crc32 {s.crc:08x}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cnnz", description="The CNNZ learned image codec.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("encode", help="any image Pillow reads -> .cnnz ('-': standard input / output)")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("-q", "--quality", type=float, default=4.0, help="1 (smallest) .. 8 (best), default 4")
    p.add_argument("-m", "--method", type=int, default=0,
                   help="0 (fastest, default) .. 6 (smallest files, slowest encode); the decoder is the same")
    p.add_argument("--device", help="cpu or cuda (default: CNNZ_DEVICE, else cuda when available)")
    p.add_argument("--any-extension", action="store_true", help="write CNNZ even to a name such as x.png")
    p.set_defaults(func=_encode)
    p = sub.add_parser("decode", help=".cnnz -> any format Pillow writes (by extension; '-': standard input / output)")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("-f", "--format", help="the format written to standard output (default PNG)")
    p.add_argument("-s", "--scale", type=int, default=1, choices=heads.SCALES,
                   help="write the image at 1/SCALE of its size, decoded at that size (faster)")
    p.set_defaults(func=_decode)
    p = sub.add_parser("convert", help="files, folders and globs -> .cnnz (or back), on worker processes")
    convert.add_arguments(p)
    p.set_defaults(func=convert.command)
    p = sub.add_parser("info", help="header, sections and bit rate of a .cnnz file")
    p.add_argument("file")
    p.set_defaults(func=_info)
    args = parser.parse_args(argv)
    try:
        settings.check_all()  # a bad environment variable fails before any file is read or written
        return args.func(args)
    except _EXPECTED as e:
        print(f"cnnz {args.command}: error: {' '.join(str(e).split()) or type(e).__name__}", file=sys.stderr)
        return 1


# What a user meets with a bad file, path, option or environment variable: one line on stderr and
# exit status 1 (anything else is a bug, and keeps its traceback).
_EXPECTED = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


if __name__ == "__main__":
    sys.exit(main())
