#!/usr/bin/env python3
"""Fails when the modules of a crate import each other in a circle.

`make test` runs it over every crate of the workspace, so an import circle
cannot come back unseen. It reads each `src/**/*.rs` file as one module
(`a/mod.rs` is `a`, `a/b.rs` is `a::b`), takes every `crate::`, `super::`
and `self::` path in its code (comments, literals, `pub(super)`-style
visibility and `#[cfg(test)]` modules left out: unit tests may reach
anywhere) and checks two graphs:

  * modules: file to file, e.g. `broker::redis` -> `history::redis`;
  * folders: the crate's top-level modules, e.g. `broker` -> `history`:
    the layers of docs/architecture.md.

A circle in either is printed with the names that tie it and the script
exits 1. With `--layers` it also prints the folders from the bottom layer
up. Written by hand: `cargo modules` needs a nightly-only rust-analyzer
build and a network fetch, and a few hundred lines of Python do the job.
scripts/check-layers-test.py tests it on tiny crates; `make layers` runs both.
"""

import re
import sys
from pathlib import Path

PATH = re.compile(r"\b(crate|super|self)\b((?:::[A-Za-z_][A-Za-z0-9_]*)*)(::\{|::\*)?")
TEST_MODULE = re.compile(r"#\[cfg\(test\)\]\s*(#\[[^\]]*\]\s*)*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*\{")
VISIBILITY = re.compile(r"\bpub\s*\(\s*(crate|super|self|in\s[^)]*)\)")
RAW_STRING = re.compile(r'(?<![A-Za-z0-9_])[bc]?r(#*)"')


def module_of(src: Path, file: Path) -> tuple:
    parts = list(file.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts.pop()
    return tuple(parts)


def blank(text: str) -> str:
    """`text` with comments and the contents of string and character literals
    blanked, read left to right as the compiler does: a `//` inside a string
    is no comment, a `"` inside `'"'` or a comment opens no string."""
    out, i, n = [], 0, len(text)
    while i < n:
        ch, two = text[i], text[i : i + 2]
        raw = RAW_STRING.match(text, i) if ch in "bcr" else None
        if two == "//":
            end = text.find("\n", i)
            i = n if end < 0 else end
            out.append(" ")
        elif two == "/*":
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            out.append(" ")
        elif raw:
            close = '"' + raw.group(1)
            end = text.find(close, raw.end())
            i = n if end < 0 else end + len(close)
            out.append('""')
        elif ch == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            out.append('""')
        elif ch == "'" and (text[i + 1 : i + 2] == "\\" or text[i + 2 : i + 3] == "'"):
            # A character literal (`'"'`, `'\\''`, `'\\u{7f}'`); a lone `'` is a lifetime.
            end = text.find("'", i + 3 if text[i + 1] == "\\" else i + 2)
            i = n if end < 0 else end + 1
            out.append("' '")
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def strip(text: str) -> str:
    """The code of a file: no comments, no literal contents, no visibility
    paths (`pub(super)` names no dependency), no `#[cfg(test)]` modules."""
    text = VISIBILITY.sub("pub", blank(text))
    while match := TEST_MODULE.search(text):
        body = braced(text, match.end() - 1)
        text = text[: match.start()] + " " + text[match.end() + len(body) + 1 :]
    return text


def braced(text: str, start: int) -> str:
    """The text inside the `{...}` whose `{` is at `start`."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
    return ""


def items(group: str) -> list:
    """Top-level entries of a `use` group: `a::{b, c}, d` -> [`a::{b, c}`, `d`]."""
    out, depth, current = [], 0, ""
    for ch in group:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        out.append(current.strip())
    return out


def expand(prefix: tuple, rest: str) -> list:
    """Every path a `use` tree names, as tuples of segments."""
    paths = []
    for item in items(rest):
        item = item.split(" as ")[0].strip()
        if "{" in item:
            head = item[: item.index("{")].rstrip(":").strip()
            inner = braced(item, item.index("{"))
            segs = tuple(s for s in head.split("::") if s)
            paths += expand(prefix + segs, inner)
        else:
            segs = tuple(s for s in item.split("::") if s and s != "self")
            paths.append(prefix + segs)
    return paths


def references(module: tuple, code: str) -> list:
    # `self` is the file's own module (`a::b` for a/b.rs, `a` for a/mod.rs)
    # and `super` its parent.
    found = []
    for match in PATH.finditer(code):
        root, tail, group = match.group(1), match.group(2), match.group(3)
        if not tail and not group:
            continue  # `self.x`, `&self`: a value, not a path
        segs = tuple(s for s in tail.split("::") if s)
        if root == "crate":
            base = ()
        elif root == "self":
            base = module
        else:
            base = module[:-1]
            while segs and segs[0] == "super":
                base, segs = base[:-1], segs[1:]
        prefix = base + segs
        if group == "::{":
            found += expand(prefix, braced(code, match.end() - 1))
        else:
            found.append(prefix)
    return found


def resolve(path: tuple, modules: set) -> tuple:
    """The longest prefix of `path` that is a module."""
    for n in range(len(path), -1, -1):
        if path[:n] in modules:
            return path[:n]
    return ()


def circles(edges: dict) -> list:
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def layers(edges: dict, nodes: set) -> list:
    """Nodes grouped bottom-up: each layer uses only layers below it."""
    placed, out = set(), []
    while len(placed) < len(nodes):
        layer = sorted(n for n in nodes - placed if edges.get(n, set()) <= placed)
        if not layer:
            break
        out.append(layer)
        placed |= set(layer)
    return out


def name(module: tuple) -> str:
    return "::".join(module) or "crate"


def check(src: Path, show_layers: bool) -> bool:
    files = sorted(src.rglob("*.rs"))
    modules = {module_of(src, f) for f in files}
    module_edges, folder_edges, why = {}, {}, {}
    for file in files:
        module = module_of(src, file)
        code = strip(file.read_text())
        for path in references(module, code):
            target = resolve(path, modules)
            if target == module or not target:
                continue
            # A module reaching into its own children (or they into it)
            # is one room; count the edge but between distinct modules.
            module_edges.setdefault(module, set()).add(target)
            why.setdefault((module, target), set()).add(path[len(target):][:1] or ("*",))
            if module and target[:1] != module[:1]:
                folder_edges.setdefault(module[:1], set()).add(target[:1])
                why.setdefault((module[:1], target[:1]), set()).add(path[1:][:1] or ("*",))
    ok = True
    flat = all(len(m) <= 1 for m in modules)
    for label, edges in (("module", module_edges), ("folder", folder_edges)):
        if flat and label == "folder":
            continue  # the same graph as the modules'
        for component in circles(edges):
            ok = False
            print(f"{src}: import circle between {label}s: {', '.join(name(c) for c in component)}")
            for a in component:
                for b in component:
                    if b in edges.get(a, ()):
                        names = sorted(name(n) for n in why.get((a, b), ()))
                        print(f"  {name(a)} -> {name(b)}: {', '.join(names)}")
    if ok and show_layers:
        tops = {m[:1] for m in modules if m}
        print(f"{src}: folders, bottom layer first:")
        for i, layer in enumerate(layers(folder_edges, tops)):
            print(f"  {i + 1}. {' '.join(name(m) for m in layer)}")
    return ok


def main() -> int:
    args = [a for a in sys.argv[1:] if a != "--layers"]
    roots = [Path(a) for a in args] or sorted(
        p.parent / "src" for p in Path(".").glob("**/Cargo.toml")
        if (p.parent / "src").is_dir() and not {"target", "node_modules"} & set(p.parts)
    )
    ok = all([check(root, "--layers" in sys.argv) for root in roots])
    if ok:
        print(f"no import circles in {len(roots)} crates")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
