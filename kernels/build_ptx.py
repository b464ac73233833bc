#!/usr/bin/env python3
"""Compile kernels/*.cu to the committed kernels/*.ptx with NVRTC, and check them.

    python3 kernels/build_ptx.py                   # regenerate kernels/<name>.ptx
    python3 kernels/build_ptx.py --check           # fail if a committed .ptx is stale
    python3 kernels/build_ptx.py --check --ptxas   # ... and assemble it for sm_80..sm_90
    python3 kernels/build_ptx.py --nvrtc-dir       # print libnvrtc.so.12's folder

No GPU and no system CUDA install are needed: NVRTC and ptxas come from the
pinned PyPI wheels below (stdlib only otherwise):

    python3 -m pip install nvidia-cuda-nvrtc-cu12==12.4.127 nvidia-cuda-nvcc-cu12==12.4.131

ELMO_NVRTC_LIB=/path/libnvrtc.so.12 and ELMO_PTXAS=/path/ptxas override the
wheels. A missing NVRTC or ptxas is an error, never a skip.
"""

import argparse
import ctypes
import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

# The NVRTC options, the whole list (nothing else is passed):
NVRTC_OPTIONS = [
    # Virtual architecture of the PTX: sm_80 (A100) is the oldest GPU we
    # support; the driver JIT-compiles compute_80 PTX for any sm_80 or newer.
    "--gpu-architecture=compute_80",
    # The language level the kernels are written in.
    "--std=c++17",
    # Deliberately absent:
    #   --use_fast_math  would swap expf/tanhf for approximations (and flush
    #                    denormals); the GPU must match the CPU path to float32
    #                    rounding, so the accurate versions are required.
    #   --fmad           left at its default (true): a*b+c may contract to fma,
    #                    as the CPU kernels' fma chains do.
    #   -default-device  not needed: every function is marked __global__ or
    #                    __device__.
    #   -lineinfo / -G   would embed file paths and debug sections.
]

NVRTC_PIP = "nvidia-cuda-nvrtc-cu12"
NVRTC_PIN = "12.4.127"
PTXAS_PIP = "nvidia-cuda-nvcc-cu12"
PTXAS_PIN = "12.4.131"
PTXAS_ARCHS = ["sm_80", "sm_86", "sm_89", "sm_90"]

# PTX ISA version (the .version line) -> (CUDA release, minimum Linux driver).
# From NVIDIA's PTX ISA release history and the CUDA toolkit release notes'
# driver table (CUDA 12.4 GA: >= 550.54.14). A driver older than this rejects
# the PTX with CUDA_ERROR_UNSUPPORTED_PTX_VERSION.
PTX_MIN_DRIVER = {
    "8.0": ("12.0", "525.60.13"),
    "8.1": ("12.1", "530.30.02"),
    "8.2": ("12.2", "535.54.03"),
    "8.3": ("12.3", "545.23.06"),
    "8.4": ("12.4", "550.54.14"),
    "8.5": ("12.5", "555.42.02"),
}

KERNELS = Path(__file__).resolve().parent
INSTALL_HINT = (
    f"python3 -m pip install {NVRTC_PIP}=={NVRTC_PIN} {PTXAS_PIP}=={PTXAS_PIN}"
)


class Fail(Exception):
    """An error that ends the run with a one-line message and exit status 1."""


def wheel_dir(module):
    """The folder of nvidia.<module> (site-packages/nvidia/<module>), or None."""
    try:
        if importlib.util.find_spec("nvidia") is None:
            return None
        spec = importlib.util.find_spec(f"nvidia.{module}")
    except ImportError:
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def wheel_version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_pin(dist, pin, what):
    """The pinned wheel must be the one installed: another version may emit other PTX."""
    have = wheel_version(dist)
    if have is not None and have != pin:
        raise Fail(
            f"{dist} {have} is installed but {what} is pinned to {pin}; "
            f"run: {INSTALL_HINT}"
        )


def nvrtc_lib_path():
    override = os.environ.get("ELMO_NVRTC_LIB")
    if override:
        if not Path(override).is_file():
            raise Fail(f"ELMO_NVRTC_LIB={override} is not a file")
        return Path(override)
    check_pin(NVRTC_PIP, NVRTC_PIN, "NVRTC")
    base = wheel_dir("cuda_nvrtc")
    lib = base / "lib" / "libnvrtc.so.12" if base else None
    if lib is None or not lib.is_file():
        raise Fail(
            f"NVRTC (libnvrtc.so.12) not found: the pip package {NVRTC_PIP}=={NVRTC_PIN} "
            f"is not installed; run: {INSTALL_HINT} (or set ELMO_NVRTC_LIB)"
        )
    return lib


def ptxas_path():
    override = os.environ.get("ELMO_PTXAS")
    if override:
        if not os.access(override, os.X_OK):
            raise Fail(f"ELMO_PTXAS={override} is not an executable file")
        return Path(override)
    check_pin(PTXAS_PIP, PTXAS_PIN, "ptxas")
    base = wheel_dir("cuda_nvcc")
    exe = base / "bin" / "ptxas" if base else None
    if exe is None or not exe.is_file():
        raise Fail(
            f"ptxas not found: the pip package {PTXAS_PIP}=={PTXAS_PIN} is not installed; "
            f"run: {INSTALL_HINT} (or set ELMO_PTXAS)"
        )
    if not os.access(exe, os.X_OK):
        raise Fail(f"{exe} is not executable (chmod +x it)")
    return exe


class Nvrtc:
    def __init__(self, path):
        try:
            self.lib = ctypes.CDLL(str(path))
        except OSError as e:
            raise Fail(f"cannot load NVRTC from {path}: {e}") from e
        L = self.lib
        L.nvrtcGetErrorString.restype = ctypes.c_char_p
        L.nvrtcGetErrorString.argtypes = [ctypes.c_int]
        L.nvrtcVersion.argtypes = [ctypes.POINTER(ctypes.c_int)] * 2
        L.nvrtcCreateProgram.argtypes = [
            ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p, ctypes.c_char_p,
            ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
        ]
        L.nvrtcCompileProgram.argtypes = [
            ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)
        ]
        for name in ("nvrtcGetPTXSize", "nvrtcGetProgramLogSize"):
            getattr(L, name).argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)]
        for name in ("nvrtcGetPTX", "nvrtcGetProgramLog"):
            getattr(L, name).argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        L.nvrtcDestroyProgram.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
        self.path = path
        major, minor = ctypes.c_int(), ctypes.c_int()
        self.check(L.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
        self.version = f"{major.value}.{minor.value}"

    def check(self, status, what):
        if status != 0:
            msg = self.lib.nvrtcGetErrorString(status).decode()
            raise Fail(f"{what} failed: {msg} ({status})")

    def compile(self, source, name):
        """PTX text of `source`; `name` (a bare file name) is what NVRTC's messages call it."""
        L = self.lib
        prog = ctypes.c_void_p()
        self.check(
            L.nvrtcCreateProgram(ctypes.byref(prog), source, name.encode(), 0, None, None),
            "nvrtcCreateProgram",
        )
        try:
            opts = (ctypes.c_char_p * len(NVRTC_OPTIONS))(*[o.encode() for o in NVRTC_OPTIONS])
            status = L.nvrtcCompileProgram(prog, len(NVRTC_OPTIONS), opts)
            log = self.log(prog)
            if status != 0:
                msg = L.nvrtcGetErrorString(status).decode()
                raise Fail(f"{name}: NVRTC compile failed ({msg}):\n{log}")
            if log.strip():
                # Warnings: shown, and treated as errors so they get fixed.
                raise Fail(f"{name}: NVRTC warnings (fix them):\n{log}")
            size = ctypes.c_size_t()
            self.check(L.nvrtcGetPTXSize(prog, ctypes.byref(size)), "nvrtcGetPTXSize")
            buf = ctypes.create_string_buffer(size.value)
            self.check(L.nvrtcGetPTX(prog, buf), "nvrtcGetPTX")
            return buf.raw.rstrip(b"\0").decode()
        finally:
            L.nvrtcDestroyProgram(ctypes.byref(prog))

    def log(self, prog):
        size = ctypes.c_size_t()
        self.check(self.lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)), "nvrtcGetProgramLogSize")
        buf = ctypes.create_string_buffer(max(size.value, 1))
        self.check(self.lib.nvrtcGetProgramLog(prog, buf), "nvrtcGetProgramLog")
        return buf.raw.rstrip(b"\0").decode(errors="replace")


def render(nvrtc, cu):
    """The exact bytes kernels/<name>.ptx must hold."""
    ptx = nvrtc.compile(cu.read_bytes(), cu.name)
    header = (
        f"// Generated by kernels/build_ptx.py from {cu.name} with NVRTC {nvrtc.version} "
        f"({' '.join(NVRTC_OPTIONS)}).\n"
        f"// Do not edit by hand: edit {cu.name} and run python3 kernels/build_ptx.py.\n"
    )
    text = header + ptx.replace("\r\n", "\n")
    if not text.endswith("\n"):
        text += "\n"
    return text.encode()


def ptx_info(rel, text):
    """Print the .version/.target lines and the driver they need."""
    version = re.search(r"^\.version\s+(\S+)", text, re.M)
    target = re.search(r"^\.target\s+(.+)$", text, re.M)
    if not version or not target:
        raise Fail(f"{rel}: no .version/.target line in the PTX")
    v = version.group(1)
    cuda, driver = PTX_MIN_DRIVER.get(v, ("?", "unknown (update PTX_MIN_DRIVER)"))
    print(f"{rel}: .version {v}, .target {target.group(1).strip()} "
          f"-> needs CUDA {cuda} driver, Linux >= {driver}")


SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
USED = re.compile(r"Used (\d+) registers(.*)")


def assemble(exe, rel, ptx_bytes):
    """Runs ptxas for every arch; returns (table rows, failure messages)."""
    rows, failures = [], []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / Path(rel).name
        src.write_bytes(ptx_bytes)
        for arch in PTXAS_ARCHS:
            cmd = [str(exe), f"-arch={arch}", "-v", "-o", str(Path(tmp) / f"{arch}.cubin"), str(src)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            out = r.stdout + r.stderr
            if r.returncode != 0 or re.search(r"\b(error|warning)\b", out, re.I):
                failures.append(f"{rel} [{arch}]: ptxas {'failed' if r.returncode else 'warned'}:\n{out}")
                if r.returncode != 0:
                    continue
            # Per entry: "Compiling entry function 'K' for 'sm_XX'", then
            # "N bytes stack frame, S bytes spill stores, L bytes spill loads",
            # then "Used R registers, ... smem, ... cmem[0]".
            # Any spill at all fails, whichever function (entry or not) it is in.
            for m in SPILL.finditer(out):
                if int(m.group(2)) or int(m.group(3)):
                    failures.append(f"{rel} [{arch}]: ptxas reports a spill: {m.group(0)}")
            kernel = None
            info = {}
            for line in out.splitlines():
                m = re.search(r"Compiling entry function '([^']+)'", line)
                if m:
                    kernel = m.group(1)
                    info = {"kernel": kernel, "arch": arch}
                    continue
                if kernel is None:
                    continue
                m = SPILL.search(line)
                if m:
                    info["stack"], info["spill_st"], info["spill_ld"] = map(int, m.groups())
                    continue
                m = USED.search(line)
                if m:
                    info["regs"] = int(m.group(1))
                    smem = re.search(r"(\d+) bytes smem", m.group(2))
                    info["smem"] = int(smem.group(1)) if smem else 0
                    print(f"  {arch:6} {kernel:18} {line.split(':', 1)[-1].strip()}; "
                          f"{info.get('stack', 0)} B stack, {info.get('spill_st', 0)} B spill st, "
                          f"{info.get('spill_ld', 0)} B spill ld")
                    rows.append(info)
                    kernel = None
    return rows, failures


def print_table(rows, outputs):
    # Kernels in source order (ptxas reports them in reverse).
    order = []
    for _, data in outputs:
        order += re.findall(r"^\.visible \.entry (\w+)\(", data.decode(), re.M)
    seen = set(r["kernel"] for r in rows)
    kernels = [k for k in order if k in seen] + sorted(seen - set(order))
    by = {(r["kernel"], r["arch"]): r for r in rows}
    w = max([len("kernel")] + [len(k) for k in kernels])
    cw = 26
    print("\nptxas per kernel: registers / static shared memory / spilled bytes (stores+loads)")
    print((f"{'kernel':{w}} | " + " | ".join(f"{a:^{cw}}" for a in PTXAS_ARCHS)).rstrip())
    print("-" * w + "-|-" + "-|-".join("-" * cw for _ in PTXAS_ARCHS))
    for k in kernels:
        cells = []
        for a in PTXAS_ARCHS:
            r = by.get((k, a))
            if r:
                spill = r.get("spill_st", 0) + r.get("spill_ld", 0)
                cells.append(f"{r['regs']:>3} reg {r['smem']:>5} smem {spill:>4} sp")
            else:
                cells.append(f"{'-':^{cw}}")
        print(f"{k:{w}} | " + " | ".join(cells))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true",
                    help="write nothing; fail if a committed .ptx differs from what its .cu gives")
    ap.add_argument("--ptxas", action="store_true",
                    help=f"assemble each .ptx with ptxas for {', '.join(PTXAS_ARCHS)}; "
                         "fail on an error, a warning or a spill")
    ap.add_argument("--nvrtc-dir", action="store_true",
                    help="print the folder holding libnvrtc.so.12 (for LD_LIBRARY_PATH) and exit")
    args = ap.parse_args()
    if args.nvrtc_dir:
        print(nvrtc_lib_path().absolute().parent)
        return

    sources = sorted(KERNELS.glob("*.cu"))
    if not sources:
        raise Fail(f"no .cu files in {KERNELS}")
    exe = ptxas_path() if args.ptxas else None  # fail early if it is missing
    nvrtc = Nvrtc(nvrtc_lib_path())
    print(f"NVRTC {nvrtc.version} ({nvrtc.path}); options: {' '.join(NVRTC_OPTIONS)}")

    # Compile everything before writing anything: an error leaves no file half-updated.
    rendered = [(cu, render(nvrtc, cu)) for cu in sources]
    problems = []
    outputs = []  # (rel path, bytes to assemble)
    for cu, want in rendered:
        ptx_path = cu.with_suffix(".ptx")
        rel = f"kernels/{ptx_path.name}"
        if args.check:
            if not ptx_path.exists():
                problems.append(f"{rel} is missing; run python3 kernels/build_ptx.py and commit it")
                continue
            have = ptx_path.read_bytes()
            if have != want:
                problems.append(f"{rel} is stale: it differs from what kernels/{cu.name} compiles to; "
                                "run python3 kernels/build_ptx.py and commit it")
            else:
                print(f"{rel}: up to date")
            outputs.append((rel, have))
        else:
            if ptx_path.exists() and ptx_path.read_bytes() == want:
                print(f"{rel}: unchanged")
            else:
                tmp = ptx_path.with_name(ptx_path.name + ".tmp")
                tmp.write_bytes(want)
                os.replace(tmp, ptx_path)
                print(f"{rel}: written ({len(want)} bytes)")
            outputs.append((rel, want))
        ptx_info(rel, outputs[-1][1].decode())
    # A .ptx whose .cu is gone is stale too.
    for ptx_path in sorted(KERNELS.glob("*.ptx")):
        if not ptx_path.with_suffix(".cu").exists():
            problems.append(f"kernels/{ptx_path.name} has no kernels/{ptx_path.stem}.cu; delete it")

    if args.ptxas:
        v = subprocess.run([str(exe), "--version"], capture_output=True, text=True).stdout
        print(f"\nptxas ({exe}): {v.strip().splitlines()[-1] if v.strip() else '?'}")
        rows = []
        for rel, data in outputs:
            r, f = assemble(exe, rel, data)
            rows += r
            problems += f
        if rows:
            print_table(rows, outputs)

    if problems:
        print("", file=sys.stderr)
        for p in problems:
            print(f"error: {p}", file=sys.stderr)
        sys.exit(1)
    print("\nok")


if __name__ == "__main__":
    try:
        main()
    except Fail as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
