# SPDX-License-Identifier: MIT
"""`spice crit` (and the `crit` alias): CRIU's image tool, same commands, options, JSON and text.

    crit decode [-i IN] [-o OUT] [--pretty]   image -> JSON (stdin/stdout by default)
    crit encode [-i IN] [-o OUT]              JSON -> image
    crit show IN [--nopl]                     decode --pretty to stdout (--nopl: payload sizes only)
    crit info IN                              {"magic": ..., "count": ...}
    crit x DIR ps|fds|mems|rss                explore an image directory

Bad input of any kind (missing, truncated, corrupt, unknown magic, bad JSON) is one line
`Error (spice/images): <file> at offset N: ...` on stderr and exit status 1.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .. import CRIU_VERSION
from ..errors import ImageError, SpiceError

STDIN = "<stdin>"


def _read(path: str | None) -> tuple[bytes, str]:
    if path is None:
        return sys.stdin.buffer.read(), STDIN
    try:
        return Path(path).read_bytes(), path
    except FileNotFoundError:
        raise ImageError(path, "no such image file") from None
    except IsADirectoryError:
        raise ImageError(path, "is a directory, not an image file") from None
    except OSError as e:
        raise ImageError(path, f"cannot read: {e.strerror}") from None


def _write(path: str | None, data: bytes) -> None:
    if path is None:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    try:
        Path(path).write_bytes(data)
    except OSError as e:
        raise ImageError(path, f"cannot write: {e.strerror}") from None


def load_image(data: bytes, name: str):
    """Decode image bytes; a file name CRIU uses must hold the magic it calls for."""
    from . import codec, magic

    expect = magic.magic_for_filename(os.path.basename(name)) if name != STDIN else None
    return codec.loads(data, name, None if expect == "RAW" else expect)


def decode_image(data: bytes, name: str, pretty: bool = False, no_payload: bool = False) -> dict[str, Any]:
    """Image bytes -> crit's JSON dict."""
    from . import pb2dict

    return pb2dict.image_to_dict(load_image(data, name), pretty, no_payload)


def encode_image(text: bytes, name: str) -> bytes:
    """crit's JSON -> image bytes."""
    from . import codec, magic, pb2dict

    if len(text) >= 4 and int.from_bytes(text[:4], "little") in (magic.IMG_COMMON, magic.IMG_SERVICE,
                                                                  magic.MAGICS["INVENTORY"]):
        raise ImageError(name, "this is a binary CRIU image; encode reads crit's JSON (use decode)", 0)
    try:
        s = text.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ImageError(name, "not JSON text (encode reads crit's JSON; is this a binary image?)", e.start) from None
    try:
        obj = json.loads(s)
    except json.JSONDecodeError as e:
        where = len(s[: e.pos].encode())
        raise ImageError(name, f"bad JSON: {e.msg} (line {e.lineno} column {e.colno})", where) from None
    except RecursionError:
        raise ImageError(name, "bad JSON: nested too deeply") from None
    try:
        return codec.dumps(pb2dict.dict_to_image(obj))
    except pb2dict.JsonError as e:
        raise ImageError(name, str(e)) from None
    except RecursionError:
        raise ImageError(name, "JSON nested too deeply for the image's messages") from None


def _dump_json(obj: Any, pretty: bool) -> str:
    return json.dumps(obj, indent=4 if pretty else None)


def _cli_errors(fn: Callable[..., None]) -> Callable[..., None]:
    """SpiceError -> one CRIU-style line on stderr and exit 1; a closed stdout pipe ends quietly."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except SpiceError as e:
            click.echo(e.criu_line(), err=True)
            sys.exit(1)
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(1)

    return run


@click.group(name="crit", help="CRiu Image Tool (spice-criu, compatible with crit from CRIU 4.2.1)",
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(".".join(map(str, CRIU_VERSION)), message="%(version)s")
def crit() -> None:
    pass


@crit.command(help="convert criu image from binary type to json")
@click.option("--pretty", is_flag=True,
              help="Multiline with indents and some numerical fields in field-specific format")
@click.option("-i", "--in", "in_", metavar="IN", help="criu image in binary format to be decoded (stdin by default)")
@click.option("-o", "--out", metavar="OUT", help="where to put criu image in json format (stdout by default)")
@_cli_errors
def decode(pretty: bool, in_: str | None, out: str | None) -> None:
    data, name = _read(in_)
    text = _dump_json(decode_image(data, name, pretty), pretty)
    if out is None:
        _write(None, (text + "\n").encode())
    else:
        _write(out, text.encode())


@crit.command(help="convert criu image from json type to binary")
@click.option("-i", "--in", "in_", metavar="IN", help="criu image in json format to be encoded (stdin by default)")
@click.option("-o", "--out", metavar="OUT", help="where to put criu image in binary format (stdout by default)")
@_cli_errors
def encode(in_: str | None, out: str | None) -> None:
    text, name = _read(in_)
    _write(out, encode_image(text, name))


@crit.command(help="convert criu image from binary to human-readable json")
@click.argument("in_", metavar="IN")
@click.option("--nopl", is_flag=True, help="do not show entry payload (if exists)")
@_cli_errors
def show(in_: str, nopl: bool) -> None:
    data, name = _read(in_)
    _write(None, (_dump_json(decode_image(data, name, True, nopl), True) + "\n").encode())


@crit.command(help="show info about image")
@click.argument("in_", metavar="IN")
@_cli_errors
def info(in_: str) -> None:
    # the number of entries (crit's own count walks sizes only and miscounts images with payloads)
    img = load_image(*_read(in_))
    count = len(img.entries) - (1 if img.magic == "PAGEMAP" else 0)
    _write(None, (json.dumps({"magic": img.magic, "count": count}, indent=4) + "\n").encode())


@crit.command(name="x", help="explore image dir")
@click.argument("dir_", metavar="DIR")
@click.argument("what", type=click.Choice(["ps", "fds", "mems", "rss"]))
@_cli_errors
def explore_cmd(dir_: str, what: str) -> None:
    from .explore import explore, write_text

    write_text(explore(dir_, what))


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `crit` console script."""
    crit.main(args=argv, prog_name="crit")


if __name__ == "__main__":
    main()
