"""The serving frameworks a user might pick instead, each in its own virtualenv with pinned versions.

The virtualenvs live in bench/.venvs/NAME (git-ignored) and are created on first use: Infinity needs
`transformers<5`, which cannot share this project's environment. Every one pins `torch==2.13.0` (the CPU
wheel; an unpinned torch pulls a multi-GB CUDA build).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

VENVS = Path(__file__).resolve().parent / ".venvs"

#: Pinned requirements of each peer's virtualenv.
REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "litserve": ("torch==2.13.0", "litserve==0.2.19", "transformers>=5.20,<6"),
    "infinity": ("torch==2.13.0", "infinity-emb[server,torch]==0.0.78", "transformers<5"),
}


def ensure_venv(name: str, root: Path = VENVS) -> Path:
    """The `bin/` directory of peer `name`'s virtualenv, created and installed first if missing or out of
    date (a stamp file records the requirements it was installed with)."""
    requirements = REQUIREMENTS[name]
    venv = root / name
    stamp = venv / ".requirements"
    wanted = hashlib.sha256("\n".join(requirements).encode()).hexdigest()
    if stamp.exists() and stamp.read_text() == wanted:
        return venv / "bin"
    print(f"creating {venv} ({', '.join(requirements)}) ...", flush=True)
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *requirements], check=True)
    stamp.write_text(wanted)
    return venv / "bin"
