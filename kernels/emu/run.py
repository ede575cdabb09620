#!/usr/bin/env python3
"""Check kernels on the CPU: build kernel sources against cuda_emu.h with g++ and run the checks.
No GPU or CUDA install needed.

    python3 kernels/emu/run.py [flash|vec] [case-name-filter]

flash: flash_attention.cu (its inline-PTX section swapped for ptx_emu.h) by flash_check.cpp;
vec: the vectorised norm / activation / rope kernels and the loss / optim / index kernels by vec_check.cpp
(each family in its own namespace). Both by default. Slow by design (every CUDA thread is a
std::thread): a minute or two each on 2 cores.
"""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CUDA = os.path.join(HERE, "..", "cuda")


def translation_unit() -> str:
    common = open(os.path.join(CUDA, "common.cuh")).read().replace("#include <cuda_bf16.h>", "")
    src = open(os.path.join(CUDA, "flash_attention.cu")).read()
    src = src.replace('#include "common.cuh"', "")
    start = src.index("// ----- PTX wrappers")
    end = src.index("// ----- fragment helpers")
    src = src[:start] + '#include "ptx_emu.h"\n\n' + src[end:]
    decl = "extern __shared__ __align__(16) unsigned char fa_smem[];"
    assert decl in src, "the dynamic shared memory declaration changed; update run.py"
    src = src.replace(decl, "unsigned char* fa_smem = emu_dyn_smem;")
    return '#include "cuda_emu.h"\n' + common + "\n" + src


VEC_FAMILIES = ["norm", "activation", "rope", "loss", "optim", "index"]


def vec_translation_unit() -> str:
    common = open(os.path.join(CUDA, "common.cuh")).read().replace("#include <cuda_bf16.h>", "")
    parts = ['#include "cuda_emu.h"']
    for fam in VEC_FAMILIES:
        src = open(os.path.join(CUDA, fam + ".cu")).read().replace('#include "common.cuh"', "")
        parts += [f"namespace {fam}_ns {{", common, src, "}"]
    return "\n".join(parts) + "\n"


def build_and_run(build, name, tu_name, tu, args) -> int:
    with open(os.path.join(build, tu_name), "w") as f:
        f.write(tu)
    exe = os.path.join(build, name)
    cmd = ["g++", "-O2", "-fno-strict-aliasing", "-std=c++20", "-pthread", "-w", "-I", HERE, "-I", build,
           os.path.join(HERE, name + ".cpp"), "-o", exe]
    subprocess.run(cmd, check=True)
    return subprocess.run([exe] + args).returncode


def main() -> int:
    build = os.path.join(HERE, "..", "..", "target", "emu")
    os.makedirs(build, exist_ok=True)
    args = sys.argv[1:]
    which = ["flash", "vec"]
    if args and args[0] in which:
        which, args = [args[0]], args[1:]
    rc = 0
    if "flash" in which:
        rc |= build_and_run(build, "flash_check", "flash_tu.h", translation_unit(), args)
    if "vec" in which:
        rc |= build_and_run(build, "vec_check", "vec_tu.h", vec_translation_unit(), args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
