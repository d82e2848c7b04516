"""A small image captioner: VisionEncoderDecoder from a tiny ViT and a tiny GPT-2, with a
word-level tokenizer trained on the captions; plus loading any image-to-text model
(this one, or a hub id such as Salesforce/blip-image-captioning-base) for generation.

Everything is saved in the Hugging Face layout (config, safetensors, tokenizer,
image processor), so `AutoModelForImageTextToText.from_pretrained(folder)` loads it.
"""

from __future__ import annotations

import io
from pathlib import Path

PAD, BOS, EOS, UNK = "[PAD]", "[BOS]", "[EOS]", "[UNK]"


def build_tokenizer(captions: list[str]):
    """Word level: the caption vocabulary is small and closed, so a word is a token."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for c in captions for w in c.lower().split()})
    vocab = {tok: i for i, tok in enumerate([PAD, BOS, EOS, UNK, *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # Labels end with EOS; the decoder's inputs start with BOS (shifted by the model).
    tok.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", special_tokens=[(EOS, vocab[EOS])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK)


def build_model(tokenizer, image_size: int, encoder, decoder, max_tokens: int, seed: int):
    """`encoder` / `decoder` carry the sizes (VisionEncoderParams / TextDecoderParams)."""
    import torch
    from transformers import GPT2Config, VisionEncoderDecoderConfig, VisionEncoderDecoderModel, ViTConfig

    torch.manual_seed(seed)
    enc = ViTConfig(image_size=image_size, patch_size=encoder.patch_size, num_channels=3,
                    hidden_size=encoder.hidden_size, num_hidden_layers=encoder.num_layers,
                    num_attention_heads=encoder.num_heads, intermediate_size=encoder.intermediate_size)
    dec = GPT2Config(vocab_size=len(tokenizer), n_positions=max_tokens + 1, n_embd=decoder.hidden_size,
                     n_layer=decoder.num_layers, n_head=decoder.num_heads, add_cross_attention=True, is_decoder=True,
                     bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id)
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    config.decoder_start_token_id = tokenizer.bos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = tokenizer.eos_token_id
    model = VisionEncoderDecoderModel(config=config)
    gen = model.generation_config
    gen.decoder_start_token_id, gen.bos_token_id = tokenizer.bos_token_id, tokenizer.bos_token_id
    gen.eos_token_id, gen.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    return model


def build_image_processor(image_size: int):
    from transformers import ViTImageProcessor

    return ViTImageProcessor(size={"height": image_size, "width": image_size}, do_resize=True, do_normalize=True,
                             image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])


def save(folder: Path, model, tokenizer, image_processor) -> None:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    image_processor.save_pretrained(folder)


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def decode_jpegs(jpegs: list[bytes]):
    from PIL import Image

    return [Image.open(io.BytesIO(b)).convert("RGB") for b in jpegs]


class Captioner:
    """Any image-to-text model in the Hugging Face layout (ours, BLIP, ...): a local
    folder or a hub id (the hub needs the network or its cache), run on `device`."""

    def __init__(self, source: str, device="cpu") -> None:
        from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

        from spark_trainer.errors import ModelSourceError

        try:
            self.model = AutoModelForImageTextToText.from_pretrained(source)
            self.image_processor = AutoImageProcessor.from_pretrained(source)
            self.tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as e:
            raise ModelSourceError(f"could not load the captioner '{source}' ({e}); give a folder saved with "
                                   f"save_pretrained (e.g. models/captioner) or a reachable hub id") from e
        self.model.eval().to(device)
        self.source = source
        # A decoder cannot generate past its position table (ours is sized to the longest caption).
        decoder = getattr(self.model.config, "decoder", None) or getattr(self.model.config, "text_config", None)
        self.max_positions = (getattr(decoder, "max_position_embeddings", None) or getattr(decoder, "n_positions", None)
                              if decoder is not None else None)

    def caption(self, images, max_new_tokens: int, batch_size: int) -> list[str]:
        import torch

        if self.max_positions:
            max_new_tokens = min(max_new_tokens, self.max_positions - 1)
        out: list[str] = []
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                pixels = self.image_processor(images=images[i:i + batch_size], return_tensors="pt")["pixel_values"]
                pixels = pixels.to(self.model.device)
                ids = self.model.generate(pixel_values=pixels, max_new_tokens=max_new_tokens, num_beams=1,
                                          do_sample=False)
                out += [" ".join(t.split()) for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]
        return out
