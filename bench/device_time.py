"""The stand-in device's time per forward, shared by this service's device-mode backend (bench/device_mode.py)
and the LitServe peer given the same stand-in (bench/apps/litserve_device_app.py). Standard library only: the peer
imports it in its own virtualenv.

AWS's published Neuron benchmark for DistilBERT on inf2.xlarge: 5,308 sentences/s at batch 16 and sequence
length 128 on the instance's two NeuronCores, i.e. 2,654 x 128 padded tokens/s per core; a forward of batch
b x seq s takes b * s / (2,654 * 128) s (6.0 ms for 16 x 128), at least 1 ms (a floor assumed for fixed
per-call cost, not published).
"""

from __future__ import annotations

#: Padded tokens per second of one NeuronCore (AWS: 5,308 sentences/s, batch 16 x 128 tokens, 2 cores).
CORE_TOKENS_PER_S = 5308 / 2 * 128
MIN_FORWARD_S = 0.001
#: The RayService's compiled grid (kuberay/10-rayservice.yaml) with its 512 window.
DEVICE_BUCKETS = {"batch_sizes": [1, 4, 8, 16, 32], "seq_lens": [16, 32, 64, 128, 256, 512]}


def device_seconds(batch_size: int, seq_len: int) -> float:
    return max(MIN_FORWARD_S, batch_size * seq_len / CORE_TOKENS_PER_S)


def smallest_at_least(value: int, sizes: list[int]) -> int:
    return next((size for size in sizes if size >= value), sizes[-1])


def padded_batches_seconds(token_counts: list[int], buckets: dict = DEVICE_BUCKETS) -> float:
    """Device time of forwards over texts of these token counts, in order, as compiled buckets run them:
    chunks of at most the largest batch bucket, each padded to the batch and sequence buckets that hold it."""
    largest = buckets["batch_sizes"][-1]
    total = 0.0
    for start in range(0, len(token_counts), largest):
        chunk = token_counts[start:start + largest]
        total += device_seconds(smallest_at_least(len(chunk), buckets["batch_sizes"]),
                                smallest_at_least(max(chunk), buckets["seq_lens"]))
    return total
