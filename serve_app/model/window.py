"""Tokenize texts to the model's window while reading only as much of each text as the window can use.

`tokenizer(text, truncation=True, max_length=n)` normalizes and splits the whole text before it cuts the
tokens, so a 10,000-character text costs 10,000 characters of tokenizer CPU for 512 tokens kept (CJK
text, where each character is a token, costs the most: ~19 ms a text here). `WindowEncoder` gives exactly
the same ids while reading a prefix:

1. texts of at most `budget` characters are tokenized as they are;
2. a longer text's first `budget` characters are split into tokens (no special tokens yet) with their
   word ids. Every word but the prefix's last is complete (the cut can only split the last one), and a
   Hugging Face tokenizer splits words independently of what follows them (pre-tokenization), so when
   the complete words hold the window's tokens, they are the whole text's first tokens: they are cut to
   the window and given their special tokens, the two steps `truncation=True` takes;
3. otherwise (a prefix of whitespace, or one long word), the budget doubles and step 2 runs again,
   until the budget covers the text, which is then tokenized whole.

Only fast (Rust) tokenizers report word ids; with any other, every text is read whole. Tests compare the
ids with the plain call on the real tokenizer; `python -m bench.in_process.request_cost` measures the cost.

A fast tokenizer's texts go straight to its Rust `tokenizers.Tokenizer` (a copy with the window's truncation
set once), without transformers' per-text dicts of ids, masks and offsets that the replica never reads.
"""

from __future__ import annotations

from tokenizers import Tokenizer

#: Characters read per window token on the first try: SST-2-like English text averages ~4.5 characters a
#: token with this vocabulary, so a 6x budget fills the window at once for text that is not mostly whitespace.
CHARS_PER_TOKEN = 6


class WindowEncoder:
    """Token ids of texts, as `tokenizer(texts, truncation=True, max_length=max_tokens)` gives them."""

    def __init__(self, tokenizer, max_tokens: int, chars_per_token: int = CHARS_PER_TOKEN) -> None:
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.budget = max(1, max_tokens * chars_per_token)
        self.content_tokens = max_tokens - tokenizer.num_special_tokens_to_add(pair=False)
        self.rust: Tokenizer | None = None
        if getattr(tokenizer, "is_fast", False):
            # A copy: transformers re-sets truncation and padding on the shared one at each of its calls.
            self.rust = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
            self.rust.no_padding()
            self.rust.enable_truncation(max_tokens)
            # encode_batch_fast skips character offsets (tokenizers >= 0.20.2; the inf1 image's may predate it).
            self._encode_batch = getattr(self.rust, "encode_batch_fast", self.rust.encode_batch)

    def __call__(self, texts: list[str]) -> list[list[int]]:
        pending = [i for i, text in enumerate(texts) if len(text) > self.budget]
        # Only fast (Rust) tokenizers report word ids; with any other, or no long text, one plain call.
        if not pending or self.content_tokens < 1 or self.rust is None:
            return self.encode_whole(texts)
        ids: list[list[int] | None] = [None] * len(texts)
        budget = self.budget
        while pending:
            probe = self.split_prefixes([texts[i][:budget] for i in pending])
            still = []
            for encoding, i in zip(probe, pending):
                if _window_is_complete(encoding.word_ids, self.content_tokens):
                    # The same steps the tokenizer takes for truncation=True: cut the content, add special tokens.
                    encoding.truncate(self.content_tokens)
                    ids[i] = self.rust.post_process(encoding).ids
                elif len(texts[i]) > 2 * budget:
                    still.append(i)
                # else: the next budget covers the whole text, which is tokenized below as it is
            pending, budget = still, 2 * budget
        rest = [i for i, found in enumerate(ids) if found is None]
        for i, found in zip(rest, self.encode_whole([texts[i] for i in rest])):
            ids[i] = found
        return ids

    def encode_whole(self, texts: list[str]) -> list[list[int]]:
        """Each text read whole, cut to the window, with special tokens."""
        if not texts:
            return []
        if self.rust is None:
            return self.tokenizer(texts, truncation=True, max_length=self.max_tokens, padding=False)["input_ids"]
        return [encoding.ids for encoding in self._encode_batch(texts)]

    def split_prefixes(self, prefixes: list[str]):
        """Encodings of text prefixes without special tokens or truncation (their word ids say where words end)."""
        return self.tokenizer(prefixes, add_special_tokens=False, verbose=False).encodings


def _window_is_complete(word_ids: list[int | None], needed: int) -> bool:
    """Whether the first `needed` tokens lie in complete words: words before the prefix's last word, which
    the cut may have split (the tokens of one word are contiguous, and the last word's come last)."""
    return len(word_ids) > needed and word_ids[needed - 1] is not None and word_ids[needed - 1] != word_ids[-1]
