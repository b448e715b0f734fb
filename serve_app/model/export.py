"""Write the service's resolved model as a plain Hugging Face directory.

    python -m serve_app.model.export DIR [--model default]

The result loads with `transformers.pipeline("sentiment-analysis", model=DIR)` (the benchmark's baseline
does exactly that) and with `model: DIR` in serve_config.yaml.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from serve_app.model.source import DEFAULT_SOURCE, ModelLoadError, load_classifier, save_classifier


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve_app.model.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="directory to write (created if missing)")
    parser.add_argument("--model", default=DEFAULT_SOURCE, help="model source, as in serve_config.yaml (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        loaded = load_classifier(args.model)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = save_classifier(loaded, args.out_dir)
    print(f"wrote {loaded.source} ({', '.join(loaded.labels)}) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
