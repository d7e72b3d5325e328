#!/usr/bin/env python3
"""The house rules for product code: no file over MAX_FILE_LINES lines, no function over
MAX_FN_LINES lines, and arrows only downward (ARCHITECTURE.md, "The house"): each crate
depends only on the crates below it, and inside `outbox-workers` the producer, the
consumer and the benchmark are rooms that the shared modules and each other do not use.

Product code is every `.rs` file under a crate's `src/`, except test files: `tests.rs`,
`*_tests.rs`, `test_fixtures.rs` and anything under a `tests/` folder. A function counts
from its `fn` line to its closing brace; functions inside a `#[cfg(test)]` module are
test code and not counted.

  scripts/structure-check.py            check the workspace (exit 1 and a list if broken)
  scripts/structure-check.py --self-test  the checker's own test
"""
import os
import re
import sys
import tempfile

MAX_FILE_LINES = 800
MAX_FN_LINES = 80
CRATES = ["contract", "core", "operator", "workers", "loadtest", "testbed/support", "examples/enqueue-in-transaction"]
FN = re.compile(r"^\s*(?:pub(?:\([a-z:]+\))?\s+)?(?:const\s+)?(?:async\s+)?(?:unsafe\s+)?"
                r"(?:extern\s+\"C\"\s+)?fn\s+([A-Za-z_][A-Za-z0-9_]*)")
# The workspace crates each crate may depend on ([dependencies]; tests may use any).
ALLOWED_DEPENDENCIES = {
    "contract": set(),
    "core": {"outbox-contract"},
    "loadtest": {"outbox-contract", "outbox-core"},
    "workers": {"outbox-contract", "outbox-core", "outbox-loadtest"},
    "operator": {"outbox-contract"},
    # An application's side: it talks to the database only.
    "examples/enqueue-in-transaction": set(),
}
# Inside workers/src: the rooms, and what each part may not use.
ROOMS = ["producer", "consumer", "bench"]
ROOM_USE = re.compile(r"\b(?:crate|super)::(producer|consumer|bench)\b|use crate::\{[^}]*\b(producer|consumer|bench)\b")
CFG_TEST_MOD = re.compile(r"^\s*#\[cfg\(test\)\]\s*$")
MOD_OPEN = re.compile(r"^\s*(?:pub(?:\([a-z:]+\))?\s+)?mod\s+[a-z_0-9]+\s*\{")


def code_only(text):
    """The text with comments, strings and char literals blanked (newlines kept), so that
    braces can be counted."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif re.match(r'(?:b|c)?r(#*)"', text[i:i + 40]) and not (i and (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'(?:b|c)?r(#*)"', text[i:])
            end = '"' + m.group(1)
            j = text.find(end, i + m.end())
            j = n if j < 0 else j + len(end)
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "'":
            m = re.match(r"'(?:\\u\{[0-9a-fA-F]+\}|\\.|[^\\'])'", text[i:])
            if m:
                out.append(" " * m.end())
                i += m.end()
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def block_end(lines, start):
    """The index of the line that closes the first `{` at or after line `start`."""
    depth, opened = 0, False
    for k in range(start, len(lines)):
        for ch in lines[k]:
            if ch == "{":
                depth, opened = depth + 1, True
            elif ch == "}":
                depth -= 1
                if opened and depth == 0:
                    return k
            elif ch == ";" and not opened:
                return None  # a declaration without a body (trait method, extern)
    return None


def long_functions(text):
    """(name, first line, length) of every function over MAX_FN_LINES outside test modules."""
    lines = code_only(text).split("\n")
    found, k = [], 0
    while k < len(lines):
        if CFG_TEST_MOD.match(lines[k]) and k + 1 < len(lines) and MOD_OPEN.match(lines[k + 1]):
            end = block_end(lines, k + 1)
            k = (end if end is not None else k + 1) + 1
            continue
        m = FN.match(lines[k])
        if m:
            end = block_end(lines, k)
            if end is not None and end - k + 1 > MAX_FN_LINES:
                found.append((m.group(1), k + 1, end - k + 1))
        k += 1
    return found


def is_test_file(path):
    name = os.path.basename(path)
    parts = path.split(os.sep)
    return name == "tests.rs" or name.endswith("_tests.rs") or name == "test_fixtures.rs" or "tests" in parts


def product_files(root):
    for crate in CRATES:
        src = os.path.join(root, crate, "src")
        for dirpath, _, names in os.walk(src):
            for name in sorted(names):
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, root)
                if name.endswith(".rs") and not is_test_file(os.path.relpath(path, src)):
                    yield rel, path


def dependency_problems(root):
    """Workspace dependencies of each crate outside what it may use."""
    problems = []
    for crate, allowed in ALLOWED_DEPENDENCIES.items():
        path = os.path.join(root, crate, "Cargo.toml")
        if not os.path.exists(path):
            continue
        section = None
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line.startswith("["):
                    section = line
                elif section == "[dependencies]":
                    m = re.match(r"(outbox-[a-z-]+)\s*=", line)
                    if m and m.group(1) not in allowed:
                        problems.append(f"{crate}/Cargo.toml: depends on {m.group(1)}, which is not below it (may use: {', '.join(sorted(allowed)) or 'no workspace crate'})")
    return problems


def room_problems(root):
    """Uses of a room of outbox-workers from outside it: from another room, or from a
    shared module (the binary's main.rs dispatches to all of them; tests may use any)."""
    problems = []
    src = os.path.join(root, "workers", "src")
    for rel, path in product_files(root):
        if not rel.startswith(os.path.join("workers", "src") + os.sep) or rel.endswith("main.rs"):
            continue
        inner = os.path.relpath(path, src).split(os.sep)
        room = inner[0] if len(inner) > 1 and inner[0] in ROOMS else None
        with open(path, encoding="utf-8") as f:
            text = code_only(f.read())
        for n, line in enumerate(text.split("\n"), 1):
            for m in ROOM_USE.finditer(line):
                used = m.group(1) or m.group(2)
                if used != room and not (room == "bench"):
                    problems.append(f"{rel}:{n}: uses {used}, a room of its own (ARCHITECTURE.md, \"The house\")")
    return problems


def check(root):
    problems = dependency_problems(root) + room_problems(root)
    for rel, path in product_files(root):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        count = text.count("\n")
        if count > MAX_FILE_LINES:
            problems.append(f"{rel}: {count} lines (at most {MAX_FILE_LINES}; move tests to a tests.rs beside it or split the module)")
        for name, line, length in long_functions(text):
            problems.append(f"{rel}:{line}: fn {name} is {length} lines (at most {MAX_FN_LINES})")
    return problems


def self_test():
    body = "\n".join(f'    let x{i} = "{{not a brace"; // }} {i}' for i in range(MAX_FN_LINES))
    long_fn = f"pub async fn too_long() {{\n{body}\n}}\n"
    short_fn = "fn fine() -> char {\n    let c = '{';\n    let s = r#\"}\"#;\n    c\n}\n"
    test_mod = f"#[cfg(test)]\nmod tests {{\n    fn long_test() {{\n{body}\n    }}\n}}\n"
    assert long_functions(short_fn) == [], long_functions(short_fn)
    assert [f[0] for f in long_functions(long_fn)] == ["too_long"], long_functions(long_fn)
    assert long_functions(test_mod) == [], long_functions(test_mod)
    assert long_functions("trait T {\n    fn f(&self);\n}\n" + short_fn) == []
    with tempfile.TemporaryDirectory() as root:
        src = os.path.join(root, "workers", "src")
        os.makedirs(src)
        with open(os.path.join(src, "big.rs"), "w") as f:
            f.write("// line\n" * (MAX_FILE_LINES + 1) + long_fn)
        with open(os.path.join(src, "tests.rs"), "w") as f:
            f.write("// line\n" * (MAX_FILE_LINES + 1) + long_fn)
        problems = check(root)
        assert len(problems) == 2, problems
        assert problems[0].startswith(f"workers/src/big.rs: {MAX_FILE_LINES + 83} lines"), problems
        assert "fn too_long is 82 lines" in problems[1], problems
    with tempfile.TemporaryDirectory() as root:
        os.makedirs(os.path.join(root, "core"))
        with open(os.path.join(root, "core", "Cargo.toml"), "w") as f:
            f.write('[dependencies]\noutbox-contract = { workspace = true }\noutbox-workers = { workspace = true }\n\n[dev-dependencies]\noutbox-loadtest = { workspace = true }\n')
        for room, text in [("producer", "use crate::consumer::ledger;\n"), ("consumer", "// crate::producer in a comment\nfn f() {}\n")]:
            os.makedirs(os.path.join(root, "workers", "src", room))
            with open(os.path.join(root, "workers", "src", room, "mod.rs"), "w") as f:
                f.write(text)
        with open(os.path.join(root, "workers", "src", "kafka.rs"), "w") as f:
            f.write("use crate::{config, producer::relay};\n")
        problems = check(root)
        assert any("core/Cargo.toml: depends on outbox-workers" in p for p in problems), problems
        assert not any("outbox-loadtest" in p for p in problems), problems
        assert any(p.startswith("workers/src/producer/mod.rs:1: uses consumer") for p in problems), problems
        assert any(p.startswith("workers/src/kafka.rs:1: uses producer") for p in problems), problems
        assert not any("consumer/mod.rs" in p for p in problems), problems
        assert len(problems) == 3, problems
    print("structure-check self-test: ok")


if __name__ == "__main__":
    if sys.argv[1:] == ["--self-test"]:
        self_test()
        sys.exit(0)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    problems = check(root)
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} structure problems (files over {MAX_FILE_LINES} lines, functions over {MAX_FN_LINES}, arrows upward)")
        sys.exit(1)
    print(f"structure: no product file over {MAX_FILE_LINES} lines, no function over {MAX_FN_LINES}, arrows only downward")
