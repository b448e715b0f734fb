"""Tokenize texts to the model's window while reading only as much of each text as the window can use.

`tokenizer(text, truncation=True, max_length=n)` normalizes and splits the whole text before it cuts the
tokens, so a 10,000-character text costs 10,000 characters of tokenizer CPU for 512 tokens kept (CJK
text, where each character is a token, costs the most: ~19 ms a text here). `encode_window` gives exactly
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
"""

from __future__ import annotations

#: Characters read per window token on the first try: SST-2-like English text averages ~4.5 characters a
#: token with this vocabulary, so a 6x budget fills the window at once for text that is not mostly whitespace.
CHARS_PER_TOKEN = 6


def encode_window(tokenizer, texts: list[str], max_tokens: int, chars_per_token: int = CHARS_PER_TOKEN) -> list[list[int]]:
    """Token ids of each text, as `tokenizer(texts, truncation=True, max_length=max_tokens)` gives them."""
    budget = max(1, max_tokens * chars_per_token)
    content_tokens = max_tokens - tokenizer.num_special_tokens_to_add(pair=False)
    pending = [i for i, text in enumerate(texts) if len(text) > budget]
    # Only fast (Rust) tokenizers report word ids; with any other, or no long text, one plain call.
    if not pending or content_tokens < 1 or not getattr(tokenizer, "is_fast", False):
        return tokenizer(texts, truncation=True, max_length=max_tokens, padding=False)["input_ids"]
    ids: list[list[int] | None] = [None] * len(texts)
    while pending:
        probe = tokenizer([texts[i][:budget] for i in pending], add_special_tokens=False, verbose=False)
        still = []
        for encoding, i in zip(probe.encodings, pending):
            if _window_is_complete(encoding.word_ids, content_tokens):
                # The same steps the tokenizer takes for truncation=True: cut the content, add special tokens.
                encoding.truncate(content_tokens)
                ids[i] = tokenizer.backend_tokenizer.post_process(encoding).ids
            elif len(texts[i]) > 2 * budget:
                still.append(i)
            # else: the next budget covers the whole text, which is tokenized below as it is
        pending, budget = still, 2 * budget
    rest = [i for i, found in enumerate(ids) if found is None]
    if rest:
        encoded = tokenizer([texts[i] for i in rest], truncation=True, max_length=max_tokens, padding=False)["input_ids"]
        for i, found in zip(rest, encoded):
            ids[i] = found
    return ids


def _window_is_complete(word_ids: list[int | None], needed: int) -> bool:
    """Whether the first `needed` tokens lie in complete words: words before the prefix's last word, which
    the cut may have split (the tokens of one word are contiguous, and the last word's come last)."""
    return len(word_ids) > needed and word_ids[needed - 1] is not None and word_ids[needed - 1] != word_ids[-1]
