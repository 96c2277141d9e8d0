"""Rewrites a CUDA source for the CPU emulator (include/cuda_runtime.h here).

    kernel<<<grid, block, smem, stream>>>(args);
        -> ::emu::Launch(grid, block, smem, stream) << [=]() { kernel(args); };
    extern __shared__ T name[];   -> T* name = ::emu::dyn_smem<T>();
    __shared__ T name[..];        -> static T name[..];  (blocks run one at a time)

Headers under cuda/ that hold kernels (#include "cuda/x.cuh") are inlined and rewritten
too.  Usage: python translate.py SOURCE.cu REPO_ROOT > out.cc
"""
import os
import re
import sys


def inline_headers(src, root, seen):
    def repl(m):
        path = os.path.join(root, m.group(1))
        if path in seen:
            return ""
        text = open(path).read()
        if "__global__" not in text and "__shared__" not in text:
            return m.group(0)
        seen.add(path)
        return inline_headers(text, root, seen)
    return re.sub(r'#include "(cuda/[^"]+\.cuh)"', repl, src)


def rewrite_launches(src):
    out, i = [], 0
    while True:
        k = src.find("<<<", i)
        if k < 0:
            out.append(src[i:])
            return "".join(out)
        j, depth = k, 0  # the kernel's name, with its template arguments, ends at <<<
        while j > 0:
            c = src[j - 1]
            if c == ">":
                depth += 1
            elif c == "<":
                depth -= 1
            elif depth == 0 and not (c.isalnum() or c in "_:"):
                break
            j -= 1
        e = src.index(">>>", k)
        p = e + 3
        while src[p].isspace():
            p += 1
        assert src[p] == "(", src[k - 40:p + 20]
        d, q = 0, p
        while True:
            if src[q] == "(":
                d += 1
            elif src[q] == ")":
                d -= 1
                if d == 0:
                    break
            q += 1
        out.append(src[i:j])
        out.append(f"::emu::Launch({src[k + 3:e]}) << [=]() {{ {src[j:k]}{src[p:q + 1]}; }}")
        i = q + 1


def main():
    path, root = sys.argv[1], sys.argv[2]
    src = inline_headers(open(path).read(), root, set())
    src = re.sub(r"extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?(\w+)\s+(\w+)\[\];",
                 r"\1* \2 = ::emu::dyn_smem<\1>();", src)
    src = re.sub(r"\b__shared__\s+", "static ", src)
    sys.stdout.write(rewrite_launches(src))


if __name__ == "__main__":
    main()
