"""What dedup compares: one normalised text per row, and its content hash.

Normalisation folds differences that do not make two texts different answers: Unicode compatibility
forms (NFKC turns full-width `，！Ａ１` into `,!A1`), case, every punctuation mark (Unicode category P*,
removed), and whitespace (runs become one space, ends trimmed). It runs in Arrow's C++ kernels (RE2's
`\\p{P}`), so it costs little next to shingling.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from soulray.errors import SoulrayError

# Text of a row: a rewrite unit is what reaches the prompt; a dialogue is what a reader sees.
UNIT_TEXT_COLUMNS = ("question", "description", "answer")


class DedupInputError(SoulrayError):
    """A table that dedup cannot read: the message names the column and the row."""


def normalise(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """NFKC, lower case, punctuation removed, whitespace folded; null becomes ''."""
    texts = texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts
    texts = pc.fill_null(texts.cast(pa.large_string()), "")
    folded = pc.utf8_lower(pc.utf8_normalize(texts, form="NFKC"))
    folded = pc.replace_substring_regex(folded, pattern=r"\p{P}+", replacement="")
    folded = pc.replace_substring_regex(folded, pattern=r"\s+", replacement=" ")
    return pc.utf8_trim_whitespace(folded)


def row_texts(table: pa.Table) -> pa.Array:
    """The raw text of each row: question+description+answer for units (newline-separated), the
    concatenated message contents for dialogues."""
    if "messages" in table.column_names:
        return _dialogue_texts(table["messages"])
    missing = [name for name in UNIT_TEXT_COLUMNS if name not in table.column_names]
    if missing:
        raise DedupInputError(f"dedup needs a 'messages' column (dialogues) or {', '.join(UNIT_TEXT_COLUMNS)} "
                              f"(units); missing {', '.join(missing)} in columns {table.column_names}")
    parts = [pc.fill_null(table[name].cast(pa.large_string()), "") for name in UNIT_TEXT_COLUMNS]
    return pc.binary_join_element_wise(*parts, pa.scalar("\n", pa.large_string())).combine_chunks()


def _dialogue_texts(messages: pa.ChunkedArray | pa.Array) -> pa.Array:
    messages = messages.combine_chunks() if isinstance(messages, pa.ChunkedArray) else messages
    if messages.null_count:
        row = int(np.flatnonzero(messages.is_null().to_numpy(zero_copy_only=False))[0])
        raise DedupInputError(f"column 'messages', row {row}: null (a dialogue needs a list of messages)")
    contents = pc.fill_null(pc.struct_field(messages.flatten(), "content").cast(pa.large_string()), "")
    # rebuild the list over the contents and join each row's contents with newlines
    offsets = pc.subtract(messages.offsets, messages.offsets[0])
    joined = pc.binary_join(pa.LargeListArray.from_arrays(offsets.cast(pa.int64()), contents),
                            pa.scalar("\n", pa.large_string()))
    return joined


def content_hashes(normalised: pa.Array) -> np.ndarray:
    """16-byte BLAKE2b of each normalised text, as an (N, 2) uint64 array: equal rows are exact
    duplicates (a 128-bit hash: a chance collision is far below any other error in the pipeline)."""
    out = np.empty((len(normalised), 2), np.uint64)
    for index, text in enumerate(normalised.to_pylist()):
        out[index] = np.frombuffer(hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest(), np.uint64)
    return out
