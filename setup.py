"""Install minimoe: `pip install -e .` (tests: `pip install -e ".[test]"`).

The C++/CUDA extension (csrc/) arrives in its own issue; `extensions()` is where it will be
built, so that installing the pure-Python package never needs a compiler.
"""
from setuptools import find_packages, setup


def extensions() -> list:
    # The csrc/ ops (permute, unpermute, grouped_mm) will be returned here as a
    # torch.utils.cpp_extension.CppExtension / CUDAExtension.
    return []


setup(
    name="minimoe",
    version="0.1.0",
    description="A readable Show-o-style unified multimodal transformer with Mixture-of-Experts",
    packages=find_packages(include=["minimoe", "minimoe.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "numpy", "ninja", "tqdm", "pillow>=10.1"],
    extras_require={"test": ["pytest"]},
    ext_modules=extensions(),
)
