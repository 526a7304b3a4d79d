"""Regenerate the README's generated sections from committed result fragments.

A section is any text between a pair of markers that name the same file (relative to the
repository root)::

    <!-- BEGIN generated: bench/results/demo.md -->
    ... replaced by the content of bench/results/demo.md ...
    <!-- END generated: bench/results/demo.md -->

    python bench/update_readme.py            # rewrite README.md in place (atomically)
    python bench/update_readme.py --check    # exit 1 when README.md is stale, 0 when current
    python bench/update_readme.py --readme docs/X.md   # another document

Exit status 2 (one line on stderr): unpaired or nested markers, or a named file that does not
exist. Numbers in the README thus come from files the benchmarks and ``dlrl demo`` wrote.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"<!--\s*(BEGIN|END) generated:\s*(\S+?)\s*-->")


class MarkerError(ValueError):
    pass


def sections(text):
    """[(name, start of the content, end of the content)] for every BEGIN/END pair."""
    out, open_ = [], None
    for m in MARKER.finditer(text):
        kind, name = m.group(1), m.group(2)
        line = text.count("\n", 0, m.start()) + 1
        if kind == "BEGIN":
            if open_ is not None:
                raise MarkerError(f"line {line}: BEGIN {name} inside the open section {open_[0]} (nested markers)")
            open_ = (name, m.end(), line)
        else:
            if open_ is None:
                raise MarkerError(f"line {line}: END {name} without a BEGIN")
            if open_[0] != name:
                raise MarkerError(f"line {line}: END {name} closes BEGIN {open_[0]} (line {open_[2]})")
            out.append((name, open_[1], m.start()))
            open_ = None
    if open_ is not None:
        raise MarkerError(f"line {open_[2]}: BEGIN {open_[0]} has no END")
    return out


def render(text, root=ROOT):
    """``text`` with every generated section replaced by its file's current content."""
    parts, last = [], 0
    for name, start, end in sections(text):
        src = (Path(root) / name)
        if not src.is_file():
            raise MarkerError(f"{name}: the file named by the markers does not exist under {root}")
        body = src.read_text()
        if not body.endswith("\n"):
            body += "\n"
        parts += [text[last:start], "\n", body]
        last = end
    parts.append(text[last:])
    return "".join(parts)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--readme", default=str(ROOT / "README.md"), help="the document to update (default README.md)")
    ap.add_argument("--root", default=str(ROOT), help="folder the marker paths are relative to")
    ap.add_argument("--check", action="store_true", help="do not write; exit 1 if the document is stale")
    a = ap.parse_args(argv)
    path = Path(a.readme)
    try:
        text = path.read_text()
        new = render(text, a.root)
    except (OSError, MarkerError) as exc:
        print(f"update_readme: {path}: {exc}", file=sys.stderr)
        return 2
    names = [n for n, _, _ in sections(text)]
    if a.check:
        if new != text:
            print(f"update_readme: {path} is stale (sections: {', '.join(names)}); "
                  f"run python bench/update_readme.py", file=sys.stderr)
            return 1
        print(f"update_readme: {path} is current ({len(names)} generated sections)")
        return 0
    if new != text:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            f.write(new)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        print(f"update_readme: {path}: regenerated {len(names)} sections ({', '.join(names)})")
    else:
        print(f"update_readme: {path}: already current ({len(names)} sections)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
