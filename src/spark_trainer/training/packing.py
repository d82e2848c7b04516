"""Pack tokenised documents into fixed-length blocks: no padding, every token trains."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Packed:
    blocks: object        # torch.LongTensor [n_blocks, block_size]
    tokens_total: int     # tokens before packing
    tokens_dropped: int   # the tail shorter than one block


def pack(documents: list[list[int]], block_size: int) -> Packed:
    import torch

    stream = [t for doc in documents for t in doc]
    n_blocks = len(stream) // block_size
    if n_blocks == 0:
        raise ValueError(f"{len(stream)} tokens cannot fill one block of {block_size}; lower train.block_size")
    blocks = torch.tensor(stream[: n_blocks * block_size], dtype=torch.long).view(n_blocks, block_size)
    return Packed(blocks, len(stream), len(stream) - n_blocks * block_size)


class BlockDataset:
    """A map-style dataset of packed blocks; labels are the inputs (the model shifts them)."""

    def __init__(self, blocks) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return int(self.blocks.shape[0])

    def __getitem__(self, i: int) -> dict:
        row = self.blocks[i]
        return {"input_ids": row, "labels": row}
