"""What one valid request can cost the model replica at most: tokenizer and forward CPU, worst shapes.

    python -m bench.in_process.request_cost [--model default] [--repeat 3] [--no-forward]

The limits bound a request: at most `max_texts_per_request` texts of at most `max_text_chars` characters,
and at most `max_request_tokens` tokens counted as the sum of min(characters, window) over its texts
(serve_app/api/routes.py). For the costliest requests those limits admit, this prints the tokenizer's CPU
time with the service's window tokenizer (serve_app/model/window.py) beside the plain
`tokenizer(texts, truncation=True)` call it replaces, in one run, then the whole classify (tokenize +
bucket + forward, one thread, the served precision) of the worst one: the worst case of one request.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

from serve_app.config import AppConfig, LimitSettings

#: SST-2 sentences make the English texts (the data set's README: ../shared/data/sst2).
SST2_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "sst2"


def english(chars: int, rng: random.Random) -> str:
    rows = [line.split("\t")[0] for line in (SST2_DIR / "train.tsv").read_text().splitlines()[1:]]
    text = ""
    while len(text) < chars:
        text += rng.choice(rows) + " "
    return text[:chars]


def worst_requests(limits: LimitSettings, window: int) -> dict[str, list[str]]:
    """The costliest request of each kind the limits admit (each text as long as allowed)."""
    rng = random.Random(0)
    longest = limits.max_text_chars
    full = min(limits.max_texts_per_request, limits.max_request_tokens // window)  # texts that each count a window
    most = limits.max_texts_per_request
    each = min(longest, limits.max_request_tokens // most)  # characters each when the most texts are sent
    return {
        f"{full} x {longest} chars English": [english(longest, rng) for _ in range(full)],
        f"{full} x {longest} chars CJK (a token per character)": ["好" * longest] * full,
        f"{full} x {longest} chars punctuation": ["!" * longest] * full,
        f"{full} x (4,100 spaces + CJK)": [" " * 4100 + "好" * (longest - 4100)] * full,
        f"{full} x {longest} chars of one word": ["a" * longest] * full,
        f"{most} x {each} chars English": [english(each, rng) for _ in range(most)],
    }


def cpu_ms(work, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        work()
        best = min(best, time.process_time() - started)
    return 1000 * best


def main(argv: list[str] | None = None) -> int:
    import torch

    from serve_app.model.classifier import build_classifier
    from serve_app.model.source import load_classifier

    parser = argparse.ArgumentParser(prog="python -m bench.in_process.request_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-forward", action="store_true", help="tokenizer figures only")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one thread, as a served replica tokenizes
    config = AppConfig(model=args.model, dtype="auto")
    classifier = build_classifier(config, load_classifier(args.model))
    window, tokenizer = classifier.max_tokens, classifier.tokenizer
    requests = worst_requests(config.limits, window)
    print(f"limits: {config.limits.max_texts_per_request} texts, {config.limits.max_text_chars} chars each, "
          f"{config.limits.max_request_tokens} tokens (min(chars, {window}) per text); one thread, {classifier.backend.name}\n")
    print("| request | tokenizer CPU ms: plain call | window tokenizer | same ids |")
    print("|---|---:|---:|---|")
    for name, texts in requests.items():
        plain = cpu_ms(lambda: tokenizer(texts, truncation=True, max_length=window), args.repeat)
        ours = cpu_ms(lambda: classifier.tokenize(texts), args.repeat)
        same = classifier.tokenize(texts) == tokenizer(texts, truncation=True, max_length=window)["input_ids"]
        print(f"| {name} | {plain:.0f} | {ours:.0f} | {same} |")
    if not args.no_forward:
        name, texts = next(iter(requests.items()))  # every text fills the window: the most forward work
        started = time.process_time()
        _, report = classifier.classify(texts)
        total = 1000 * (time.process_time() - started)
        print(f"\nworst case, one request ({name}, {report.real_tokens} tokens in {report.forwards} forwards): "
              f"{total:.0f} CPU ms = tokenize {1000 * report.tokenize_s:.0f} ms + forward {1000 * report.model_s:.0f} ms "
              f"(wall times on one thread)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
