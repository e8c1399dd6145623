#!/usr/bin/env python3
"""Import cycles between the files of a Rust source tree (issue #14: "no import cycle between
files other than a feature switch"). Run: python3 scripts/import_cycles.py [-v] [--sccs] src

What it counts: an edge A -> B when file A (test-only code removed) names a path that lands in
file B: `crate::x::y`, `super::..`, `self::..`, a path starting with a child module of A, or a
path starting with a name that A imported as a module with `use` (`use crate::backend;` then
`backend::gpu::f`). Outside `use`, the last name of a path is an item, never a module, so it
does not pick a file (`peft::read(..)` lands in peft/mod.rs, which re-exports the function, not
in peft/read.rs). Each `use` group is expanded, nested groups included, and `super::*`
globs count. A path lands in the deepest file its leading segments name (so
`super::print_report` from commands/merge.rs lands in commands/mod.rs even when mod.rs merely
re-exports it: the text names the parent). A string literal that is exactly a path counts too
(serde's `serialize_with = "crate::io::quant::ser_dtype"` is code). A cycle is a pair of files with edges both ways.

What it ignores: comments, other string and char literals, visibility paths (`pub(in crate::x)`),
and test-only code: any item under `#[cfg(test)]` / `#[cfg(all(test, ..))]` (the whole item,
brace-matched, wherever it stands in the file, not only `mod tests {` to the end of the file),
and files compiled only for tests (the target of `#[cfg(test)] mod x;`, and its children).
`super::` inside an inline `mod x { .. }` is resolved from that inline module, not its file.

Differences from a first, rougher count (51 cycles on 2026-12-05 morning): it dropped everything after the first `#[cfg(test)] mod tests {` (even
code below it), kept other `#[cfg(test)]` items, scanned `tests.rs` files as library code,
skipped nested `use` groups and `super::*`, and read paths inside strings and block comments.

Usage: python3 scripts/import_cycles.py [-v] [--sccs] SRC_DIR
  -v       print, under each cycle, the paths that make each of its two edges
  --sccs   also print strongly connected groups of three or more files (longer cycles)
"""
import os
import re
import sys

args = [a for a in sys.argv[1:] if not a.startswith('-')]
verbose = '-v' in sys.argv
sccs = '--sccs' in sys.argv
root = args[0] if args else 'src'

files = {}
for dp, _, fs in os.walk(root):
    for f in fs:
        if f.endswith('.rs'):
            p = os.path.join(dp, f)
            rel = os.path.relpath(p, root)[:-3].split('/')
            if rel[-1] in ('mod', 'lib', 'main'):
                rel = rel[:-1]
            files[tuple(rel)] = p


def strip_comments_and_literals(s):
    """Blanks comments, string/char literals (keeps newlines so line numbers hold)."""
    out = []
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if s.startswith('//', i):
            j = s.find('\n', i)
            j = n if j < 0 else j
            out.append(' ' * (j - i))
            i = j
        elif s.startswith('/*', i):
            depth, j = 1, i + 2
            while j < n and depth:
                if s.startswith('/*', j):
                    depth += 1
                    j += 2
                elif s.startswith('*/', j):
                    depth -= 1
                    j += 2
                else:
                    j += 1
            out.append(re.sub(r'[^\n]', ' ', s[i:j]))
            i = j
        elif (c in 'rb' and (i == 0 or not (s[i - 1].isalnum() or s[i - 1] == '_'))
              and re.match(r'(?:br|rb|r)(#*)"', s[i:i + 40])):
            m = re.match(r'(?:br|rb|r)(#*)"', s[i:i + 40])
            end = '"' + m.group(1)
            j = s.find(end, i + m.end())
            j = n if j < 0 else j + len(end)
            out.append(re.sub(r'[^\n]', ' ', s[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and s[j] != '"':
                j += 2 if s[j] == '\\' else 1
            j += 1
            if re.fullmatch(r'"\w+(?:::\w+)+"', s[i:j]):
                # a path in a string is code: `#[serde(serialize_with = "crate::io::x")]`
                out.append(' ' + s[i + 1:j - 1] + ' ')
            else:
                out.append(re.sub(r'[^\n]', ' ', s[i:j]))
            i = j
        elif c == "'":
            # char literal ('x', '\n', '\u{..}') or a lifetime ('a)
            m = re.match(r"'(?:\\(?:u\{[0-9a-fA-F]+\}|x[0-9a-fA-F]{2}|.)|[^\\'])'", s[i:i + 12])
            if m:
                out.append(' ' * m.end())
                i += m.end()
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return ''.join(out)


TEST_ATTR = re.compile(r'#\[cfg\((?:test|all\(\s*test\b[^\]]*\))\)\]')


def item_end(s, i):
    """End (exclusive) of the item starting at i: through its `;` or its brace-matched block."""
    n = len(s)
    # skip further attributes
    while True:
        m = re.match(r'\s*#\[', s[i:])
        if not m:
            break
        depth, j = 0, i + m.end() - 1
        while j < n:
            if s[j] == '[':
                depth += 1
            elif s[j] == ']':
                depth -= 1
                if depth == 0:
                    break
            j += 1
        i = j + 1
    depth = 0
    j = i
    while j < n:
        ch = s[j]
        if ch in '([':
            depth += 1
        elif ch in ')]':
            depth -= 1
        elif ch == ';' and depth == 0:
            return j + 1
        elif ch == '{' and depth == 0:
            d, k = 1, j + 1
            while k < n and d:
                if s[k] == '{':
                    d += 1
                elif s[k] == '}':
                    d -= 1
                k += 1
            # `const X: T = S { .. };` style: continue to the `;` if one follows directly
            m = re.match(r'\s*;', s[k:])
            return k + m.end() if m else k
        j += 1
    return n


def drop_test_items(s):
    """Blanks every item under a test-only cfg; returns (text, names of test-only child mods)."""
    test_mods = []
    while True:
        m = TEST_ATTR.search(s)
        if not m:
            break
        end = item_end(s, m.end())
        mm = re.match(r'\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;', s[m.end():end])
        if mm:
            test_mods.append(mm.group(1))
        s = s[:m.start()] + re.sub(r'[^\n]', ' ', s[m.start():end]) + s[end:]
    return s, test_mods


texts = {}
test_only = set()
for mod, p in files.items():
    t, tm = drop_test_items(strip_comments_and_literals(open(p).read()))
    t = re.sub(r'pub\s*\(\s*in\s+[\w:]+\s*\)', 'pub', t)
    texts[mod] = t
    for name in tm:
        test_only.add(mod + (name,))
for mod in list(files):
    if any(mod[:k] in test_only for k in range(1, len(mod) + 1)):
        del files[mod]
        del texts[mod]


def resolve(mod, path, aliases):
    """File (module tuple) that the path lands in, or None when it leaves the crate."""
    if not path:
        return None
    if path[0] == 'crate':
        cur, path = [], path[1:]
    elif path[0] == 'super':
        cur = list(mod)
        while path and path[0] == 'super':
            cur, path = cur[:-1], path[1:]
    elif path[0] == 'self':
        cur, path = list(mod), path[1:]
    elif tuple(list(mod) + [path[0]]) in files:
        cur = list(mod)
    elif path[0] in aliases:
        cur, path = list(aliases[path[0]]), path[1:]
    else:
        return None
    best = None
    for k in range(len(cur), -1, -1):  # an inline `mod x { }` lives in its parent's file
        if tuple(cur[:k]) in files:
            best = tuple(cur[:k])
            break
    for s in path:
        cur = cur + [s]
        if tuple(cur) in files:
            best = tuple(cur)
        else:
            break
    return best


def use_paths(body):
    """Expands a `use` tree (without `use` and `;`) into (segments, alias or None)."""
    body = re.sub(r'\s+', ' ', body)
    body = re.sub(r'\s*(::|\{|\}|,)\s*', r'\1', body).strip()
    out = []

    def walk(prefix, s):
        parts, depth, cur = [], 0, ''
        for ch in s:
            if ch == '{':
                depth += 1
            elif ch == '}':
                depth -= 1
            if ch == ',' and depth == 0:
                parts.append(cur)
                cur = ''
            else:
                cur += ch
        parts.append(cur)
        for part in parts:
            part = part.strip()
            if not part:
                continue
            m = re.match(r'^(.*?)::\{(.*)\}$', part)
            if m:
                walk(prefix + m.group(1).split('::'), m.group(2))
            elif part.startswith('{') and part.endswith('}'):
                walk(prefix, part[1:-1])
            else:
                alias = None
                am = re.match(r'^(.*) as (\w+)$', part)
                if am:
                    part, alias = am.group(1), am.group(2)
                out.append((prefix + part.split('::'), alias))
    walk([], body)
    return out


USE = re.compile(r'\buse\s+([^;]*);')
PATH = re.compile(r'(?<![\w:])((?:\w+)(?:::(?:\w+|\*))+)')
edges = {}
why = {}
INLINE = re.compile(r'\b(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*\{')


def scopes(mod, src):
    """(logical module, text) for the file and each inline `mod x { .. }` in it (nested too)."""
    m = INLINE.search(src)
    if not m:
        return [(mod, src)]
    d, k = 1, m.end()
    while k < len(src) and d:
        d += {'{': 1, '}': -1}.get(src[k], 0)
        k += 1
    inner = src[m.end():k - 1]
    rest = src[:m.start()] + ' ' * (k - m.start()) + src[k:]
    return scopes(mod + (m.group(1),), inner) + scopes(mod, rest)


def targets_of(mod, src):
    aliases = {}
    targets = []
    for m in USE.finditer(src):
        for segs, alias in use_paths(m.group(1)):
            segs = [x for x in segs if x not in ('*', '')]
            if segs and segs[-1] == 'self':
                segs = segs[:-1]
            targets.append(('::'.join(segs), segs))
            t = resolve(mod, segs, {})
            # a `use` that names a module file makes its last name (or alias) usable as a path
            if t is not None and segs and t[-1:] == (segs[-1],):
                aliases[alias or segs[-1]] = t
    for m in PATH.finditer(USE.sub(' ', src)):
        segs = [s for s in m.group(1).split('::') if s != '*']
        # Outside `use`, a path's last name is an item (a function, type, constant, variant,
        # macro), never a module: `peft::read(..)` calls the `read` that peft/mod.rs re-exports,
        # not the file peft/read.rs, so only the names before it can pick a file.
        targets.append((m.group(1), segs[:-1]))
    return [(text, resolve(mod, segs, aliases)) for text, segs in targets]


for mod in files:
    tg = {}
    for scope, text in scopes(mod, texts[mod]):
        for path, t in targets_of(scope, text):
            if t is not None and t != mod:
                tg.setdefault(t, []).append(path)
    edges[mod] = set(tg)
    why[mod] = tg


def name(m):
    return '/'.join(m) or 'lib'


cyc = sorted((a, b) for a in edges for b in edges[a] if a < b and a in edges.get(b, ()))
for a, b in cyc:
    print(name(a), '<->', name(b))
    if verbose:
        print('   ', name(a), '->', ', '.join(sorted(set(why[a][b]))[:6]))
        print('   ', name(b), '->', ', '.join(sorted(set(why[b][a]))[:6]))
print(len(cyc), 'two-file cycles', file=sys.stderr)

if sccs:
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(comp)

    for v in edges:
        if v not in index:
            strong(v)
    big = [sorted(c) for c in out if len(c) > 2]
    for c in big:
        print('scc', len(c), ':', ' '.join(name(m) for m in c))
    print(len(big), 'groups of three or more files in a cycle', file=sys.stderr)
