"""How far changing the text can go in the world, measured before any tuning: prompt engineering, oracle
embeddings, and the ceiling page."""
