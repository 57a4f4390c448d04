"""The compiled extensions of coordcore, and nothing else (metadata is in pyproject.toml).

Switches, from the environment:
  COORDCORE_DEBUG=1     -O0 -g, Cython bounds/overflow/initialisation checks and the
                        invariant checks guarded by the compile-time flag CC_DEBUG.
  COORDCORE_SANITIZE=1  AddressSanitizer + UndefinedBehaviorSanitizer (run Python with
                        LD_PRELOAD=$(gcc -print-file-name=libasan.so)).
  COORDCORE_COVERAGE=1  Cython line tracing, for coverage of the .pyx files.
  COORDCORE_WERROR=1    warnings are errors (./dev test's debug build: a compiler's new
                        warning fails our CI, never a user's install).
"""
import os
from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("COORDCORE_DEBUG") == "1"
SANITIZE = os.environ.get("COORDCORE_SANITIZE") == "1"
COVERAGE = os.environ.get("COORDCORE_COVERAGE") == "1"

# The generated C compiles without a warning under -Wall -Wextra, with none silenced
# (Cython 3 marks its own unused helpers; ours carry CC_UNUSED): a new warning is a
# finding: `./dev test` builds its debug variant with COORDCORE_WERROR=1.
cflags = ["-std=c11", "-fno-strict-aliasing", "-Wall", "-Wextra"]
if os.environ.get("COORDCORE_WERROR") == "1":
    cflags.append("-Werror")
ldflags: list[str] = []
if DEBUG:
    cflags += ["-O0", "-g3", "-UNDEBUG"]
else:
    cflags += ["-O3"]
if SANITIZE:
    san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"]
    cflags += san
    ldflags += san

# CC_DEBUG guards invariant checks in the .pyx files (`if CC_DEBUG:`); in release the C
# compiler folds them away.
macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"), ("CC_DEBUG", "1" if DEBUG else "0")]
if COVERAGE:
    macros.append(("CYTHON_TRACE_NOGIL", "1"))

extensions = [
    Extension(
        f"coordcore._native.{pyx.stem}",
        [str(pyx)],
        depends=[str(h) for h in sorted(Path("coordcore/_native").glob("*.h"))],
        include_dirs=[numpy.get_include(), "coordcore/_native"],
        define_macros=macros,
        extra_compile_args=cflags,
        extra_link_args=ldflags,
    )
    for pyx in sorted(Path("coordcore/_native").glob("*.pyx"))
]

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": False,
    "initializedcheck": DEBUG,
    "overflowcheck": DEBUG,
    "cdivision": not DEBUG,
    "embedsignature": True,
    "freethreading_compatible": True,
    "linetrace": COVERAGE,
    "auto_pickle": False,  # native state (generators, rings, machines) is not picklable by accident
}

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=directives,
        nthreads=os.cpu_count() or 1,
    )
)
