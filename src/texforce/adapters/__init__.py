"""LoRA adapters on disk: the files texforce writes and reads (diffusers, PEFT, the official releases), and fusion."""
