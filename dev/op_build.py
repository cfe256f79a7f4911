"""Whether ``dev/setup_env.sh`` must install dinov3_m2f again (and so compile the op for minutes),
run in the interpreter being set up.

The install records what it was built from next to the extension (``BUILD_RECORD``): a hash of
the op's sources and build files, the torch it was compiled against, the interpreter, the CUDA
build settings and a hash of the extension file. When all of them are unchanged and dinov3_m2f
is installed (editable, from this checkout) in this interpreter, the install is skipped.

    python dev/op_build.py decide   ->  one line: build|keep MESSAGE
    python dev/op_build.py record   ->  writes BUILD_RECORD after a successful install
"""
import argparse
import glob
import hashlib
import importlib.metadata
import json
import os
import sys
from typing import Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_DIR = os.path.join("projects", "dinov3_m2f")
BUILD_RECORD = os.path.join(PACKAGE_DIR, "_C.build.json")
# What the compiled extension is built from, relative to the checkout.
BUILD_INPUTS = ("ops/**/*", "setup.py", "pyproject.toml")
# Build settings read by setup.py and torch's extension builder.
BUILD_ENVIRONMENT = ("FORCE_CUDA", "TORCH_CUDA_ARCH_LIST", "CUDA_HOME")
# Record keys in the order their change is reported, with what the message calls them.
RECORD_NAMES = {
    "sources": "the op's sources or build files (ops/, setup.py, pyproject.toml)",
    "torch": "torch",
    "python": "the interpreter",
    "environment": "the build settings",
    "extension": "the extension file",
}
_CHUNK = 1 << 20


def _file_hash(path: str, digest) -> None:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)


def sources_hash(root: str = ROOT) -> str:
    """sha256 over the relative paths and contents of the files the op is built from."""
    paths = sorted({p for pattern in BUILD_INPUTS
                    for p in glob.glob(os.path.join(root, pattern), recursive=True) if os.path.isfile(p)})
    digest = hashlib.sha256()
    for path in paths:
        digest.update(os.path.relpath(path, root).encode() + b"\0")
        _file_hash(path, digest)
    return digest.hexdigest()


def extension_path(root: str = ROOT) -> Optional[str]:
    """The compiled extension in the package folder (``_C.<abi>.so``), None when not built."""
    found = sorted(glob.glob(os.path.join(root, PACKAGE_DIR, "_C.*.so")))
    return found[0] if found else None


def extension_hash(path: Optional[str]) -> Optional[str]:
    if path is None:
        return None
    digest = hashlib.sha256()
    _file_hash(path, digest)
    return digest.hexdigest()


def current_state(root: str = ROOT) -> Dict[str, object]:
    """What an install now would be built from, and the extension file now there."""
    import torch

    return {
        "sources": sources_hash(root),
        "torch": f"{torch.__version__} (CUDA {torch.version.cuda})",
        "python": f"{sys.prefix} (Python {sys.version_info.major}.{sys.version_info.minor})",
        "environment": {name: os.environ.get(name, "") for name in BUILD_ENVIRONMENT},
        "extension": extension_hash(extension_path(root)),
    }


def installed_from(root: str = ROOT) -> bool:
    """Whether this interpreter has dinov3_m2f installed in editable mode from ``root``."""
    try:
        direct_url = importlib.metadata.distribution("dinov3_m2f").read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        return False
    info = json.loads(direct_url or "{}")
    return (info.get("dir_info", {}).get("editable", False)
            and info.get("url") == "file://" + os.path.abspath(root))


def decide(recorded: Optional[Dict[str, object]], current: Dict[str, object], *,
           installed: bool) -> Tuple[str, str]:
    """``("keep", message)`` when the recorded build is the one an install would make now and the
    package is installed here; else ``("build", reason)``."""
    if current["extension"] is None:
        return "build", "the op is not built"
    if recorded is None:
        return "build", "no record of the op's build"
    for key, name in RECORD_NAMES.items():
        if recorded.get(key) != current[key]:
            if key in ("sources", "extension"):
                return "build", f"{name} changed since the last build"
            return "build", f"{name} changed: {recorded.get(key)} -> {current[key]}"
    if not installed:
        return "build", f"dinov3_m2f is not installed from this checkout in {sys.executable}"
    return "keep", f"op up to date, kept (built for torch {current['torch']}, sources unchanged)"


def read_record(root: str = ROOT) -> Optional[Dict[str, object]]:
    try:
        with open(os.path.join(root, BUILD_RECORD)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_record(root: str = ROOT) -> None:
    state = current_state(root)
    if state["extension"] is None:
        raise SystemExit(f"no compiled extension in {os.path.join(root, PACKAGE_DIR)}: nothing to record")
    with open(os.path.join(root, BUILD_RECORD), "w") as f:
        json.dump(state, f, indent=2)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["decide", "record"])
    args = parser.parse_args(argv)
    if args.command == "record":
        write_record()
        return
    action, message = decide(read_record(), current_state(), installed=installed_from())
    print(action, message)


if __name__ == "__main__":
    main()
