"""The decoder fuzz, long: thousands of seeded mutations of PNG, JPEG, WebP, TIFF and BMP files
(bytes overwritten, cut, repeated, inserted), each read as upres reads any image. Every outcome
must be an image or an ``ImageError`` naming the file; anything else that escapes is counted and
its first cases printed with their seeds. Figures: cases per format, how many decoded, were
refused, escaped, and the mean time per case.

    python benchmarks/bench_decoder_fuzz.py --cases 2000

The test suite runs the same mutations, 40 per format (``tests/io/test_decoder_fuzz.py``)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import records
from upres.errors import ImageError
from upres.io import images

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "io"))
from test_decoder_fuzz import FORMATS, encoded, mutate  # noqa: E402 (the test's own mutations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2000, help="mutations per format")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    escaped_total = 0
    with tempfile.TemporaryDirectory() as tmp:
        for k, (fmt, suffix) in enumerate(FORMATS.items()):
            raw, rng = encoded(fmt, args.seed), np.random.default_rng([args.seed, k])
            path, counts, escaped = Path(tmp) / f"case{suffix}", {"decoded": 0, "refused": 0}, []
            start = time.perf_counter()
            with quiet_stderr():  # libpng and OpenCV print each failure from C
                results = [_read(path, mutate(raw, rng)) for _ in range(args.cases)]
            for case, (kind, what) in enumerate(results):
                if kind == "escaped":
                    escaped.append((case, what))
                else:
                    counts[kind] = counts.get(kind, 0) + 1
            per_case = (time.perf_counter() - start) / args.cases
            escaped_total += len(escaped)
            print(f"{fmt}: {args.cases} cases, {counts['decoded']} decoded, {counts['refused']} refused "
                  f"by name, {counts.get('unnamed', 0)} refused without the name, {len(escaped)} "
                  f"escaped; {per_case * 1e3:.2f} ms a case")
            for case, what in escaped[:5]:
                print(f"  case {case}: {what}")
            records.append("decoder-fuzz", {"format": fmt, "cases": args.cases, "seed": args.seed},
                           {**counts, "escaped": len(escaped), "ms_per_case": round(per_case * 1e3, 3)})
    sys.exit(1 if escaped_total else 0)


def _read(path: Path, data: bytes) -> tuple[str, str]:
    """One damaged file read as upres reads images: decoded, refused (by name or not), escaped."""
    path.write_bytes(data)
    try:
        images.read_image(path)
        return "decoded", ""
    except ImageError as err:
        return ("refused" if str(path) in str(err) else "unnamed"), ""
    except Exception as err:  # what must not happen: counted, shown
        return "escaped", f"{type(err).__name__}: {err}"[:120]


@contextlib.contextmanager
def quiet_stderr():
    """File descriptor 2 to /dev/null for the block (C libraries write there directly)."""
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(null)
        os.close(saved)


if __name__ == "__main__":
    main()
