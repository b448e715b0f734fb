"""Fill in this deployment's account, region, EKS cluster, S3 bucket and AMI release, in one place.

    python kuberay/render.py --account 111122223333 --region eu-west-1 --cluster prod-eks \\
        --bucket my-sentiment-models [--ami-alias al2023@v20260828] [--out build/kuberay]
    kubectl apply -f build/kuberay/          # and build/kuberay/inf1/ for inf1

The manifests in kuberay/ hold example values (account 123456789012, us-west-2, cluster sentiment-cluster,
bucket sentiment-models-123456789012); this writes a copy of kuberay/*.yaml and kuberay/inf1/*.yaml with
yours, so `kubectl apply -f` works on the rendered folder unchanged and kuberay/ stays a clean template.
Only the standard library: runs with any python3.

kuberay/inf1/ stays plain manifests, not a kustomize overlay of kuberay/: kustomize refuses files outside
its folder ("security; file ... is not in or below ...") unless every user passes `--load-restrictor
LoadRestrictionsNone`, and a kustomization.yaml in kuberay/ itself would break `kubectl apply -f kuberay/`.
tests/test_kuberay.py validates both folders and that they serve the same application.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: placeholder -> (flag, what a valid value looks like).
PLACEHOLDERS = {
    "sentiment-models-123456789012": ("bucket", re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")),
    "123456789012": ("account", re.compile(r"^\d{12}$")),
    "us-west-2": ("region", re.compile(r"^[a-z]{2}(-[a-z]+)+-\d$")),
    "sentiment-cluster": ("cluster", re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$")),
    "al2023@v20260828": ("ami_alias", re.compile(r"^al2023@v\d{8}$")),
}


#: One pass over the text, longest placeholder first (the bucket contains the account): a value is never
#: searched again, so a bucket named like another placeholder (models-us-west-2) stays as it was given.
_PATTERN = re.compile("|".join(re.escape(p) for p in sorted(PLACEHOLDERS, key=len, reverse=True)))


def render_text(text: str, values: dict[str, str]) -> str:
    return _PATTERN.sub(lambda match: values[PLACEHOLDERS[match.group(0)][0]], text)


def check(values: dict[str, str]) -> list[str]:
    errors = []
    for placeholder, (name, pattern) in PLACEHOLDERS.items():
        if not pattern.match(values.get(name, "")):
            errors.append(f"--{name.replace('_', '-')} {values.get(name)!r} is not a valid {name} (e.g. {placeholder})")
    return errors


def render(values: dict[str, str], out: Path, source: Path = HERE) -> list[Path]:
    written = []
    for folder in (source, source / "inf1"):
        target = out / folder.relative_to(source)
        target.mkdir(parents=True, exist_ok=True)
        for manifest in sorted(folder.glob("*.yaml")):
            (target / manifest.name).write_text(render_text(manifest.read_text(), values))
            written.append(target / manifest.name)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python kuberay/render.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--account", required=True, help="AWS account id (12 digits)")
    parser.add_argument("--region", required=True, help="AWS region of the EKS cluster and ECR repository")
    parser.add_argument("--cluster", required=True, help="EKS cluster name (Karpenter discovery tag, node role)")
    parser.add_argument("--bucket", required=True, help="S3 bucket for data, runs, exported models, compile cache")
    parser.add_argument("--ami-alias", default="al2023@v20260828", help="pinned AL2023 release (default: %(default)s)")
    parser.add_argument("--out", default="build/kuberay", help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)
    values = {"account": args.account, "region": args.region, "cluster": args.cluster, "bucket": args.bucket,
              "ami_alias": args.ami_alias}
    if errors := check(values):
        print("\n".join(f"error: {e}" for e in errors), file=sys.stderr)
        return 2
    written = render(values, Path(args.out))
    print(f"wrote {len(written)} manifests to {args.out}/ (and {args.out}/inf1/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
