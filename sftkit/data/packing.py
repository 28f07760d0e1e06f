"""Packing statistics. TRL's SFTTrainer packs at train time (best-fit decreasing, padding-free with
position_ids restarting at every example); this module only measures what that packing achieves, by
running TRL's own `pack_dataset` on the example lengths, so the reported number is the trainer's.
"""

from __future__ import annotations

from sftkit.quiet import no_dataset_bars


def packing_efficiency(lengths: list[int], seq_length: int) -> float:
    """Fraction of packed token slots holding real tokens under TRL's "bfd" packing.

    Args:
        lengths: token count of every example (rows longer than `seq_length` are cut, as TRL does).
        seq_length: tokens per packed sequence (the trainer's `max_length`, i.e. `cutoff_len`).

    Returns:
        real tokens / (packed sequences x seq_length); 0.0 when there are no tokens.
    """
    import numpy as np
    import pyarrow as pa
    from datasets import Dataset
    from trl.data_utils import pack_dataset

    lengths = [length for length in lengths if length > 0]
    if not lengths:
        return 0.0
    # TRL's packer allocates a segment tree of 2 x seq_length entries (17 GB at a cutoff_len of 10^9). Bins of
    # the total length hold every example at once, as bins of any larger size do: the packing is the same.
    packer_length = min(seq_length, sum(lengths))
    # One byte per token: only the lengths matter to the packer, the values are never read.
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    column = pa.LargeListArray.from_arrays(offsets, pa.array(np.zeros(offsets[-1], dtype=np.int8)))
    with no_dataset_bars():
        packed = pack_dataset(Dataset(pa.table({"input_ids": column})), packer_length, strategy="bfd")
    real_tokens = sum(sum(seq_lengths) for seq_lengths in packed["seq_lengths"])
    return real_tokens / (len(packed) * seq_length)
