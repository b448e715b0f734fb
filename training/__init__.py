"""Ray Train fine-tuning of a Hugging Face encoder for binary sentiment (see training/MODEL_CARD.md)."""
