"""Byte-level BPE tokenizer trained in the pipeline, or a pretrained one.

The post-processor adds BOS only. EOS is appended to training text by the packer:
with transformers 5, a post-processor that appends `</s>` would put it between a
context and its continuation and break log-likelihood scoring (MMLU letters).
"""

from __future__ import annotations

from collections.abc import Iterable

from spark_trainer.errors import ModelSourceError

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int):
    """Train a byte-level BPE on `texts` and wrap it as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[PAD, BOS, EOS, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable: no unknowns
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, tok.token_to_id(BOS))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK)


def load_pretrained(name_or_path: str):
    """A tokenizer from a local folder or hub id; it must have BOS and EOS tokens."""
    from pathlib import Path

    from transformers import AutoTokenizer

    from spark_trainer.modeling.causal_lm import nothing_imported

    nothing_imported(Path(name_or_path))
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        raise ModelSourceError(f"cannot load tokenizer '{name_or_path}' (train.tokenizer.pretrained): {e}. "
                               "Offline, give a local folder or use train.tokenizer.kind: bpe") from e
    if tok.eos_token_id is None:
        raise ModelSourceError(f"tokenizer '{name_or_path}' has no EOS token; training text needs one")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def encode_documents(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids per document: BOS (from the post-processor) + text + EOS."""
    encoded = tokenizer(texts, add_special_tokens=True)["input_ids"]
    bos = tokenizer.bos_token_id
    eos = tokenizer.eos_token_id
    out = []
    for ids in encoded:
        if bos is not None and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        out.append([*ids, eos])
    return out
