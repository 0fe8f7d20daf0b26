"""Native one-token generation steps for an x86-64 CPU: a float16-weight matrix-vector product, and the decoder's
whole step built on it.

Generating a token multiplies one vector by every matrix of the model. With torch, a float16 matrix has to be
widened into a float32 buffer first and then read again by the product: three passes over memory for one pass
of arithmetic. `matvec.c` widens each weight in registers and multiplies it in the same pass (AVX2, FMA, F16C):
3-5x faster products on this project's CPU. `tinystories_decoder_step` runs a whole token through the decoder
(norms, attention over the KV cache, exact GELU, residuals) in one call, instead of ~80 small torch operations
from Python, each of which costs more in overhead than in arithmetic at this size. It is plain C (no torch
headers), so it builds in well under a second with the system's C compiler, once per machine, into
`$TINYSTORIES_CACHE` (default `~/.cache/tinystories`), and is loaded with ctypes, which lets other threads run
during a call.

Where it cannot run (no C compiler, not an x86-64 CPU with AVX2/FMA/F16C, or `TINYSTORIES_KERNELS=0`), `native()`
is None and steps go through torch. Both give the same values up to float32 rounding (the order of additions,
libm's exp and erf), and each is deterministic: a seed gives the same story every time on a machine.

    python -m tinystories.kernels        # builds it here (if it can) and says which step generation uses
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import torch

ENABLE_ENV = "TINYSTORIES_KERNELS"  # "0" (or "false", "no", "off"): generation through torch only
CACHE_ENV = "TINYSTORIES_CACHE"
SOURCE = Path(__file__).with_name("matvec.c")
FLAGS = ("-O2", "-ffp-contract=off", "-fPIC", "-shared")  # no -ffast-math, no contraction: a fixed order
K_MULTIPLE = 16  # the kernel reads rows 16 values at a time

log = logging.getLogger(__name__)


class KernelUnavailable(RuntimeError):
    """Why the native code cannot be used on this machine."""


class _Damaged(KernelUnavailable):
    """A cached library that does not load (a full disk, a killed copy): built again."""


def cache_dir(environ=None) -> Path:
    environ = os.environ if environ is None else environ
    if environ.get(CACHE_ENV):
        return Path(environ[CACHE_ENV]).expanduser()
    base = environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tinystories"


def compiler(environ=None) -> str | None:
    environ = os.environ if environ is None else environ
    return environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def build(directory: Path | None = None, cc: str | None = None) -> ctypes.CDLL:
    """Compile matvec.c (once per source, compiler and platform; kept in `directory`), load and check it.
    Returns the library, its functions' argument types set. Raises KernelUnavailable with the reason."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise KernelUnavailable(f"the kernel is for x86-64 CPUs, this one is {platform.machine() or 'unknown'}")
    cc = cc or compiler()
    if not cc:
        raise KernelUnavailable("no C compiler found (set CC, or install cc, gcc or clang)")
    directory = Path(directory) if directory is not None else cache_dir()
    lib_path = library_path(directory, cc)
    try:
        return _load(lib_path)
    except FileNotFoundError:
        pass
    except _Damaged as e:
        log.info("tinystories: rebuilding %s (%s)", lib_path, e)
        lib_path.unlink(missing_ok=True)
    _compile(cc, directory, lib_path)
    return _load(lib_path)


def library_path(directory: Path, cc: str) -> Path:
    """Where the library built from this source, by this compiler, for this platform and Python is kept."""
    key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), cc.encode(), " ".join(FLAGS).encode(),
                                     platform.platform().encode(), sys.version.encode()])).hexdigest()[:16]
    return Path(directory) / f"matvec-{key}.so"


def _compile(cc: str, directory: Path, lib_path: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise KernelUnavailable(f"cannot create the kernel cache {directory}: {e}") from e
    partial = directory / f".{lib_path.name}.{os.getpid()}.{threading.get_ident()}"  # then renamed: atomic
    try:
        done = subprocess.run([*shlex.split(cc), *FLAGS, "-o", str(partial), str(SOURCE), "-lm"],  # CC="ccache gcc"
                              capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as e:
        partial.unlink(missing_ok=True)
        raise KernelUnavailable(f"could not run the C compiler {cc!r}: {e}") from e
    if done.returncode:
        partial.unlink(missing_ok=True)
        raise KernelUnavailable(f"{cc} could not build {SOURCE.name}: {done.stderr.strip()[-600:]}")
    os.replace(partial, lib_path)


def _load(lib_path: Path) -> ctypes.CDLL:
    if not lib_path.is_file():
        raise FileNotFoundError(lib_path)
    try:
        lib = ctypes.CDLL(str(lib_path))
        lib.tinystories_cpu_supported, lib.tinystories_matvec_f16, lib.tinystories_decoder_step
    except (OSError, AttributeError) as e:
        raise _Damaged(f"cannot load {lib_path}: {e}") from e
    if not lib.tinystories_cpu_supported():
        raise KernelUnavailable("this CPU lacks AVX2, FMA or F16C")
    P, I = ctypes.c_void_p, ctypes.c_int64
    lib.tinystories_matvec_f16.restype = lib.tinystories_decoder_step.restype = None
    lib.tinystories_matvec_f16.argtypes = [P] * 4 + [I] * 2
    lib.tinystories_decoder_step.argtypes = [I] * 5 + [P, P, P, I, P, P, P]
    _check(lib.tinystories_matvec_f16)
    return lib


def _check(fn) -> None:
    """The built product against torch's on a small case (a wrong build fails here, not in a story)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(37, 48, generator=g).half()
    x, b = torch.randn(48, generator=g), torch.randn(37, generator=g)
    y = torch.empty(37)
    fn(w.data_ptr(), x.data_ptr(), b.data_ptr(), y.data_ptr(), 37, 48)
    if not torch.allclose(y, torch.nn.functional.linear(x, w.float(), b), rtol=1e-5, atol=1e-5):
        raise KernelUnavailable("the built kernel gives wrong products")


def enabled(environ=None) -> bool:
    environ = os.environ if environ is None else environ
    return environ.get(ENABLE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


_lock = threading.Lock()
_loaded: dict[str, object] = {}  # "lib": the library or None, "why": the reason when None


def native() -> ctypes.CDLL | None:
    """The native library for this process (built or loaded on first call), or None where it cannot run here."""
    try:
        return _loaded["lib"]
    except KeyError:
        pass
    with _lock:
        if "lib" not in _loaded:
            lib, why = None, None
            if not enabled():
                why = f"turned off by {ENABLE_ENV}={os.environ.get(ENABLE_ENV)}"
            else:
                try:
                    lib = build()
                except KernelUnavailable as e:
                    why = str(e)
            if lib is None:
                log.info("tinystories: generation steps through torch (%s)", why)
            _loaded.update(lib=lib, why=why)
    return _loaded["lib"]


def matvec():
    """The native product (W float16 [N, K], x, b or None, y, N, K: pointers and sizes), or None."""
    lib = native()
    return None if lib is None else lib.tinystories_matvec_f16


def decoder_step():
    """The native decoder step (see matvec.c), or None."""
    lib = native()
    return None if lib is None else lib.tinystories_decoder_step


def describe() -> str:
    """Which step generation uses here, in a few words (bench.py reports it)."""
    return "native (matvec.c)" if native() is not None else f"torch ({_loaded['why']})"


def reset() -> None:
    """Forget the loaded kernel, so the next matvec() looks again (tests; after changing the environment)."""
    with _lock:
        _loaded.clear()


def main(argv=None) -> int:
    print(describe())
    if native() is not None:
        print(f"built into {cache_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
