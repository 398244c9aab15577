"""Training: encoding, packing and collation of samples for the Qwen2-VL full fine-tune."""
