"""Install minimoe and build its C++/CUDA extension.

    pip install torch                        # first: the extension builds against it
    pip install --no-build-isolation -e .    # tests: pip install --no-build-isolation -e ".[test]"

The extension `minimoe._C` (csrc/) always gets its CPU kernels; the CUDA kernels are added when
torch is a CUDA build and a CUDA toolkit is found (CUDA_HOME, else the toolkit of the nvcc on
PATH, else /usr/local/cuda).
MINIMOE_NO_EXT=1 skips the extension entirely (minimoe then runs on its PyTorch backend).
"""
import glob
import os
import shutil

from setuptools import find_packages, setup

CUDA_ARCHS = "9.0"  # Hopper (H100/H200) at least; extend with TORCH_CUDA_ARCH_LIST
CUDA_GUESSES = ("/usr/local/cuda",)  # toolkit roots to try when CUDA_HOME is not set


def find_cuda_home() -> None:
    """Set CUDA_HOME to a directory that holds a whole toolkit (bin/nvcc and lib64/libcudart)
    before torch guesses one: torch takes the parent of the first nvcc on PATH, which can be a
    bare /usr/local whose libraries are elsewhere (and then linking fails)."""
    def whole(root):
        return os.path.exists(os.path.join(root, "bin", "nvcc")) and \
            os.path.exists(os.path.join(root, "lib64", "libcudart.so"))
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    nvcc = shutil.which("nvcc")
    candidates = ([os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))] if nvcc else []) \
        + list(CUDA_GUESSES)
    for root in candidates:
        if whole(root):
            os.environ["CUDA_HOME"] = root
            return


def extensions() -> tuple[list, dict]:
    if os.environ.get("MINIMOE_NO_EXT") == "1":
        print("minimoe: MINIMOE_NO_EXT=1, not building the extension")
        return [], {}
    find_cuda_home()
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    sources = ["csrc/moe_ops.cpp", *sorted(glob.glob("csrc/cpu/*.cpp"))]
    cxx = ["-O3"]  # the C++ standard is torch's own (C++20 for torch 2.14)
    with_cuda = torch.version.cuda is not None and CUDA_HOME is not None and \
        os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc"))
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", CUDA_ARCHS)
        ext = CUDAExtension("minimoe._C", sources + sorted(glob.glob("csrc/cuda/*.cu")),
                            extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]})
    else:
        ext = CppExtension("minimoe._C", sources, extra_compile_args={"cxx": cxx})
    print(f"minimoe: building the extension with CPU kernels"
          + (f" and CUDA kernels (sm {os.environ['TORCH_CUDA_ARCH_LIST']}, {CUDA_HOME})"
             if with_cuda else " only (no CUDA build of torch or no CUDA toolkit found)"))
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = extensions()
setup(
    name="minimoe",
    version="0.1.0",
    description="A readable Show-o-style unified multimodal transformer with Mixture-of-Experts",
    packages=find_packages(include=["minimoe", "minimoe.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "numpy", "ninja", "tqdm", "pillow>=10.1"],
    # tensorboard: optional, for --tensorboard true (comparing runs in TensorBoard)
    # data: --data wds:PATTERN reads tar shards (WebDataset: how CC3M, LAION ship) with it;
    # the tests read shards too
    extras_require={"test": ["pytest", "webdataset", "tensorboard"], "tensorboard": ["tensorboard"],
                    "data": ["webdataset"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
