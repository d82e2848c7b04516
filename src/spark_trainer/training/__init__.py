"""Training: packing documents into blocks and a resumable HF Trainer wrapper."""
