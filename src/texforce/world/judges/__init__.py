"""The offline world's judges: exact (`world_alignment`, `world_quality`, `world_score`) and learned
(`world_preference`, `world_clipscore`, with the data and training of `world_preference`), and their validation."""
