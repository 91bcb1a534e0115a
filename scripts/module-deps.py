#!/usr/bin/env python3
"""Prints which top-level modules of src/ each module imports (crate::X),
and fails if two modules import each other, directly or through others.
Run from the repository root: python3 scripts/module-deps.py"""
import os, re, sys, collections

root = 'src'
mods = sorted({n[:-3] if n.endswith('.rs') else n for n in os.listdir(root)} - {'lib', 'main'})
deps = collections.defaultdict(set)
for dirpath, _, files in os.walk(root):
    for f in files:
        if not f.endswith('.rs'):
            continue
        path = os.path.join(dirpath, f)
        top = path.split(os.sep)[1].removesuffix('.rs')
        text = open(path).read()
        # Doc comments may name modules without importing them.
        code = '\n'.join(l for l in text.split('\n') if not l.lstrip().startswith('//'))
        names = set(re.findall(r'crate::([a-z_]+)', code))
        for group in re.findall(r'crate::\{([^;]*?)\}', code, re.S):
            names |= set(re.findall(r'(?:^|[,{\s])([a-z_]+)(?=::|\s*[,}]|\s*$)', group))
        deps[top] |= {n for n in names if n in mods and n != top}

for m in mods:
    print(f"{m:12} -> {', '.join(sorted(deps[m])) or '(nothing)'}")

# Cycle check: depth-first search over the graph.
state, stack, cycles = {}, [], []
def visit(m):
    state[m] = 'open'
    stack.append(m)
    for d in sorted(deps[m]):
        if state.get(d) == 'open':
            cycles.append(stack[stack.index(d):] + [d])
        elif d not in state:
            visit(d)
    stack.pop()
    state[m] = 'done'
for m in mods:
    if m not in state:
        visit(m)
if cycles:
    for c in cycles:
        print('cycle: ' + ' -> '.join(c))
    sys.exit(1)
print('no import cycles between the modules of src/')
