#!/usr/bin/env python3
"""Check flash_attention.cu on the CPU: build the kernel source against cuda_emu.h (the inline-PTX
section swapped for ptx_emu.h) with g++ and run flash_check.cpp. No GPU or CUDA install needed.

    python3 kernels/emu/run.py [case-name-filter]

Slow by design (every CUDA thread is a std::thread); about a minute on 2 cores.
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


def main() -> int:
    build = os.path.join(HERE, "..", "..", "target", "emu")
    os.makedirs(build, exist_ok=True)
    with open(os.path.join(build, "flash_tu.h"), "w") as f:
        f.write(translation_unit())
    exe = os.path.join(build, "flash_check")
    cmd = ["g++", "-O2", "-std=c++20", "-pthread", "-w", "-I", HERE, "-I", build,
           os.path.join(HERE, "flash_check.cpp"), "-o", exe]
    subprocess.run(cmd, check=True)
    return subprocess.run([exe] + sys.argv[1:]).returncode


if __name__ == "__main__":
    sys.exit(main())
